"""What the batch commands share: reading workers and the stderr console with its progress bar."""
from __future__ import annotations

import os
import sys


def reading_workers(requested: int | None, device) -> int:
    """Image-reading worker processes: as requested, else a default that leaves the model its cores.
    On a CPU the model's matrix products already use every core, and a reader process competing for
    them costs more than it saves, so a CPU gets a quarter of its cores (none on 2 cores); a GPU gets up to 4."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(4, cores // 4) if device.type == "cpu" else min(4, max(1, cores - 1))


def stderr_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def progress_bar(console, total: int, label: str, enabled: bool):
    """A rich progress bar on stderr, only when stderr is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    enabled = enabled and sys.stderr.isatty()
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)
