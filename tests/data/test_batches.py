"""One batch unpacking for every loop: dicts, (x, y, index) tuples, one-hot labels; model outputs to logits."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

import unlearnkit as uk
from unlearnkit.data import ArrayDataset, iterate_batches
from unlearnkit.data.loading import Inputs, with_keys
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models.outputs import as_logits


class Samples(Dataset):
    """The same tensors served in several shapes."""

    def __init__(self, x, y, form: str):
        self.x, self.y, self.form = x, y, form

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x, y = self.x[i], self.y[i]
        if self.form == "pair":
            return x, y
        if self.form == "triple":
            return x, y, i
        if self.form == "dict":
            return {"pixel_values": x, "labels": y, "id": i}
        if self.form == "custom":
            return {"img_tensor": x, "cls": y}
        if self.form == "onehot":
            return x, torch.nn.functional.one_hot(y, 10).float()
        raise AssertionError(self.form)


def _tensors(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 10


@pytest.mark.parametrize("form", ["triple", "dict", "custom", "onehot"])
def test_every_sample_shape_yields_the_same_batches(form):
    x, y = _tensors()
    data = Samples(x, y, form)
    if form == "custom":
        data = with_keys(data, inputs="img_tensor", label="cls")
    reference = list(iterate_batches(Samples(x, y, "pair"), 16))
    got = list(iterate_batches(data, 16))
    assert len(got) == len(reference) == 3
    for (xa, ya), (xb, yb) in zip(got, reference):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.dtype == torch.long


@pytest.mark.parametrize("form", ["triple", "dict", "onehot"])
def test_training_on_other_sample_shapes_equals_training_on_pairs(form):
    """Not a no-op and not a different computation: the same model comes out as with (x, y) pairs."""
    x, y = _tensors(64)
    torch.manual_seed(0)
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    ref = uk.unlearn(model, Samples(x[:48], y[:48], "pair"), Samples(x[48:], y[48:], "pair"), "finetune", epochs=1)
    out = uk.unlearn(model, Samples(x[:48], y[:48], form), Samples(x[48:], y[48:], form), "finetune", epochs=1)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, out.model.state_dict()[k])
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in ref.model.state_dict().items())


def test_labels_of_dicts_triples_and_one_hot():
    x, y = _tensors(12)
    for form in ("triple", "dict", "onehot"):
        assert torch.equal(uk.data.dataset_labels(Samples(x, y, form)), y)
    assert torch.equal(ArrayDataset(x, torch.nn.functional.one_hot(y, 10)).y, y)


def test_random_label_keeps_the_sample_form_of_dict_datasets():
    x, y = _tensors(40)
    torch.manual_seed(0)
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    for form in ("dict", "onehot"):
        result = uk.unlearn(model, Samples(x[:30], y[:30], form), Samples(x[30:], y[30:], form), "random_label",
                            epochs=1)
        assert result.sample_passes == 40


def test_keyword_inputs_slice_concatenate_and_move():
    batch = Inputs({"input_ids": torch.arange(12).view(4, 3), "attention_mask": torch.ones(4, 3, dtype=torch.long)})
    assert len(batch) == 4 and len(batch[1:3]) == 2 and batch["input_ids"].dtype == torch.long
    both = uk.data.loading.cat_inputs([batch, batch[:1]])
    assert len(both) == 5 and set(both) == {"input_ids", "attention_mask"} and len(batch.to("cpu")) == 4


class TupleOut(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), "aux"


class LogitsOut(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return type("Output", (), {"logits": self.inner(x), "loss": None})()


@pytest.mark.parametrize("wrapper", [TupleOut, LogitsOut])
def test_models_returning_a_tuple_or_logits_attribute(wrapper):
    x, y = _tensors(64)
    torch.manual_seed(0)
    plain = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    wrapped = wrapper(copy.deepcopy(plain))
    retain, forget = ArrayDataset(x[:48], y[:48]), ArrayDataset(x[48:], y[48:])
    ref = uk.unlearn(plain, retain, forget, "gradient_ascent", epochs=1, lr=0.01)
    out = uk.unlearn(wrapped, retain, forget, "gradient_ascent", epochs=1, lr=0.01)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, out.model.state_dict()["inner." + k])
    assert uk.accuracy(wrapped, forget) == uk.accuracy(plain, forget)


def test_as_logits_rejects_what_is_not_logits():
    assert as_logits({"logits": torch.zeros(2, 3)}).shape == (2, 3)
    with pytest.raises(UnlearnkitError, match="expected logits"):
        as_logits("text")
    with pytest.raises(UnlearnkitError, match=r"\(batch, classes\)"):
        as_logits(torch.zeros(2, 3, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_named_not_blamed_on_the_learning_rate(bad):
    x, y = _tensors(40)
    x[5, 0, 0, 0] = bad
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    word = "NaN" if bad != bad else "inf"
    for data in (ArrayDataset(x, y), Samples(x, y, "pair")):
        with pytest.raises(UnlearnkitError, match=f"contain {word}"):
            uk.unlearn(model, data, None, "finetune", epochs=1)


def test_labels_outside_the_model_outputs():
    x, y = _tensors(40)
    model = uk.create_model("mlp", num_classes=5, in_channels=1, image_size=8, hidden=16)
    with pytest.raises(UnlearnkitError, match="label 9, outside the model's 5 outputs"):
        uk.unlearn(model, ArrayDataset(x, y), None, "finetune", epochs=1)
    with pytest.raises(UnlearnkitError, match="outside the model's 5 outputs"):
        uk.accuracy(model, Samples(x, y, "dict"))


def test_retain_and_forget_overlap():
    x, y = _tensors(40)
    base = ArrayDataset(x, y)
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    with pytest.raises(UnlearnkitError, match="the same dataset"):
        uk.unlearn(model, base, base, "finetune", epochs=1)
    with pytest.raises(UnlearnkitError, match="2 sample\\(s\\) are in both"):
        uk.unlearn(model, Subset(base, range(0, 30)), Subset(base, range(28, 40)), "finetune", epochs=1)
    with pytest.warns(UserWarning, match="same inputs as retain"):
        uk.unlearn(model, ArrayDataset(x[:30], y[:30]), ArrayDataset(x[25:], y[25:]), "finetune", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uk.unlearn(model, ArrayDataset(x[:30], y[:30]), ArrayDataset(x[30:], y[30:]), "finetune", epochs=1)


def test_accuracy_of_nothing_is_an_error():
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    with pytest.raises(UnlearnkitError, match="non-empty dataset; got an empty dataset"):
        uk.accuracy(model, ArrayDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)))
    with pytest.raises(UnlearnkitError, match="got None"):
        uk.accuracy(model, None)


@pytest.mark.parametrize("shape,fix", [((4, 8, 8), r"x\[:, None\]"), ((4, 8, 8, 3), r"permute\(0, 3, 1, 2\)")])
def test_image_layouts_other_than_nchw_name_the_fix(shape, fix):
    with pytest.raises(UnlearnkitError, match=fix):
        ArrayDataset(torch.zeros(shape), torch.zeros(4))


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1)])
def test_image_samples_without_channel_axis_fail_with_the_layout(shape, digits):
    x, y = _tensors(16)
    model = uk.create_model("cnn", num_classes=10, in_channels=1, width=4)
    data = Samples(x.reshape(16, *shape), y, "pair")
    with pytest.raises(UnlearnkitError, match=r"\(N, C, H, W\)"):
        uk.accuracy(model, data)


def test_mnist_subset_is_class_balanced(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 255, (200, 28, 28), dtype=np.uint8),
             y_train=(np.arange(200) % 10).astype(np.uint8), x_test=np.zeros((5, 28, 28), np.uint8),
             y_test=np.arange(5, dtype=np.uint8))
    splits = uk.load_dataset("mnist", root=tmp_path, subset=50)
    assert len(splits.train) == 50 and np.bincount(splits.train.y.numpy()).tolist() == [5] * 10
    again = uk.load_dataset("mnist", root=tmp_path, subset=50)
    assert torch.equal(again.train.x, splits.train.x)
    with pytest.raises(UnlearnkitError, match="takes no argument\\(s\\) 'size'; allowed: test_fraction, split_seed"):
        uk.load_dataset("digits", size=100)


def test_a_given_data_location_is_never_replaced_by_another_copy(tmp_path, monkeypatch):
    found = tmp_path / "data"
    found.mkdir()
    np.savez(found / "mnist.npz", x_train=np.zeros((10, 28, 28), np.uint8), y_train=np.arange(10, dtype=np.uint8),
             x_test=np.zeros((2, 28, 28), np.uint8), y_test=np.arange(2, dtype=np.uint8))
    monkeypatch.chdir(tmp_path)  # ./data/mnist.npz exists and would be found without a location
    monkeypatch.delenv("UNLEARNKIT_DATA", raising=False)
    assert len(uk.load_dataset("mnist").train) == 10
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    np.savez(tmp_path / "other.npz", train_labels=np.zeros(3))
    for root, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is an empty folder"),
                          (tmp_path / "notes.txt", "is a .txt file"), (tmp_path / "other.npz", "is not a mnist file")]:
        with pytest.raises(UnlearnkitError, match=message):
            uk.load_dataset("mnist", root=root)
    monkeypatch.setenv("UNLEARNKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(UnlearnkitError, match=r"\$UNLEARNKIT_DATA .* does not exist"):
        uk.load_dataset("mnist")
