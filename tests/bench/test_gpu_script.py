"""benchmarks/gpu_bench.py --tiny: the GPU suite (every method and scenario of unlearn-sparse-gpu) on the CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from unlearnkit.bench import load_bench_config, load_records

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_config_keeps_every_method_and_scenario_of_the_gpu_suite():
    gpu = load_bench_config("unlearn-sparse-gpu")
    tiny = _script().tiny_config(gpu.to_dict())
    assert list(tiny["methods"]) == list(gpu.methods) and tiny["scenarios"] == gpu.scenarios
    assert tiny["model"] == gpu.model == "resnet18" and tiny["data_on_device"] and tiny["channels_last"]
    assert gpu.dataset == "cifar10" and gpu.dataset_args == {} and gpu.test_subset is None  # all 50,000 images
    assert {"retrain", "finetune", "gradient_ascent", "random_label", "l1_sparse", "salun"} <= set(gpu.methods)


@pytest.mark.slow
def test_tiny_run_completes_every_method_and_resumes(tmp_path, capsys):
    script = _script()
    out = tmp_path / "tiny"
    assert script.main(["--tiny", "--out", str(out), "--device", "cpu"]) == 0
    records = load_records(out)
    gpu = load_bench_config("unlearn-sparse-gpu")
    expected = {(m, s) for m in [*gpu.methods, "original"] for s in gpu.scenarios}
    assert {(r["method"], r["scenario"]) for r in records} == expected
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["status"] != "ok"]
    assert (out / "report.md").is_file()
    assert script.main(["--tiny", "--out", str(out), "--device", "cpu"]) == 0  # resumed: nothing recomputed
    assert "0 run(s) computed" in capsys.readouterr().out
