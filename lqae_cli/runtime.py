"""What every command shares: the default checkpoint, devices, loading, the stderr console."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import LQAEError

WEIGHTS_ENV, DEVICE_ENV = "LQAE_WEIGHTS", "LQAE_DEVICE"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "lqae-base.safetensors"


def weights_path(weights: Path | None) -> Path:
    path = weights or (Path(os.environ[WEIGHTS_ENV]) if os.environ.get(WEIGHTS_ENV) else DEFAULT_WEIGHTS)
    if not Path(path).is_file():
        hint = "pass --weights PATH or set LQAE_WEIGHTS" if weights is None else "check the path"
        raise LQAEError(f"checkpoint not found: {path} ({hint})")
    return Path(path)


def resolve_device(name: str | None):
    """auto -> cuda, then mps, then cpu; a requested device that is missing is an error."""
    import torch

    name = (name or os.environ.get(DEVICE_ENV) or "auto").lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LQAEError("CUDA was requested but no CUDA device is available (use --device cpu)")
    if name == "mps" and not mps:
        raise LQAEError("MPS was requested but is not available (use --device cpu)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise LQAEError(f"unknown device '{name}' (use auto, cpu, cuda or mps)")
    return torch.device(name)


def reading_workers(requested: int | None, device) -> int:
    """Image-reading worker processes: as requested, else a default that leaves the model its cores.
    On a CPU the model's matrix products already use every core, and a reader process competing
    for them costs more than it saves (measured on 2 cores: about 10% slower than reading in the
    main process), so a CPU gets a quarter of its cores (none on 2 cores); a GPU gets up to 4."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(4, cores // 4) if device.type == "cpu" else min(4, max(1, cores - 1))


def load(weights: Path | None, device: str | None = None):
    """The checkpoint's model on the chosen device, or an LQAEError with one line to say why not."""
    from .checkpoint import CheckpointError, load_model

    path = weights_path(weights)
    dev = resolve_device(device)
    try:
        model = load_model(path, dev)
    except CheckpointError as exc:
        raise LQAEError(str(exc)) from None
    model.name = path.stem
    return model


def stderr_console(quiet: bool = False):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


def progress_bar(console, total: int, label: str, enabled: bool):
    """A rich progress bar on stderr, only when stderr is a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    enabled = enabled and sys.stderr.isatty()
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)
