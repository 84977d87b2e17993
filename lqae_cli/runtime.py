"""What the commands share: reading workers, the stderr console with its progress bar, and the small
per-machine cache ($XDG_CACHE_HOME/lqae, else ~/.cache/lqae) of things slow to find out at each start
(JSON objects, and arrays in safetensors files)."""
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


class _LazyConsole:
    """rich's stderr Console, imported and made on first use: a one-image command that prints nothing to
    stderr does not pay for importing rich (a few hundredths of a second of its start)."""

    def __init__(self, quiet: bool):
        self.quiet, self._console = quiet, None

    @property
    def rich(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, quiet=self.quiet, highlight=False)
        return self._console

    def __getattr__(self, name):
        return getattr(self.rich, name)


def stderr_console(quiet: bool = False):
    return _LazyConsole(quiet)


class _NoProgress:
    """What a disabled progress bar does: nothing (and imports nothing)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass


def progress_bar(console, total: int, label: str, enabled: bool):
    """A rich progress bar on stderr, only when stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), console=getattr(console, "rich", console), transient=False)


def cache_file(name: str):
    from pathlib import Path

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lqae" / name


def read_cache(name: str) -> dict:
    """The JSON object cached under `name`, or {} if there is none or it is unreadable."""
    import json

    try:
        data = json.loads(cache_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(name: str, data: dict) -> None:
    """Replace the cached object atomically; a read-only home only means finding it out again next time."""
    import json

    from .checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(cache_file(name), json.dumps(data, indent=1).encode())
    except OSError:
        pass


def read_arrays(name: str) -> dict | None:
    """The numpy arrays cached under `name` (a safetensors file), or None if there are none or the file is
    unreadable; the caller checks that they are what it needs."""
    try:
        from safetensors.numpy import load_file

        return load_file(str(cache_file(name)))
    except Exception:  # missing, truncated or not a safetensors file
        return None


def write_arrays(name: str, arrays: dict) -> None:
    """Replace the cached arrays atomically; a read-only home only means computing them again next time."""
    from safetensors.numpy import save

    from .checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(cache_file(name), save(arrays))
    except OSError:
        pass
