"""The runner's long trainings (original, oracle, sparse original) resume from their last epoch."""

from __future__ import annotations

import pytest
import torch

import unlearnkit as uk
import unlearnkit.training as training
from unlearnkit.bench import run_benchmark
from unlearnkit.bench.config import load_bench_config
from unlearnkit.checkpoint import read_meta
from unlearnkit.data.loading import num_batches
from unlearnkit.utils import package_version, stable_hash, state_dict_hash
from unlearnkit.workflow import train_original

CONFIG = {
    "name": "resume",
    "dataset": "digits",
    "model": "cnn",
    "model_kwargs": {"width": 8},
    "recipe": {"epochs": 2, "lr": 0.05, "batch_size": 64},
    "scenarios": ["class:3"],
    "methods": {"retrain": {}, "omp": {"sparse_epochs": 2, "epochs": 1, "lr": 0.01, "batch_size": 64}},
    "seeds": [0],
    "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def interrupt_training_at(monkeypatch, step: int) -> None:
    """Raise KeyboardInterrupt at the ``step``-th training forward (evaluation passes are not counted)."""
    calls = [0]
    real = training.forward

    def forward(model, x):
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == step:
                raise KeyboardInterrupt
        return real(model, x)

    monkeypatch.setattr(training, "forward", forward)


def test_interrupted_trainings_resume_from_their_last_epoch(tmp_path, monkeypatch, digits):
    out, cache = tmp_path / "out", tmp_path / "cache"
    per_epoch = num_batches(digits.train, 64)  # the original's and the sparse original's (all of D)
    retain_per_epoch = num_batches(uk.make_unlearning_data(digits.train, digits.test, "class:3").retain, 64)

    with monkeypatch.context() as m:  # 1: killed in the original's second epoch
        interrupt_training_at(m, per_epoch + 2)
        with pytest.raises(KeyboardInterrupt):
            run_benchmark(CONFIG, out, cache_dir=cache)
    (partial,) = (cache / "partial").iterdir()
    assert (partial / "fit0.pt").is_file() and not (cache / "originals").exists()

    with monkeypatch.context() as m:  # 2: the original resumes and finishes; killed in the oracle's second epoch
        interrupt_training_at(m, per_epoch + retain_per_epoch + 2)
        with pytest.raises(KeyboardInterrupt):
            run_benchmark(CONFIG, out, cache_dir=cache)
    assert not partial.exists()  # removed once the original was saved
    (original,) = (cache / "originals").iterdir()
    meta = read_meta(original)
    assert meta["resumed"] == [{"slot": 0, "epoch": 1, "epochs": 2}] and meta["train_seconds"] > 0

    with monkeypatch.context() as m:  # 3: the oracle resumes; killed in the sparse original's second epoch
        interrupt_training_at(m, retain_per_epoch + per_epoch + 2)
        with pytest.raises(KeyboardInterrupt):
            run_benchmark(CONFIG, out, cache_dir=cache)

    summary = run_benchmark(CONFIG, out, cache_dir=cache)  # 4: the sparse original resumes, then the rest
    assert summary.resumed == ["resuming omp sparse original seed 0 from epoch 1/2"]
    assert not summary.errors, summary.errors
    assert list((cache / "partial").iterdir()) == []
    (oracle,) = (cache / "oracles").iterdir()
    assert read_meta(oracle)["resumed"] == [{"slot": 0, "epoch": 1, "epochs": 2}]

    # the resumed original has the weights of one trained in one go; its cache key is the one of before
    config = load_bench_config(CONFIG)
    assert original.name == stable_hash({**config.original_key(0), "version": package_version()})
    model, _, _ = train_original("digits", "cnn", config.recipe_for(0), seed=0, device="cpu",
                                 model_kwargs={"width": 8})
    assert meta["weights_sha"] == state_dict_hash(model)
