"""The built-in models: mlp, cnn, resnet20 (CIFAR-style) and vit_tiny (own implementation).

Every model has a ``head`` Linear classifier and a ``reset_parameters()`` that
re-draws all weights, which the retrain oracle uses for a fresh initialisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


def _reset_all(model: nn.Module) -> None:
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


class MLP(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, hidden: int = 256, depth: int = 2):
        super().__init__()
        layers, width = [], input_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def reset_parameters(self):
        _reset_all(self)


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(in_channels, w, 1), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def reset_parameters(self):
        _reset_all(self)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _basic_stages(cin: int, widths: tuple[int, ...], blocks_per_stage: int) -> list[nn.Sequential]:
    """Stages of BasicBlocks; every stage but the first halves the resolution in its first block."""
    stages = []
    for i, cout in enumerate(widths):
        blocks = []
        for j in range(blocks_per_stage):
            blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return stages


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 20, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2; got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1, self.layer2, self.layer3 = _basic_stages(width, (width, 2 * width, 4 * width), n)
        self.head = nn.Linear(4 * width, num_classes)
        self.reset_parameters()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def reset_parameters(self):
        _reset_all(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem without max-pool, four stages of two BasicBlocks
    (widths 64-512), global pooling; the CIFAR ResNet-18 of the unlearning papers' code (11.2 M parameters)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1, self.layer2, self.layer3, self.layer4 = _basic_stages(
            width, (width, 2 * width, 4 * width, 8 * width), 2)
        self.head = nn.Linear(8 * width, num_classes)
        self.reset_parameters()

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    reset_parameters = CifarResNet.reset_parameters


class Attention(nn.Module):
    """Multi-head self-attention with separate q, k, v and output projections (LoRA can reach all four)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class VisionTransformer(nn.Module):
    """A small ViT: patch embedding, class token, learned positions, pre-norm blocks, linear head."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32, patch_size: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        num_patches = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])

    def reset_parameters(self):
        _reset_all(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


@register_model
def mlp(num_classes: int, in_channels: int = 1, image_size: int | None = None, input_dim: int | None = None,
        hidden: int = 256, depth: int = 2) -> nn.Module:
    """Two hidden ReLU layers on flattened input."""
    if input_dim is None:
        input_dim = in_channels * (image_size or 1) ** 2
    return MLP(input_dim, num_classes, hidden=hidden, depth=depth)


@register_model
def cnn(num_classes: int, in_channels: int = 3, width: int = 32) -> nn.Module:
    """Three conv-BN-ReLU blocks (two strided), global pooling, linear head."""
    return SmallCNN(in_channels, num_classes, width=width)


@register_model
def resnet20(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    """CIFAR-style ResNet-20 (0.27 M parameters)."""
    return CifarResNet(in_channels, num_classes, depth=20, width=width)


@register_model
def resnet56(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    """CIFAR-style ResNet-56 (0.85 M parameters)."""
    return CifarResNet(in_channels, num_classes, depth=56, width=width)


@register_model
def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    """CIFAR-style ResNet-18 (11.2 M parameters; the Unlearn-Sparse / SalUn model)."""
    return ResNet18(in_channels, num_classes, width=width)


@register_model
def vit_tiny(num_classes: int, in_channels: int = 3, image_size: int = 32, patch_size: int | None = None,
             dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0) -> nn.Module:
    """Small ViT: patch 4 (patch 2 below 8 px), dim 192, depth 6, 3 heads."""
    if patch_size is None:
        patch_size = 4 if image_size >= 8 else 2
    return VisionTransformer(in_channels, num_classes, image_size=image_size, patch_size=patch_size,
                             dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialised (never the original's weights)."""
    import copy

    from ..errors import UnlearnkitError

    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    if hasattr(clone, "reset_parameters"):
        clone.reset_parameters()
    else:
        _reset_all(clone)
    before = dict(model.named_parameters())
    # a parameter that is not constant (constant ones/zeros are legitimate initial values) must change
    unchanged = [n for n, p in clone.named_parameters()
                 if p.numel() > 1 and p.detach().std() > 0 and torch.equal(p.detach().cpu(), before[n].detach().cpu())]
    if unchanged:
        raise UnlearnkitError(
            f"Cannot re-initialise parameter {unchanged[0]!r} of {type(model).__name__}: give the model a "
            "reset_parameters() method, or pass model_factory= (a function building a fresh model) to retrain."
        )
    return clone
