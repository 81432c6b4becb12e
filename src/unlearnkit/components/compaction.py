"""Physically remove pruned channels: a smaller, faster model that computes the same function.

Structured pruning (``unlearnkit.prune(kind="l2_structured")``) zeroes whole output
filters but keeps the tensors' shapes. ``compact(model)`` deletes the channels that
are *dead*, i.e. exactly zero wherever they are used, and returns a copy of the model
(same class) with smaller Conv2d / Linear / BatchNorm layers.

A producer (a Conv2d with ``groups=1``, or a Linear other than the classifier head)
has a *channel chain* in the model's ``torch.fx`` graph: its output passes through
channel-wise operations that map 0 to 0 (ReLU, GELU, SiLU, Tanh, LeakyReLU, Dropout,
Identity, max / average pooling, and BatchNorm) and ends in the input of one or more
Conv2d (``groups=1``) or Linear layers. Output channel ``c`` is dead when the
producer's filter (and bias) is zero at ``c`` and every BatchNorm of the chain has
weight and bias zero at ``c`` (``prune(..., prune_norms=True)`` does that). Then the
channel carries exact zeros to its consumers, in training and in eval mode, so
removing it from the producer, the BatchNorms and the consumers' inputs changes
nothing. A chain that reaches anything else (a residual addition, a concatenation,
a reshape, a LayerNorm, the model's output) is left alone: removing a channel there
would change the function. So in a ResNet the channels inside each block (conv1 ->
bn1 -> relu -> conv2) go, the residual stream stays; in a ViT the MLP's hidden
units (fc1 -> GELU -> fc2) go, the attention projections stay.

Submodules that ``torch.fx`` cannot trace are treated as opaque (their inputs are
used in unknown ways); a model whose top-level ``forward`` cannot be traced is an
error. Modules called more than once in ``forward`` are never shrunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnlearnkitError
from ..models.registry import classifier_head_name

# element-wise maps with f(0) = 0: they keep a zero channel zero, whatever the layout
ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Identity, nn.Dropout)
ELEMENTWISE_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.dropout, torch.relu, torch.tanh}
ELEMENTWISE_METHODS = {"relu", "tanh", "contiguous"}
# per-channel spatial maps of (N, C, H, W) tensors: only after a Conv2d
SPATIAL_MODULES = (nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
SPATIAL_FUNCTIONS = {F.dropout2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


@dataclass
class ChannelChain:
    """A producer layer, the BatchNorms its output passes through, and the layers that consume it."""

    producer: str
    norms: list[str]
    consumers: list[str]
    removable: bool  # False when the output also reaches something that is not channel-wise


@dataclass
class CompactResult:
    """What ``compact`` did: the smaller model, channels removed per producer, parameter counts."""

    model: nn.Module
    removed: dict[str, int] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"removed": dict(self.removed), "params_before": self.params_before,
                "params_after": self.params_after}


# ---- tracing ----------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    def __init__(self, opaque: set[str]):
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.opaque or super().is_leaf_module(m, qualname)


def _traceable(module: nn.Module, opaque: set[str], prefix: str) -> bool:
    inner = {n[len(prefix) + 1:] if prefix else n for n in opaque if not prefix or n.startswith(prefix + ".")}
    try:
        _Tracer(inner).trace(module)
        return True
    except Exception:  # any tracing failure: the module is opaque to the analysis
        return False


def trace(model: nn.Module) -> tuple[fx.Graph, set[str]]:
    """The model's fx graph, with every submodule that cannot be traced kept as an opaque call."""
    opaque: set[str] = set()
    names = [n for n, _ in model.named_modules() if n]
    for name in sorted(names, key=lambda n: -n.count(".")):  # deepest first, so parents see opaque children
        module = model.get_submodule(name)
        if not list(module.children()):
            continue
        if not _traceable(module, opaque, name):
            opaque.add(name)
    try:
        graph = _Tracer(opaque).trace(model)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnlearnkitError(f"compact and prune_norms need a model whose forward torch.fx can trace; "
                              f"{type(model).__name__}: {first}") from None
    return graph, opaque


# ---- analysis ---------------------------------------------------------------------------------

def _is_producer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and module.groups == 1


def _same_layout(producer: nn.Module, other: nn.Module) -> bool:
    """Conv2d channels are dim 1 (consumed by Conv2d, normalised by BatchNorm2d); Linear features the last dim."""
    if isinstance(producer, nn.Conv2d):
        return isinstance(other, (nn.Conv2d, nn.BatchNorm2d))
    return isinstance(other, (nn.Linear, nn.BatchNorm1d))


def _passes_through(node: fx.Node, value: fx.Node, modules: dict[str, nn.Module], conv: bool) -> bool:
    """``node`` applies a channel-wise map with f(0) = 0 to ``value`` (its first argument) and nothing else."""
    if not node.args or node.args[0] is not value or any(a is value for a in list(node.args[1:]) + list(node.kwargs.values())):
        return False
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, ELEMENTWISE_MODULES) or conv and isinstance(module, SPATIAL_MODULES)
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS or conv and node.target in SPATIAL_FUNCTIONS
    if node.op == "call_method":
        return node.target in ELEMENTWISE_METHODS
    return False


