"""One process-wide execution context: device, data-parallel processes, mixed precision.

The engine is Hugging Face Accelerate: it reads what ``torchrun`` / ``accelerate
launch`` put in the environment (rank, world size, master address), initialises the
process group (NCCL on GPUs, gloo on CPU), pins each process to its GPU
(``cuda`` = ``cuda:LOCAL_RANK``) and provides autocast and the fp16 gradient scaler.
We picked Accelerate over Lightning Fabric because it is a thin layer over plain
``torch.distributed`` that leaves our own loop in charge.

``setup(device=..., mixed_precision=...)`` creates the context; without it, every
loop runs exactly as before (one process, full precision, bit for bit). Under a
multi-process launcher the context is created on first use, so ``torchrun ... -m
unlearnkit.cli train ...`` needs no flag. What the shared loop ``training.fit`` does
with a context (our choices, documented in docs/scaling.md):

* **Data parallel by sharding the global batch.** Every rank draws the same global
  batch (same seed, same shuffle, same augmentation) and keeps its contiguous slice
  (``batch_size`` is the global batch). The loss of a rank is rescaled by
  ``n_rank * world / n_global`` so that the average of the ranks' gradients is the
  gradient of the global-batch mean, also for a last batch that does not split evenly.
* **Gradient synchronisation by one all-reduce per step** of the flattened gradients,
  not by wrapping the model in ``DistributedDataParallel``: the step functions of the
  methods call submodules, run several forwards per step (teacher, adapter disabled)
  and leave parameters unused, which DDP rejects; the plain module also keeps
  ``step_fn(model, x, y)`` and the returned model unchanged. The cost is no overlap of
  communication with the backward pass.
* **Same model on every rank:** parameters and buffers are broadcast from rank 0 when
  ``fit`` starts, buffers (BatchNorm statistics, computed per shard as in DDP) again
  when it ends; a ``ParamMask`` is broadcast from rank 0.
* **Evaluation** (``predict_logits``): each rank runs its contiguous part of the
  dataset and the logits are all-gathered, so every rank gets all of them in order.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .errors import UnlearnkitError

PRECISIONS = ("no", "bf16", "fp16")
_CONTEXT: "Context | None" = None


def _launched_multiprocess() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _env_precision() -> str | None:
    value = os.environ.get("UNLEARNKIT_MIXED_PRECISION") or os.environ.get("ACCELERATE_MIXED_PRECISION")
    return value.lower() if value else None


class Context:
    """The active execution context (use the module-level functions rather than this class)."""

    def __init__(self, accelerator, mixed_precision: str):
        self.accelerator = accelerator
        self.mixed_precision = mixed_precision
        self.rank = accelerator.process_index
        self.world_size = accelerator.num_processes
        self.device = accelerator.device
        self.scaler = getattr(accelerator, "scaler", None)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---- collectives (no-ops in one process) ---------------------------------------------
    def _collective(self, tensor: torch.Tensor, op: Callable[[torch.Tensor], None]) -> torch.Tensor:
        if not self.distributed:
            return tensor
        if tensor.device == self.device or self.device.type == "cpu" and tensor.device.type == "cpu":
            buf = tensor if tensor.is_contiguous() else tensor.contiguous()
        else:  # NCCL needs the tensor on this rank's GPU
            buf = tensor.to(self.device).contiguous()
        op(buf)
        if buf is not tensor:
            with torch.no_grad():
                tensor.copy_(buf)
        return tensor

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as td

        return self._collective(tensor, lambda t: td.all_reduce(t, op=td.ReduceOp.SUM))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        import torch.distributed as td

        return self._collective(tensor, lambda t: td.broadcast(t, src=src))

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate along dim 0 each rank's tensor, in rank order (sizes may differ by rank)."""
        if not self.distributed:
            return tensor
        import torch.distributed as td

        local = tensor.to(self.device).contiguous()
        sizes = torch.zeros(self.world_size, dtype=torch.long, device=self.device)
        sizes[self.rank] = local.shape[0]
        self.all_reduce_sum(sizes)
        longest = int(sizes.max())
        padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        td.all_gather(parts, padded)
        return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)]).to(tensor.device)

    def barrier(self) -> None:
        if self.distributed:
            self.accelerator.wait_for_everyone()

    # ---- what the shared loop calls ---------------------------------------------------------
    def shard_bounds(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [start, stop) of ``n`` items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def autocast(self):
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.no_grad()
    def sync_module(self, model: nn.Module, *, buffers_only: bool = False) -> None:
        if not self.distributed:
            return
        tensors = [] if buffers_only else [p.data for p in model.parameters()]
        tensors += [b for b in model.buffers() if b.is_floating_point() or b.dtype in (torch.long, torch.int)]
        for t in tensors:
            self.broadcast(t)

    def sync_mask(self, mask) -> None:
        """Make a ``ParamMask`` (trainable entries and frozen values) identical to rank 0's."""
        if not self.distributed or mask is None:
            return
        for name in mask.trainable:
            flags = mask.trainable[name].to(torch.uint8)
            self.broadcast(flags)
            mask.trainable[name] = flags.to(torch.bool)
            self.broadcast(mask.frozen[name])

    def backward_step(self, model: nn.Module, step_fn, x: torch.Tensor, y: torch.Tensor,
                      optimizer: torch.optim.Optimizer, description: str) -> torch.Tensor:
        """Forward on this rank's shard, backward, gradients averaged over ranks; the global loss."""
        from .training import check_finite

        n = len(x)
        start, stop = self.shard_bounds(n)
        scale = (stop - start) * self.world_size / max(n, 1)
        if stop == start:  # fewer samples than ranks: run one sample with zero weight
            start, stop = 0, 1
        with self.autocast():
            loss = step_fn(model, x[start:stop], y[start:stop])
        weighted = loss.float() * scale
        if self.distributed:
            total = weighted.detach().clone()
            self.all_reduce_sum(total)
            global_loss = total / self.world_size
        else:
            global_loss = loss.detach()
        check_finite(global_loss, description)
        optimizer.zero_grad(set_to_none=True)
        if scale == 0:
            weighted = weighted * 0.0
        if self.scaler is not None:
            self.scaler.scale(weighted).backward()
        else:
            weighted.backward()
        self._average_gradients(model)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        return global_loss

    @torch.no_grad()
    def _average_gradients(self, model: nn.Module) -> None:
        if not self.distributed:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        # a parameter that no rank used keeps grad None (the optimizer skips it, as in one process);
        # one that some ranks used gets zeros on the others before the average
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        self.all_reduce_sum(used)
        params = [p for p, u in zip(params, used.tolist()) if u > 0]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in groups.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.all_reduce_sum(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


# ---- module-level API -------------------------------------------------------------------------
def setup(device: str | torch.device = "auto", mixed_precision: str | None = "no"):
    """Create (or replace) the process-wide context and return its ``accelerate.Accelerator``.

    ``device``: ``auto`` (GPU when there is one), ``cpu``, ``cuda``. Under ``torchrun`` /
    ``accelerate launch`` each process gets its own GPU. ``mixed_precision``: ``no``,
    ``bf16`` or ``fp16`` (fp16 uses a gradient scaler); ``None`` reads
    ``$UNLEARNKIT_MIXED_PRECISION`` or the launcher's ``$ACCELERATE_MIXED_PRECISION``.
    """
    global _CONTEXT
    if mixed_precision is None:
        mixed_precision = _env_precision() or "no"
    mixed_precision = str(mixed_precision).lower()
    if mixed_precision not in PRECISIONS:
        raise UnlearnkitError(f"Unknown mixed precision {mixed_precision!r}; allowed: {', '.join(PRECISIONS)}.")
    name = str(device)
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise UnlearnkitError(f"Unknown device {name!r} for the distributed context; allowed: auto, cpu, cuda.")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnlearnkitError(f"Device {name!r} was requested but CUDA is not available here; use 'cpu' or 'auto'.")
    cpu = name == "cpu" or not torch.cuda.is_available()
    if mixed_precision == "fp16" and cpu:
        raise UnlearnkitError("Mixed precision 'fp16' needs a GPU; use 'bf16' on CPU.")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if _CONTEXT is not None:
        teardown(keep_process_group=True)
    AcceleratorState._reset_state(False)  # a new precision may follow an earlier one
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    _CONTEXT = Context(accelerator, mixed_precision)
    if _CONTEXT.rank != 0:  # one set of progress bars
        from .progress import set_progress

        set_progress(False)
    return accelerator


def teardown(keep_process_group: bool = False) -> None:
    """Forget the context: loops run single-process again (the process group is destroyed unless kept)."""
    global _CONTEXT
    _CONTEXT = None
    try:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(not keep_process_group)
    except ImportError:  # pragma: no cover
        pass
    if not keep_process_group:
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            td.destroy_process_group()


def active() -> Context | None:
    """The context, created on first use under a multi-process launcher (or a mixed-precision env var)."""
    if _CONTEXT is None and (_launched_multiprocess() or _env_precision() not in (None, "no")):
        setup("auto", None)
    return _CONTEXT


def accelerator():
    """The ``accelerate.Accelerator`` of the context, or None."""
    ctx = active()
    return None if ctx is None else ctx.accelerator


def is_distributed() -> bool:
    ctx = active()
    return ctx is not None and ctx.distributed


def rank() -> int:
    ctx = active()
    return 0 if ctx is None else ctx.rank


def world_size() -> int:
    ctx = active()
    return 1 if ctx is None else ctx.world_size


def is_main_process() -> bool:
    return rank() == 0


def device() -> torch.device | None:
    ctx = active()
    return None if ctx is None else ctx.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it (unchanged in one process)."""
    ctx = active()
    return tensor if ctx is None else ctx.all_reduce_sum(tensor)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s, in place, and return it."""
    ctx = active()
    return tensor if ctx is None else ctx.broadcast(tensor, src)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order."""
    ctx = active()
    return tensor if ctx is None else ctx.all_gather_cat(tensor)


def barrier() -> None:
    ctx = active()
    if ctx is not None:
        ctx.barrier()


def broadcast_module(model: nn.Module) -> nn.Module:
    """Make parameters and buffers identical to rank 0's."""
    ctx = active()
    if ctx is not None:
        ctx.sync_module(model)
    return model


def broadcast_mask(mask):
    """Make a ``ParamMask`` identical to rank 0's (masks computed from rank-local data may differ)."""
    ctx = active()
    if ctx is not None:
        ctx.sync_mask(mask)
    return mask


def shard_bounds(n: int) -> tuple[int, int]:
    ctx = active()
    return (0, n) if ctx is None else ctx.shard_bounds(n)


def shard_dataset(dataset: Dataset) -> Dataset:
    """This rank's contiguous part of ``dataset`` (the dataset itself in one process)."""
    ctx = active()
    if ctx is None or not ctx.distributed:
        return dataset
    start, stop = ctx.shard_bounds(len(dataset))
    return Subset(dataset, range(start, stop))


@contextlib.contextmanager
def autocast() -> Iterator[None]:
    """The context's mixed-precision autocast (nothing without a context or with ``no``)."""
    ctx = active()
    with (contextlib.nullcontext() if ctx is None else ctx.autocast()):
        yield
