import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import unlearnkit as uk
from unlearnkit.data import ArrayDataset, augment_batch, dataset_labels, iterate_batches, select_forget
from unlearnkit.errors import UnlearnkitError


def test_digits_is_bundled_and_split_stably(digits):
    again = uk.load_dataset("digits")
    assert len(digits.train) == 1348 and len(digits.test) == 449
    assert torch.equal(digits.train.y, again.train.y)
    assert digits.num_classes == 10 and digits.sample_shape == (1, 8, 8)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UnlearnkitError, match="Unknown dataset 'cifar100'; available: cifar10, digits, mnist"):
        uk.load_dataset("cifar100")


def test_missing_data_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("UNLEARNKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnlearnkitError, match="Data file 'mnist.npz' not found"):
        uk.load_dataset("mnist", root=tmp_path)


def test_mnist_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
             y_train=np.arange(20, dtype=np.uint8) % 10, x_test=np.zeros((5, 28, 28), np.uint8),
             y_test=np.arange(5, dtype=np.uint8))
    splits = uk.load_dataset("mnist", root=tmp_path)
    assert splits.train.x.dtype == torch.uint8 and splits.sample_shape == (1, 28, 28)
    x, y = next(iterate_batches(splits.train, 8))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)


def test_cifar10_from_jpeg_npz(tmp_path):
    import io

    from PIL import Image

    def encode(n):
        blobs = []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), i * 10, np.uint8)).save(buf, format="JPEG")
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        return np.concatenate(blobs), offsets

    tb, to = encode(20)
    sb, so = encode(10)
    np.savez(tmp_path / "cifar10_jpeg.npz", train_bytes=tb, train_offsets=to,
             train_labels=np.arange(20, dtype=np.uint8) % 10, test_bytes=sb, test_offsets=so,
             test_labels=np.arange(10, dtype=np.uint8), classes=np.array(["c"] * 10))
    splits = uk.load_dataset("cifar10", root=tmp_path)
    assert splits.train.x.shape == (20, 3, 32, 32) and splits.train.x.dtype == torch.uint8
    assert sorted(splits.train.y.tolist()) == sorted((np.arange(20) % 10).tolist())
    sub = uk.load_dataset("cifar10", root=tmp_path, subset=10)
    assert sorted(sub.train.y.tolist()) == list(range(10))


def test_class_forget_selects_every_sample_of_the_class(digits):
    data = uk.make_unlearning_data(digits.train, digits.test, "class:3,5")
    labels = digits.train.y.numpy()
    assert set(np.flatnonzero(np.isin(labels, [3, 5]))) == set(data.forget_ids)
    assert len(data.retain) + len(data.forget) == len(digits.train)
    assert set(dataset_labels(data.test_forget).tolist()) == {3, 5}
    assert not {3, 5} & set(dataset_labels(data.test_retain).tolist())


def test_random_forget_is_seeded(digits):
    a = select_forget("random:0.1", digits.train, seed=1)
    b = select_forget("random:0.1", digits.train, seed=1)
    c = select_forget("random:0.1", digits.train, seed=2)
    assert np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)
    assert len(a.ids) == round(0.1 * len(digits.train))


def test_ids_from_txt_and_npy(digits, tmp_path):
    (tmp_path / "ids.txt").write_text("5\n1, 3\n")
    np.save(tmp_path / "ids.npy", np.array([7, 2]))
    assert select_forget(f"ids:{tmp_path / 'ids.txt'}", digits.train).ids.tolist() == [1, 3, 5]
    assert select_forget(f"ids:{tmp_path / 'ids.npy'}", digits.train).ids.tolist() == [2, 7]


@pytest.mark.parametrize("spec, message", [
    ("class:10", "Forget class 10 is outside the label range 0..9"),
    ("class:x", "must be comma-separated integers"),
    ("random:1.5", "random:F needs a fraction 0 < F < 1"),
    ("bogus:1", "Unknown forget spec kind 'bogus'"),
    ("3", "Forget spec must be"),
    ("ids:/no/such/file.txt", "does not exist"),
])
def test_bad_forget_specs(digits, spec, message):
    with pytest.raises(UnlearnkitError, match=message):
        select_forget(spec, digits.train)


def test_bad_ids(digits, tmp_path):
    (tmp_path / "out.txt").write_text("1 99999")
    (tmp_path / "text.txt").write_text("1 two")
    (tmp_path / "empty.txt").write_text("")
    np.save(tmp_path / "float.npy", np.array([1.5]))
    with pytest.raises(UnlearnkitError, match="Forget id 99999 is out of range; training ids are 0..1347"):
        select_forget(f"ids:{tmp_path / 'out.txt'}", digits.train)
    with pytest.raises(UnlearnkitError, match="must be plain decimal integers .*line 1 is not"):
        select_forget(f"ids:{tmp_path / 'text.txt'}", digits.train)
    with pytest.raises(UnlearnkitError, match="is empty"):
        select_forget(f"ids:{tmp_path / 'empty.txt'}", digits.train)
    with pytest.raises(UnlearnkitError, match="must be integers; got dtype float64"):
        select_forget(f"ids:{tmp_path / 'float.npy'}", digits.train)
    with pytest.raises(UnlearnkitError, match="is the whole training set"):
        select_forget(np.arange(len(digits.train)), digits.train)


def test_any_torch_dataset_works_and_batches_match_fast_path(digits):
    x = digits.train.normalize(digits.train.x)
    plain = TensorDataset(x, digits.train.y)
    fast = list(iterate_batches(Subset(digits.train, list(range(100))), 32))
    slow = list(iterate_batches(Subset(plain, list(range(100))), 32))
    for (xf, yf), (xs, ys) in zip(fast, slow):
        assert torch.allclose(xf, xs) and torch.equal(yf, ys)
    data = uk.make_unlearning_data(plain, None, "class:3")
    assert len(data.forget) == int((digits.train.y == 3).sum())


def test_augmentation_is_crop_and_flip():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    same = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, same)
    # every output pixel is an input pixel or padding zero
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values


def test_array_dataset_getitem_matches_batch(digits):
    x0, y0 = digits.train[5]
    xb, yb = digits.train.batch(torch.tensor([5]))
    assert torch.equal(x0, xb[0]) and y0 == int(yb[0])
    with pytest.raises(UnlearnkitError):
        ArrayDataset(torch.zeros(3, 2), torch.zeros(2))
