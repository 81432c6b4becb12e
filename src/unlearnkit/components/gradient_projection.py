"""Layer-input Gram matrices for Projected-Gradient Unlearning: prepare once, downdate per request.

Projected-Gradient Unlearning (Hoang et al., "Learn to Unlearn for Deep Neural
Networks: Minimizing Unlearning Interference with Gradient Projection", WACV 2024,
arXiv 2312.04095) updates each Linear/Conv2d weight only in directions orthogonal
to the span of that layer's inputs on the retain data. This module holds the
data side of the method:

* ``prepare(model, train_data)`` runs a sample of the training set through the model once,
  without gradients, and accumulates per layer the uncentred Gram matrix
  ``G = sum_x x x^T`` of the layer's inputs (forward pre-hooks). The sample budget
  (as GPM and gradient-projection methods build subspaces from a sample): at most
  ``max_samples`` images (1000; chosen by a hash of their ids, so independent of order)
  and at most ``max_patches`` patches (64; conv output positions, or tokens of a Linear
  layer) per image, chosen by a hash of (sample id, layer), so a sample contributes the
  same patches whenever it is passed and downdates stay exact. Each batch's products
  are formed in float32 and summed in float64. Linear inputs of shape
  (batch, tokens, features) are flattened over tokens.
  Conv2d inputs are unfolded with the layer's own kernel size, stride,
  padding (including ``padding="same"`` and non-zero padding modes) and
  dilation. The batches come from ``iterate_batches`` (so the dataset's own
  normalisation is applied, exactly as in training) without augmentation:
  the Gram describes the clean training inputs. Grouped convolutions get one
  Gram per group (the weight of group g only ever sees the unfolded channels
  of group g); a Linear layer is one group.
* ``PGUCache`` keeps those Grams with a fingerprint of the model weights
  (``state_dict_hash``) and of the data (sample ids and labels), the sample ids
  it was built on and the ids subtracted so far. It is stored as one
  safetensors file (metadata as JSON in the header), written atomically.
* A deletion request needs only the forget data: ``retain Gram = G - G(D_f)``
  (a downdate), where only the forget samples in the sampled ``gram_ids`` are passed
  (the others never entered G). ``PGUCache.subtract(forget, model=...)`` makes that
  permanent and saves it, so the next request needs neither the retain set nor the
  earlier forget sets. Ids outside the prepared set or already subtracted are
  refused and the cache is left unchanged.
* ``projection_bases`` eigendecomposes the retain Grams and keeps, per layer
  (and group), the leading eigenvectors by the reference's rule on singular values
  (``kept_rank``); ``project_`` applies ``g <- g - g U U^T``.

Memory: a dense Gram takes ``groups * d^2 * 8`` bytes with ``d = in_features``
(Linear) or ``C_in/groups * kh * kw`` (Conv2d); a 4096-wide layer needs 128 MiB.
Layers with ``d > max_dense_features`` (4096 by default) keep a randomized
sketch ``Y = G @ Omega`` (``d x rank`` floats, Omega Gaussian and regenerated
from a seed) instead; the sketch is linear in the data, so the downdate is
exact, and the top eigenpairs come from the Nystrom approximation of Tropp,
Yurtsever, Udell and Cevher, "Fixed-rank approximation of a positive-semidefinite
matrix from streaming data" (NeurIPS 2017). The exact trace is tracked for every
layer; for a sketched layer the sum of the unseen singular values is bounded
from it (Cauchy-Schwarz), so the kept rank errs on the side of keeping more.

Our choices: after a request the cache refers to the unlearned model (its
fingerprint is updated), and the forget Gram of a later request is computed
with that model. The Gram of the earlier samples was collected with the
original weights; PGU keeps retain-layer outputs nearly fixed, so the two
differ little, and negative eigenvalues from the mismatch are clamped to 0.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .. import distributed as dist
from ..data.datasets import dataset_labels
from ..data.loading import iterate_batches
from ..errors import UnlearnkitError
from ..models.outputs import call_model, forward
from ..utils import atomic_write_bytes, model_device, stable_hash, state_dict_hash

__all__ = ["PGUCache", "prepare", "target_layers", "input_layers", "sample_ids", "layer_inputs", "layer_patches",
           "projection_bases", "project_", "kept_rank", "budget_ids", "default_cache_path", "CACHE_FILE"]

FORMAT_VERSION = 2
DEFAULT_MAX_SAMPLES = 1000
DEFAULT_MAX_PATCHES = 64
CACHE_FILE = "pgu_gram.safetensors"
META_KEY = "unlearnkit_pgu"


def default_cache_path(checkpoint_dir: str | Path) -> Path:
    """Where ``unlearnkit prepare`` writes the cache: beside the checkpoint's weights."""
    return Path(checkpoint_dir) / CACHE_FILE


