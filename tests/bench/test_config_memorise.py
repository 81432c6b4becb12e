"""The shipped cifar10-memorise config: valid, its recipe stops augmenting, every method config builds."""

from unlearnkit.bench.config import load_bench_config, shipped_configs


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
