"""Progress that every long loop reports: a rich bar on a terminal, periodic log lines otherwise.

``set_progress(False)``, ``--quiet`` or ``UNLEARNKIT_QUIET=1`` silence both. When stderr is
not a terminal (a batch job's log), a line is written when a loop starts, then every
``UNLEARNKIT_PROGRESS_SECONDS`` (default 30) seconds, and when it ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

_enabled = os.environ.get("UNLEARNKIT_QUIET", "") in ("", "0")


def set_progress(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def note(text: str) -> None:
    """One informational line on stderr (e.g. "resuming ..."), unless progress is silenced."""
    if _enabled:
        print(text, file=sys.stderr, flush=True)


def progress_enabled() -> bool:
    """Whether the rich bar is drawn (progress on, stderr a terminal)."""
    return _enabled and sys.stderr.isatty()


def _log_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("UNLEARNKIT_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class _NullBar:
    def advance(self, n: int = 1, **fields) -> None:
        pass

    def update(self, **fields) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        self._progress.update(self._task, advance=n, **fields)

    def update(self, **fields) -> None:
        self._progress.update(self._task, **fields)


class _LogBar:
    """Progress as plain lines on stderr: at the first step, every ``interval`` seconds, and at the end."""

    def __init__(self, total: int | None, description: str, interval: float):
        self.total, self.description, self.interval = total, description, interval
        self.done, self.status = 0, ""
        self.start = time.monotonic()
        self._last: float | None = None

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.update(**fields)

    def update(self, **fields) -> None:
        self.status = str(fields.get("status", self.status))
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            self.write(now)

    def write(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._last = now
        of = f"/{self.total}" if self.total else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        status = f", {self.status}" if self.status else ""
        print(f"{self.description}: {self.done}{of}{percent}, {now - self.start:.0f} s{status}",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[_NullBar | _RichBar | _LogBar]:
    """A transient progress bar on stderr with elapsed and remaining time, log lines when stderr is not a
    terminal, or a no-op when quiet."""
    if not _enabled:
        yield _NullBar()
        return
    if not sys.stderr.isatty():
        bar = _LogBar(total, description, _log_interval())
        yield bar
        if bar.done:
            bar.write()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, status="")
        yield _RichBar(progress, task)
