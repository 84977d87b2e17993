"""Atomic file writes: a temporary file beside the target, renamed onto it when complete, so a reader
(or a rerun that skips finished outputs) never sees a partial file. Used by checkpoints, the batch
commands, the per-machine cache and every picture the commands write."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_NAME_CHARS = 200  # of the target's name in its temporary's (a 255-byte name leaves room for the rest)


def temp_prefix(name: str) -> str:
    """The start of a temporary file's name for target `name`: `.NAME.` (NAME cut to TEMP_NAME_CHARS bytes)."""
    return f".{name.encode()[:TEMP_NAME_CHARS].decode(errors='ignore')}."


def _replace_atomically(path: Path, fill) -> None:
    """A temporary file beside path, filled by fill(fd, tmp_path) (which closes fd), given the usual
    permissions (mkstemp makes 0600), then renamed onto path: path is never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        fill(fd, tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename onto path."""
    def by_name(fd: int, tmp: str) -> None:
        os.close(fd)
        write(tmp)

    _replace_atomically(path, by_name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write for bytes already in memory, written through the temporary file's own descriptor
    (the batch commands write thousands of small files; no second open)."""
    def by_fd(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    _replace_atomically(path, by_fd)
