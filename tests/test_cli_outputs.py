"""--out never loses data: refused before any work starts, replaced only with --overwrite, atomically."""

import json
import os

import pytest

import unlearnkit.workflow as workflow
from unlearnkit.cli import main

TRAIN = ["train", "--model", "mlp", "--epochs", "1", "-q"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs") / "original"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as training or loading a checkpoint."""
    def refuse(*args, **kwargs):
        raise AssertionError("the output check must come before any work")

    monkeypatch.setattr(workflow, "train_original", refuse)
    monkeypatch.setattr(workflow, "load_original", refuse)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "\n" not in err and "Traceback" not in err
    return err


def _snapshot(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_a_directory_of_other_files_is_never_replaced(tmp_path, capsys, no_work):
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "notes.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        assert main([*TRAIN, "--out", str(mydata), *overwrite]) == 2
        assert "is a non-empty directory that is not an unlearnkit checkpoint" in _error(capsys)
    assert _snapshot(tmp_path) == before


def test_the_current_directory_and_its_parents_are_refused(tmp_path, capsys, monkeypatch, no_work):
    work = tmp_path / "work"
    work.mkdir()
    (work / "file.txt").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", str(work), "..", str(tmp_path)):
        assert main([*TRAIN, "--out", out, "--overwrite"]) == 2
        assert "is the current directory or one of its parents" in _error(capsys)
    assert (work / "file.txt").read_text() == "x"


def test_an_existing_file_is_refused_and_nothing_is_left_beside_it(tmp_path, capsys, no_work):
    target = tmp_path / "model"
    target.write_text("a file")
    assert main([*TRAIN, "--out", str(target), "--overwrite"]) == 2
    assert "is an existing file; `unlearnkit train` writes a directory" in _error(capsys)
    assert target.read_text() == "a file" and sorted(os.listdir(tmp_path)) == ["model"]


def test_a_parent_that_is_a_file_is_refused_before_training(tmp_path, capsys, no_work):
    (tmp_path / "file").write_text("x")
    assert main([*TRAIN, "--out", str(tmp_path / "file" / "ck")]) == 2
    assert "is a file, not a directory" in _error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_is_refused_before_training(tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([*TRAIN, "--out", str(locked / "ck")]) == 2
        assert "cannot be written" in _error(capsys)
    finally:
        locked.chmod(0o700)


def test_a_previous_output_is_replaced_only_with_overwrite_and_atomically(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main([*TRAIN, "--out", str(out)]) == 0
    first = (out / "checkpoint.json").read_text()
    assert main([*TRAIN, "--seed", "1", "--out", str(out)]) == 2
    assert "holds a previous `unlearnkit train` output; pass --overwrite" in _error(capsys)
    assert (out / "checkpoint.json").read_text() == first
    assert main([*TRAIN, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "checkpoint.json").read_text())["seed"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no hidden .ck.old or temporary left behind


def test_the_output_of_another_command_is_not_replaced(original, tmp_path, capsys):
    trained = tmp_path / "trained"
    assert main([*TRAIN, "--out", str(trained)]) == 0
    args = ["forget", "-c", str(original), "-m", "finetune", "-f", "class:3", "-s", "epochs=1", "-q"]
    assert main([*args, "-o", str(trained), "--overwrite"]) == 2
    assert "holds the output of `unlearnkit train`, not of `unlearnkit forget`" in _error(capsys)


def test_forget_never_writes_over_its_input(original, tmp_path, capsys, monkeypatch, no_work):
    link = tmp_path / "link"
    link.symlink_to(original)
    before = _snapshot(original)
    args = ["forget", "-c", str(original), "-m", "finetune", "-f", "class:3", "-q", "--overwrite"]
    for out in (original, link, original.parent / "." / original.name / ".." / original.name):
        assert main([*args, "-o", str(out)]) == 2
        assert "is (or contains) the input" in _error(capsys)
    assert main([*args, "-o", str(original.parent)]) == 2  # a directory that contains the input
    assert "is (or contains) the input" in _error(capsys)
    assert main([*args, "-o", str(original / "sub")]) == 2
    assert "is inside the input" in _error(capsys)
    monkeypatch.chdir(original)
    assert main(["forget", "-c", ".", "-f", "class:3", "-o", ".", "-q"]) == 2
    _error(capsys)
    assert _snapshot(original) == before


def test_compact_never_writes_over_its_input(original, capsys, no_work):
    assert main(["compact", "-c", str(original), "-o", str(original), "--overwrite"]) == 2
    assert "is (or contains) the input" in _error(capsys)


def test_eval_out_file_rules(original, tmp_path, capsys):
    base = ["eval", "-c", str(original), "-f", "class:3", "-q"]
    foreign = tmp_path / "notes.json"
    foreign.write_text("{}")
    assert main([*base, "-o", str(foreign), "--overwrite"]) == 2
    assert "exists and was not written by this command" in _error(capsys)
    assert foreign.read_text() == "{}"
    assert main([*base, "-o", str(original / "checkpoint.json"), "--overwrite"]) == 2
    assert "is a file of the input checkpoint" in _error(capsys)
    assert main([*base, "-o", str(tmp_path)]) == 2
    assert "is a directory; it must be a file path" in _error(capsys)
    out = tmp_path / "eval.json"
    assert main([*base, "-o", str(out)]) == 0
    capsys.readouterr()
    assert main([*base, "-o", str(out)]) == 2
    assert "holds a previous output; pass --overwrite" in _error(capsys)
    assert main([*base, "-o", str(out), "--overwrite"]) == 0


def test_prepare_out_refuses_a_foreign_file(original, tmp_path, capsys, no_work):
    foreign = tmp_path / "weights.safetensors"
    foreign.write_bytes(b"not ours")
    assert main(["prepare", "-c", str(original), "-o", str(foreign), "--overwrite", "-q"]) == 2
    assert "exists and was not written by this command" in _error(capsys)
    assert foreign.read_bytes() == b"not ours"


def test_save_checkpoint_refuses_a_directory_of_other_files(tmp_path):
    import torch

    from unlearnkit import save_checkpoint
    from unlearnkit.errors import UnlearnkitError

    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(UnlearnkitError, match="not an unlearnkit checkpoint; refusing to replace it"):
        save_checkpoint(tmp_path, torch.nn.Linear(2, 2))
    assert (tmp_path / "notes.txt").read_text() == "keep"
