"""Cost of the unlearning run, read from its ``UnlearnResult`` (or that result's ``to_dict()``).

RTE as in Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS
2023, but in seconds and including the method's ``prepare`` step. Peak memory is
the CUDA max allocated when the run used a GPU, else the process's peak CPU
resident set size (sampled; includes model and data already in memory). The
sample-pass count (forward + backward per sample, as counted by the training
loop) compares work across machines.
"""

from __future__ import annotations

from .registry import register_metric


def _number(ctx, name: str) -> float:
    value = ctx.result_field(name)
    return float("nan") if value is None else float(value)


@register_metric("rte_seconds", higher_is_better=False, requires=("result",), unit="s",
                 description="Wall-clock seconds of the unlearning run, prepare step included.")
def rte_seconds(ctx) -> float:
    return _number(ctx, "seconds")


@register_metric("peak_memory_mb", higher_is_better=False, requires=("result",), unit="MB",
                 description="Peak memory of the run in MiB: CUDA max allocated on GPU, else CPU RSS.")
def peak_memory_mb(ctx) -> float:
    device = str(ctx.result_field("device") or "")
    cuda = ctx.result_field("peak_cuda_memory_mb")
    if device.startswith("cuda") and cuda:
        return float(cuda)
    return _number(ctx, "peak_memory_mb")


@register_metric("trainable_params", higher_is_better=False, requires=("result",), unit="count",
                 description="Number of parameters the method may change.")
def trainable_params(ctx) -> float:
    return _number(ctx, "trainable_params")


@register_metric("sample_passes", higher_is_better=False, requires=("result",), unit="count",
                 description="Forward + backward sample passes the run used.")
def sample_passes(ctx) -> float:
    return _number(ctx, "sample_passes")
