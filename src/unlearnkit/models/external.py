"""Models from torchvision (``torchvision:NAME``) and timm (``timm:NAME``), from the ``vision`` extra."""

from __future__ import annotations

import torch.nn as nn

from ..errors import UnlearnkitError


def create_external_model(name: str, *, num_classes: int, in_channels: int = 3, image_size=None,
                          pretrained: bool = False, **kwargs) -> nn.Module:
    source, _, arch = name.partition(":")
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise UnlearnkitError(f"Model {name!r} needs timm; pip install 'unlearnkit[vision]'.") from None
        if arch not in timm.list_models():
            raise UnlearnkitError(f"Unknown timm model {arch!r}.")
        extra = {"img_size": image_size} if image_size and "vit" in arch else {}
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels,
                                 **extra, **kwargs)
    if source == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise UnlearnkitError(f"Model {name!r} needs torchvision; pip install 'unlearnkit[vision]'.") from None
        if arch not in torchvision.models.list_models():
            raise UnlearnkitError(f"Unknown torchvision model {arch!r}.")
        model = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None, **kwargs)
        fc = getattr(model, "fc", None)
        if isinstance(fc, nn.Linear) and fc.out_features != num_classes:
            model.fc = nn.Linear(fc.in_features, num_classes)
        return model
    raise UnlearnkitError(f"Unknown model source {source!r} in {name!r}; use timm:NAME or torchvision:NAME.")
