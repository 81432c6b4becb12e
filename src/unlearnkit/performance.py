"""Throughput settings for accelerator runs (see docs/scaling.md).

* ``channels_last``: image batches are handed to the model in channels-last memory layout, so
  cuDNN picks its NHWC kernels (bf16 tensor cores); results equal the default layout's up to
  floating-point reordering. Off by default; ``set_channels_last(True)`` or
  ``$UNLEARNKIT_CHANNELS_LAST=1``; accelerators only (see ``to_model_layout``).
* ``move_dataset_to(dataset, device)``: an in-memory dataset's images are put on the device once,
  so a batch is gathered there; per batch only its index vector and labels (a few KB) cross over.
  Labels stay on the host, where forget-set selection and relabelling read them.
* ``host_sync_every(device)``: the training loop checks the loss for divergence (a host sync) every
  step on the CPU, and on accelerators only every ``ACCELERATOR_SYNC_EVERY`` steps, from a flag kept
  on the device, so the host can queue work ahead of the GPU.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

ACCELERATOR_SYNC_EVERY = 50
_CHANNELS_LAST_ENV = "UNLEARNKIT_CHANNELS_LAST"
_state: dict[str, bool] = {}


def set_channels_last(enabled: bool) -> None:
    _state["channels_last"] = bool(enabled)


def channels_last() -> bool:
    if "channels_last" in _state:
        return _state["channels_last"]
    return os.environ.get(_CHANNELS_LAST_ENV, "").lower() in ("1", "true", "yes")


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when that setting is on and ``x`` is an image batch on an accelerator.

    Never on the CPU: there torch 2.13's channels-last convolution backward corrupted the heap
    (a CIFAR ResNet-18 of width 4 on 16 px inputs aborted with "free(): invalid next size").
    """
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type != "cpu" and channels_last():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def host_sync_every(device: torch.device) -> int:
    """How many training steps may pass between two host-side divergence checks."""
    return 1 if torch.device(device).type == "cpu" else ACCELERATOR_SYNC_EVERY


def move_dataset_to(dataset: Dataset, device: torch.device | str) -> bool:
    """Put the images of an in-memory dataset (or Subsets of one) on ``device``; False if it is not one."""
    from .data.loading import resolve_arrays

    arrays = resolve_arrays(dataset)
    if arrays is None:
        return False
    base = arrays[0]
    base.x = base.x.to(device)
    if base.mean is not None:
        base.mean, base.std = base.mean.to(device), base.std.to(device)
    return True
