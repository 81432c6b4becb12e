"""Conventions users expect: --threads, flags shown as flags, py.typed, the README's test command."""

import re
import sys
from pathlib import Path

import pytest
import torch

import unlearnkit
from unlearnkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [[], ["train"], ["forget"], ["eval"], ["bench"], ["request"]])
def test_help_shows_flags_as_flags(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--help" in out and "<bool>" not in out


def test_threads_sets_torch_threads(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["--threads", "3", "models"]) == 0
    assert calls == [3]


def test_py_typed_is_shipped():
    assert (Path(unlearnkit.__file__).parent / "py.typed").is_file()
    if sys.version_info >= (3, 11):
        import tomllib

        config = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert "py.typed" in config["tool"]["setuptools"]["package-data"]["unlearnkit"]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Run the tests", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_test_command() in ci.splitlines()


def test_the_readme_test_command_prints_pytests_summary_line():
    """-q twice (the command's and an addopts one) hides 'N passed in S s'."""
    command = _readme_test_command()
    quiet = len(re.findall(r"(?<!\S)-q\b", command)) + 2 * len(re.findall(r"(?<!\S)-qq\b", command))
    if sys.version_info >= (3, 11):
        import tomllib

        ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
        addopts = ini.get("addopts", "")
        quiet += len(re.findall(r"(?<!\S)-q\b", addopts))
    assert quiet <= 1
