"""Ids files: plain decimal integers only, so `sort -nu FILE | sha256sum` matches the receipt's hash."""

import shutil
import subprocess

import numpy as np
import pytest

from unlearnkit.data import read_ids_file
from unlearnkit.errors import UnlearnkitError


@pytest.mark.parametrize("token", ["1_0", "+3", "0x10", "1.0", "1e3", "\u0663", "10abc"])
def test_anything_but_plain_decimal_is_refused_with_its_line(tmp_path, token):
    path = tmp_path / "ids.txt"
    path.write_text(f"1\n2\n{token}\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="must be plain decimal integers .*; line 3 is not") as info:
        read_ids_file(path)
    assert token not in str(info.value)


def test_plain_ids_whitespace_and_commas(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("3\n 1, 2\n\n-4\n")
    assert read_ids_file(path).tolist() == [3, 1, 2, -4]


def test_a_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UnlearnkitError, match="Cannot read ids file .* as text"):
        read_ids_file(path)


@pytest.mark.skipif(shutil.which("sort") is None or shutil.which("sha256sum") is None, reason="needs coreutils")
def test_the_documented_shell_check_matches_the_hash(tmp_path):
    from unlearnkit.store import ids_sha256

    path = tmp_path / "ids.txt"
    path.write_text("10\n3\n3\n7\n")
    shell = subprocess.run(f"sort -nu {path} | sha256sum", shell=True, capture_output=True, text=True, check=True)
    assert shell.stdout.split()[0] == ids_sha256(read_ids_file(path))
    assert np.array_equal(np.unique(read_ids_file(path)), [3, 7, 10])