def channel_chains(model: nn.Module) -> list[ChannelChain]:
    """Per Conv2d/Linear producer (the head excluded): the BatchNorms and consumers of its output channels."""
    graph, opaque = trace(model)
    modules = dict(model.named_modules())
    head = classifier_head_name(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target == head or node.target in opaque:
            continue
        producer = modules[node.target]
        if not _is_producer(producer):
            continue
        conv = isinstance(producer, nn.Conv2d)
        norms, consumers, removable = [], [], calls[node.target] == 1
        frontier, seen = [node], set()
        while frontier:
            value = frontier.pop()
            for user in value.users:
                if user in seen:
                    continue
                seen.add(user)
                target = user.target if user.op == "call_module" else None
                module = modules.get(target) if target is not None else None
                only_input = user.args and user.args[0] is value and len(user.args) == 1 and not user.kwargs
                known = module is not None and target not in opaque and only_input and _same_layout(producer, module)
                if known and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    norms.append(target)
                    removable &= calls[target] == 1
                    frontier.append(user)
                elif known and _is_producer(module):
                    consumers.append(target)
                    removable &= calls[target] == 1
                elif _passes_through(user, value, modules, conv):
                    frontier.append(user)
                else:
                    removable = False
        chains.append(ChannelChain(node.target, norms, consumers, removable and bool(consumers)))
    return chains


def dead_channels(model: nn.Module, chain: ChannelChain) -> torch.Tensor:
    """Boolean mask of the producer's output channels that are exactly zero along the whole chain."""
    producer = model.get_submodule(chain.producer)
    weight = producer.weight.detach()
    dead = weight.reshape(weight.shape[0], -1).eq(0).all(dim=1)
    if producer.bias is not None:
        dead &= producer.bias.detach().eq(0)
    for name in chain.norms:
        norm = model.get_submodule(name)
        if not norm.affine:
            return torch.zeros_like(dead)
        dead &= norm.weight.detach().eq(0) & norm.bias.detach().eq(0)
    return dead


# ---- surgery ------------------------------------------------------------------------------------

def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _like(module: nn.Module, **shape) -> nn.Module:
    """A copy of ``module`` with new shape arguments (same device, dtype, other options)."""
    w = module.weight
    kw = dict(device=w.device, dtype=w.dtype)
    if isinstance(module, nn.Linear):
        return nn.Linear(shape.get("in_features", module.in_features), shape.get("out_features", module.out_features),
                         bias=module.bias is not None, **kw)
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(shape.get("in_channels", module.in_channels), shape.get("out_channels", module.out_channels),
                         module.kernel_size, stride=module.stride, padding=module.padding, dilation=module.dilation,
                         groups=1, bias=module.bias is not None, padding_mode=module.padding_mode, **kw)
    return type(module)(shape["num_features"], eps=module.eps, momentum=module.momentum, affine=module.affine,
                        track_running_stats=module.track_running_stats, **kw)


@torch.no_grad()
def _shrink_output(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    n = int(keep.sum())
    new = _like(module, out_features=n) if isinstance(module, nn.Linear) else _like(module, out_channels=n)
    new.weight.copy_(module.weight[keep])
    if module.bias is not None:
        new.bias.copy_(module.bias[keep])
    return new


@torch.no_grad()
def _shrink_input(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    n = int(keep.sum())
    new = _like(module, in_features=n) if isinstance(module, nn.Linear) else _like(module, in_channels=n)
    new.weight.copy_(module.weight[:, keep])
    if module.bias is not None:
        new.bias.copy_(module.bias)
    return new


@torch.no_grad()
def _shrink_norm(module: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = _like(module, num_features=int(keep.sum()))
    if module.affine:
        new.weight.copy_(module.weight[keep])
        new.bias.copy_(module.bias[keep])
    if module.track_running_stats:
        new.running_mean.copy_(module.running_mean[keep])
        new.running_var.copy_(module.running_var[keep])
        new.num_batches_tracked.copy_(module.num_batches_tracked)
    return new


def resize_to(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Give the Conv2d, Linear and BatchNorm layers of ``model`` the sizes of a compacted state dict, in place.

    Used to load a compacted checkpoint into a freshly built model of the registered size;
    layers whose weight shape already matches are left as they are (values are loaded after).
    """
    for name, module in list(model.named_modules()):
        weight = getattr(module, "weight", None)
        shape = shapes.get(f"{name}.weight" if name else "weight")
        if not isinstance(weight, torch.Tensor) or shape is None or tuple(weight.shape) == tuple(shape):
            continue
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = _like(module, num_features=shape[0])
        elif isinstance(module, nn.Linear):
            new = _like(module, out_features=shape[0], in_features=shape[1])
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            new = _like(module, out_channels=shape[0], in_channels=shape[1])
        else:
            continue  # the caller's shape check reports it
        _replace(model, name, new)
    return model


def compact(model: nn.Module) -> CompactResult:
    """A copy of ``model`` without its dead channels (see the module docstring); ``model`` is left unchanged.

    The copy is of the input's class, computes the same outputs (up to float rounding
    of the smaller matrix products) and has fewer parameters. Its ``state_dict`` has
    the same names with smaller shapes, so load it into the compact copy, not into a
    freshly built model of the original size.
    """
    if not isinstance(model, nn.Module):
        raise UnlearnkitError(f"compact needs a torch.nn.Module; got {type(model).__name__}.")
    out = copy.deepcopy(model)
    before = sum(p.numel() for p in out.parameters())
    removed: dict[str, int] = {}
    for chain in channel_chains(out):
        if not chain.removable:
            continue
        dead = dead_channels(out, chain)
        if dead.all():  # keep one channel: a layer of width 0 is not a layer
            dead[0] = False
        if not dead.any():
            continue
        keep = ~dead
        _replace(out, chain.producer, _shrink_output(out.get_submodule(chain.producer), keep))
        for name in chain.norms:
            _replace(out, name, _shrink_norm(out.get_submodule(name), keep))
        for name in chain.consumers:
            _replace(out, name, _shrink_input(out.get_submodule(name), keep))
        removed[chain.producer] = int(dead.sum())
    after = sum(p.numel() for p in out.parameters())
    out.train(model.training)
    return CompactResult(model=out, removed=removed, params_before=before, params_after=after)
