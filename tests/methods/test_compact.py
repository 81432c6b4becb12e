"""compact: pruned channels removed physically, the function unchanged, the residual stream left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import unlearnkit as uk
from unlearnkit.components.compaction import channel_chains
from unlearnkit.errors import InvalidConfigError, UnlearnkitError

MODELS = {  # name -> (kwargs, input shape)
    "cnn": (dict(in_channels=1, image_size=8, width=8), (6, 1, 8, 8)),
    "resnet20": (dict(width=4), (6, 3, 16, 16)),
    "vit_tiny": (dict(in_channels=1, image_size=8, dim=24, depth=2, heads=2), (6, 1, 8, 8)),
    "mlp": (dict(in_channels=1, image_size=8, hidden=24), (6, 1, 8, 8)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    kwargs, shape = MODELS[name]
    model = uk.create_model(name, num_classes=10, **kwargs)
    x = torch.randn(*shape)
    with torch.no_grad():  # BatchNorm running statistics that are not the defaults
        model.train()(x)
    return model.eval(), x


def outputs(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    model = copy.deepcopy(model)
    getattr(model, mode)()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", list(MODELS))
def test_compact_keeps_the_function_and_removes_the_pruned_channels(name):
    model, x = build(name)
    uk.prune(model, kind="l2_structured", ratio=0.5, prune_norms=True)
    before = copy.deepcopy(model.state_dict())
    result = uk.compact(model)
    small = result.model
    assert type(small) is type(model) and small is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    for mode in ("eval", "train"):
        assert torch.allclose(outputs(small, x, mode), outputs(model, x, mode), atol=1e-5), mode
    assert result.removed and result.params_after < result.params_before
    assert result.params_after == sum(p.numel() for p in small.parameters())
    for producer, n in result.removed.items():
        old, new = model.get_submodule(producer), small.get_submodule(producer)
        assert old.weight.shape[0] - new.weight.shape[0] == n == old.weight.shape[0] // 2


def test_residual_stream_is_never_shrunk():
    model, x = build("resnet20")
    uk.prune(model, ratio=0.5, prune_norms=True)
    chains = {c.producer: c for c in channel_chains(model)}
    assert chains["layer1.0.conv1"].removable and chains["layer1.0.conv1"].consumers == ["layer1.0.conv2"]
    for blocked in ("conv1", "layer1.0.conv2", "layer2.0.shortcut.0"):  # they feed a residual addition
        assert not chains[blocked].removable
    small = uk.compact(model).model
    assert set(uk.compact(model).removed) == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    assert small.get_submodule("layer1.0.conv2").weight.shape[0] == model.get_submodule("layer1.0.conv2").weight.shape[0]
    assert torch.allclose(outputs(small, x, "eval"), outputs(model, x, "eval"), atol=1e-5)


def test_batchnorm_shift_keeps_a_zeroed_filter():
    """Without prune_norms a pruned conv channel still carries its BatchNorm shift: it must stay."""
    model, x = build("cnn")
    uk.prune(model, ratio=0.5)  # filters zeroed, BatchNorm left as it is
    result = uk.compact(model)
    assert result.removed == {} and result.params_after == result.params_before
    torch.manual_seed(1)
    mlp, _ = build("mlp")  # no BatchNorm: zero rows (and biases) are dead on their own
    uk.prune(mlp, ratio=0.5)
    assert set(uk.compact(mlp).removed) == {"features.1", "features.3"}


class Reused(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.fc2(torch.relu(self.fc2(torch.relu(self.fc1(x))))))  # fc2 called twice


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.fc1(x)) if x.sum() > 0 else self.head(-self.fc1(x))


class Wrapper(nn.Module):
    """A traceable top level around a block torch.fx cannot trace (kept opaque)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 4)
        self.inner = DataDependent()

    def forward(self, x):
        return self.inner(self.fc2(torch.relu(self.fc1(x))))


@torch.no_grad()
def zero_outputs(layer: nn.Linear, n: int) -> None:
    """Prune the first ``n`` output rows of ``layer`` (weights and biases)."""
    layer.weight[:n] = 0
    layer.bias[:n] = 0


def test_reused_module_is_not_shrunk():
    model = Reused()
    zero_outputs(model.fc1, 2)
    zero_outputs(model.fc2, 3)
    result = uk.compact(model)
    assert "fc2" not in result.removed and "fc1" not in result.removed  # fc1 feeds the reused fc2


