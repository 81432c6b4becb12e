"""Replacing a checkpoint: an atomic swap, with or without renameat2, and no temporaries left behind."""

import os

import pytest
import torch

import unlearnkit.checkpoint as checkpoint
from unlearnkit.checkpoint import read_meta, save_checkpoint
from unlearnkit.errors import UnlearnkitError


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_swaps_and_leaves_nothing(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    out = tmp_path / "ck"
    save_checkpoint(out, torch.nn.Linear(2, 2), {"seed": 0})
    save_checkpoint(out, torch.nn.Linear(2, 2), {"seed": 1})
    assert read_meta(out)["seed"] == 1 and os.listdir(tmp_path) == ["ck"]


def test_a_failed_second_rename_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    out = tmp_path / "ck"
    save_checkpoint(out, torch.nn.Linear(2, 2), {"seed": 0})
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def fail_on_the_new_one(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", fail_on_the_new_one)
    with pytest.raises(OSError):
        save_checkpoint(out, torch.nn.Linear(2, 2), {"seed": 1})
    assert read_meta(out)["seed"] == 0 and os.listdir(tmp_path) == ["ck"]


def test_temporaries_of_a_killed_write_are_removed_by_the_next(tmp_path):
    (tmp_path / ".ck.tmp-abc").mkdir()
    (tmp_path / ".ck.old-def").mkdir()
    save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2))
    assert os.listdir(tmp_path) == ["ck"]


def test_a_file_is_never_replaced_by_a_checkpoint(tmp_path):
    (tmp_path / "ck").write_text("mine")
    with pytest.raises(UnlearnkitError, match="exists and is not a directory"):
        save_checkpoint(tmp_path / "ck", torch.nn.Linear(2, 2))
    assert (tmp_path / "ck").read_text() == "mine" and os.listdir(tmp_path) == ["ck"]
