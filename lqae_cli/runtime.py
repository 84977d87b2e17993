"""What the commands share: reading workers, malloc settings that keep freed memory for reuse, the
stderr console with its progress bar, and the small per-machine cache ($XDG_CACHE_HOME/lqae, else
~/.cache/lqae) of things slow to find out at each start (JSON objects, and arrays in safetensors files)."""
from __future__ import annotations

import os
import sys
import threading


def reading_workers(requested: int | None, device) -> int:
    """Image-reading worker processes: as requested, else a default that leaves the model its cores.
    On a CPU the model's matrix products already use every core, and a reader process competing for
    them costs more than it saves, so a CPU gets a quarter of its cores (none on 2 cores); a GPU gets up to 4."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(4, cores // 4) if device.type == "cpu" else min(4, max(1, cores - 1))


class SharedSettings:
    """A context manager for process-wide settings that several threads may hold at once (the lanes of
    `convert.in_lanes`): the first thread in applies them (`apply()` returns the function that puts the old
    ones back), the last one out restores them. Saving and restoring per thread would leave the settings
    of whichever thread finished last."""

    def __init__(self, apply):
        self._apply, self._lock, self._depth, self._restore = apply, threading.Lock(), 0, None

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._restore = self._apply()
            self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._restore()
                self._restore = None


def freeze_gc() -> None:
    """Move every object alive now (modules, the model, the list of inputs) into the cyclic garbage
    collector's permanent generation, which its collections skip. A batch command makes many short-lived
    objects per image, and each full collection would walk all of those long-lived ones again (a
    10,000-image encode: 0.47 s in the collector, 0.23 s frozen). For the command line's own process:
    a library leaves the user's collector alone."""
    import gc

    gc.freeze()


MMAP_THRESHOLD = 256 << 20  # allocations up to this size come from the heap, not a fresh mapping each
TRIM_THRESHOLD = 1 << 30    # the heap keeps up to this much freed memory instead of handing it back
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory for the next large tensor instead of returning it to the
    system and mapping (and zero-filling, page by page) fresh memory for every activation (what that costs
    the encoder: benchmarks/README.md). The numbers computed are the same; only where their memory comes
    from changes. Called by `load_model` and `train` on a CPU; process-wide
    and idempotent. Leaves malloc alone where it is not glibc's, or where the user tunes it already
    (MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ set). Returns whether the settings are in place."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # glibc before 2.26 caps the mapping threshold at 32 MiB: try that where the larger value is refused
    mapped = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(M_MMAP_THRESHOLD, 32 << 20)
    _malloc_tuned = bool(mapped and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _malloc_tuned


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


def _write_cache_bytes(name: str, data: bytes) -> None:
    """Replace the cache file `name` atomically; a read-only home only means finding it out again next time."""
    from .fileio import atomic_write_bytes

    try:
        atomic_write_bytes(cache_file(name), data)
    except OSError:
        pass


def write_cache(name: str, data: dict) -> None:
    """Replace the cached object (see _write_cache_bytes)."""
    import json

    _write_cache_bytes(name, json.dumps(data, indent=1).encode())


def read_arrays(name: str) -> dict | None:
    """The numpy arrays cached under `name` (a safetensors file), or None if there are none or the file is
    unreadable; the caller checks that they are what it needs."""
    try:
        from safetensors.numpy import load_file

        return load_file(str(cache_file(name)))
    except Exception:  # missing, truncated or not a safetensors file
        return None


def write_arrays(name: str, arrays: dict) -> None:
    """Replace the cached arrays (see _write_cache_bytes)."""
    from safetensors.numpy import save

    _write_cache_bytes(name, save(arrays))
