"""Chained forgetting: a derived checkpoint carries every id forgotten so far, so nothing comes back."""

import json

import numpy as np
import pytest
from torch.utils.data import Subset

import unlearnkit as uk
from unlearnkit.data import dataset_labels
from unlearnkit.checkpoint import load_checkpoint, read_meta
from unlearnkit.cli import main
from unlearnkit.errors import UnlearnkitError
from unlearnkit.workflow import forget_data


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    assert main(["train", "--model", "mlp", "--epochs", "4", "--lr", "0.05", "--out", str(root / "orig"), "-q"]) == 0
    retrain = ["forget", "-m", "retrain", "-s", "epochs=2", "-q"]
    assert main([*retrain, "-c", str(root / "orig"), "-f", "class:3", "-o", str(root / "a")]) == 0
    assert main([*retrain, "-c", str(root / "a"), "-f", "class:5", "-o", str(root / "b")]) == 0
    return root


def test_the_second_checkpoint_records_both_requests(chain, digits):
    labels = dataset_labels(digits.train).numpy()
    record = read_meta(chain / "b")["forgotten"]
    assert record["ids"] == np.flatnonzero(np.isin(labels, [3, 5])).tolist()
    assert [r["spec"] for r in record["requests"]] == ["class:3", "class:5"]
    assert read_meta(chain / "a")["forgotten"]["ids"] == np.flatnonzero(labels == 3).tolist()


def test_class_3_does_not_come_back(chain, digits):
    model, _ = load_checkpoint(chain / "b")
    labels = dataset_labels(digits.train).numpy()
    class3 = Subset(digits.train, np.flatnonzero(labels == 3).tolist())
    assert uk.accuracy(model, class3) < 5  # retrained without class 3: it cannot recognise it
    assert json.loads((chain / "b" / "result.json").read_text())["forget"]["spec"] == "class:5"


def test_later_requests_and_eval_work_on_d_minus_everything_forgotten(chain, digits, capsys):
    meta = read_meta(chain / "b")
    data = forget_data(digits, "random:0.1", 0, meta)
    labels = dataset_labels(digits.train).numpy()
    assert not np.isin(labels[data.retain_ids], [3, 5]).any()
    data = forget_data(digits, "class:5", 0, meta)
    test_labels = dataset_labels(data.test_retain).numpy()
    assert not np.isin(test_labels, [3, 5]).any()  # TA leaves out every forgotten class
    out = chain / "eval.json"
    assert main(["eval", "-c", str(chain / "b"), "-f", "class:3", "-o", str(out), "-q"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["forget_acc@1"] < 5


def test_a_damaged_forgotten_record_is_a_clear_error(chain, digits):
    meta = {**read_meta(chain / "b"), "forgotten": {"ids": [-1]}}
    with pytest.raises(UnlearnkitError, match="'forgotten' record is damaged"):
        forget_data(digits, "class:5", 0, meta)
