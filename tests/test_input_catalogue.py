"""A catalogue of careless inputs, each held to one contract.

CLI: exit code 2, a short message on stderr (at most a few lines, no traceback),
nothing written, the inputs untouched. API: an ``UnlearnkitError`` with a message
of at most a few lines, the inputs untouched. CLI cases run in-process (click's
CliRunner isolation captures the streams); two run as real subprocesses.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import Dataset, Subset

import unlearnkit as uk
from unlearnkit.bench import load_bench_config
from unlearnkit.cli import main
from unlearnkit.data import ArrayDataset
from unlearnkit.data.loading import with_keys
from unlearnkit.errors import UnlearnkitError
from unlearnkit.models.outputs import as_logits
from unlearnkit.workflow import parse_model_args

MAX_LINES = 3


# ---- fixtures: a digits and an mnist checkpoint, data files of several kinds ----------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    np.savez(root / "mnist" / "mnist.npz", x_train=rng.integers(0, 255, (60, 28, 28), dtype=np.uint8),
             y_train=(np.arange(60) % 10).astype(np.uint8), x_test=np.zeros((10, 28, 28), np.uint8),
             y_test=(np.arange(10) % 10).astype(np.uint8))
    (root / "empty").mkdir()
    (root / "wrong").mkdir()
    np.savez(root / "wrong" / "mnist.npz", train_bytes=np.zeros(3, np.uint8), train_labels=np.zeros(3, np.uint8))
    (root / "notes.txt").write_text("not data\n")
    (root / "garbage.npz").write_bytes(b"\x00not a zip at all")
    (root / "empty.yaml").write_text("")
    (root / "comments.yaml").write_text("# only a comment\n")
    (root / "bad.yaml").write_text("name: x\nmethods:\n  finetune: {lr: 0.1\n  retrain: {}\n")
    (root / "bad.toml").write_text("name = 'x'\nmethods = = 3\nseeds = [0]\n")
    (root / "list.yaml").write_text("- finetune\n- retrain\n")
    (root / "unknown_field.yaml").write_text("methods: {finetune: {}}\nlearning_rate: 3\n")
    (root / "ids.txt").write_text("1\n2\nthree\n")
    for name, argv in (("digits_ckpt", ["--dataset", "digits"]),
                       ("mnist_ckpt", ["--dataset", "mnist", "--data-root", str(root / "mnist")])):
        assert main(["train", *argv, "--model", "mlp", "--model-arg", "hidden=16", "--epochs", "1",
                     "--out", str(root / name), "-q"]) == 0
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], env: dict | None = None) -> tuple[int, str]:
    runner = CliRunner()
    with runner.isolation(env=env) as streams:
        rc = main(argv)
    return rc, streams[1].getvalue().decode()


def _check_message(text: str, expected: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text and lines, text
    assert len(lines) <= MAX_LINES, text
    assert expected.lower() in " ".join(" ".join(lines).split()).lower(), text


# ---- CLI cases: (id, argv with {ws} and {out} placeholders, expected text in stderr) ------------------------
T = ["train", "--dataset", "digits", "--epochs", "1", "--out", "{out}", "-q"]
TM = ["train", "--dataset", "mnist", "--epochs", "1", "--out", "{out}", "-q"]
F = ["forget", "--checkpoint", "{ws}/digits_ckpt", "--out", "{out}", "-q"]
E = ["eval", "--checkpoint", "{ws}/digits_ckpt", "-q"]
B = ["bench", "--out", "{out}", "-q", "--config"]

CLI_CASES = [
    # malformed or impossible values
    ("model-arg-not-int", T + ["--model", "cnn", "--model-arg", "width=abc"], "'width' argument of model 'cnn' must be an int >= 1"),
    ("model-arg-zero", T + ["--model", "cnn", "--model-arg", "width=0"], "must be an int >= 1; got 0"),
    ("model-arg-negative", T + ["--model", "resnet20", "--model-arg", "width=-4"], "got -4"),
    ("model-arg-float-for-int", T + ["--model", "cnn", "--model-arg", "width=1.5"], "got 1.5"),
    ("model-arg-no-equals", T + ["--model-arg", "width"], "expects KEY=VALUE"),
    ("model-arg-no-key", T + ["--model-arg", "=3"], "expects KEY=VALUE"),
    ("model-arg-no-value", T + ["--model-arg", "width="], "expects KEY=VALUE"),
    ("model-arg-twice", T + ["--model-arg", "width=8", "--model-arg", "width=16"], "given twice"),
    ("model-arg-unknown", T + ["--model", "cnn", "--model-arg", "depth=3"], "Unknown argument(s) depth"),
    ("model-arg-mlp-hidden", T + ["--model", "mlp", "--model-arg", "hidden=wide"], "'hidden' argument of model 'mlp'"),
    ("model-arg-vit-ratio", T + ["--model", "vit_tiny", "--model-arg", "mlp_ratio=0"], "must be a number > 0"),
    ("model-arg-vit-heads", T + ["--model", "vit_tiny", "--model-arg", "dim=30", "--model-arg", "heads=4"], "cannot be built"),
    ("epochs-zero", ["train", "--epochs", "0", "--out", "{out}", "-q"], "'epochs' parameter"),
    ("lr-negative", T + ["--lr", "-1"], "'lr' parameter"),
    ("optimizer-unknown", T + ["--optimizer", "rmsprop"], "'optimizer' parameter"),
    ("schedule-unknown", T + ["--schedule", "linear"], "'schedule' parameter"),
    ("batch-size-zero", T + ["--batch-size", "0"], "'batch_size' parameter"),
    ("epochs-not-a-number", T + ["--epochs", "many"], "Invalid value for '--epochs'"),
    ("recipe-unknown", T + ["--recipe", "fast"], "Unknown recipe 'fast'"),
    ("dataset-unknown", T + ["--dataset", "imagenet"], "Unknown dataset 'imagenet'"),
    ("model-unknown", T + ["--model", "resnet"], "Unknown model 'resnet'"),
    ("mixed-precision-unknown", ["--mixed-precision", "fp8"] + T, "Unknown mixed precision 'fp8'"),
    ("digits-subset-too-small", T + ["--subset", "5"], "'subset' dataset argument must be an int >= 10"),
    ("mnist-subset-too-small", TM + ["--data-root", "{ws}/mnist", "--subset", "5"], "'subset' dataset argument must be an int >= 10"),
    ("mnist-subset-zero", TM + ["--data-root", "{ws}/mnist", "--subset", "0"], "'subset' dataset argument must be an int >= 10"),
    ("mnist-subset-too-large", TM + ["--data-root", "{ws}/mnist", "--subset", "1000"], "exceeds the 60 training samples"),
    # mismatches and given locations
    ("data-root-missing", TM + ["--data-root", "{ws}/nowhere"], "does not exist"),
    ("data-root-empty", TM + ["--data-root", "{ws}/empty"], "is an empty folder"),
    ("data-root-wrong-file-kind", TM + ["--data-root", "{ws}/notes.txt"], "is a .txt file"),
    ("data-file-of-other-dataset", TM + ["--data-root", "{ws}/wrong"], "is not a mnist file: it lacks x_train"),
    ("data-file-corrupt", TM + ["--data-root", "{ws}/garbage.npz"], "as an .npz file"),
    ("eval-reference-other-dataset", E + ["--forget", "class:3", "--reference", "{ws}/mnist_ckpt", "--data-root",
                                          "{ws}/mnist"], "is of another task than the model: its dataset is 'mnist'"),
    ("eval-reference-missing", E + ["--forget", "class:3", "--reference", "{ws}/nowhere"], "is not an unlearnkit checkpoint"),
    ("eval-forget-class-out-of-range", E + ["--forget", "class:42"], "outside the label range 0..9"),
    # forget: method parameters and forget specs
    ("set-not-a-number", F + ["--forget", "class:3", "--set", "lr=abc"], "Cannot parse 'abc'"),
    ("set-negative-lr", F + ["--forget", "class:3", "--set", "lr=-1"], "'lr' parameter of FinetuneConfig"),
    ("set-unknown", F + ["--forget", "class:3", "--set", "learning_rate=0.1"], "Unknown parameter 'learning_rate'"),
    ("set-no-equals", F + ["--forget", "class:3", "--set", "lr"], "expects KEY=VALUE"),
    ("set-epochs-zero", F + ["--forget", "class:3", "--set", "epochs=0"], "'epochs' parameter"),
    ("set-deprecated-name-bad-value", F + ["--forget", "class:3", "-m", "prune_lora", "--set", "prune_ratio=1.5"],
     "'prune_ratio' is now 'ratio'"),
    ("method-unknown", F + ["--forget", "class:3", "--method", "unlearn_all"], "Unknown method 'unlearn_all'"),
    ("forget-class-out-of-range", F + ["--forget", "class:10"], "outside the label range"),
    ("forget-random-fraction", F + ["--forget", "random:2"], "fraction 0 < F < 1"),
    ("forget-ids-missing-file", F + ["--forget", "ids:{ws}/nope.txt"], "nope.txt"),
    ("forget-ids-not-integers", F + ["--forget", "ids:{ws}/ids.txt"], "must be plain decimal integers"),
    ("forget-spec-unknown", F + ["--forget", "everything"], "Forget spec must be"),
    ("forget-class-empty", F + ["--forget", "class:"], "names no class"),
    ("checkpoint-missing", ["forget", "-c", "{ws}/nowhere", "-f", "class:3", "-o", "{out}", "-q"], "is not an unlearnkit checkpoint"),
    ("checkpoint-is-data", ["forget", "-c", "{ws}/mnist", "-f", "class:3", "-o", "{out}", "-q"], "is not an unlearnkit checkpoint"),
    # benchmark configs
    ("bench-empty-yaml", B + ["{ws}/empty.yaml"], "is empty; it needs at least 'methods'"),
    ("bench-comment-only-yaml", B + ["{ws}/comments.yaml"], "is empty"),
    ("bench-yaml-syntax", B + ["{ws}/bad.yaml"], "line 4:"),
    ("bench-toml-syntax", B + ["{ws}/bad.toml"], "line 2"),
    ("bench-yaml-list", B + ["{ws}/list.yaml"], "must be a mapping of fields; got list"),
    ("bench-unknown-field", B + ["{ws}/unknown_field.yaml"], "'learning_rate'"),
    ("bench-config-missing", B + ["no-such-config"], "not found"),
    # methods listing and other commands
    ("methods-unknown-name", ["methods", "lorra"], "Unknown method 'lorra'"),
    ("methods-pattern-matches-nothing", ["methods", "zzz*"], "Unknown method 'zzz*'"),
    ("compact-missing", ["compact", "-c", "{ws}/nowhere", "-o", "{out}", "-q"], "is not an unlearnkit checkpoint"),
    ("prepare-missing", ["prepare", "-c", "{ws}/nowhere", "-o", "{out}", "-q"], "is not an unlearnkit checkpoint"),
    ("report-missing", ["report", "{ws}/nowhere"], "nowhere"),
]


def test_the_catalogue_is_big_enough():
    assert len(CLI_CASES) >= 40 and len(API_CASES) >= 30
    assert len({c[0] for c in CLI_CASES}) == len(CLI_CASES) and len({c[0] for c in API_CASES}) == len(API_CASES)


def test_bad_cli_inputs_exit_2_with_one_clear_line(ws, tmp_path, monkeypatch):
    monkeypatch.delenv("UNLEARNKIT_DATA", raising=False)
    before = _snapshot(ws)
    failures = []
    for name, argv, expected in CLI_CASES:
        out = tmp_path / name
        args = [a.replace("{ws}", str(ws)).replace("{out}", str(out)) for a in argv]
        rc, err = run_cli(args)
        try:
            assert rc == 2, f"exit {rc}"
            _check_message(err, expected)
            assert not out.exists(), "wrote its output"
        except AssertionError as e:
            failures.append(f"{name}: {e} | {err.strip()[:300]}")
    assert not failures, "\n".join(failures)
    assert _snapshot(ws) == before, "an input file changed"


def test_an_environment_data_location_is_never_replaced(ws, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()  # ./data/mnist.npz exists and would be found without a given location
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mnist.npz").write_bytes((ws / "mnist" / "mnist.npz").read_bytes())
    for location, expected in ((ws / "nowhere", "$UNLEARNKIT_DATA"), (ws / "empty", "is an empty folder")):
        rc, err = run_cli(["train", "--dataset", "mnist", "--epochs", "1", "--out", str(tmp_path / "o"), "-q"],
                          env={"UNLEARNKIT_DATA": str(location)})
        assert rc == 2
        _check_message(err, expected)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,expected", [
    (["train", "--model", "cnn", "--model-arg", "width=abc", "--out", "{out}", "-q"], "must be an int >= 1"),
    (["bench", "--config", "{ws}/empty.yaml", "--out", "{out}", "-q"], "is empty"),
])
def test_bad_inputs_in_a_real_process(ws, tmp_path, argv, expected):
    out = tmp_path / "o"
    args = [a.replace("{ws}", str(ws)).replace("{out}", str(out)) for a in argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "unlearnkit.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2
    _check_message(proc.stderr, expected)
    assert not out.exists()


# ---- API cases ---------------------------------------------------------------------------------------------
class Pairs(Dataset):
    def __init__(self, x, y, form="pair"):
        self.x, self.y, self.form = x, y, form

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if self.form == "no-label":
            return {"pixel_values": self.x[i], "caption": "a digit"}
        if self.form == "no-input":
            return {"features_v2": self.x[i], "label": self.y[i]}
        if self.form == "scalar":
            return self.x[i]
        return self.x[i], self.y[i]


class Returns(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.value = value

    def forward(self, x):
        logits = self.lin(x.flatten(1))
        return {"text": "no logits", "3d": logits[:, :, None].expand(-1, -1, 2)}[self.value]


@pytest.fixture(scope="module")
def api(ws):
    torch.manual_seed(0)
    model = uk.create_model("mlp", num_classes=10, in_channels=1, image_size=8, hidden=16)
    digits = uk.load_dataset("digits")
    data = uk.make_unlearning_data(digits.train, digits.test, "class:3")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % 10
    nan_x = x.clone()
    nan_x[3, 0, 1, 1] = float("nan")
    inf_x = x.clone()
    inf_x[7, 0, 0, 0] = float("inf")
    return dict(model=model, data=data, train=digits.train, x=x, y=y, nan_x=nan_x, inf_x=inf_x, ws=ws)


def _u(a, retain, forget=None, method="finetune", **kw):
    return uk.unlearn(a["model"], retain, forget, method, **{"epochs": 1, **kw})


API_CASES = [
    ("create-model-zero-width", lambda a: uk.create_model("cnn", num_classes=10, width=0), "must be an int >= 1"),
    ("create-model-text-width", lambda a: uk.create_model("cnn", num_classes=10, width="abc"), "got 'abc'"),
    ("create-model-bool-width", lambda a: uk.create_model("cnn", num_classes=10, width=True), "got True"),
    ("create-model-zero-classes", lambda a: uk.create_model("cnn", num_classes=0), "'num_classes' argument"),
    ("create-model-impossible", lambda a: uk.create_model("vit_tiny", num_classes=10, dim=30, heads=4), "cannot be built"),
    ("parse-model-args", lambda a: parse_model_args(["width"]), "expects KEY=VALUE"),
    ("dataset-arg-unknown", lambda a: uk.load_dataset("digits", size=100), "allowed: test_fraction, split_seed, subset"),
    ("mnist-subset-bad", lambda a: uk.load_dataset("mnist", root=a["ws"] / "mnist", subset=0), "must be an int >= 10"),
    ("root-missing", lambda a: uk.load_dataset("mnist", root=a["ws"] / "nowhere"), "does not exist"),
    ("root-empty", lambda a: uk.load_dataset("mnist", root=a["ws"] / "empty"), "is an empty folder"),
    ("root-wrong-kind", lambda a: uk.load_dataset("cifar10", root=a["ws"] / "notes.txt"), "is a .txt file"),
    ("root-other-dataset", lambda a: uk.load_dataset("cifar10", root=a["ws"] / "mnist" / "mnist.npz"),
     "is not a cifar10 file"),
    ("images-without-channel", lambda a: ArrayDataset(torch.zeros(4, 8, 8), torch.zeros(4)), "x[:, None]"),
    ("images-channels-last", lambda a: ArrayDataset(torch.zeros(4, 32, 32, 3), torch.zeros(4)), "channels-last"),
    ("x-y-length", lambda a: ArrayDataset(torch.zeros(4, 2), torch.zeros(3)), "x has 4 samples but y has 3"),
    ("fractional-labels", lambda a: ArrayDataset(torch.zeros(2, 2), torch.tensor([0.5, 1.0])), "fractional"),
    ("nan-inputs-arrays", lambda a: _u(a, ArrayDataset(a["nan_x"], a["y"])), "contain NaN"),
    ("inf-inputs-dataset", lambda a: _u(a, Pairs(a["inf_x"], a["y"])), "contain inf"),
    ("nan-inputs-accuracy", lambda a: uk.accuracy(a["model"], Pairs(a["nan_x"], a["y"])), "contain NaN"),
    ("labels-out-of-range", lambda a: _u(a, ArrayDataset(a["x"], a["y"] + 5)), "outside the model's 10 outputs"),
    ("negative-labels", lambda a: _u(a, ArrayDataset(a["x"], a["y"] - 1), None), "label -1"),
    ("retain-is-forget", lambda a: _u(a, a["data"].retain, a["data"].retain), "the same dataset"),
    ("retain-overlaps-forget", lambda a: _u(a, a["data"].retain, Subset(a["train"], [0, 1, 2])), "in both the retain"),
    ("empty-accuracy", lambda a: uk.accuracy(a["model"], Subset(a["train"], [])), "non-empty dataset"),
    ("none-accuracy", lambda a: uk.accuracy(a["model"], None), "got None"),
    ("empty-retain", lambda a: _u(a, Subset(a["train"], [])), "The retain set is empty"),
    ("dict-without-label", lambda a: _u(a, Pairs(a["x"], a["y"], "no-label")), "need a label key"),
    ("dict-without-input", lambda a: _u(a, Pairs(a["x"], a["y"], "no-input")), "need an input key"),
    ("items-not-pairs", lambda a: _u(a, Pairs(a["x"], a["y"], "scalar")), "must be (x, y) pairs"),
    ("with-keys-nothing", lambda a: with_keys(Pairs(a["x"], a["y"])), "with_keys needs"),
    ("images-hw-to-cnn", lambda a: uk.accuracy(uk.create_model("cnn", num_classes=10, in_channels=1, width=4),
                                               Pairs(a["x"][:, 0], a["y"])), "(N, C, H, W)"),
    ("model-returns-text", lambda a: uk.accuracy(Returns("text"), ArrayDataset(a["x"], a["y"])), "expected logits"),
    ("model-returns-3d", lambda a: as_logits(Returns("3d")(a["x"])), "(batch, classes)"),
    ("model-not-a-module", lambda a: uk.unlearn("model.pt", a["data"].retain, None, "finetune"), "torch.nn.Module"),
    ("method-unknown", lambda a: _u(a, a["data"].retain, method="finetuning"), "Did you mean 'finetune'"),
    ("config-unknown-field", lambda a: _u(a, a["data"].retain, learning_rate=0.1), "Unknown parameter(s) 'learning_rate'"),
    ("config-bad-value", lambda a: _u(a, a["data"].retain, lr=-0.1), "'lr' parameter of FinetuneConfig"),
    ("deprecated-bad-value", lambda a: uk.make_config("prune_lora", prune_ratio=1.5), "'prune_ratio' is now 'ratio'"),
    ("deprecated-and-new", lambda a: uk.make_config("prune_lora", prune_ratio=0.3, ratio=0.3), "give only 'ratio'"),
    ("forget-spec", lambda a: uk.make_unlearning_data(a["train"], None, "class:42"), "outside the label range"),
    ("bench-empty-dict", lambda a: load_bench_config({}), "is empty"),
    ("bench-empty-file", lambda a: load_bench_config(a["ws"] / "empty.yaml"), "is empty"),
    ("bench-yaml-line", lambda a: load_bench_config(a["ws"] / "bad.yaml"), "line 4:"),
    ("recipe-epochs", lambda a: uk.Recipe(epochs=0), "'epochs' parameter of Recipe"),
]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bad_api_inputs_raise_one_clear_error(api):
    model_before = _state(api["model"])
    arrays_before = [t.clone() for t in (api["x"], api["nan_x"], api["train"].x, api["train"].y)]
    files_before = _snapshot(api["ws"])
    failures = []
    for name, call, expected in API_CASES:
        try:
            with pytest.raises(UnlearnkitError) as info, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. the deprecation warnings of the renamed-parameter cases
                call(api)
            _check_message(str(info.value), expected)
        except (AssertionError, pytest.fail.Exception) as e:
            failures.append(f"{name}: {e}")
        except Exception as e:  # a traceback from deep inside is the failure this catalogue is about
            failures.append(f"{name}: raised {type(e).__name__}: {str(e)[:200]}")
    assert not failures, "\n".join(failures)
    assert all(torch.equal(v, api["model"].state_dict()[k]) for k, v in model_before.items())
    after = (api["x"], api["nan_x"], api["train"].x, api["train"].y)
    assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(arrays_before, after))  # NaN != NaN
    assert _snapshot(api["ws"]) == files_before


def test_deprecated_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'prune_ratio' parameter of PruneLoraConfig is deprecated"):
        config = uk.make_config("prune_lora", prune_ratio=0.25, prune_layers="features.0")
    assert config.ratio == 0.25 and config.layers == ("features.0",)
    with pytest.warns(DeprecationWarning):
        assert config.prune_ratio == 0.25
    with pytest.warns(DeprecationWarning):
        assert config.replace(prune_kind="magnitude_global").kind == "magnitude_global"
    assert uk.make_config("prune_finetune", ratio=0.25).ratio == config.ratio  # one name for one concept


def test_methods_name_lists_parameters_with_defaults_allowed_values_and_help():
    runner = CliRunner()
    with runner.isolation() as streams:
        rc = main(["methods", "prune_lora"])
    out = streams[0].getvalue().decode()
    assert rc == 0
    for text in ("ratio", "0.5", "[0.0, 1.0)", "Fraction pruned", "prune_ratio -> ratio", "forget_loss"):
        assert text in out, text
    assert "unlearnkit methods NAME" in uk.unlearn.__doc__
