"""Error lines are printed literally (no rich markup), never echo file contents, and are truncated."""

import pytest

from unlearnkit.cli import main

MAX_MESSAGE_CHARS = 600  # unlearnkit.cli.MAX_MESSAGE_CHARS


@pytest.mark.parametrize("name", ["odd[/]dir", "a[bold]b", "x[red]y[/red]"])
def test_markup_in_a_path_is_printed_literally(tmp_path, capsys, name):
    checkpoint = tmp_path / name
    assert main(["forget", "-c", str(checkpoint), "-f", "class:3", "-o", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"Error: {str(checkpoint)!r} is not an unlearnkit checkpoint (needs checkpoint.json and " \
                  "model.safetensors)."


def test_an_ids_file_is_not_echoed(tmp_path, capsys):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:hunter2:/root:/bin/bash\n")
    assert main(["train", "--epochs", "1", "--model", "mlp", "--out", str(tmp_path / "ck"), "-q"]) == 0
    capsys.readouterr()
    assert main(["forget", "-c", str(tmp_path / "ck"), "-f", f"ids:{secret}", "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "root:x" not in err and "line 1 is not" in err


def test_long_messages_are_truncated_to_one_line(tmp_path, capsys):
    long = tmp_path / ("d" * 200) / ("e" * 200) / ("f" * 200) / "ck"
    assert main(["forget", "-c", str(long), "-f", "class:3", "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.rstrip("\n")
    assert "\n" not in err and len(err) <= MAX_MESSAGE_CHARS and err.endswith("...")
