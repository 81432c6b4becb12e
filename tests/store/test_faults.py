"""Faults become the truth: short writes, disk full and permission errors during a request."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess

import pytest
from store_helpers import ledger, make_store, snapshot

from unlearnkit.errors import UnlearnkitError
from unlearnkit.store import Store, files
from unlearnkit.store.versions import Versions


def enospc(*_):
    raise OSError(errno.ENOSPC, "No space left on device")


def writer(plan):
    """An ``os.write`` that follows ``plan`` for writes to the ledger: 'short' writes 7 bytes, 'enospc' fails."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("ledger.jsonl") and plan:
            step = plan.pop(0)
            if step == "enospc":
                enospc()
            return real(fd, bytes(data[:7]))
        return real(fd, data)

    return write


def test_short_ledger_writes_are_completed(tmp_path, checkpoint, monkeypatch):
    st = make_store(tmp_path, checkpoint)
    monkeypatch.setattr(files, "os_write", writer(["short"] * 5))
    receipt = st.request([1, 2])
    monkeypatch.undo()
    assert receipt.status == "applied"
    assert (st.path / "ledger.jsonl").read_bytes().endswith(b"}\n")  # the whole line, not its first 7 bytes
    again = Store.open(st.path)
    assert ledger(st.path)[-1]["request_id"] == receipt.request_id and again.version == receipt.version


def test_write_that_writes_nothing_is_an_error():
    r, w = os.pipe()
    try:
        with pytest.raises(files.ShortWriteError):
            saved, files.os_write = files.os_write, lambda fd, data: 0
            try:
                files.write_fully(w, b"abc")
            finally:
                files.os_write = saved
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("plan", [["enospc"], ["short", "enospc"]], ids=["enospc", "short-then-enospc"])
def test_failed_ledger_append_after_the_swap_is_undone_and_reported(tmp_path, checkpoint, monkeypatch, plan):
    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    before = snapshot(st.path)
    monkeypatch.setattr(files, "os_write", writer(list(plan)))
    with pytest.raises(UnlearnkitError, match=r"NOT applied.*No space left on device \(errno 28\).*unchanged") as e:
        st.request([3, 4])
    monkeypatch.undo()
    assert e.value.__cause__.errno == errno.ENOSPC
    assert snapshot(st.path) == before  # CURRENT back, new version removed, partial ledger line cut off
    again = Store.open(st.path)
    assert again.version == "v000001" and again.forgotten_ids.tolist() == [1, 2] and not again.notes


def test_append_failure_with_a_failed_undo_reports_applied_and_the_next_open_agrees(tmp_path, checkpoint, monkeypatch):
    st = make_store(tmp_path, checkpoint)
    monkeypatch.setattr(files, "os_write", writer(["enospc"]))
    monkeypatch.setattr(Versions, "undo", lambda self, undo: enospc())
    with pytest.warns(UserWarning, match="the request is applied"):
        receipt = st.request([3, 4])
    monkeypatch.undo()
    assert receipt.status == "applied" and "ledger_pending" in receipt.extra
    with pytest.warns(UserWarning, match="rolled forward"):
        again = Store.open(st.path)
    assert again.version == receipt.version and again.model_hash == receipt.model_after
    assert ledger(st.path)[-1]["request_id"] == receipt.request_id


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_failed_version_write_is_one_clear_error_and_changes_nothing(tmp_path, checkpoint, monkeypatch, err):
    st = make_store(tmp_path, checkpoint)
    before = snapshot(st.path)
    real = os.write

    def failing(fd, data):
        if "/models/.v" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(err, os.strerror(err))
        return real(fd, data)

    monkeypatch.setattr(files, "os_write", failing)
    monkeypatch.setattr(files.shutil, "rmtree", lambda *a, **k: enospc())  # cleanup failing too must not hide it
    with pytest.raises(UnlearnkitError, match=rf"writing models/v000001 failed: {os.strerror(err)} \(errno {err}\)"):
        st.request([1, 2])
    monkeypatch.undo()
    leftovers = [p.name for p in (st.path / "models").iterdir() if p.name.startswith(".")]
    assert {k: v for k, v in snapshot(st.path).items() if "/." not in k} == before
    Store.open(st.path)  # the staging directory cleanup could not remove goes on the next open
    assert leftovers and not [p for p in (st.path / "models").iterdir() if p.name.startswith(".")]


def test_cli_request_on_a_full_disk_exits_2_with_one_line(tmp_path, checkpoint, monkeypatch, capsys):
    from unlearnkit.cli import main

    st = make_store(tmp_path, checkpoint)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n")
    monkeypatch.setattr(files, "os_write", writer(["enospc"]))
    assert main(["request", "--store", str(st.path), "--forget", f"ids:{ids}", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "NOT applied" in err and "Traceback" not in err and len(err.splitlines()) <= 3


@contextlib.contextmanager
def read_only(path):
    """``path`` made read-only for real: chmod as a normal user; as root (who ignores permissions) a
    read-only bind mount, or the test is skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        dirs = [path, *[p for p in path.rglob("*") if p.is_dir()]]
        for p in dirs:
            p.chmod(0o555)
        try:
            yield
        finally:
            for p in dirs:
                p.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    try:
        if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(path)],
                                         capture_output=True).returncode != 0:
            pytest.skip("root ignores file permissions and cannot mount a read-only bind here")
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


def test_read_only_store(tmp_path, checkpoint):
    from unlearnkit.cli import main

    st = make_store(tmp_path, checkpoint)
    st.request([1, 2])
    before = snapshot(st.path)
    ids = tmp_path / "ids.txt"
    ids.write_text("3\n")
    with read_only(st.path):
        assert Store.open(st.path).version == "v000001"  # reading needs no write access
        assert main(["store-show", "--store", str(st.path)]) == 0
        assert main(["request", "--store", str(st.path), "--forget", f"ids:{ids}", "-q"]) == 2
        with pytest.raises(UnlearnkitError, match="Read-only file system|Permission denied"):
            Store.open(st.path).request([3])
    assert snapshot(st.path) == before


def test_files_respect_the_umask(tmp_path, checkpoint):
    old = os.umask(0o022)
    try:
        st = make_store(tmp_path, checkpoint)
        st.request([1, 2])
    finally:
        os.umask(old)
    for p in [st.path / "store.json", st.path / "ledger.jsonl", st.path / "CURRENT", *st.version_dir.iterdir()]:
        assert p.stat().st_mode & 0o777 == 0o644, p
    for p in [st.path / "models", st.version_dir]:
        assert p.stat().st_mode & 0o777 == 0o755, p
