"""unlearnkit pretrain (weights + sidecar, atomic, never replaces a file it did not write) and inits."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnkitError
from unlearnkit.pretraining import (apply_init, find_head, init_record, pretrain, read_provenance, save_pretrained,
                                    sidecar_path)
from unlearnkit.training import Recipe

TINY_RECIPE = Recipe(epochs=1, lr=0.05, batch_size=64)
DATA = dict(dataset="digits", dataset_args={"subset": 600}, model="mlp", model_kwargs={"hidden": 16})


def tiny_pretrained(path, seed=0):
    """A 1-epoch mlp pretrained on the digits images outside the 600-image subset, saved at ``path``."""
    model, provenance = pretrain("digits", "mlp", TINY_RECIPE, exclude_subset=600, seed=seed, device="cpu",
                                 model_kwargs={"hidden": 16})
    return model, save_pretrained(path, model, provenance)


def test_cli_pretrain_writes_weights_and_sidecar_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "w.safetensors"
    args = ["pretrain", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=16", "--exclude-subset", "600",
            "--epochs", "1", "--out", str(out), "-q"]
    assert main(args) == 0
    side = json.loads(sidecar_path(out).read_text())
    assert side["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert side["dataset"] == "digits" and side["excluded"] == {"subset": 600, "subset_seed": 0}
    assert side["num_images"] == 1348 - 600 and side["recipe"]["epochs"] == 1 and "torch" in side["versions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]  # no temporary files left
    sidecar_path(out).unlink()
    assert read_provenance(out)["excluded"] == side["excluded"]  # the header keeps the provenance too
    before = out.read_bytes()
    assert main(args) == 2 and out.read_bytes() == before  # refused without --overwrite
    assert main([*args, "--overwrite", "--seed", "1"]) == 0 and out.read_bytes() != before


def test_cli_pretrain_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    foreign = tmp_path / "mine.safetensors"
    foreign.write_bytes(b"a user's file")
    args = ["pretrain", "--dataset", "digits", "--model", "mlp", "--exclude-subset", "600", "--epochs", "1", "-q"]
    assert main([*args, "--out", str(foreign), "--overwrite"]) == 2
    assert foreign.read_bytes() == b"a user's file"
    (tmp_path / "new.json").write_text("{}")  # a foreign sidecar where ours would go
    assert main([*args, "--out", str(tmp_path / "new.safetensors")]) == 2
    assert (tmp_path / "new.json").read_text() == "{}" and not (tmp_path / "new.safetensors").exists()
    assert main([*args, "--out", str(tmp_path / "w.pt")]) == 2
    assert "must be a .safetensors" in capsys.readouterr().err


def test_a_failed_write_keeps_the_previous_weights(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    model, _ = tiny_pretrained(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_pretrained(path, nn.Linear(2, 2), {"dataset": "digits"})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.json", "w.safetensors"]


@pytest.mark.parametrize("name, kwargs", [("resnet20", {}), ("vit_tiny", dict(dim=48, depth=1, heads=4))])
def test_registry_models_get_their_head_reset(name, kwargs, tmp_path):
    torch.manual_seed(0)
    source = uk.create_model(name, num_classes=10, **kwargs)
    assert find_head(source) == "head"
    path = tmp_path / "w.safetensors"
    save_pretrained(path, source, {"dataset": "other"})
    torch.manual_seed(1)
    model = apply_init(uk.create_model(name, num_classes=10, **kwargs),
                       {"weights": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    for key, tensor in source.state_dict().items():
        if key != "head.bias":  # vit_tiny draws zeros for it
            assert torch.equal(model.state_dict()[key], tensor) != key.startswith("head."), key


def test_torchvision_style_head_and_a_model_without_one():
    class WithFc(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Linear(4, 4), nn.Linear(4, 3)

    assert find_head(WithFc()) == "fc"
    with pytest.raises(UnlearnkitError, match="give the model a `head` attribute.*reset_head: false") as info:
        find_head(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    assert "\n" not in str(info.value)


def test_apply_init_loads_the_body_and_keeps_a_fresh_head(tmp_path):
    path = tmp_path / "w.safetensors"
    pretrained, _ = tiny_pretrained(path)
    record = init_record({"weights": str(path)}, **DATA)
    torch.manual_seed(5)
    fresh = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    drawn = {k: v.clone() for k, v in fresh.state_dict().items()}
    apply_init(fresh, record)
    for key, tensor in fresh.state_dict().items():
        expected = drawn[key] if key.startswith("head.") else pretrained.state_dict()[key]
        assert torch.equal(tensor, expected), key
    assert not torch.equal(fresh.head.weight, pretrained.head.weight)
    kept = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    apply_init(kept, {**record, "reset_head": False})
    assert torch.equal(kept.head.weight, pretrained.head.weight)


def test_apply_init_refuses_another_architecture_or_a_changed_file(tmp_path):
    path = tmp_path / "w.safetensors"
    tiny_pretrained(path)
    record = init_record({"weights": str(path)}, **DATA)
    wider = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=32)
    with pytest.raises(UnlearnkitError, match="another architecture"):
        apply_init(wider, record)
    tiny_pretrained(path, seed=1)
    with pytest.raises(UnlearnkitError, match="changed since"):
        apply_init(uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16), record)


def test_init_record_names_the_command_and_refuses_overlapping_pretraining(tmp_path):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(UnlearnkitError, match="unlearnkit pretrain --dataset digits --model mlp --exclude-subset "
                                              "600 --model-arg hidden=16 --out") as info:
        init_record({"weights": str(missing)}, **DATA)
    assert "\n" not in str(info.value)
    path = tmp_path / "w.safetensors"
    tiny_pretrained(path)
    with pytest.raises(UnlearnkitError, match="would overlap the unlearning data"):
        init_record({"weights": str(path)}, **{**DATA, "dataset_args": {"subset": 800}})
    with pytest.raises(UnlearnkitError, match="no field"):
        init_record({"weights": str(path), "head": "fc"}, **DATA)


def test_cli_train_from_an_init_and_retrain_starts_there(tmp_path, monkeypatch):
    import unlearnkit.methods.retrain as retrain_module
    from unlearnkit.checkpoint import read_meta

    path = tmp_path / "w.safetensors"
    pretrained, _ = tiny_pretrained(path)
    original = tmp_path / "original"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=16", "--subset", "600",
                 "--epochs", "1", "--init", str(path), "--out", str(original), "-q"]) == 0
    assert read_meta(original)["init"]["head"] == "head"
    starts = []
    real = retrain_module.train
    monkeypatch.setattr(retrain_module, "train",
                        lambda model, *a, **k: (starts.append({n: t.clone() for n, t in model.state_dict().items()}),
                                                real(model, *a, **k))[1])
    assert main(["forget", "--checkpoint", str(original), "--method", "retrain", "--forget", "class:3",
                 "--set", "epochs=1", "--out", str(tmp_path / "retrain"), "-q"]) == 0
    for key, tensor in pretrained.state_dict().items():
        assert torch.equal(starts[0][key], tensor) != key.startswith("head."), key
    assert main(["train", "--dataset", "digits", "--keep-head", "--out", str(tmp_path / "x"), "-q"]) == 2
    # a store would retrain such a checkpoint from a fresh draw: refused until it carries the init
    assert main(["store-init", "--checkpoint", str(original), "--store", str(tmp_path / "store"), "-q"]) == 2
    assert not (tmp_path / "store").exists()


def test_cli_pretrain_with_resume_dir_continues_an_interrupted_pretraining(tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    import unlearnkit.training as training

    calls, real = [0], training.forward

    def forward_then_interrupt(model, x):
        calls[0] += 1
        if torch.is_grad_enabled() and calls[0] == 12 + 3:  # in the second of 2 epochs (748 images, 12 steps each)
            raise KeyboardInterrupt
        return real(model, x)

    args = ["pretrain", "--dataset", "digits", "--model", "mlp", "--model-arg", "hidden=16", "--exclude-subset", "600",
            "--epochs", "2", "--batch-size", "64", "-q"]
    resume = tmp_path / "partial"
    monkeypatch.setattr(training, "forward", forward_then_interrupt)
    assert main([*args, "--out", str(tmp_path / "a.safetensors"), "--resume-dir", str(resume)]) == 130
    assert "the last completed epoch is kept in" in capsys.readouterr().err
    assert (resume / "fit0.pt").is_file() and not (tmp_path / "a.safetensors").exists()
    steps = [0]

    def counted(model, x):
        steps[0] += torch.is_grad_enabled()
        return real(model, x)

    monkeypatch.setattr(training, "forward", counted)
    assert main([*args, "--out", str(tmp_path / "a.safetensors"), "--resume-dir", str(resume)]) == 0
    assert steps[0] == 12 and not resume.exists()  # only the second epoch was trained again
    monkeypatch.setattr(training, "forward", real)
    assert main([*args, "--out", str(tmp_path / "b.safetensors")]) == 0  # in one go
    resumed, one_go = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert resumed.keys() == one_go.keys() and all(torch.equal(resumed[k], one_go[k]) for k in resumed)
