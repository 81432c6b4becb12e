"""Distributed training on CPU: two processes over gloo (torchrun) match one process.

One ``torchrun --nproc_per_node 2`` launch runs ``dist_worker.py``; the single-process
reference runs here, without any distributed context (the plain loop).
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unlearnkit as uk
from unlearnkit import distributed as dist
from unlearnkit.errors import UnlearnkitError
from unlearnkit.training import accuracy, cross_entropy_step, fit, make_optimizer, predict_logits

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import dist_common as common  # noqa: E402

TOL = 1e-5


def _torchrun() -> list[str] | None:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("torchrun")
    if found:
        return [found]
    try:
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "torch.distributed.run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Launch the worker on 2 CPU processes (gloo) once; the per-rank results."""
    import torch.distributed as td

    if not td.is_available() or not td.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    launcher = _torchrun()
    if launcher is None:
        pytest.skip("torchrun (torch.distributed.run) is not available")
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", UNLEARNKIT_QUIET="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    cmd = [*launcher, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(HERE / "dist_worker.py"), str(out)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun timed out after 120 s: {(e.stderr or '')[-2000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def single():
    """The same run in one process with the plain loop (global batch 64 = one batch)."""
    assert dist.active() is None
    model = common.build_model(seed=0)
    train = common.train_subset()
    mask = common.make_mask(model, seed=100)  # what rank 0 drew
    common.finetune(model, train, mask)
    logits, labels = common.evaluate(model)
    f = common.features(train)
    return {"state": model.state_dict(), "mask": mask.trainable, "logits": logits, "labels": labels,
            "gram": f.T @ f, "special": common.special_state(train)}


def test_ranks_hold_identical_models(two_ranks):
    a, b = two_ranks
    assert (a["world"], b["world"]) == (2, 2)
    assert a["shard"] == (0, 501) and b["shard"] == (501, 1001)
    for name in a["state"]:
        assert torch.equal(a["state"][name], b["state"][name]), name


def test_distributed_finetune_matches_single_process(two_ranks, single):
    for res in two_ranks:
        for name, ref in single["state"].items():
            diff = (res["state"][name] - ref).abs().max().item()
            assert diff < TOL, f"{name}: max |distributed - single| = {diff:.2e}"
    changed = sum(not torch.equal(single["state"][n], common.build_model(0).state_dict()[n]) for n in single["state"])
    assert changed == len(single["state"])  # training did move every tensor


def test_mask_broadcast_from_rank0_and_enforced(two_ranks, single):
    init = common.build_model(seed=0).state_dict()
    for res in two_ranks:
        for name, ref in single["mask"].items():
            assert torch.equal(res["mask"][name], ref), name
            frozen = ~ref
            assert torch.equal(res["state"][name][frozen], init[name][frozen]), f"{name}: frozen entries moved"


def test_gathered_logits_match_single_process(two_ranks, single):
    for res in two_ranks:
        assert res["logits"].shape == single["logits"].shape
        assert torch.equal(res["labels"], single["labels"])
        assert (res["logits"] - single["logits"]).abs().max().item() < 1e-4


def test_all_reduce_sum_of_gram_matrices(two_ranks, single):
    for res in two_ranks:
        assert torch.allclose(res["gram"], single["gram"], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("part", ["pgu_grams", "pgu_traces", "fisher", "salun_grads"])
def test_sharded_method_passes_match_single_process(two_ranks, single, part):
    """PGU's Grams, SSD's Fisher and SalUn's gradients: each rank passes a shard, the sums are all-reduced."""
    ref = single["special"][part]
    for res in two_ranks:
        got = res["special"][part]
        assert got.keys() == ref.keys()
        for name in ref:
            tol = 1e-9 if ref[name].dtype == torch.float64 else 1e-5
            scale = ref[name].abs().max().item() or 1.0
            diff = (got[name] - ref[name]).abs().max().item()
            assert diff <= tol * scale, f"{part} {name}: max |distributed - single| = {diff:.2e} (scale {scale:.2e})"
    assert any(v.abs().sum() > 0 for v in ref.values())


def test_method_passes_split_the_work(two_ranks, single):
    """Each rank passes about half the samples of those passes (not all of them, twice)."""
    total = single["special"]["samples_seen"]
    assert total == {"pgu": common.TRAIN_SIZE, "ssd": common.TRAIN_SIZE, "salun": 300}
    seen = [res["special"]["samples_seen"] for res in two_ranks]
    for part, n in total.items():
        assert sum(s[part] for s in seen) == n, part
        assert all(s[part] < 0.6 * n for s in seen), (part, seen)
    for res in (single, *two_ranks):  # the reported cost is the whole pass, as one process reports it
        assert res["special"]["samples_counted"] == {"ssd": total["ssd"], "salun": total["salun"]}


def test_bf16_mixed_precision_single_process_smoke(digits):
    model = common.build_model(seed=0)
    before = copy.deepcopy(model.state_dict())
    try:
        acc = dist.setup(device="cpu", mixed_precision="bf16")
        assert acc.mixed_precision == "bf16" and dist.world_size() == 1 and not dist.is_distributed()
        optimizer = make_optimizer(model.parameters(), "sgd", 0.05, momentum=0.9)
        counter = fit(model, common.train_subset(), cross_entropy_step, optimizer, epochs=1, batch_size=64,
                      generator=torch.Generator().manual_seed(0))
        logits, _ = predict_logits(model, digits.test)
    finally:
        dist.teardown()
    assert dist.active() is None
    assert counter.steps == 16 and counter.sample_passes == common.TRAIN_SIZE
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, weights stay fp32
    assert any(not torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert accuracy(model, digits.test) > 30  # one epoch in bf16 learns (48% measured; chance: 10%)


def test_no_context_is_the_plain_loop():
    """Without setup() nothing is active, and one-process helpers are identities."""
    assert dist.active() is None and dist.world_size() == 1 and dist.rank() == 0
    t = torch.arange(4.0)
    assert dist.all_reduce_sum(t) is t and torch.equal(t, torch.arange(4.0))
    train = common.train_subset()
    assert dist.shard_dataset(train) is train and dist.shard_bounds(10) == (0, 10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mixed_precision="fp8"), "mixed precision 'fp8'; allowed: no, bf16, fp16"),
    (dict(device="tpu"), "device 'tpu'"),
    (dict(device="cpu", mixed_precision="fp16"), "fp16"),
])
def test_setup_rejects_bad_input(kwargs, match):
    with pytest.raises(UnlearnkitError, match=match):
        dist.setup(**kwargs)
    assert dist.active() is None
