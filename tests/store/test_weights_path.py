"""``model_args.weights`` (what retrain starts from) stays inside the checkpoint / store the user named."""

from __future__ import annotations

import json
import shutil

import pytest
from store_helpers import LOOSE

from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import Store
from unlearnkit.store.core import contained_weights


def with_weights(tmp_path, checkpoint, weights: str, name="ck"):
    ck = tmp_path / name
    shutil.copytree(checkpoint, ck)
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["model_args"]["weights"] = weights
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    return ck


def test_weights_outside_the_checkpoint_are_refused(tmp_path, checkpoint):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(checkpoint / "model.safetensors", outside)
    for weights in ("../outside.safetensors", str(outside), "/etc/passwd", "missing.safetensors"):
        ck = with_weights(tmp_path, checkpoint, weights, name=f"ck{abs(hash(weights))}")
        with pytest.raises(UnlearnkitError, match="is not a file inside"):
            Store.create(tmp_path / f"s{abs(hash(weights))}", ck, **LOOSE)


def test_weights_inside_the_checkpoint_travel_with_the_store_and_retrain_uses_them(tmp_path, checkpoint):
    ck = with_weights(tmp_path, checkpoint, "init.safetensors")
    shutil.copy(checkpoint / "model.safetensors", ck / "init.safetensors")
    st = Store.create(tmp_path / "s", ck, **LOOSE)
    assert (st.path / "initial_weights.safetensors").read_bytes() == (ck / "init.safetensors").read_bytes()
    assert st.info["model"]["model_args"]["weights"] == "initial_weights.safetensors"
    shutil.rmtree(ck)  # the store does not depend on the checkpoint any more
    assert st.request([1, 2], method="retrain", epochs=1).status == "applied"


def test_contained_weights(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x")
    meta = {"model_args": {"weights": "w.safetensors", "hidden": 3}}
    assert contained_weights(meta, tmp_path, "x")["model_args"]["weights"] == str((tmp_path / "w.safetensors").resolve())
    assert contained_weights({"model_args": {}}, tmp_path, "x") == {"model_args": {}}
    (tmp_path / "sub").mkdir()
    with pytest.raises(UnlearnkitError, match="not a file inside"):
        contained_weights({"model_args": {"weights": "../w.safetensors"}}, tmp_path / "sub", "store 'sub'")
