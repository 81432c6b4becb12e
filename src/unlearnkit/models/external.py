"""Models from torchvision (``torchvision:NAME``) and timm (``timm:NAME``), from the ``vision`` extra.

Options (keyword arguments of ``create_model``, also ``model_kwargs`` of a benchmark):

* ``pretrained=True``: the library's default pretrained weights (downloaded by
  timm/torchvision on first use, cached by them).
* ``weights="path/to/file.safetensors"`` (or ``.pt``/``.pth``/``.bin`` state dict): local
  pretrained weights, for machines without internet. Tensors whose shape differs from
  the model's (the 1000-class ImageNet head when ``num_classes`` is 10) are skipped and
  keep their random initialisation; a file that matches nothing else is an error.
* ``resize=224``: inputs are bilinearly resized to 224 x 224 before the backbone (for
  ImageNet-pretrained models on 32-px CIFAR images), and a 1-channel input is repeated to
  the 3 channels a torchvision backbone expects. The returned module is then a
  ``ResizedInput`` holding the backbone as ``.backbone`` (plain modules, no hooks).
  timm ViTs get ``img_size=resize`` so their position embeddings fit the pretrained ones.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnlearnkitError


class ResizedInput(nn.Module):
    """Resize (bilinear) images to ``size`` x ``size`` and repeat 1 channel to ``channels`` before ``backbone``."""

    def __init__(self, backbone: nn.Module, size: int, channels: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.size = int(size)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.channels is not None and x.dim() == 4 and x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return self.backbone(x)


def load_weights_file(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local state dict into ``model``, skipping tensors of another shape (e.g. the head)."""
    path = Path(path)
    if not path.is_file():
        raise UnlearnkitError(f"Weights file {str(path)!r} not found (model option 'weights').")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise UnlearnkitError(f"Weights file {str(path)!r} has no tensor matching the model's names and shapes.")
    model.load_state_dict(usable, strict=False)
    return {"loaded": sorted(usable), "skipped": sorted(set(state) - set(usable)),
            "missing": sorted(set(own) - set(usable))}


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    """A fresh ``num_classes`` head on ``fc`` (ResNets), ``heads.head`` (ViT) or ``classifier[-1]``."""
    candidates = [(model, "fc"), (getattr(model, "heads", None), "head"), (model, "classifier")]
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and len(classifier):
        candidates.append((classifier, str(len(classifier) - 1)))
    for owner, attr in candidates:
        layer = getattr(owner, attr, None) if owner is not None else None
        if isinstance(layer, nn.Linear):
            if layer.out_features != num_classes:
                setattr(owner, attr, nn.Linear(layer.in_features, num_classes))
            return


def create_external_model(name: str, *, num_classes: int, in_channels: int = 3, image_size=None,
                          pretrained: bool = False, weights: str | None = None, resize: int | None = None,
                          **kwargs) -> nn.Module:
    source, _, arch = name.partition(":")
    if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool) or resize < 1):
        raise UnlearnkitError(f"Model option 'resize' must be a positive int (e.g. 224); got {resize!r}.")
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise UnlearnkitError(f"Model {name!r} needs timm; pip install 'unlearnkit[vision]'.") from None
        if arch not in timm.list_models():
            raise UnlearnkitError(f"Unknown timm model {arch!r}.")
        size = resize or image_size
        extra = {"img_size": size} if size and "vit" in arch else {}
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                  **extra, **kwargs)
        channels = None  # timm adapts the stem to in_channels
    elif source == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise UnlearnkitError(f"Model {name!r} needs torchvision; pip install 'unlearnkit[vision]'.") from None
        if arch not in torchvision.models.list_models():
            raise UnlearnkitError(f"Unknown torchvision model {arch!r}.")
        model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None, **kwargs)
        _replace_torchvision_head(model, num_classes)
        channels = 3
    else:
        raise UnlearnkitError(f"Unknown model source {source!r} in {name!r}; use timm:NAME or torchvision:NAME.")
    if weights is not None:
        load_weights_file(model, weights)
    if resize is not None:
        model = ResizedInput(model, resize, channels)
    return model
