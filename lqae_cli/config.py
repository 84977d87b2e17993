"""The typed model config. It travels inside every checkpoint; loading rebuilds the model from it alone."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .lm import DEFAULT_LM


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
    mask_ratio: float = 0.5         # share of positions replaced by the mask token in training
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
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
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
        raise ValueError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return LQAEConfig(**{**PRESETS[name], **overrides})
