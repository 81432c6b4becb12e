"""The runner's cache keys and fingerprints stay what they were: a running benchmark reuses its cache.

The expected values were computed on the runner before its trainings were factored into one helper;
if one changes, every cached original, oracle, sparse original and result of a running benchmark is
recomputed, so a change here must be deliberate (and said in the commit).
"""

from __future__ import annotations

import json

import pytest

import unlearnkit.bench.runner as runner
import unlearnkit.checkpoint as checkpoint
from unlearnkit.bench import run_benchmark
from unlearnkit.checkpoint import read_meta
from unlearnkit.utils import stable_hash

CONFIG = {
    "name": "keys",
    "dataset": "digits",
    "model": "mlp",
    "model_kwargs": {"hidden": 16},
    "recipe": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "scenarios": ["class:3"],
    "methods": {"retrain": {}, "finetune": {"epochs": 1}, "omp": {"sparse_epochs": 1, "epochs": 1, "lr": 0.01}},
    "seeds": [0],
    "device": "cpu",
}

EXPECTED_CACHE = {"originals": ["535c22523baa250b"], "oracles": ["fd6ff3680712f0f6"],
                  "sparse_originals": ["b14329abd7dacdb1"]}
EXPECTED_FINGERPRINTS = {"finetune": "063443fd443f385d", "omp": "3a1776ee2e0b893a",
                         "omp_sparse_original": "777f7249e2892298", "original": "9a59ec4eab79a139",
                         "retrain": "fa4c4d8e34c88f31"}


@pytest.mark.usefixtures("one_thread")
def test_cache_keys_and_fingerprints_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "package_version", lambda: "0.0.0+keys")  # keys do not move with releases
    # nor with the float results of another CPU: the original's weights hash (in every fingerprint) of its
    # tensor names and shapes only
    monkeypatch.setattr(checkpoint, "state_dict_hash",
                        lambda state: stable_hash([(k, list(v.shape)) for k, v in state.items()]))
    cache = tmp_path / "cache"
    summary = run_benchmark(CONFIG, tmp_path / "out", cache_dir=cache)
    assert not summary.errors, summary.errors
    folders = {kind: sorted(p.name for p in (cache / kind).iterdir()) for kind in EXPECTED_CACHE}
    fingerprints = {p.parent.name: json.loads(p.read_text())["fingerprint"]
                    for p in sorted((tmp_path / "out" / "results").glob("*/*/seed0.json"))}
    assert folders == EXPECTED_CACHE
    assert fingerprints == EXPECTED_FINGERPRINTS
    common = {"bench_key", "dataset", "environment", "format_version", "model", "model_args", "model_class",
              "num_classes", "recipe", "weights_sha"}
    own = {"originals": {"seed", "test_accuracy", "train_seconds"}, "oracles": {"forward_passes", "oracle", "result"},
           "sparse_originals": {"sparse_original"}}
    for kind, (key,) in folders.items():
        meta = read_meta(cache / kind / key)
        assert set(meta) == common | own[kind], kind
        assert meta["bench_key"] == key
    again = run_benchmark(CONFIG, tmp_path / "out", cache_dir=cache)
    assert (again.originals_trained, again.oracles_trained, again.sparse_originals_trained, again.computed) == (
        0, 0, 0, 0)


@pytest.mark.usefixtures("one_thread")
def test_a_cached_only_runner_loads_what_a_run_cached_and_trains_nothing(tmp_path):
    from unlearnkit.bench import load_bench_config
    from unlearnkit.bench.runner import BenchRunner
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.workflow import forget_data

    config = load_bench_config({**CONFIG, "methods": {"retrain": {}}})
    empty = BenchRunner(config, tmp_path / "a", cache_dir=tmp_path / "empty", cached_only=True)
    with pytest.raises(UnlearnkitError, match="not in the cache"):
        empty.original(0)
    assert not (tmp_path / "empty" / "originals").exists() and empty.summary.originals_trained == 0

    run_benchmark(config, tmp_path / "b", cache_dir=tmp_path / "cache")
    cached = BenchRunner(config, tmp_path / "c", cache_dir=tmp_path / "cache", cached_only=True)
    _, meta, key = cached.original(0)
    cached.oracle(meta, key, "class:3", 0, forget_data(cached.splits, "class:3", 0))
    assert cached.summary.originals_trained == cached.summary.oracles_trained == 0
