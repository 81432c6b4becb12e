"""The benchmark runner and its reports: end to end on digits, cache, resume, failures, bad configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import unlearnkit
from unlearnkit.bench import load_bench_config, load_records, result_path, run_benchmark, write_report
from unlearnkit.cli import main
from unlearnkit.errors import InvalidConfigError, UnlearnkitError
from unlearnkit.methods import Method, MethodConfig, base as methods_base

TINY = {
    "name": "tiny",
    "dataset": "digits",
    "model": "cnn",
    "model_kwargs": {"width": 8},
    "recipe": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "scenarios": ["class:3"],
    "methods": {"finetune": {"lr": 0.01, "epochs": 1}, "retrain": {}, "not_a_method": {}},
    "seeds": [0],
    "device": "cpu",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Originals and oracles shared by every test here: trained once."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("bench-out")
    summary = run_benchmark(TINY, out, cache_dir=cache_dir)
    md, html = write_report(out)
    return out, summary, md, html


def test_end_to_end_writes_results_and_both_reports(first_run):
    out, summary, md, html = first_run
    assert (summary.originals_trained, summary.oracles_trained) == (1, 1)
    assert summary.computed == 3  # the original's evaluation, finetune, retrain
    records = {r["method"]: r for r in load_records(out)}
    assert set(records) == {"original", "finetune", "retrain", "not_a_method"}
    ft = records["finetune"]
    assert ft["status"] == "ok" and ft["config"]["epochs"] == 1 and len(ft["per_class_test_acc"]) == 10
    metrics = {k.split("@")[0]: v for k, v in ft["metrics"].items()}
    for key in ("ua", "ra", "ta", "avg_gap", "rte_seconds"):
        assert key in metrics
    retrain = {k.split("@")[0]: v for k, v in records["retrain"]["metrics"].items()}
    assert retrain["avg_gap"] == pytest.approx(0.0, abs=1e-9)  # the oracle compared with itself
    # a method listed but not registered is recorded, and the suite went on
    assert records["not_a_method"]["status"] == "error"
    assert records["not_a_method"]["error"]["type"] == "UnknownMethod"
    text = md.read_text()
    for needle in ("## Scenario `class:3`", "| finetune |", "| retrain |", "Avg.Gap", "Speed-up", "## Environment",
                   "report_files/avg_gap_vs_time.png", "not_a_method"):
        assert needle in text
    assert (out / "report_files" / "forget_vs_retain.png").stat().st_size > 1000
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 4  # Pareto, frontier, forget vs retain, per-class
    assert "report_files/" not in page  # self-contained
    assert "<b>" in page  # the best cell is bold


def test_second_run_hits_the_cache(first_run, cache_dir):
    out, *_ = first_run
    path = result_path(out, "class:3", "finetune", 0)
    before = path.stat().st_mtime_ns
    summary = run_benchmark(TINY, out, cache_dir=cache_dir)
    assert not summary.trained_anything
    assert summary.cached == 3
    assert path.stat().st_mtime_ns == before


def _fake_method(monkeypatch, name: str, fail: bool):
    @dataclass(kw_only=True)
    class FakeConfig(MethodConfig):
        pass

    class Fake(Method):
        needs_forget = False

        def _unlearn(self, model, retain, forget):
            if fail:
                raise RuntimeError("boom: this method always fails")
            return model

    Fake.name, Fake.config_class, FakeConfig.method = name, FakeConfig, name
    monkeypatch.setitem(methods_base._METHODS, name, methods_base.MethodSpec(name, Fake, FakeConfig, "test"))


def test_failing_method_is_recorded_and_only_new_methods_run(first_run, cache_dir, monkeypatch):
    out, *_ = first_run
    _fake_method(monkeypatch, "always_fails", fail=True)
    _fake_method(monkeypatch, "keeps_model", fail=False)
    config = {**TINY, "methods": {**TINY["methods"], "always_fails": {}, "keeps_model": {}}}
    summary = run_benchmark(config, out, cache_dir=cache_dir)
    assert summary.originals_trained == summary.oracles_trained == 0
    assert summary.cached == 3  # original, finetune, retrain reused
    assert summary.computed == 1  # keeps_model ran after always_fails failed
    record = json.loads(result_path(out, "class:3", "always_fails", 0).read_text())
    assert record["status"] == "error"
    assert record["error"]["type"] == "RuntimeError" and "boom" in record["error"]["message"]
    md, _ = write_report(out)
    assert "always_fails` seed 0: RuntimeError: boom" in md.read_text()


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes(tmp_path, cache_dir):
    out = tmp_path / "out"
    seen = []

    def stop_after_first(record):
        seen.append(record["method"])
        raise Interrupt

    with pytest.raises(Interrupt):
        run_benchmark(TINY, out, cache_dir=cache_dir, on_result=stop_after_first)
    assert len(load_records(out)) == 1
    summary = run_benchmark(TINY, out, cache_dir=cache_dir)
    assert summary.cached == 1 and summary.computed == 2
    assert summary.originals_trained == summary.oracles_trained == 0
    # --overwrite recomputes everything, originals and oracles included
    again = run_benchmark({**TINY, "methods": {"retrain": {}}}, out, cache_dir=cache_dir, overwrite=True)
    assert (again.originals_trained, again.oracles_trained, again.cached) == (1, 1, 0)


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "Unknown parameter(s) 'bogus'"),
    ({"dataset": "imagenet"}, "Unknown dataset 'imagenet'"),
    ({"model": "resnet9000"}, "Unknown model 'resnet9000'"),
    ({"scenarios": ["class:x"]}, "Scenario 'class:x' is not a forget spec"),
    ({"scenarios": ["random:1.5"]}, "Scenario 'random:1.5'"),
    ({"recipe": {"lr": -1.0}}, "'lr' parameter of Recipe"),
    ({"methods": {"finetune": {"nope": 1}}}, "Benchmark method 'finetune'"),
    ({"seeds": []}, "'seeds'"),
])
def test_bad_config_is_a_one_line_error(change, message):
    with pytest.raises(UnlearnkitError) as info:
        load_bench_config({**TINY, **change})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_bad_config_file_exits_2_with_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: digits\nunknown_field: 3\n")
    assert main(["bench", "--config", str(path), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown_field" in err
    assert main(["bench", "--config", "no-such-config", "--out", str(tmp_path / "o"), "-q"]) == 2
    assert "smoke" in capsys.readouterr().err  # lists the shipped configs
    assert main(["report", str(tmp_path / "empty")]) == 2


def test_cli_report_rewrites_reports(first_run, capsys):
    out, *_ = first_run
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()


def test_configs_ship_inside_the_package():
    from unlearnkit.bench.config import SHIPPED_CONFIGS, shipped_configs

    assert {"smoke", "cifar10-cpu", "cifar10-full", "cifar10-gpu"} <= set(shipped_configs())
    assert SHIPPED_CONFIGS.is_relative_to(Path(unlearnkit.__file__).parent)  # found from any working directory


@pytest.mark.parametrize("name", ["smoke", "cifar10-cpu", "cifar10-full"])
def test_shipped_configs_are_valid(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not from a source checkout
    config = load_bench_config(name)
    assert config.name == name and "retrain" in config.methods and config.seeds


def test_own_benchmarks_folder_comes_first(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "smoke.yaml").write_text("name: my-smoke\ndataset: digits\n")
    monkeypatch.chdir(tmp_path)
    assert load_bench_config("smoke").name == "my-smoke"


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("methods: [unclosed\n")
    with pytest.raises(UnlearnkitError, match="Cannot parse benchmark config") as info:
        load_bench_config(path)
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidConfigError):
        load_bench_config({**TINY, "methods": [{"a": {}, "b": {}}]})


def test_test_subset_is_class_balanced():
    from unlearnkit.bench.runner import BenchRunner
    from unlearnkit.data import dataset_labels

    runner = BenchRunner(load_bench_config({**TINY, "test_subset": 100}), "unused-out")
    labels = dataset_labels(runner.splits.test)
    assert len(labels) == 100 and labels.bincount().tolist() == [10] * 10


VARIANTS = {**TINY, "name": "two-models", "methods": {"finetune": {"lr": 0.01, "epochs": 1}, "retrain": {}},
            "variants": {"cnn8": {}, "mlp": {"model": "mlp", "model_kwargs": {"hidden": 16},
                                             "methods": {"retrain": {}, "lora": {"epochs": 1}}}}}


def test_variants_run_into_their_folders_with_one_cache_and_one_report(tmp_path, cache_dir):
    out = tmp_path / "variants"
    summary = run_benchmark(VARIANTS, out)
    assert summary.originals_trained == 2 and not summary.errors  # cnn (width 8) and mlp
    assert {r["method"] for r in load_records(out / "cnn8")} == {"original", "finetune", "retrain"}
    assert {r["method"] for r in load_records(out / "mlp")} == {"original", "lora", "retrain"}
    assert len(list((out / "cache" / "originals").iterdir())) == 2  # one shared cache, not one per variant
    assert not (out / "cnn8" / "cache").exists()
    md, html = write_report(out)
    text = md.read_text()
    for needle in ("# unlearnkit benchmark: two-models", "## Variant `cnn8`", "## Variant `mlp`",
                   "### Scenario `class:3`", "| lora |", "report_files/mlp_avg_gap_vs_time.png"):
        assert needle in text, needle
    assert (out / "report_files" / "cnn8_forget_vs_retain.png").is_file()
    assert (out / "mlp" / "report.md").is_file()  # each variant also has its own report
    assert html.read_text().count("data:image/png;base64,") == 8
    again = run_benchmark(VARIANTS, out)
    assert not again.trained_anything and again.cached == 6


@pytest.mark.parametrize("variants, message", [
    ({"../up": {}}, "Variant label '../up'"),
    ({"cache": {}}, "Variant label 'cache'"),
    ({"a": {"model": "no_such_model"}}, "Variant 'a': Unknown model 'no_such_model'"),
    ({"a": {"variants": {}}}, "cannot set 'variants'"),
    ({"a": ["model"]}, "must be a mapping"),
])
def test_bad_variants_are_one_line_errors(variants, message):
    with pytest.raises(UnlearnkitError) as info:
        load_bench_config({**TINY, "variants": variants})
    assert message in str(info.value) and "\n" not in str(info.value)
