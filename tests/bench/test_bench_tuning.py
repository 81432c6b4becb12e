"""Defaults and tuned: a grid on validation seeds and a validation forget set, the choice stored, both tables."""

from __future__ import annotations

import json

import pytest

from unlearnkit.bench import load_bench_config, load_records, run_benchmark, write_report
from unlearnkit.bench.tuning import grid_points, validation_scenarios
from unlearnkit.errors import UnlearnkitError

GRID = {"finetune": {"lr": [0.0005, 0.05], "epochs": [1, 2]}}
CONFIG = {
    "name": "tuned", "dataset": "digits", "model": "cnn", "model_kwargs": {"width": 8},
    "recipe": {"epochs": 1, "lr": 0.05, "batch_size": 64}, "scenarios": ["class:3"],
    "methods": {"retrain": {}, "finetune": {"lr": 0.01, "epochs": 1}, "gradient_ascent": {"lr": 0.001}},
    "tuning": {"seeds": [7], "grid": GRID}, "seeds": [0], "device": "cpu",
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    summary = run_benchmark(CONFIG, out)
    assert not summary.errors, summary.errors
    return out, summary


def test_grid_runs_on_validation_seeds_and_forget_set_only(tuned):
    out, summary = tuned
    assert summary.originals_trained == 2  # reported seed 0, validation seed 7
    grid = load_records(out / "tuning")
    assert {r["seed"] for r in grid} == {7} and {r["scenario"] for r in grid} == {"class:4"}  # another class
    assert sum(r["method"].startswith("finetune~") for r in grid) == 4
    assert {r["seed"] for r in load_records(out)} == {0}  # the reported seeds never tune


def test_choice_is_the_lowest_validation_avg_gap_and_runs_on_the_reported_seeds(tuned):
    out, _ = tuned
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["grid"] == GRID and tuning["scenarios"] == {"class:3": "class:4"}
    points = [p for p in tuning["points"] if p["method"] == "finetune"]
    assert len(points) == 4 and all(p["avg_gap"] is not None for p in points)
    best = min(points, key=lambda p: (round(p["avg_gap"], 2), p["cost_fraction"]))
    chosen = tuning["choice"]["class:3"]["finetune"]
    assert chosen["point"] == best["point"]
    record = {r["method"]: r for r in load_records(out / "tuned")}["finetune"]
    assert record["seed"] == 0 and record["scenario"] == "class:3"
    assert (record["config"]["lr"], record["config"]["epochs"]) == (best["point"]["lr"], best["point"]["epochs"])
    assert "gradient_ascent" not in {r["method"] for r in load_records(out / "tuned")}  # no grid: defaults only


def test_report_shows_defaults_tuning_choice_and_tuned(tuned):
    out, _ = tuned
    md, html = write_report(out)
    text = md.read_text()
    for needle in ("## Defaults", "### Scenario `class:3`", "## Tuned", "### Tuning", "Validation seeds 7",
                   "(4 points)", "report_files/tuned_pareto_cost.png", "| gradient_ascent |"):
        assert needle in text, needle
    assert text.index("## Tuned") < text.rindex("| finetune |")
    assert html.read_text().count("data:image/png;base64,") == 8  # 4 plots, defaults and tuned


def test_rerun_resumes_everything(tuned):
    out, _ = tuned
    again = run_benchmark(CONFIG, out)
    assert not again.trained_anything and not again.errors


def test_validation_scenarios_default_to_another_class_and_another_draw():
    config = load_bench_config({**CONFIG, "scenarios": ["class:9", "random:0.1"]})
    assert validation_scenarios(config, 10) == {"class:9": "class:0", "random:0.1": "random:0.1"}
    assert len(grid_points(GRID["finetune"])) == 4


@pytest.mark.parametrize("tuning, message", [
    ({"seeds": [0], "grid": GRID}, "also reported seeds"),
    ({"seeds": [7], "grid": {"salun": {"lr": [0.1]}}}, "only methods of 'methods'"),
    ({"seeds": [7], "grid": {"retrain": {"lr": [0.1]}}}, "only methods of 'methods'"),
    ({"seeds": [7], "grid": {"finetune": {"lr": []}}}, "non-empty lists"),
    ({"seeds": [7], "grid": {"finetune": {"lr": [-1.0]}}}, "'lr' parameter"),
    ({"seeds": [7], "grid": GRID, "scenarios": {"class:3": "random:0.1"}}, "same kind"),
    ({"seeds": [7], "grid": GRID, "bogus": 1}, "Unknown field(s) 'bogus' in 'tuning'"),
])
def test_bad_tuning_is_one_line(tuning, message):
    with pytest.raises(UnlearnkitError) as info:
        load_bench_config({**CONFIG, "tuning": tuning})
    assert message in str(info.value) and "\n" not in str(info.value)
