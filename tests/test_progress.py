"""Progress: log lines when stderr is not a terminal (a batch job's log), nothing when quiet."""

import pytest

import unlearnkit as uk
from unlearnkit.progress import progress_bar, set_progress


@pytest.fixture
def progress_on():
    set_progress(True)
    yield
    set_progress(False)


def test_log_lines_when_stderr_is_not_a_terminal(progress_on, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_PROGRESS_SECONDS", "3600")
    with progress_bar(10, "step") as bar:
        for _ in range(10):
            bar.advance(1, status="loss 0.5")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("step: 1/10 (10%), ") and lines[0].endswith("loss 0.5")
    assert lines[-1].startswith("step: 10/10 (100%), ") and len(lines) == 2  # first step, end; none between


def test_a_training_loop_logs_its_progress(progress_on, capsys, monkeypatch, digits):
    monkeypatch.setenv("UNLEARNKIT_PROGRESS_SECONDS", "0")
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8)
    uk.train(model, digits.train, uk.Recipe(epochs=1, batch_size=256), description="train mlp")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 6 and all(line.startswith("train mlp: ") for line in lines)


def test_quiet_prints_nothing(capsys):
    set_progress(False)
    with progress_bar(3, "step") as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""