# ---- layers and their inputs ------------------------------------------------------------------

def target_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers PGU updates: every ``nn.Linear`` and ``nn.Conv2d``, by module name.

    Models with ``nn.MultiheadAttention`` are refused: its fused path multiplies
    ``in_proj_weight`` and ``out_proj.weight`` without calling a module (and
    ``nn.TransformerEncoderLayer``'s inference fast path skips its Linear modules too),
    so the inputs those weights see cannot be captured and their steps would go unprojected.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            raise UnlearnkitError(
                f"PGU cannot project layer {name!r} (nn.MultiheadAttention): its fused attention multiplies "
                "in_proj_weight and out_proj.weight without calling a module, so their inputs cannot be captured; "
                "use attention built from nn.Linear q/k/v/proj layers (as unlearnkit's vit_tiny).")
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


@torch.no_grad()
def input_layers(model: nn.Module, x: torch.Tensor) -> set[str]:
    """Names of the target layers that receive the model's input tensor itself (first conv, patch embedding)."""
    seen: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda m, args, n=n: seen.add(n) if args and args[0] is x else None)
               for n, m in target_layers(model).items()]
    try:
        call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_groups(module: nn.Module) -> tuple[int, int]:
    """(groups, input dimension per group) of a target layer."""
    if isinstance(module, nn.Linear):
        return 1, module.in_features
    kh, kw = module.kernel_size
    return module.groups, module.in_channels // module.groups * kh * kw


def layer_patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input vectors a layer's weight multiplies, per sample: (groups, n, positions, d).

    Linear: ``x`` as (n, tokens, in_features) (tokens = 1 for a 2-D input). Conv2d:
    patches unfolded with the layer's kernel size, stride, padding and dilation,
    channel-major like ``weight.reshape(out, -1)``; group g gets the channels of group g.
    """
    if isinstance(module, nn.Linear):
        x = x.reshape(-1, module.in_features) if x.dim() < 2 else x
        return x.reshape(x.shape[0], -1, module.in_features)[None]
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"PGU handles Linear and Conv2d layers, not {type(module).__name__}")
    if x.dim() == 3:  # unbatched input
        x = x[None]
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    n, dim, positions = cols.shape
    groups, per_group = layer_groups(module)
    return cols.transpose(1, 2).reshape(n, positions, groups, per_group).permute(2, 0, 1, 3)


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All input vectors of a batch as (groups, n * positions, d) (see ``layer_patches``)."""
    cols = layer_patches(module, x)
    return cols.reshape(cols.shape[0], -1, cols.shape[-1])


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values < 2**32."""
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) % 2**32
    return h ^ (h >> 16)


def patch_choice(ids: torch.Tensor, positions: int, keep: int, salt: int) -> torch.Tensor:
    """Per sample, ``keep`` of ``positions`` patch indices, (n, keep), a function of (sample id, salt) only.

    Depending on the id (not on the batch or the order) makes a sample contribute the
    same patches whenever it is seen, so subtracting a forget set's Gram is exact.
    """
    start = _mix32(((ids.to(torch.int64) % 2**32) * 0x45D9F3B + salt) % 2**32)
    key = _mix32(start[:, None] ^ torch.arange(positions, dtype=torch.int64)[None])
    return torch.argsort(key, dim=1)[:, :keep]


def _sampled(cols: torch.Tensor, ids: torch.Tensor, max_patches: int | None, salt: int) -> torch.Tensor:
    """(groups, n, positions, d) -> (groups, rows, d), keeping at most ``max_patches`` positions per sample."""
    groups, n, positions, d = cols.shape
    if max_patches is not None and positions > max_patches:
        idx = patch_choice(ids, positions, max_patches, salt).to(cols.device)
        cols = cols.gather(2, idx[None, :, :, None].expand(groups, n, max_patches, d))
    return cols.reshape(groups, -1, d)


# ---- sample ids ------------------------------------------------------------------------------

def sample_ids(dataset: Dataset) -> np.ndarray:
    """Ids of a dataset's samples: indices into the root of its ``Subset`` chain (the training set)."""
    indices = None
    while isinstance(dataset, Subset):
        idx = np.asarray(dataset.indices, dtype=np.int64)
        indices = idx if indices is None else idx[indices]
        dataset = dataset.dataset
    return np.arange(len(dataset), dtype=np.int64) if indices is None else indices


