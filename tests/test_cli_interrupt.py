"""Ctrl-C exits 130 with one line saying what was and was not written."""

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import unlearnkit
import unlearnkit.bench as bench
from unlearnkit.cli import main

SRC = str(Path(unlearnkit.__file__).resolve().parents[1])


def _wait_for_line(proc, prefix: str, timeout: float = 120.0) -> list[str]:
    """Read the child's stderr until a line starts with ``prefix``; returns the lines read."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(prefix):
                return lines
    proc.kill()
    raise AssertionError(f"no line starting with {prefix!r} from the child; got {lines!r}")


def test_sigint_during_train_exits_130_and_writes_nothing(tmp_path):
    out = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": SRC, "UNLEARNKIT_QUIET": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unlearnkit", "--threads", "1", "train", "--model", "mlp",
                             "--epochs", "100000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    _wait_for_line(proc, "train mlp: ")  # the progress log line: it is training now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted: nothing was written."
    assert "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []  # no checkpoint, no temporary beside it


def test_interrupted_bench_says_how_many_runs_were_stored(tmp_path, capsys, monkeypatch):
    def run_then_interrupt(config, out, *, on_result=None, **kwargs):
        on_result({"method": "finetune"})
        on_result({"method": "retrain"})
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_benchmark", run_then_interrupt)
    assert main(["bench", "--config", "smoke", "--out", str(tmp_path / "b"), "-q"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted: 2 new run(s) stored in {tmp_path / 'b'}; resume with the same command "
                   "(stored runs are reused).")


def test_keyboard_interrupt_inside_a_command_is_130_not_0(tmp_path, capsys, monkeypatch):
    import unlearnkit.workflow as workflow

    def interrupt_after_training(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "train_original", interrupt_after_training)
    assert main(["train", "--out", str(tmp_path / "ck"), "-q"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted: nothing was written."


def test_exit_codes(tmp_path, capsys):
    assert main(["methods"]) == 0
    assert main(["train", "--bogus"]) == 2  # usage error
    assert main(["train", "--model", "nope", "--out", str(tmp_path / "x")]) == 2  # UnlearnkitError
    assert main(["--threads", "0", "methods"]) == 2
    assert "--threads must be a whole number >= 1; got 0" in capsys.readouterr().err


def test_an_interrupt_while_writing_says_the_output_is_old_or_new(tmp_path, capsys, monkeypatch):
    import unlearnkit.workflow as workflow

    def interrupt_while_saving(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "save_model", interrupt_while_saving)
    out = tmp_path / "ck"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--out", str(out), "-q"]) == 130
    assert capsys.readouterr().err.strip() == (f"interrupted: {out} holds its previous contents or the complete "
                                               "new output, never a mix.")


def test_sigterm_during_bench_exits_143_and_keeps_the_partial_checkpoint(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("name: long\ndataset: digits\nmodel: mlp\nrecipe: {epochs: 100000, batch_size: 64}\n"
                      "scenarios: ['class:3']\nmethods: {retrain: {}}\nseeds: [0]\ndevice: cpu\n")
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": SRC, "UNLEARNKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unlearnkit", "--threads", "1", "bench", "--config", str(config),
                             "--out", str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    partial = out / "cache" / "partial"
    deadline = time.monotonic() + 120
    while not list(partial.glob("*/fit0.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until the original's first epoch checkpoint is there
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"terminated: 0 new run(s) stored in {out}; resume with the same command (stored runs are reused); a "
        f"training in progress resumes from its last completed epoch (kept in {partial}).")
    (unit,) = partial.iterdir()
    assert [p.name for p in unit.iterdir()] == ["fit0.pt"]  # no half-written temporary beside it


def test_train_with_resume_dir_continues_an_interrupted_training(tmp_path, capsys, monkeypatch):
    import torch

    import unlearnkit.training as training
    from unlearnkit.checkpoint import read_meta

    calls, real = [0], training.forward

    def forward_then_interrupt(model, x):
        calls[0] += 1
        if torch.is_grad_enabled() and calls[0] == 22 + 3:  # in the second of 2 epochs (22 steps each)
            raise KeyboardInterrupt
        return real(model, x)

    args = ["train", "--model", "mlp", "--epochs", "2", "--batch-size", "64", "-q"]
    resume = tmp_path / "partial"
    monkeypatch.setattr(training, "forward", forward_then_interrupt)
    assert main([*args, "--out", str(tmp_path / "a"), "--resume-dir", str(resume)]) == 130
    assert capsys.readouterr().err.strip() == (f"interrupted: the last completed epoch is kept in {resume}; the "
                                               "same command resumes from it.")
    assert (resume / "fit0.pt").is_file()
    monkeypatch.setattr(training, "forward", real)
    assert main([*args, "--out", str(tmp_path / "a"), "--resume-dir", str(resume)]) == 0
    assert not resume.exists()
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # in one go
    assert read_meta(tmp_path / "a")["weights_sha"] == read_meta(tmp_path / "b")["weights_sha"]
    assert main([*args, "--out", str(tmp_path / "c"), "--resume-dir", str(tmp_path / "c" / "x")]) == 2
    assert "is inside --out" in capsys.readouterr().err
