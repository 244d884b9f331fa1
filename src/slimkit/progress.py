"""Progress display: a rich bar on a terminal, silent otherwise (CI, pipes, SLIMKIT_QUIET=1)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


def enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("SLIMKIT_QUIET") != "1"


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a rich progress bar when stderr is a terminal."""
    if not enabled():

        def noop(n: int = 1) -> None:
            return None

        yield noop
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            prog.advance(task, n)

        yield advance
