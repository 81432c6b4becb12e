import copy

import pytest
import torch
from torch.utils.data import Dataset

import unlearnkit as uk
from unlearnkit.errors import InvalidConfigError, UnlearnkitError


class UserNet(torch.nn.Module):
    """A user's own classifier, not from the registry."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU())
        self.out = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.body(x))


class UserDigits(Dataset):
    """A user's own map-style Dataset yielding (tensor, int)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def user_setup(digits):
    train = UserDigits(digits.train.normalize(digits.train.x), digits.train.y)
    test = UserDigits(digits.test.normalize(digits.test.x), digits.test.y)
    torch.manual_seed(0)
    model = uk.train(UserNet(), train, uk.Recipe(epochs=8, lr=0.05, batch_size=64))
    return model, uk.make_unlearning_data(train, test, "class:3")


def test_custom_module_and_dataset(user_setup):
    model, data = user_setup
    before = copy.deepcopy(model.state_dict())
    result = uk.unlearn(model, data.retain, data.forget, "finetune", lr=1e-2, epochs=5)
    assert type(result.model) is UserNet and result.model is not model
    assert uk.accuracy(result.model, data.forget) < 5
    assert uk.accuracy(result.model, data.retain) > 95
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), "input model was modified"


def test_retrain_of_custom_module_starts_fresh(user_setup):
    model, data = user_setup
    result = uk.unlearn(model, data.retain, data.forget, "retrain", epochs=8, lr=0.05, batch_size=64)
    assert type(result.model) is UserNet
    assert uk.accuracy(result.model, data.forget) < 5
    assert uk.accuracy(result.model, data.test_retain) > 90


def test_inplace_modifies_the_given_model(user_setup):
    model, data = user_setup
    model = copy.deepcopy(model)
    result = uk.unlearn(model, data.retain, data.forget, "finetune", epochs=1, inplace=True)
    assert result.model is model


def test_result_records_cost_and_config(trained_cnn, class3):
    r = uk.unlearn(trained_cnn, class3.retain, class3.forget, "finetune", epochs=2, seed=4)
    assert r.method == "finetune" and r.config["epochs"] == 2 and r.config["method"] == "finetune"
    assert r.seconds > 0 and r.peak_memory_mb > 0 and r.seed == 4
    assert r.trainable_params == sum(p.numel() for p in trained_cnn.parameters())
    assert r.sample_passes == 2 * len(class3.retain)
    assert "torch" in r.environment and "model" not in r.to_dict()


def test_same_seed_same_model(trained_cnn, class3):
    a = uk.unlearn(trained_cnn, class3.retain, class3.forget, "finetune", epochs=1, seed=1).model
    b = uk.unlearn(trained_cnn, class3.retain, class3.forget, "finetune", epochs=1, seed=1).model
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("method, overrides", [("finetune", {"lr": 1e-2, "epochs": 5}), ("retrain", {})])
def test_class_forgetting_on_cnn_and_vit(tiny_model, class3, method, overrides):
    name, model = tiny_model
    if method == "retrain":
        from conftest import TINY_MODELS

        overrides = {k: v for k, v in TINY_MODELS[name][1].to_dict().items() if k != "seed"}
    r = uk.unlearn(model, class3.retain, class3.forget, method, **overrides)
    assert type(r.model) is type(model)
    assert uk.accuracy(r.model, class3.forget) < 5
    assert uk.accuracy(r.model, class3.retain) > uk.accuracy(model, class3.retain) - 5


def test_bad_api_input(trained_cnn, class3):
    with pytest.raises(UnlearnkitError, match="Unknown method 'fine_tune'.*Did you mean 'finetune'"):
        uk.unlearn(trained_cnn, class3.retain, class3.forget, "fine_tune")
    with pytest.raises(InvalidConfigError, match="Unknown parameter\\(s\\) 'learning_rate' for FinetuneConfig"):
        uk.unlearn(trained_cnn, class3.retain, class3.forget, "finetune", learning_rate=0.1)
    with pytest.raises(InvalidConfigError, match="The 'epochs' parameter of FinetuneConfig must be an int"):
        uk.unlearn(trained_cnn, class3.retain, class3.forget, "finetune", epochs=0)
    with pytest.raises(UnlearnkitError, match="needs a retain dataset"):
        uk.unlearn(trained_cnn, None, class3.forget, "finetune")
    with pytest.raises(UnlearnkitError, match="model must be a torch.nn.Module"):
        uk.unlearn("model.pt", class3.retain, class3.forget)
    with pytest.raises(UnlearnkitError, match="Unknown device 'tpu'"):
        uk.unlearn(trained_cnn, class3.retain, class3.forget, device="tpu")


def test_unlearn_before_prepare_names_the_missing_call(trained_cnn):
    method = uk.create_method("finetune", trained_cnn)
    with pytest.raises(UnlearnkitError, match="needs prepare\\(retain, forget\\) first"):
        method.unlearn()
