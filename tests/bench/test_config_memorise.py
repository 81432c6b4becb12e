"""The shipped cifar10-memorise config: valid, its recipe stops augmenting, every method config builds."""

import pytest

from unlearnkit.bench.config import load_bench_config, shipped_configs
from unlearnkit.bench.tuning import grid_points, grid_rows


def test_memorise_config_ships_and_builds_every_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not from a source checkout
    assert "cifar10-memorise" in shipped_configs()
    config = load_bench_config("cifar10-memorise")
    recipe = config.recipe_for(0)
    assert recipe.augment and 0 < recipe.augment_epochs < recipe.epochs
    meta = {"recipe": recipe.to_dict()}
    assert config.method_config("retrain", meta).augment_epochs == recipe.augment_epochs  # the oracle's recipe
    for method in config.methods:
        assert config.method_config(method, meta) is not None, method
    assert config.seeds == [0, 1, 2] and set(config.scenarios) == {"class:3", "random:0.1"}


@pytest.mark.parametrize("name", ["cifar10-memorise", "cifar10-pretrained"])
def test_cifar_configs_ship_a_tuning_grid_that_builds(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_bench_config(name)
    assert config.tuning["seeds"] and not set(config.tuning["seeds"]) & set(config.seeds)  # never a reported seed
    meta = {"recipe": config.recipe_for(0).to_dict()}
    rows = grid_rows(config, ["class:4"])["class:4"]
    assert len(rows) == 1 + sum(len(grid_points(g)) for g in config.tuning["grid"].values())
    for label, (method, overrides) in rows.items():
        assert config.method_config(method, meta, overrides=overrides) is not None, label


@pytest.mark.parametrize("name", ["cifar10-memorise", "cifar10-pretrained", "smoke"])
def test_tuning_grid_points_build_different_configs(name, tmp_path, monkeypatch):
    """A grid value a method cannot tell from its default (a null dropped by make_config, say) makes two points
    one config run twice: every point of a method's grid must build a config of its own."""
    monkeypatch.chdir(tmp_path)
    config = load_bench_config(name)
    meta = {"recipe": config.recipe_for(0).to_dict()}
    for method, grid in config.tuning["grid"].items():
        base = config.methods.get(method, {})
        keys = [config.method_config(method, meta, overrides={**base, **point}).key_dict()
                for point in grid_points(grid)]
        assert len({repr(sorted(k.items())) for k in keys}) == len(keys), method
