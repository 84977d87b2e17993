"""Checkpoints: one .safetensors file of trained tensors, the config and records as JSON metadata.

No pickle anywhere. Writes are atomic (`fileio.atomic_write`: a temporary name in the same folder, then rename).
A checkpoint is untrusted input: loading validates its config (types and ranges, `LQAEConfig`),
checks from the file's header alone that its tensors hold exactly as many numbers as that config's
model (`model.state_size`), so a model is only built when it is no larger than the file, then checks
every tensor's name, shape and dtype against that model before reading any tensor.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from .config import LQAEConfig
from .errors import CheckpointError, ConfigError, LMError, LQAEError
from .fileio import atomic_write
from .limits import MAX_PARAMETERS
from .lm import LanguageModel


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", **metadata}))


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def check_size(path: Path, header: dict[str, tuple[str, tuple]], max_numbers: int = MAX_PARAMETERS) -> int:
    """Refuse (CheckpointError) tensors of more than `max_numbers` numbers in all (MAX_PARAMETERS), or a file
    whose disk blocks hold less than half the bytes its header promises (a sparse file: a 4 GB checkpoint
    of holes would read as zeros). Returns the count. Checked before any tensor is read."""
    held = sum(math.prod(shape) for _, shape in header.values())
    if held > max_numbers:
        raise CheckpointError(f"{path} holds {held:,} numbers, more than the limit of {max_numbers:,} (MAX_PARAMETERS)")
    promised = sum(math.prod(shape) * _DTYPE_BYTES.get(dtype, 1) for dtype, shape in header.values())
    blocks = getattr(Path(path).stat(), "st_blocks", None)  # (no st_blocks on Windows)
    if blocks is not None and promised > (1 << 20) and blocks * 512 < promised // 2:
        raise CheckpointError(f"{path} is a sparse file: its header promises {promised:,} bytes of tensors, its disk "
                              f"blocks hold {blocks * 512:,}; not a real checkpoint")
    return held


def _read(path: Path, check=None, tensors: bool = True, max_numbers: int = MAX_PARAMETERS) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's metadata, then its size checked (check_size) and check(header, meta) on
    {name: (dtype, shape)} if given, then its tensors (none when `tensors` is False), which must be finite."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if check is not None or tensors:
                slices = {k: f.get_slice(k) for k in f.keys()}
                header = {k: (str(s.get_dtype()), tuple(s.get_shape())) for k, s in slices.items()}
                check_size(path, header, max_numbers)
            if check is not None:
                check(header, meta)
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, LQAEError):
            raise
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({str(exc).splitlines()[0][:120]})") from None
    for k, v in loaded.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite values; not a usable checkpoint")
    return loaded, meta


def read_tensors(path: Path, max_numbers: int = MAX_PARAMETERS) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file (training state, checkpoints): at most
    `max_numbers` numbers, from a file that is not sparse, every float finite (else CheckpointError)."""
    return _read(path, max_numbers=max_numbers)


def save_model(model, path: Path, training: dict | None = None, metrics: dict | None = None) -> None:
    meta = {"lqae_config": model.cfg.to_json(), "lm": json.dumps({"name": model.cfg.lm_name, "fingerprint": model.cfg.lm_fingerprint}),
            "training": json.dumps(training or {}), "metrics": json.dumps(metrics or {})}
    save_tensors(path, model.state_dict(), meta)


def read_card(path: Path) -> dict:
    """The checkpoint's metadata, parsed: config, lm, training, metrics."""
    _, meta = _read(path, tensors=False)
    return parse_metadata(path, meta)