def test_untraceable_block_is_opaque_and_untraceable_model_is_an_error():
    model = Wrapper()
    zero_outputs(model.fc1, 3)
    zero_outputs(model.fc2, 2)
    x = torch.randn(5, 4)
    result = uk.compact(model)
    assert result.removed == {"fc1": 3}  # fc2 feeds the opaque block: kept
    assert torch.allclose(result.model(x), model(x), atol=1e-6)
    with pytest.raises(UnlearnkitError, match="compact and prune_norms need a model whose forward torch.fx can") as info:
        uk.compact(DataDependent())
    assert "\n" not in str(info.value)
    with pytest.raises(UnlearnkitError, match="torch.fx"):
        uk.prune(Untraceable(), prune_norms=True)


def test_prune_norms_needs_structured_pruning():
    model, _ = build("cnn")
    with pytest.raises(UnlearnkitError, match="prune_norms"):
        uk.prune(model, kind="magnitude_global", ratio=0.5, prune_norms=True)
    with pytest.raises(InvalidConfigError, match="'prune_norms' parameter of PruneFinetuneConfig needs"):
        uk.make_config("prune_finetune", kind="magnitude_global", prune_norms=True)
    with pytest.raises(InvalidConfigError, match="'prune_norms' parameter of PruneLoraConfig needs"):
        uk.make_config("prune_lora", prune_kind="magnitude_global", prune_norms=True)


@pytest.mark.parametrize("method, settings", [
    ("prune_finetune", dict(epochs=1, batch_size=64, lr=1e-2)),
    ("prune_lora", dict(epochs=1, batch_size=64, lr=3e-3)),
])
def test_unlearned_pruned_model_compacts_exactly(method, settings, trained_cnn, class3):
    result = uk.unlearn(trained_cnn, class3.retain, class3.forget, method, prune_norms=True, **settings)
    model = result.model.eval()
    for chain in channel_chains(model):  # the pruned BatchNorm entries stayed zero through training
        producer = model.get_submodule(chain.producer)
        zero_rows = producer.weight.detach().flatten(1).eq(0).all(1)
        for norm in chain.norms:
            bn = model.get_submodule(norm)
            assert torch.equal(bn.weight.detach()[zero_rows], torch.zeros(int(zero_rows.sum())))
            assert torch.equal(bn.bias.detach()[zero_rows], torch.zeros(int(zero_rows.sum())))
    small = uk.compact(model)
    assert small.removed and small.params_after < small.params_before
    x = torch.stack([class3.test[i][0] for i in range(64)])
    assert torch.allclose(outputs(small.model, x, "eval"), outputs(model, x, "eval"), atol=1e-4)


def test_cli_compact_writes_a_checkpoint_that_loads_and_evaluates(tmp_path, capsys):
    from unlearnkit.checkpoint import load_checkpoint
    from unlearnkit.cli import main

    original, pruned, small = tmp_path / "original", tmp_path / "pruned", tmp_path / "small"
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--model-arg", "width=8", "--epochs", "2",
                 "--out", str(original), "-q"]) == 0
    assert main(["compact", "--checkpoint", str(original), "--out", str(small), "-q"]) == 2  # nothing pruned yet
    assert "prune_norms=true" in capsys.readouterr().err
    assert main(["forget", "--checkpoint", str(original), "--method", "prune_finetune", "--forget", "class:3",
                 "--set", "prune_norms=true", "--set", "epochs=1", "--out", str(pruned), "-q"]) == 0
    assert main(["compact", "--checkpoint", str(pruned), "--out", str(small), "-q"]) == 0
    big, _ = load_checkpoint(pruned)
    compacted, meta = load_checkpoint(small)
    assert meta["compacted"] == {"features.0": 4, "features.3": 8}
    assert sum(p.numel() for p in compacted.parameters()) < sum(p.numel() for p in big.parameters())
    x = torch.stack([uk.load_dataset("digits").test[i][0] for i in range(32)])
    with torch.no_grad():
        assert torch.allclose(compacted(x), big(x), atol=1e-5)
    assert main(["eval", "--checkpoint", str(small), "--forget", "class:3", "-q"]) == 0
    # a further request on the compact model keeps it loadable
    again = tmp_path / "again"
    assert main(["forget", "--checkpoint", str(small), "--method", "finetune", "--forget", "class:5",
                 "--set", "epochs=1", "--out", str(again), "-q"]) == 0
    assert load_checkpoint(again)[1]["compacted"] == meta["compacted"]
