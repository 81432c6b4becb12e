"""The benchmark builds OMP's sparse original once per original, caches it, and reports it as its own row."""

from __future__ import annotations

import torch

from unlearnkit.bench import load_records, run_benchmark, write_report
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.data import load_dataset

CONFIG = {
    "name": "omp-sparse",
    "dataset": "digits",
    "model": "cnn",
    "model_kwargs": {"width": 8},
    "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 64},
    "scenarios": ["class:3"],
    "methods": {"retrain": {}, "omp": {"sparse_epochs": 1, "epochs": 1, "lr": 0.01}},
    "seeds": [0],
    "device": "cpu",
}


def test_sparse_original_is_cached_once_and_reported_apart(tmp_path):
    cache = tmp_path / "cache"
    first = run_benchmark(CONFIG, tmp_path / "a", cache_dir=cache)
    assert first.sparse_originals_trained == 1
    assert not first.errors, first.errors
    records = {(r["scenario"], r["method"]): r for r in load_records(tmp_path / "a")}
    for scenario in CONFIG["scenarios"]:
        row = records[(scenario, "omp_sparse_original")]
        assert row["status"] == "ok" and row["result"]["prepare_seconds"] > 0
        assert row["result"]["sparse_original"]["pruning"]["total_sparsity"] > 0.94
        omp = records[(scenario, "omp")]
        assert omp["status"] == "ok"
        assert omp["result"]["info"]["sparse_original"] == {"given": True}  # not rebuilt per request
    # the cached sparse model is what the request started from: pruned entries still zero in it
    (path,) = (cache / "sparse_originals").iterdir()
    sparse, meta = load_checkpoint(path, num_classes=10)
    assert meta["sparse_original"]["trained_on"] == len(load_dataset("digits").train)  # all of D
    zero = sum(int((m.weight == 0).sum()) for m in sparse.modules() if isinstance(m, torch.nn.Conv2d))
    assert zero > 0

    md, _ = write_report(tmp_path / "a")
    text = md.read_text()
    assert "omp sparse original (before)" in text

    again = run_benchmark(CONFIG, tmp_path / "a", cache_dir=cache)  # resumed: nothing trained or recomputed
    assert (again.sparse_originals_trained, again.originals_trained, again.computed) == (0, 0, 0)
