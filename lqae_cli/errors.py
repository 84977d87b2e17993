"""The package's errors: one base class, `LQAEError`, that every module raises or subclasses.

A caller catches `LQAEError` for anything the user can act on (a bad image, a token file that does
not fit, an unreadable or untrusted checkpoint, a missing language model, a wrong option); the
message is one line that says what to do. Anything else escaping the library is a bug.
The subclasses also derive from `ValueError` where the input's value is what is wrong.
"""
from __future__ import annotations


class LQAEError(Exception):
    """A failure the user can act on; the message is one line and says what to do."""


class ConfigError(LQAEError, ValueError):
    """A model or training configuration with a field of the wrong type or out of range (names the field)."""


class CheckpointError(LQAEError):
    """A checkpoint that cannot be read, is not an lqae checkpoint, or does not match its own config."""


class LMError(LQAEError):
    """A language model that cannot be found, read or matched."""


class ImageError(LQAEError, ValueError):
    """An input that is not a usable image."""


class TokenError(LQAEError, ValueError):
    """Token input that does not fit the checkpoint (unknown word, wrong grid, bad JSON)."""
