"""``classifier_head``: known names only (``guess=False``, the head an init resets) or ``head``, else the
last Linear (``guess=True``, the layer methods leave unpruned and unadapted)."""

from __future__ import annotations

import pytest
import torch.nn as nn

from unlearnkit.errors import UnlearnkitError
from unlearnkit.models import classifier_head
from unlearnkit.models.registry import classifier_head_name
from unlearnkit.pretraining import find_head


class Net(nn.Module):
    """A body Linear, then the given layers under their names (registered in this order)."""

    def __init__(self, **layers: nn.Module):
        super().__init__()
        self.body = nn.Linear(4, 4)
        for name, layer in layers.items():
            setattr(self, name, layer)


class TimmLike(Net):
    def get_classifier(self):
        return self.last_linear


def test_a_head_attribute_in_both_modes():
    model = Net(head=nn.Linear(4, 3), aux=nn.Linear(3, 2))
    for guess in (True, False):
        name, layer = classifier_head(model, guess=guess)
        assert (name, layer) == ("head", model.head)


def test_torchvision_names_are_found_only_without_guessing():
    fc = Net(fc=nn.Linear(4, 3), aux=nn.Linear(3, 2))  # aux: a Linear after the classifier
    assert classifier_head(fc, guess=False) == ("fc", fc.fc)
    assert classifier_head(fc) == ("aux", fc.aux)  # the last Linear
    classifier = Net(classifier=nn.Sequential(nn.Dropout(), nn.Linear(4, 3)))
    assert classifier_head(classifier, guess=False) == ("classifier.1", classifier.classifier[1])
    assert classifier_head(classifier) == ("classifier.1", classifier.classifier[1])
    wrapped = Net(backbone=Net(heads=nn.Sequential()))
    wrapped.backbone.heads.add_module("head", nn.Linear(4, 3))
    assert classifier_head(wrapped, guess=False) == ("backbone.heads.head", wrapped.backbone.heads.head)
    timm = TimmLike(last_linear=nn.Linear(4, 3))
    assert classifier_head(timm, guess=False) == ("last_linear", timm.last_linear)


def test_no_known_head_is_an_error_without_guessing_and_the_last_linear_with():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    assert classifier_head(model) == ("2", model[2])
    with pytest.raises(UnlearnkitError, match="classifier head of Sequential: looked for .*`fc`.*get_classifier") as info:
        classifier_head(model, guess=False)
    assert "\n" not in str(info.value)
    with pytest.raises(UnlearnkitError, match="give the model a `head` attribute.*or set init reset_head: false"):
        find_head(model)  # the init's message adds the way around it
    assert find_head(Net(fc=nn.Linear(4, 3), aux=nn.Linear(3, 2))) == "fc"


def test_a_model_without_any_linear_layer():
    with pytest.raises(UnlearnkitError, match="Sequential has no nn.Linear classifier head: looked for .*`head`"):
        classifier_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_the_head_name_is_none_without_any_linear_layer():
    assert classifier_head_name(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())) is None
    assert classifier_head_name(Net(fc=nn.Linear(4, 3), aux=nn.Linear(3, 2))) == "aux"
