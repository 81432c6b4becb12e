"""Cost as a fraction of retrain: forward-only passes counted by a hook, fractions per seed, the Pareto plot."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from unlearnkit.bench import load_records, result_path, run_benchmark, write_report
from unlearnkit.bench.report import cost_fractions, pareto_front, summarise
from unlearnkit.bench.runner import ForwardOnlyCounter

TINY = {
    "name": "cost", "dataset": "digits", "model": "cnn", "model_kwargs": {"width": 8},
    "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 64}, "scenarios": ["random:0.1"],
    "methods": {"retrain": {}, "finetune": {"lr": 0.01, "epochs": 1}, "pgu": {"max_steps": 4}},
    "seeds": [0], "device": "cpu",
}


def test_forward_only_counter_counts_no_grad_passes_of_copies_and_detaches():
    model = nn.Linear(4, 2)
    counter = ForwardOnlyCounter()
    counter.attach(model)
    work = copy.deepcopy(model)  # what a method does with its input
    work(torch.zeros(5, 4))  # forward + backward material: not counted here
    with torch.no_grad():
        work(torch.zeros(3, 4))
        model(torch.zeros(2, 4))
    assert counter.samples == 5
    counter.detach(model, work)
    with torch.no_grad():
        work(torch.zeros(7, 4))
    assert counter.samples == 5 and not work._forward_pre_hooks and not model._forward_pre_hooks


def test_cost_fraction_weighs_forward_only_passes_a_third():
    retrain = {"sample_passes": 3000.0, "seconds": 10.0}
    assert cost_fractions({"sample_passes": 300.0, "forward_passes": 900.0, "seconds": 1.0}, retrain) == \
        pytest.approx({"cost_fraction": 0.2, "time_fraction": 0.1})
    assert cost_fractions({"sample_passes": 300.0}, retrain) == pytest.approx({"cost_fraction": 0.1})
    assert cost_fractions({"sample_passes": 300.0}, None) == {}


def test_pareto_front_keeps_the_non_dominated():
    points = [("a", 0.1, 5.0), ("b", 0.2, 6.0), ("c", 0.3, 2.0), ("d", 0.05, 9.0)]
    assert [p[0] for p in pareto_front(points)] == ["d", "a", "c"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cost")
    summary = run_benchmark(TINY, out)
    assert not summary.errors, summary.errors
    return out


def test_rows_carry_cost_fractions_of_their_seeds_oracle(run):
    records = {r["method"]: r for r in load_records(run)}
    retrain_passes = records["retrain"]["result"]["sample_passes"]
    from unlearnkit.data import load_dataset
    from unlearnkit.workflow import forget_data

    data = forget_data(load_dataset("digits"), "random:0.1", 0)
    assert retrain_passes == 2 * len(data.retain)  # the recipe's 2 epochs over the retain set
    pgu = records["pgu"]["result"]
    assert pgu["forward_passes"] > len(data.retain) + len(data.forget)  # the Gram pass alone, then the checks
    assert records["finetune"]["result"]["forward_passes"] == 0  # the data check's probe sample is not the method's
    s = summarise(list(records.values()))["random:0.1"]["methods"]
    ft = s["finetune"]["agg"]
    ft_result = records["finetune"]["result"]
    assert ft["cost_fraction"]["mean"] == pytest.approx(
        (ft_result["sample_passes"] + ft_result["forward_passes"] / 3)
        / (retrain_passes + records["retrain"]["result"]["forward_passes"] / 3))
    assert ft["time_fraction"]["mean"] == pytest.approx(ft_result["seconds"] / records["retrain"]["result"]["seconds"])
    assert s["retrain"]["agg"]["cost_fraction"]["mean"] == pytest.approx(1.0)
    retrain_work = retrain_passes + records["retrain"]["result"]["forward_passes"] / 3
    expected = (pgu["sample_passes"] + pgu["forward_passes"] / 3) / retrain_work
    assert s["pgu"]["agg"]["cost_fraction"]["mean"] == pytest.approx(expected)


def test_report_shows_cost_columns_originals_fit_gap_to_close_and_pareto(run):
    md, html = write_report(run)
    text = md.read_text()
    for needle in ("Cost ÷ retrain", "Time ÷ retrain", "Passes (f+b)", "Fwd-only",
                   "Original: retain (train) accuracy", "test accuracy", "Gap to close",
                   "report_files/pareto_cost.png"):
        assert needle in text, needle
    assert (run / "report_files" / "pareto_cost.png").stat().st_size > 1000
    assert "Gap to close" in html.read_text()


def test_records_written_before_cost_counting_still_report(run, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    for method in ("finetune", "pgu", "retrain"):
        path = result_path(old, "random:0.1", method, 0)
        record = json.loads(path.read_text())
        record["result"].pop("forward_passes")
        path.write_text(json.dumps(record))
    md, _ = write_report(old)
    assert "| finetune |" in md.read_text()
    again = run_benchmark(TINY, old)  # and the cache still holds them: nothing recomputed
    assert not again.trained_anything
