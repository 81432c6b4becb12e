"""Progress bars (rich) that every long loop uses; ``set_progress(False)`` or --quiet silences them."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

_enabled = os.environ.get("UNLEARNKIT_QUIET", "") in ("", "0")


def set_progress(enabled: bool) -> None:
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    return _enabled and sys.stderr.isatty()


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


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[_NullBar | _RichBar]:
    """A transient progress bar on stderr with elapsed and remaining time, or a no-op when quiet."""
    if not progress_enabled():
        yield _NullBar()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, status="")
        yield _RichBar(progress, task)
