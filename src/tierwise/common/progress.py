"""Rich progress bars with one look across the project.

Bars show only where someone watches: on a terminal (stderr), and not under `--json -` (the command calls
`silence()`). Set TIERWISE_NO_PROGRESS=1 to silence them entirely (tests and worker processes do).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(stderr=True)


def progress_enabled() -> bool:
    return os.environ.get("TIERWISE_NO_PROGRESS", "") in ("", "0") and console.is_terminal


def silence() -> None:
    """No progress from here on in this process and its children (`--json -`: stdout carries only the JSON)."""
    os.environ["TIERWISE_NO_PROGRESS"] = "1"


def make_progress(*extra_columns, enabled: bool = True) -> Progress:
    """A Progress with the project's standard columns; `extra_columns` go before the timers (e.g. loss fields).
    `enabled=False` (or TIERWISE_NO_PROGRESS=1) shows nothing."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and progress_enabled()),
        transient=False,
    )


@contextmanager
def progress_task(description: str, total: float | None, enabled: bool = True) -> Iterator[tuple[Progress, object]]:
    """Context manager yielding (progress, task_id); call progress.update(task_id, advance=n, ...)."""
    with make_progress(TextColumn("{task.fields[info]}"), enabled=enabled) as progress:
        task = progress.add_task(description, total=total, info="")
        yield progress, task


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_task(description, total) as (progress, task):
        for item in items:
            yield item
            progress.update(task, advance=1)
