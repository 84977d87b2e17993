"""lqae: images to words of a language model's vocabulary, and back (Language-Quantized AutoEncoder).

    import lqae_cli as lqae

    tok = lqae.load()                     # the shipped checkpoint; or lqae.load("my.safetensors", device="cuda")
    grid = tok.encode("photo.png")        # a WordGrid: .ids, .words, .shape, .text
    image = tok.decode(grid)              # a PIL image

See `Tokenizer` for the whole surface. Names are imported on first use, so `import lqae_cli` is cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["load", "Tokenizer", "WordGrid", "LQAEConfig", "LQAEError", "CheckpointError", "ConfigError",
           "ImageError", "LMError", "TokenError", "default_weights", "__version__"]

_WHERE = {"load": "tokenizer", "Tokenizer": "tokenizer", "default_weights": "tokenizer", "WordGrid": "tokens",
          "LQAEConfig": "config", "LQAEError": "errors", "CheckpointError": "errors", "ConfigError": "errors",
          "ImageError": "errors", "LMError": "errors", "TokenError": "errors"}

if TYPE_CHECKING:
    from .config import LQAEConfig
    from .errors import CheckpointError, ConfigError, ImageError, LMError, LQAEError, TokenError
    from .tokenizer import Tokenizer, default_weights, load
    from .tokens import WordGrid


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lqae_cli' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
