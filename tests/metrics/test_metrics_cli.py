"""`unlearnkit eval` through `unlearnkit.cli.main([...])`."""

from __future__ import annotations

import json

import pytest

import unlearnkit as uk
from unlearnkit.cli import main
from unlearnkit.workflow import save_model, train_original


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    """A one-epoch MLP on digits, saved as a checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "original"
    model, meta, _ = train_original("digits", "mlp", uk.Recipe(epochs=1, batch_size=64), splits=digits)
    save_model(path, model, meta, {"seed": 0})
    return path


def test_eval_writes_json_and_prints_table(checkpoint, tmp_path, capsys):
    out = tmp_path / "ev.json"
    assert main(["eval", "-c", str(checkpoint), "-f", "class:3", "--out", str(out), "-q"]) == 0
    record = json.loads(out.read_text())
    assert record["schema_version"] == 1 and record["unlearnkit"] == uk.__version__ and record["seed"] == 0
    assert record["forget"]["spec"] == "class:3" and record["checkpoint"] == str(checkpoint)
    assert {"ua@1", "ra@1", "ta@1", "mia_efficacy@2", "mia_loss_auc@1"} <= set(record["metrics"])
    assert not any(k.startswith("gap_") for k in record["metrics"])
    printed = capsys.readouterr().out
    assert "mia_efficacy@2" in printed and "ua@1" in printed
    assert uk.Evaluation.from_dict(record).metrics == record["metrics"]


def test_eval_against_itself_has_zero_gap(checkpoint, tmp_path):
    out = tmp_path / "ev.json"
    assert main(["eval", "-c", str(checkpoint), "-r", str(checkpoint), "-f", "random:0.1", "--seed", "3",
                 "-o", str(out), "-q"]) == 0
    record = json.loads(out.read_text())
    assert record["seed"] == 3 and record["metrics"]["avg_gap@2"] == 0.0
    assert record["metrics"]["forget_agreement@1"] == 100.0


def test_forget_then_eval_attaches_the_run_cost(checkpoint, tmp_path):
    unlearned = tmp_path / "ft"
    assert main(["forget", "-c", str(checkpoint), "-m", "finetune", "-f", "class:3", "-o", str(unlearned),
                 "--set", "epochs=1", "-q", "--device", "cpu"]) == 0
    stored = json.loads((unlearned / "result.json").read_text())
    assert stored["evaluation"]["metrics"]["ra@1"] >= 0.0
    out = tmp_path / "ev.json"
    assert main(["eval", "-c", str(unlearned), "-r", str(checkpoint), "-f", "class:3", "-o", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["rte_seconds@1"] == stored["result"]["seconds"]
    assert metrics["sample_passes@1"] == stored["result"]["sample_passes"]
    # another request than the one the run was for: no cost attached
    assert main(["eval", "-c", str(unlearned), "-f", "class:4", "-o", str(out), "-q"]) == 2  # never overwritten
    assert main(["eval", "-c", str(unlearned), "-f", "class:4", "-o", str(out), "-q", "--overwrite"]) == 0
    assert "rte_seconds@1" not in json.loads(out.read_text())["metrics"]


@pytest.mark.parametrize("args, message", [
    (["-f", "class:99"], "outside the label range"),
    (["-f", "random:2"], "random:F"),
    (["-f", "class:3", "-r", "{missing}"], "missing"),
])
def test_eval_bad_input_exits_2_with_one_line(checkpoint, tmp_path, capsys, args, message):
    args = [a.replace("{missing}", str(tmp_path / "missing")) for a in args]
    out = tmp_path / "ev.json"
    assert main(["eval", "-c", str(checkpoint), *args, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and message in err and "\n" not in err
    assert not out.exists()


def test_eval_missing_checkpoint_exits_2(tmp_path, capsys):
    assert main(["eval", "-c", str(tmp_path / "nope"), "-f", "class:3", "-q"]) == 2
    assert capsys.readouterr().err.startswith("Error:")
