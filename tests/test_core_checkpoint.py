import json

import pytest
import torch

import unlearnkit as uk
from unlearnkit.checkpoint import load_weights
from unlearnkit.errors import UnlearnkitError


def test_round_trip_registered_model(tmp_path):
    model = uk.create_model("cnn", num_classes=10, in_channels=1, image_size=8, width=8)
    args = {"num_classes": 10, "in_channels": 1, "image_size": 8, "width": 8}
    uk.save_checkpoint(tmp_path / "ck", model, {"model": "cnn", "model_args": args, "num_classes": 10})
    loaded, meta = uk.load_checkpoint(tmp_path / "ck")
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    assert meta["model"] == "cnn" and "torch" in meta["environment"]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.json", "model.safetensors"]


def test_round_trip_custom_module(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    uk.save_checkpoint(tmp_path / "ck", model)
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    load_weights(other, tmp_path / "ck")
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(UnlearnkitError, match="holds a custom model"):
        uk.load_checkpoint(tmp_path / "ck")


def test_mismatched_architecture_or_class_count(tmp_path):
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    uk.save_checkpoint(tmp_path / "ck", model, {"model": "mlp", "num_classes": 10,
                                                "model_args": {"num_classes": 10, "image_size": 8, "in_channels": 1}})
    wrong_classes = uk.create_model("mlp", num_classes=5, in_channels=1, image_size=8)
    with pytest.raises(UnlearnkitError, match="'head.weight' has shape \\(10, 256\\) in the file but \\(5, 256\\)"):
        load_weights(wrong_classes, tmp_path / "ck")
    with pytest.raises(UnlearnkitError, match="does not match"):
        load_weights(uk.create_model("cnn", num_classes=10, in_channels=1), tmp_path / "ck")
    with pytest.raises(UnlearnkitError, match="has 10 classes but the data has 3"):
        uk.load_checkpoint(tmp_path / "ck", num_classes=3)


def test_not_a_checkpoint_and_corrupt_files(tmp_path):
    with pytest.raises(UnlearnkitError, match="is not an unlearnkit checkpoint"):
        uk.load_checkpoint(tmp_path)
    model = torch.nn.Linear(2, 2)
    uk.save_checkpoint(tmp_path / "ck", model, {"model": "mlp"})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UnlearnkitError, match="Cannot read weights"):
        load_weights(model, tmp_path / "ck")
    (tmp_path / "ck" / "checkpoint.json").write_text("{")
    with pytest.raises(UnlearnkitError, match="is not valid JSON"):
        uk.load_checkpoint(tmp_path / "ck")


def test_failed_save_leaves_no_half_directory(tmp_path, monkeypatch):
    import unlearnkit.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []


def test_metadata_is_plain_json(tmp_path):
    uk.save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2), {"seed": 3})
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert meta["seed"] == 3 and meta["format_version"] == 1
