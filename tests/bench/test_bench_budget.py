"""Equal budgets: epochs (steps) derived from one sample-pass budget; what each method got is recorded and shown."""

from __future__ import annotations

import pytest

from unlearnkit.bench import load_bench_config, load_records, run_benchmark, write_report
from unlearnkit.bench.budget import PLANS, apply_budget, budget_target
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import make_config

CONFIG = {
    "name": "budget", "dataset": "digits", "model": "cnn", "model_kwargs": {"width": 8},
    "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 64}, "scenarios": ["class:3"],
    "methods": {"retrain": {}, "finetune": {"lr": 0.01}, "gradient_ascent": {"lr": 0.001},
                "ssd": {}, "l1_sparse": {"epochs": 1}},
    "budget": {"sample_passes": 2500}, "seeds": [0], "device": "cpu",
}


@pytest.mark.parametrize("method", sorted(PLANS))
def test_every_planned_method_lands_within_ten_percent(method):
    config = make_config(method)
    config, plan = apply_budget(method, config, {}, 20000, n_retain=1200, n_forget=140)
    assert plan.how == "derived" and abs(plan.planned_passes - 20000) <= 2000
    assert getattr(config, plan.knob) == plan.value


def test_explicit_epochs_win_and_ssd_is_not_budgeted():
    config, plan = apply_budget("finetune", make_config("finetune", epochs=1), {"epochs": 1}, 20000, 1200, 140)
    assert (config.epochs, plan.how, plan.planned_passes) == (1, "set by the config", 1200)
    config, plan = apply_budget("ssd", make_config("ssd"), {}, 20000, 1200, 140)
    assert plan.knob is None and plan.how.startswith("not budgeted: no training")


def test_budget_as_a_fraction_of_retrain():
    retrain = make_config("retrain", epochs=10)
    assert budget_target({"retrain_fraction": 0.25}, retrain, 1000) == 2500
    assert budget_target({"sample_passes": 700}, retrain, 1000) == 700
    assert budget_target({}, retrain, 1000) is None


@pytest.mark.parametrize("budget", [{"sample_passes": 0}, {"sample_passes": 1.5}, {"epochs": 3},
                                    {"sample_passes": 10, "retrain_fraction": 0.1}, [1000]])
def test_bad_budget_is_one_line(budget):
    with pytest.raises(UnlearnkitError, match="'budget' (of a benchmark|parameter of BenchConfig) must be") as info:
        load_bench_config({**CONFIG, "budget": budget})
    assert "\n" not in str(info.value)


def test_benchmark_derives_epochs_and_reports_each_methods_share(tmp_path):
    summary = run_benchmark(CONFIG, tmp_path)
    assert not summary.errors, summary.errors
    records = {r["method"]: r for r in load_records(tmp_path)}
    for method in ("finetune", "gradient_ascent"):  # 2 epochs over D_r, 14 over D_f
        r = records[method]
        assert r["budget"]["how"] == "derived"
        assert abs(r["result"]["sample_passes"] - 2500) <= 250, (method, r["result"]["sample_passes"])
    assert records["gradient_ascent"]["config"]["epochs"] > 10  # the forget set is ~10x smaller than D_r
    assert records["l1_sparse"]["budget"]["how"] == "set by the config"
    assert records["ssd"]["budget"]["how"].startswith("not budgeted")
    assert "budget" not in records["retrain"]  # the oracle is the reference, not a contestant
    text = write_report(tmp_path)[0].read_text()
    assert "Of budget" in text and "Budget: 2,500 forward + backward sample passes" in text
    assert "epochs 1 set by the config" in text and "not budgeted: no training" in text
    assert not run_benchmark(CONFIG, tmp_path).trained_anything  # derived configs are stable: resumed
