"""Checkpoints: one .safetensors file of trained tensors, the config and records as JSON metadata.

No pickle anywhere. Writes are atomic (temporary name in the same folder, then rename).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import LQAEConfig
from .lm import LanguageModel, LMError


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or does not fit this machine's language model."""


def _replace_atomically(path: Path, fill) -> None:
    """A temporary file beside path, filled by fill(fd, tmp_path) (which closes fd), given the usual
    permissions (mkstemp makes 0600), then renamed onto path: path is never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", **metadata}))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0][:120]})") from None
    return tensors, meta


def save_model(model, path: Path, training: dict | None = None, metrics: dict | None = None) -> None:
    meta = {"lqae_config": model.cfg.to_json(), "lm": json.dumps({"name": model.cfg.lm_name, "fingerprint": model.cfg.lm_fingerprint}),
            "training": json.dumps(training or {}), "metrics": json.dumps(metrics or {})}
    save_tensors(path, model.state_dict(), meta)


def read_card(path: Path) -> dict:
    """The checkpoint's metadata, parsed: config, lm, training, metrics."""
    _, meta = read_tensors(path)
    return parse_metadata(path, meta)


def parse_metadata(path: Path, meta: dict[str, str]) -> dict:
    if "lqae_config" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an lqae checkpoint (no lqae_config metadata)")
    try:
        return {"config": LQAEConfig.from_json(meta["lqae_config"]), "lm": json.loads(meta.get("lm", "{}")),
                "training": json.loads(meta.get("training", "{}")), "metrics": json.loads(meta.get("metrics", "{}"))}
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} has unreadable lqae metadata ({exc})") from None


def load_model(path: Path, device: str | torch.device = "cpu", lm: LanguageModel | None = None):
    """Rebuild the model from the checkpoint's metadata alone and load its tensors strictly."""
    from .model import LQAE

    tensors, meta = read_tensors(path)
    card = parse_metadata(path, meta)
    cfg: LQAEConfig = card["config"]
    try:
        lm = lm or LanguageModel.load(cfg.lm_name)
    except LMError as exc:
        raise CheckpointError(f"{path} needs language model '{cfg.lm_name}': {exc}") from None
    if cfg.lm_fingerprint and lm.fingerprint != cfg.lm_fingerprint:
        raise CheckpointError(f"{path} was trained with LM fingerprint {cfg.lm_fingerprint}, but '{cfg.lm_name}' here "
                              f"has fingerprint {lm.fingerprint}: use the same language model")
    model = LQAE(cfg, lm, fit_matching=False)
    missing, unexpected = model.state_dict().keys() - tensors.keys(), tensors.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its config ({str(exc).splitlines()[-1].strip()[:160]})") from None
    model.card = card
    return model.to(device).eval()