def _as_ids(ids, dataset: Dataset) -> np.ndarray:
    if ids is None:
        return sample_ids(dataset)
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise UnlearnkitError(f"Sample ids must be integers; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64).ravel()
    if len(arr) != len(dataset):
        raise UnlearnkitError(f"Got {len(arr)} ids for a dataset of {len(dataset)} samples.")
    return arr


def _check_unique(ids: np.ndarray, what: str) -> None:
    if len(np.unique(ids)) != len(ids):
        raise UnlearnkitError(f"The {what} holds duplicate sample ids.")


# ---- accumulation --------------------------------------------------------------------------

def _omega(name: str, groups: int, dim: int, rank: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    return torch.randn(groups, dim, rank, generator=gen, dtype=torch.float64).to(device)


def _dtype(precision: str) -> torch.dtype:
    if precision not in ("float32", "float64"):
        raise UnlearnkitError(f"PGU cache precision must be float32 or float64; got {precision!r}.")
    return getattr(torch, precision)


def _salt(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1)) % 2**32


def _shard(data: Dataset, ids: np.ndarray) -> tuple[Dataset, np.ndarray]:
    """This rank's part of ``data`` and the ids of its samples."""
    shard = dist.shard_dataset(data)
    if shard is data:
        return data, ids
    return shard, ids[np.asarray(shard.indices, dtype=np.int64)]


@torch.no_grad()
def _accumulate(model: nn.Module, sources: Sequence[tuple[Dataset, np.ndarray]], layers: dict[str, dict], *,
                seed: int, batch_size: int, max_patches: int | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """One no-grad pass: per layer the Gram (or its sketch G @ Omega) and the trace; returns the sample count.

    ``sources``: (dataset, one id per sample) pairs; the ids choose each sample's patches.
    Each batch's products are formed in ``dtype`` and summed over batches in float64.
    """
    device = model_device(model)
    modules = dict(model.named_modules())
    stats: dict[str, torch.Tensor] = {}
    traces: dict[str, torch.Tensor] = {}
    omegas: dict[str, torch.Tensor] = {}
    for name, spec in layers.items():
        g, d = spec["groups"], spec["dim"]
        cols = spec["rank"] if spec["lowrank"] else d
        stats[name] = torch.zeros(g, d, cols, dtype=torch.float64, device=device)
        traces[name] = torch.zeros(g, dtype=torch.float64, device=device)
        if spec["lowrank"]:
            omegas[name] = _omega(name, g, d, spec["rank"], seed, device).to(dtype)
    batch_ids: list[torch.Tensor] = []

    def hook_for(name):
        salt = _salt(name, seed)

        def hook(module, args):
            x = _sampled(layer_patches(module, args[0].detach()), batch_ids[0], max_patches, salt).to(dtype)
            traces[name] += x.pow(2).sum(dim=(1, 2), dtype=torch.float64)
            if name in omegas:
                stats[name] += (x.transpose(1, 2) @ (x @ omegas[name])).to(torch.float64)
            else:
                stats[name] += (x.transpose(1, 2) @ x).to(torch.float64)
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in layers]
    was_training = model.training
    model.eval()  # BatchNorm statistics as at inference; no dropout
    count = 0
    try:
        for data, ids in sources:  # under a multi-process launcher each rank passes its shard; sums are all-reduced
            data, ids = _shard(data, ids)
            start = 0
            for x, _ in iterate_batches(data, batch_size, device=device):
                batch_ids[:] = [torch.from_numpy(ids[start:start + len(x)])]
                call_model(model, x)  # the hooks collect the layer inputs
                start += len(x)
            count += start
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if dist.is_distributed():
        for t in (*stats.values(), *traces.values()):
            dist.all_reduce_sum(t)
        count = int(dist.all_reduce_sum(torch.tensor([count], dtype=torch.long, device=device)).item())
    return ({k: v.cpu() for k, v in stats.items()}, {k: v.cpu() for k, v in traces.items()}, count)


# ---- projection bases ------------------------------------------------------------------------

def kept_rank(eigvals: torch.Tensor, tau: float, sqrt_total: float | None = None) -> int:
    """How many leading directions the projector keeps: PGU's (and GPM's) rule on singular values.

    With singular values ``s = sqrt(eigvals)`` (descending), keep the directions whose cumulative
    share ``cumsum(s) / sum(s)`` is at most ``tau``, plus one (the direction that crosses tau), as
    the reference's class-forgetting script counts them (``unlearn_class.py``; its sample script
    omits the +1); ``tau = 1`` keeps every direction (the layer is frozen). ``sqrt_total``
    replaces ``sum(s)`` when ``eigvals`` are only the top of the spectrum (sketched layers).
    """
    s = eigvals.clamp_min(0).sqrt()
    total = float(s.sum()) if sqrt_total is None else float(sqrt_total)
    if total <= 0:
        return 0 if tau < 1 else len(s)
    if tau >= 1:
        return len(s)
    return min(int((torch.cumsum(s, 0) / total <= tau + 1e-12).sum()) + 1, len(s))


def _nystrom(sketch: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpairs (descending) of a PSD matrix from its sketch Y = A @ Omega (Tropp et al. 2017)."""
    d = sketch.shape[0]
    nu = float(torch.linalg.matrix_norm(sketch)) * d ** 0.5 * torch.finfo(torch.float64).eps
    y = sketch + nu * omega
    core = omega.T @ y
    core = 0.5 * (core + core.T)
    w, v = torch.linalg.eigh(core)
    keep = w > w.max().clamp_min(0) * 1e-12
    if not keep.any():
        return torch.zeros(0, dtype=sketch.dtype), torch.zeros(d, 0, dtype=sketch.dtype)
    inv_sqrt = v[:, keep] * w[keep].rsqrt()
    u, s, _ = torch.linalg.svd(y @ inv_sqrt, full_matrices=False)
    return (s.pow(2) - nu).clamp_min(0), u


def projection_bases(cache: "PGUCache", grams: dict[str, torch.Tensor], traces: dict[str, torch.Tensor],
                     energy: float, device=None) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Per layer the basis U (groups, d, k_max) of the top eigenvectors kept by ``kept_rank`` (zero-padded).

    ``energy`` is the threshold tau of ``kept_rank`` (on singular values)."""
    bases, ranks = {}, {}
    for name, spec in cache.layers.items():
        per_group = []
        for g in range(spec["groups"]):
            stat = grams[name][g].to(device)
            total = traces[name][g].to(device).clamp_min(0)
            if spec["lowrank"]:
                lam, u = _nystrom(stat, _omega(name, spec["groups"], spec["dim"], spec["rank"], cache.seed,
                                               device)[g])
                # the unseen tail: its eigenvalues sum to trace - sum(lam); sum of their square roots
                # is at most sqrt(tail * tail_dims) (Cauchy-Schwarz), so the kept rank errs on keeping more
                tail = float((total - lam.sum()).clamp_min(0))
                sqrt_total = float(lam.sqrt().sum()) + (tail * max(spec["dim"] - len(lam), 0)) ** 0.5
                k = min(kept_rank(lam, energy, sqrt_total), len(lam))
            else:
                lam, u = torch.linalg.eigh(0.5 * (stat + stat.T))
                lam, u = lam.flip(0).clamp_min(0), u.flip(1)
                k = kept_rank(lam, energy)
            per_group.append(u[:, :k])
        kmax = max(b.shape[1] for b in per_group)
        basis = torch.zeros(spec["groups"], spec["dim"], kmax, dtype=torch.float64, device=device)
        for g, b in enumerate(per_group):
            basis[g, :, :b.shape[1]] = b
        bases[name] = basis
        ranks[name] = [b.shape[1] for b in per_group]
    return bases, ranks


def project_(grad: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """In place: ``g <- g - g U U^T`` on a weight-shaped gradient (conv weights as out x (in*kh*kw))."""
    groups, dim, _ = basis.shape
    g64 = grad.detach().reshape(groups, grad.shape[0] // groups, dim).to(torch.float64)
    grad.copy_((g64 - (g64 @ basis) @ basis.transpose(1, 2)).reshape(grad.shape))
    return grad


# ---- the sample budget -----------------------------------------------------------------------

def budget_ids(ids: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
    """The (sorted) ids whose inputs the Grams hold: all, or ``max_samples`` chosen by a hash of id and seed.

    A hash rather than a draw keeps the choice independent of the order and of the other ids,
    so a cache prepared over any superset picks the same samples of a subset it shares.
    """
    ids = np.sort(np.asarray(ids, dtype=np.int64))
    if max_samples is None or len(ids) <= max_samples:
        return ids
    key = _mix32(_mix32(torch.from_numpy(ids % 2**32)) ^ _mix32(torch.tensor(seed % 2**32)))
    return np.sort(ids[np.argsort(key.numpy(), kind="stable")[:max_samples]])


# ---- the cache ------------------------------------------------------------------------------

@dataclass
class PGUCache:
    """Per-layer input Grams of a model over its training set, with fingerprints and deletion history.

    Build it with ``prepare`` (or ``PGUCache.build``), load it with ``PGUCache.load``.
    ``model_hash`` is the fingerprint of the weights the cache currently belongs to
    (the original, then the output of the last request); ``original_hash`` never changes.
    """

    layers: dict[str, dict]
    grams: dict[str, torch.Tensor]
    traces: dict[str, torch.Tensor]
    ids: np.ndarray
    labels: np.ndarray
    subtracted: np.ndarray
    model_hash: str
    original_hash: str
    data_hash: str
    seed: int = 0
    gram_ids: np.ndarray | None = None  # the sampled ids the Grams hold (None: all of ``ids``)
    max_patches: int | None = None
    precision: str = "float32"
    requests: list[dict] = field(default_factory=list)
    path: Path | None = None
    last_forget_passes: int = 0  # samples passed (forward only) by the last forget_stats

    def __post_init__(self):
        if self.gram_ids is None:
            self.gram_ids = self.ids

    # ---- building and files -----------------------------------------------------------------
    @classmethod
    def build(cls, model: nn.Module, datasets: Sequence[Dataset], ids: Sequence | None = None, *,
              batch_size: int = 128, max_dense_features: int = 4096, rank: int = 256, seed: int = 0,
              max_samples: int | None = DEFAULT_MAX_SAMPLES, max_patches: int | None = DEFAULT_MAX_PATCHES,
              dtype: torch.dtype = torch.float32) -> "PGUCache":
        """Accumulate the Grams of ``model``'s Linear/Conv2d inputs over a sample of ``datasets`` (one no-grad pass).

        ``ids``: one id per sample of all ``datasets`` in order (default: ``sample_ids`` of each).
        The Grams use at most ``max_samples`` samples (chosen by a hash of their ids and
        ``seed``) and at most ``max_patches`` patches (conv positions, or tokens) of each;
        None: all. ``dtype``: precision of each batch's products (summed in float64).
        """
        datasets = [d for d in datasets if d is not None]
        if not datasets or sum(len(d) for d in datasets) == 0:
            raise UnlearnkitError("PGU prepare needs a non-empty training set.")
        for what, value in (("max_samples", max_samples), ("max_patches", max_patches)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise UnlearnkitError(f"PGU {what} must be a positive integer or None (all); got {value!r}.")
        if ids is None:
            all_ids = np.concatenate([sample_ids(d) for d in datasets])
        else:
            all_ids = np.asarray(ids)
            if all_ids.dtype.kind not in "iu" or all_ids.size != sum(len(d) for d in datasets):
                raise UnlearnkitError(f"ids must be {sum(len(d) for d in datasets)} integers, one per sample.")
            all_ids = all_ids.astype(np.int64).ravel()
        _check_unique(all_ids, "prepared set")
        labels = np.concatenate([dataset_labels(d).numpy().astype(np.int64) for d in datasets])
        layers = {}
        for name, module in target_layers(model).items():
            groups, dim = layer_groups(module)
            lowrank = dim > max_dense_features
            layers[name] = {"kind": type(module).__name__, "groups": groups, "dim": dim, "lowrank": lowrank,
                            "rank": min(rank, dim) if lowrank else dim}
        if not layers:
            raise UnlearnkitError(f"{type(model).__name__} has no Linear or Conv2d layer for PGU to project.")
        chosen = budget_ids(all_ids, max_samples, seed)
        sources, start = [], 0
        for d in datasets:
            d_ids = all_ids[start:start + len(d)]
            start += len(d)
            pick = np.flatnonzero(np.isin(d_ids, chosen))
            if len(pick):
                sources.append((d if len(pick) == len(d) else Subset(d, pick.tolist()), d_ids[pick]))
        grams, traces, _ = _accumulate(model, sources, layers, seed=seed, batch_size=batch_size,
                                       max_patches=max_patches, dtype=dtype)
        h = state_dict_hash(model)
        order = np.argsort(all_ids, kind="stable")
        return cls(layers=layers, grams=grams, traces=traces, ids=all_ids[order], labels=labels[order],
                   subtracted=np.zeros(0, dtype=np.int64), model_hash=h, original_hash=h,
                   data_hash=stable_hash({"ids": all_ids[order], "labels": labels[order]}), seed=seed,
                   gram_ids=chosen, max_patches=max_patches, precision=str(dtype).replace("torch.", ""))

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = {f"gram.{n}": g.contiguous() for n, g in self.grams.items()}
        tensors.update({f"trace.{n}": t.contiguous() for n, t in self.traces.items()})
        tensors["ids"] = torch.from_numpy(self.ids.copy())
        tensors["labels"] = torch.from_numpy(self.labels.copy())
        tensors["subtracted"] = torch.from_numpy(self.subtracted.copy())
        tensors["gram_ids"] = torch.from_numpy(np.asarray(self.gram_ids, dtype=np.int64).copy())
        meta = {"format_version": FORMAT_VERSION, "layers": self.layers, "model_hash": self.model_hash,
                "original_hash": self.original_hash, "data_hash": self.data_hash, "seed": self.seed,
                "max_patches": self.max_patches, "precision": self.precision, "requests": self.requests}
        return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})

    def save(self, path: str | Path | None = None) -> Path:
        """Write the cache atomically (readers see the old file or the new one)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise UnlearnkitError("PGUCache.save() needs a path (this cache was never saved or loaded).")
        atomic_write_bytes(path, self.to_bytes())
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PGUCache":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UnlearnkitError(f"PGU cache {str(path)!r} does not exist; create it with `unlearnkit prepare`.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise UnlearnkitError(f"Cannot read PGU cache {str(path)!r}: {e}") from None
        if META_KEY not in header:
            raise UnlearnkitError(f"{str(path)!r} is not a PGU cache (no {META_KEY!r} header).")
        meta = json.loads(header[META_KEY])
        if meta.get("format_version") != FORMAT_VERSION:
            raise UnlearnkitError(f"PGU cache {str(path)!r} has format {meta.get('format_version')}; "
                                  f"this unlearnkit reads {FORMAT_VERSION}. Run `unlearnkit prepare` again.")
        layers = meta["layers"]
        ids, labels = tensors["ids"].numpy(), tensors["labels"].numpy()
        if stable_hash({"ids": ids, "labels": labels}) != meta["data_hash"] or any(
                f"gram.{n}" not in tensors for n in layers) or "gram_ids" not in tensors:
            raise UnlearnkitError(f"PGU cache {str(path)!r} is inconsistent (data fingerprint or layers do not "
                                  "match its header); run `unlearnkit prepare` again.")
        return cls(layers=layers, grams={n: tensors[f"gram.{n}"] for n in layers},
                   traces={n: tensors[f"trace.{n}"] for n in layers}, ids=tensors["ids"].numpy(),
                   labels=tensors["labels"].numpy(), subtracted=tensors["subtracted"].numpy(),
                   model_hash=meta["model_hash"], original_hash=meta["original_hash"], data_hash=meta["data_hash"],
                   seed=int(meta["seed"]), gram_ids=tensors["gram_ids"].numpy(), max_patches=meta["max_patches"],
                   precision=meta["precision"], requests=list(meta.get("requests", [])), path=path)

    # ---- checks ------------------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.grams.values())

    def check_model(self, model: nn.Module) -> str:
        """Refuse a model the cache does not belong to; returns the model's fingerprint."""
        where = f"PGU cache {str(self.path)!r}" if self.path else "The PGU cache"
        layers = target_layers(model)
        shapes = {n: list(layer_groups(m)) for n, m in layers.items()}
        expected = {n: [s["groups"], s["dim"]] for n, s in self.layers.items()}
        if shapes != expected:
            raise UnlearnkitError(f"{where} was prepared for another architecture (its Linear/Conv2d layers differ).")
        h = state_dict_hash(model)
        if h != self.model_hash:
            hint = (" It was updated by an earlier request; pass the model that request returned."
                    if self.requests else " Run `unlearnkit prepare` for this model.")
            raise UnlearnkitError(f"{where} belongs to other model weights (fingerprint {self.model_hash}, "
                                  f"this model {h}).{hint}")
        return h

    def check_forget(self, forget: Dataset, ids: Sequence | None = None) -> np.ndarray:
        """The forget set's ids, or a one-line error if any is unprepared, subtracted or mislabelled."""
        ids = _as_ids(ids, forget)
        if len(ids) == 0:
            raise UnlearnkitError("The forget set is empty.")
        _check_unique(ids, "forget set")
        pos = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        unknown = ids[self.ids[pos] != ids] if len(self.ids) else ids
        if len(unknown):
            raise UnlearnkitError(f"Forget id {int(unknown[0])} is not in the prepared set of the PGU cache "
                                  f"({len(unknown)} such ids); the cache was left unchanged.")
        again = ids[np.isin(ids, self.subtracted)]
        if len(again):
            raise UnlearnkitError(f"Forget id {int(again[0])} was already subtracted by an earlier request "
                                  f"({len(again)} such ids); the cache was left unchanged.")
        labels = dataset_labels(forget).numpy()
        wrong = np.flatnonzero(self.labels[pos] != labels)
        if len(wrong):
            raise UnlearnkitError(f"Forget sample id {int(ids[wrong[0]])} has label {int(labels[wrong[0]])} but the "
                                  f"PGU cache recorded {int(self.labels[pos[wrong[0]]])}: the forget set is not from "
                                  "the prepared training set (index it as a Subset of it, or pass ids=).")
        return ids

    def remaining_ids(self) -> np.ndarray:
        return np.setdiff1d(self.ids, self.subtracted)

    def is_class_request(self, forget_ids: np.ndarray) -> bool:
        """True when the forget set holds every remaining prepared sample of each of its labels."""
        remaining = np.setdiff1d(self.remaining_ids(), forget_ids)
        forget_labels = np.unique(self.labels[np.searchsorted(self.ids, forget_ids)])
        remaining_labels = self.labels[np.searchsorted(self.ids, remaining)]
        return not np.isin(remaining_labels, forget_labels).any()

    # ---- downdates ---------------------------------------------------------------------------
    def forget_stats(self, model: nn.Module, forget: Dataset, ids: Sequence | None = None, *, batch_size: int = 128):
        """The Grams (sketches) and traces of the forget samples the cache's Grams hold, under ``model``.

        Only forget samples in the sampled ``gram_ids`` contributed, so only they are passed
        (with the same patches); the others cost nothing.
        """
        ids = _as_ids(ids, forget)
        pick = np.flatnonzero(np.isin(ids, self.gram_ids))
        sources = [(Subset(forget, pick.tolist()), ids[pick])] if len(pick) else []
        grams, traces, count = _accumulate(model, sources, self.layers, seed=self.seed, batch_size=batch_size,
                                           max_patches=self.max_patches, dtype=_dtype(self.precision))
        self.last_forget_passes = count
        return grams, traces

    def downdated(self, forget_grams: dict, forget_traces: dict) -> tuple[dict, dict]:
        """Retain Grams ``G - G(D_f)`` and traces, without changing the cache."""
        return ({n: self.grams[n] - forget_grams[n] for n in self.layers},
                {n: self.traces[n] - forget_traces[n] for n in self.layers})

    def commit(self, forget_ids: np.ndarray, forget_grams: dict, forget_traces: dict, *,
               model_after: str | None = None, save: bool = True) -> None:
        """Record a finished request: subtract its Grams, remember its ids, move to the new weights."""
        grams, traces = self.downdated(forget_grams, forget_traces)
        self.grams, self.traces = grams, traces
        self.subtracted = np.union1d(self.subtracted, forget_ids).astype(np.int64)
        self.requests.append({"num_ids": int(len(forget_ids)), "ids_hash": stable_hash(np.sort(forget_ids)),
                              "model_before": self.model_hash, "model_after": model_after or self.model_hash})
        self.model_hash = model_after or self.model_hash
        if save and self.path is not None:
            self.save()

    def subtract(self, forget: Dataset, ids: Sequence | None = None, *, model: nn.Module,
                 model_after: nn.Module | str | None = None, batch_size: int = 128, save: bool = True) -> "PGUCache":
        """Downdate the cache by a forget set's contribution (computed with ``model``) and save it.

        ``model`` must be the weights the cache belongs to. ``model_after`` (a model or a
        fingerprint) is what the cache will accept next, e.g. the unlearned model; by
        default ``model`` itself. Bad ids raise and leave the cache unchanged.
        """
        self.check_model(model)
        forget_ids = self.check_forget(forget, ids)
        grams, traces = self.forget_stats(model, forget, forget_ids, batch_size=batch_size)
        after = state_dict_hash(model_after) if isinstance(model_after, nn.Module) else model_after
        self.commit(forget_ids, grams, traces, model_after=after, save=save)
        return self


def prepare(model: nn.Module, train_data: Dataset, *, ids: Sequence | None = None, path: str | Path | None = None,
            batch_size: int = 128, max_dense_features: int = 4096, rank: int = 256, seed: int = 0,
            max_samples: int | None = DEFAULT_MAX_SAMPLES, max_patches: int | None = DEFAULT_MAX_PATCHES,
            device: str | torch.device | None = None) -> PGUCache:
    """PGU's one-time prepare step: per-layer input Grams of ``model`` over a sample of ``train_data``.

    ``ids`` are the samples' ids (default: their indices in the training set, read
    through ``Subset``s). The Grams hold at most ``max_samples`` samples and ``max_patches``
    patches (or tokens) of each (None: all; see ``PGUCache.build``). Layers wider than
    ``max_dense_features`` keep a rank-``rank`` randomized sketch instead of the dense
    ``d x d`` Gram. The model is not modified; the cache is saved to ``path`` if given.
    """
    if device is not None:
        from ..utils import resolve_device

        import copy

        model = copy.deepcopy(model).to(resolve_device(device))
    cache = PGUCache.build(model, [train_data], ids, batch_size=batch_size, max_dense_features=max_dense_features,
                           rank=rank, seed=seed, max_samples=max_samples, max_patches=max_patches)
    if path is not None:
        cache.save(path)
    return cache
