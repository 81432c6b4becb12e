"""A benchmark with `init:` starts the original and the retrain oracle from the pretrained body, head fresh."""

from __future__ import annotations

import pytest
import torch

import unlearnkit.methods.retrain as retrain_module
import unlearnkit.workflow as workflow
from unlearnkit.bench import load_bench_config, load_records, run_benchmark
from unlearnkit.cli import main
from unlearnkit.errors import InvalidConfigError
from unlearnkit.pretraining import pretrain, save_pretrained
from unlearnkit.training import Recipe


def write_pretrained(path, seed=0):
    model, _ = pretrain("digits", "mlp", Recipe(epochs=1, lr=0.05, batch_size=64), exclude_subset=600, seed=seed,
                        device="cpu", model_kwargs={"hidden": 16})
    save_pretrained(path, model, _)
    return {k: v.clone() for k, v in model.state_dict().items()}


def config(weights, **extra):
    return {"name": "init", "dataset": "digits", "dataset_args": {"subset": 600}, "model": "mlp",
            "model_kwargs": {"hidden": 16}, "init": {"weights": str(weights)},
            "recipe": {"epochs": 1, "lr": 0.05, "batch_size": 64}, "scenarios": ["class:3"],
            "methods": {"retrain": {}}, "seeds": [0], "device": "cpu", **extra}


def test_original_and_oracle_start_from_the_pretrained_body_with_a_fresh_head(tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    pretrained = write_pretrained(weights)
    starts = {}

    def recording(name, real):
        def train(model, *args, **kwargs):
            starts[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return real(model, *args, **kwargs)
        return train

    monkeypatch.setattr(workflow, "train", recording("original", workflow.train))
    monkeypatch.setattr(retrain_module, "train", recording("oracle", retrain_module.train))
    summary = run_benchmark(config(weights), tmp_path / "out")
    assert (summary.originals_trained, summary.oracles_trained) == (1, 1) and not summary.errors
    for name in ("original", "oracle"):
        start = starts[name]
        for key, tensor in pretrained.items():
            if key.startswith("head."):
                assert not torch.equal(start[key], tensor), (name, key)  # a freshly drawn head
            else:
                assert torch.equal(start[key], tensor), (name, key)  # the pretrained body
    assert torch.equal(starts["oracle"]["head.weight"], starts["original"]["head.weight"])  # one draw per seed
    retrain = next(r for r in load_records(tmp_path / "out") if r["method"] == "retrain")
    assert retrain["oracle_start"]["from"] == "pretrained init" and retrain["oracle_start"]["head_reset"]
    assert retrain["original"]["init"]["head"] == "head"
    assert retrain["original"]["init"]["pretrained_on"]["excluded"] == {"subset": 600, "subset_seed": 0}


def test_the_cache_key_follows_the_weights_file(tmp_path):
    weights = tmp_path / "w.safetensors"
    write_pretrained(weights)
    first = load_bench_config(config(weights)).original_key(0)
    assert load_bench_config(config(weights)).original_key(0) == first
    write_pretrained(weights, seed=1)  # same path, other weights
    assert load_bench_config(config(weights)).original_key(0) != first
    assert "init" not in load_bench_config({**config(weights), "init": {}}).original_key(0)


def test_a_missing_weights_file_is_one_line_naming_the_pretrain_command(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config(tmp_path / "absent.safetensors")))
    assert main(["bench", "--config", str(path), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unlearnkit pretrain --dataset digits --model mlp --exclude-subset 600" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("init, message", [
    ({"weights": "w.pt"}, "must be a .safetensors"),
    ({"weights": "w.safetensors", "reset": True}, "no field"),
    ({"weights": "w.safetensors", "reset_head": "yes"}, "reset_head must be true or false"),
])
def test_bad_init_is_one_line(init, message, tmp_path):
    with pytest.raises(InvalidConfigError, match=message):
        load_bench_config({**config("x"), "init": init})
    with pytest.raises(InvalidConfigError, match="once"):
        load_bench_config({**config("w.safetensors"), "model_kwargs": {"weights": "w.safetensors"}})


def test_shipped_pretrained_config(tmp_path, monkeypatch):
    import unlearnkit.pretraining as pretraining

    monkeypatch.chdir(tmp_path)  # not from a source checkout
    monkeypatch.setattr(pretraining, "SHIPPED_WEIGHTS", tmp_path)  # as before the weights file is made
    c = load_bench_config("cifar10-pretrained")
    assert c.init["weights"].startswith("unlearnkit:") and c.init["reset_head"]
    assert c.dataset_args == {"subset": 10000} and set(c.scenarios) == {"random:0.1", "class:3"}
    assert {"finetune", "prune_finetune", "lora", "prune_lora", "rfa_lora", "pgu", "retrain", "l1_sparse", "salun",
            "scrub", "ssd", "random_label"} == set(c.methods)
    meta = {"recipe": c.recipe_for(0).to_dict()}
    for method in c.methods:
        assert c.method_config(method, meta) is not None, method
    with pytest.raises(Exception, match="unlearnkit pretrain --dataset cifar10 --model resnet20 --exclude-subset 10000"):
        c.init_record()
