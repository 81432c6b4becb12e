"""What the two-process worker and the single-process reference share (same data, model, recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Subset

import unlearnkit as uk
from unlearnkit.components.weight_masks import ParamMask
from unlearnkit.training import cross_entropy_step, fit, make_optimizer, predict_logits

GLOBAL_BATCH = 64
TRAIN_SIZE = 1001  # 15 full batches and a last one of 41 = 21 + 20: the uneven split is exercised


def digits():
    return uk.load_dataset("digits")


def train_subset():
    return Subset(digits().train, range(TRAIN_SIZE))


def build_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=64)  # no BatchNorm


def make_mask(model: torch.nn.Module, seed: int) -> ParamMask:
    g = torch.Generator().manual_seed(seed)
    trainable = {n: torch.rand(p.shape, generator=g) < 0.7 for n, p in model.named_parameters() if p.dim() == 2}
    return ParamMask(model, trainable)


def step_with_penalty(model, x, y):
    """CE (a per-sample mean) plus a parameter-only term: both must match one process."""
    return F.cross_entropy(model(x), y) + 1e-4 * sum(p.pow(2).sum() for p in model.parameters())


def finetune(model, train, mask) -> None:
    optimizer = make_optimizer(model.parameters(), "sgd", 0.05, momentum=0.9, weight_decay=5e-4)
    fit(model, train, step_with_penalty, optimizer, epochs=1, batch_size=GLOBAL_BATCH,
        generator=torch.Generator().manual_seed(0), schedule="cosine", mask=mask)
    # a second call with Adam and the default step: the loop is reused within one method
    optimizer = make_optimizer(model.parameters(), "adam", 1e-3)
    fit(model, train, cross_entropy_step, optimizer, epochs=1, batch_size=GLOBAL_BATCH,
        generator=torch.Generator().manual_seed(1), max_steps=5, mask=mask)


def evaluate(model):
    return predict_logits(model, digits().test, batch_size=100)


def features(dataset) -> torch.Tensor:
    """Gram-like per-sample features: flattened inputs and a constant column (float64, exact sums)."""
    x = torch.stack([dataset[i][0].reshape(-1) for i in range(len(dataset))]).double()
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def special_state(train) -> dict:
    """What methods compute in their own passes: PGU's Grams, SSD's Fisher, SalUn's forget gradients."""
    from unlearnkit.methods.salun import forget_gradients
    from unlearnkit.methods import ssd as ssd_module
    from unlearnkit.methods.ssd import fisher_diagonal
    from unlearnkit.components.gradient_projection import PGUCache

    from unlearnkit.training import Counter

    model = build_model(seed=0)
    seen = {"pgu": 0, "ssd": 0, "salun": 0}

    def counting(part):
        return model.register_forward_pre_hook(lambda m, args: seen.__setitem__(part, seen[part] + len(args[0])))

    hook = counting("pgu")
    cache = PGUCache.build(model, [train], batch_size=50, max_samples=None, dtype=torch.float64)  # every sample
    hook.remove()
    ssd_counter, salun_counter = Counter(), Counter()
    # SSD's per-sample pass runs the forward under vmap, where a forward hook sees one sample per
    # chunk: count the samples of the chunks each rank passes instead.
    vmapped = ssd_module._vmapped_squared_grads

    def counted(model_, x, y):
        seen["ssd"] += len(y)
        return vmapped(model_, x, y)

    ssd_module._vmapped_squared_grads = counted
    try:
        fisher = fisher_diagonal(model, train, 64, torch.Generator().manual_seed(3), ssd_counter)
    finally:
        ssd_module._vmapped_squared_grads = vmapped
    hook = counting("salun")
    grads = forget_gradients(model, Subset(train, range(300)), 32, salun_counter)
    hook.remove()
    return {"pgu_grams": cache.grams, "pgu_traces": cache.traces, "fisher": fisher, "salun_grads": grads,
            "samples_seen": seen,
            "samples_counted": {"ssd": ssd_counter.sample_passes, "salun": salun_counter.sample_passes}}