def parse_metadata(path: Path, meta: dict[str, str]) -> dict:
    if "lqae_config" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an lqae checkpoint (no lqae_config metadata)")
    try:
        card = {"config": LQAEConfig.from_json(meta["lqae_config"]), "lm": json.loads(meta.get("lm", "{}")),
                "training": json.loads(meta.get("training", "{}")), "metrics": json.loads(meta.get("metrics", "{}"))}
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} has unreadable lqae metadata ({exc})") from None
    if not all(isinstance(card[k], dict) for k in ("lm", "training", "metrics")):
        raise CheckpointError(f"{path} has unreadable lqae metadata (lm, training and metrics must be JSON objects)")
    return card


@contextlib.contextmanager
def _no_random_init():
    """Modules made inside get their parameters allocated but not randomly initialised: a checkpoint
    overwrites every one of them, and drawing millions of random numbers only to discard them slows
    every start. (It swaps torch.nn.init's functions for the duration, as model libraries do when they
    load weights; not for use while another thread builds modules.)"""
    import torch.nn.init as init

    names = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "ones_", "zeros_")
    saved = {n: getattr(init, n) for n in names}
    for n in names:
        setattr(init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def _build(cfg: LQAEConfig, lm: LanguageModel, path: Path):
    from .model import LQAE

    try:
        with _no_random_init():
            return LQAE(cfg, lm, fit_matching=False)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_model(path: Path, device: str | torch.device = "cpu", lm: LanguageModel | None = None):
    """Rebuild the model from the checkpoint's metadata alone and load its tensors strictly.

    Raises CheckpointError (one line) for a file that is not a safetensors lqae checkpoint, a config
    out of range, a language model that is missing or differs from the one it was trained with, or
    tensors whose names, shapes or dtypes do not match the config; nothing large is allocated first.
    On a CPU it also asks malloc to keep freed memory for reuse (runtime.keep_freed_memory)."""
    from .model import state_size

    state: dict = {}

    def check(header: dict[str, tuple[str, tuple]], meta: dict[str, str]) -> None:
        card = parse_metadata(path, meta)
        cfg: LQAEConfig = card["config"]
        try:
            model_lm = lm or LanguageModel.load(cfg.lm_name)
        except LMError as exc:
            raise CheckpointError(f"{path} needs language model '{cfg.lm_name}': {exc}") from None
        if cfg.lm_fingerprint and model_lm.fingerprint != cfg.lm_fingerprint:
            raise CheckpointError(f"{path} was trained with LM fingerprint {cfg.lm_fingerprint}, but '{cfg.lm_name}' here "
                                  f"has fingerprint {model_lm.fingerprint}: use the same language model")
        held = sum(math.prod(shape) for _, shape in header.values())
        if held != state_size(cfg, model_lm.hidden_size):
            raise CheckpointError(f"{path} does not match its config: its tensors hold {held:,} numbers, the config's model "
                                  f"{state_size(cfg, model_lm.hidden_size):,}")
        model = _build(cfg, model_lm, path)
        expected = {k: (v.dtype.is_floating_point, tuple(v.shape)) for k, v in model.state_dict().items()}
        missing, unexpected = expected.keys() - header.keys(), header.keys() - expected.keys()
        if missing or unexpected:
            raise CheckpointError(f"{path} does not match its config: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        for k, (dtype, shape) in sorted(header.items()):
            floating, want = expected[k]
            if shape != want:
                raise CheckpointError(f"{path} does not match its config: tensor {k} has shape {list(shape)}, "
                                      f"the config makes {list(want)}")
            if (dtype in ("F32", "F16", "BF16", "F64")) != floating or dtype in ("BOOL", "F8_E4M3", "F8_E5M2"):
                raise CheckpointError(f"{path}: tensor {k} has dtype {dtype}, expected {'a float' if floating else 'an integer'} type")
        state.update(card=card, model=model)

    tensors, _ = _read(path, check)
    model = state["model"]
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    # assign: the read tensors become the parameters (no second copy); each in the model's own dtype
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in tensors.items()}, strict=True, assign=True)
    model.card = state["card"]
    if torch.device(device).type == "cpu":
        from .runtime import keep_freed_memory

        keep_freed_memory()
    return model.to(device).eval()
