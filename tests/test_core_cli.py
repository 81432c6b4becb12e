import json

import numpy as np
import pytest

from unlearnkit.cli import main


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "original"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "4", "--lr", "0.05",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_a_checkpoint(original):
    meta = json.loads((original / "checkpoint.json").read_text())
    assert meta["model"] == "mlp" and meta["dataset"]["name"] == "digits"
    assert meta["recipe"]["epochs"] == 4 and meta["seed"] == 0 and meta["test_accuracy"] > 80


def test_forget_writes_checkpoint_and_result(original, tmp_path):
    out = tmp_path / "ft"
    rc = main(["forget", "--checkpoint", str(original), "--method", "finetune", "--forget", "class:3",
               "--set", "lr=0.01", "--set", "epochs=2", "--out", str(out), "--quiet"])
    assert rc == 0
    record = json.loads((out / "result.json").read_text())
    assert record["result"]["method"] == "finetune" and record["result"]["config"]["lr"] == 0.01
    assert record["forget"]["kind"] == "class"
    assert (out / "model.safetensors").is_file()


def test_retrain_uses_the_checkpoint_recipe(original, tmp_path):
    out = tmp_path / "rt"
    assert main(["forget", "-c", str(original), "-m", "retrain", "-f", "class:3", "-o", str(out), "-q"]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["result"]["config"]["epochs"] == 4 and record["result"]["config"]["lr"] == 0.05


def test_methods_lists_registered_methods(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "retrain" in out


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "Unknown method 'nope'; available:"),
    (["--forget", "class:12"], "Forget class 12 is outside the label range 0..9"),
    (["--forget", "random:0"], "random:F needs a fraction"),
    (["--forget", "ids:{tmp}/empty.txt"], "is empty"),
    (["--forget", "ids:{tmp}/all.npy"], "is the whole training set"),
    (["--forget", "ids:{tmp}/bad.txt"], "must be plain decimal integers"),
    (["--forget", "ids:{tmp}/range.txt"], "out of range"),
    (["--set", "epochs=0"], "The 'epochs' parameter of FinetuneConfig must be an int in the range [1, inf)"),
    (["--set", "lrr=1"], "Unknown parameter 'lrr' for method 'finetune'"),
    (["--set", "lr=fast"], "Cannot parse 'fast' as float for 'lr'"),
    (["--device", "tpu"], "Unknown device 'tpu'"),
])
def test_bad_forget_input_exits_2_with_one_line_and_writes_nothing(original, tmp_path, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    np.save(tmp_path / "all.npy", np.arange(1348))
    (tmp_path / "bad.txt").write_text("1 2 x")
    (tmp_path / "range.txt").write_text("-1")
    base = {"--method": "finetune", "--forget": "class:3", "--device": "cpu"}
    extra = [a.replace("{tmp}", str(tmp_path)) for a in args]
    for flag in list(base):
        if flag in extra:
            base.pop(flag)
    argv = ["forget", "-c", str(original), "-o", str(tmp_path / "out"), "-q"]
    for k, v in base.items():
        argv += [k, v]
    rc = main(argv + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and err.startswith("Error:") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_mismatch_and_missing(original, tmp_path, capsys):
    assert main(["forget", "-c", str(tmp_path / "none"), "-f", "class:3", "-o", str(tmp_path / "o")]) == 2
    assert "is not an unlearnkit checkpoint" in capsys.readouterr().err
    meta = json.loads((original / "checkpoint.json").read_text())
    meta["model_args"]["hidden"] = 32
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((original / "model.safetensors").read_bytes())
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    assert main(["forget", "-c", str(bad), "-f", "class:3", "-o", str(tmp_path / "o"), "-q"]) == 2
    assert "does not match MLP" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_data_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UNLEARNKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "Data file 'cifar10_jpeg.npz' not found" in capsys.readouterr().err
    assert main(["train", "--dataset", "imagenet", "--out", str(tmp_path / "o")]) == 2
    assert "Unknown dataset 'imagenet'" in capsys.readouterr().err
    assert main(["train", "--model", "resnet", "--out", str(tmp_path / "o")]) == 2
    assert "Unknown model 'resnet'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_mixed_precision_option_is_validated(capsys):
    assert main(["--mixed-precision", "fp8", "methods"]) == 2
    assert "Unknown mixed precision 'fp8'; allowed: no, bf16, fp16" in capsys.readouterr().err


def test_train_passes_model_args(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["train", "--model", "cnn", "--model-arg", "width=4", "--epochs", "1", "--out", str(out), "-q"]) == 0
    assert json.loads((out / "checkpoint.json").read_text())["model_args"]["width"] == 4
    assert main(["train", "--model", "cnn", "--model-arg", "depth=3", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "Unknown argument(s) depth for model 'cnn'" in capsys.readouterr().err
    assert main(["train", "--model-arg", "width", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert not (tmp_path / "x").exists()


def test_usage_errors_exit_2_without_traceback(capsys):
    assert main(["forget", "--bogus"]) == 2
    assert main(["train"]) == 2  # missing --out
    err = capsys.readouterr().err
    assert "No such option" in err and "Traceback" not in err


def test_named_recipe_presets(tmp_path, capsys):
    from unlearnkit.training import Recipe

    r = Recipe.preset("finetune-original", epochs=2)
    assert r.epochs == 2 and r.lr == 0.01 and r.augment is True
    out = tmp_path / "ck"
    assert main(["train", "--model", "mlp", "--recipe", "finetune-original", "--epochs", "1", "--out", str(out), "-q"]) == 0
    assert json.loads((out / "checkpoint.json").read_text())["recipe"]["lr"] == 0.01
    assert main(["train", "--recipe", "fast", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "Unknown recipe 'fast'; available: finetune-original, scratch" in capsys.readouterr().err
