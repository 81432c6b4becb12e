"""A transformers sequence classifier (tiny random BERT, no download) through the Python API.

It takes dict batches (input_ids + attention_mask + labels) and returns a ModelOutput
with ``.logits``: finetune, lora (our adapters on the attention query/value layers), the
baselines and evaluate() must all run on it and change it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset

import unlearnkit as uk

transformers = pytest.importorskip("transformers")

SEQ, VOCAB, CLASSES = 8, 100, 3


class TokenDataset(Dataset):
    """Hugging Face style samples; the label is a function of the first token, so it is learnable."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.mask = torch.ones(n, SEQ, dtype=torch.long)
        self.mask[: n // 2, -2:] = 0  # some padding
        self.labels = self.ids[:, 0] % CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=CLASSES)
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def splits():
    return TokenDataset(48, 0), TokenDataset(16, 1)


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> float:
    a, b = before.state_dict(), after.state_dict()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("method,options", [
    ("finetune", dict(epochs=1, batch_size=16)),
    ("lora", dict(epochs=1, batch_size=16, rank=4, targets=("query", "value"))),
    ("gradient_ascent", dict(epochs=1, lr=1e-3)),
    ("random_label", dict(epochs=1, lr=1e-2)),
    ("l1_sparse", dict(epochs=1)),
    ("scrub", dict()),
    ("ssd", dict(alpha=1.5)),  # per-sample importance selects nothing once alpha >= |D|/|D_f|
])
def test_methods_run_on_a_transformers_classifier(bert, splits, method, options):
    retain, forget = splits
    before = copy.deepcopy(bert.state_dict())
    result = uk.unlearn(bert, retain, forget, method, **options)
    assert type(result.model) is type(bert)
    assert _changed(bert, result.model) > 0, f"{method} left the BERT unchanged"
    assert all(torch.equal(before[k], v) for k, v in bert.state_dict().items())  # the input is untouched
    assert result.sample_passes > 0


def test_lora_adapts_the_attention_query_and_value_layers(bert, splits):
    retain, _ = splits
    result = uk.unlearn(bert, retain, None, "lora", epochs=1, batch_size=16, rank=4, targets=("query", "value"))
    assert result.info["lora_targets"] == 4  # 2 layers x (query, value)
    changed = {k for k, v in bert.state_dict().items() if not torch.equal(v, result.model.state_dict()[k])}
    assert any("attention.self.query" in k for k in changed) and any("attention.self.value" in k for k in changed)
    assert not any("attention.self.key" in k for k in changed)
    assert set(result.model.state_dict()) == set(bert.state_dict())


def test_evaluate_and_accuracy_on_a_transformers_classifier(bert, splits):
    retain, forget = splits
    train = torch.utils.data.ConcatDataset([retain, forget])
    data = uk.make_unlearning_data(train, TokenDataset(24, 2), list(range(48, 64)), num_classes=CLASSES)
    evaluation = uk.evaluate(bert, data, seed=0)
    summary = evaluation.summary()
    assert 0 <= summary["UA"] <= 100 and 0 <= summary["RA"] <= 100
    logits = bert(input_ids=forget.ids, attention_mask=forget.mask).logits
    expected = 100.0 * (logits.argmax(1) == forget.labels).float().mean().item()
    assert uk.accuracy(bert, forget) == pytest.approx(expected)
