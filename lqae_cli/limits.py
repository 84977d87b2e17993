"""The bounds on untrusted input: every size is checked against one of these before anything is allocated.

Each error message names the limit it hit; docs/untrusted-input.md lists them with the peak memory of
the largest input they allow.
"""
from __future__ import annotations

MAX_TOKEN_BYTES = 64 << 20       # a token file, or token text on standard input (split bigger streams)
MAX_IMAGE_BYTES = 256 << 20      # an image read from standard input or from a tar shard member
MAX_TILES = 4096                 # tiles of one image, encoded (--size) or decoded: 4096 x 4096 pixels at 64 per tile
MAX_PATTERN_NAMES = 100_000      # names one brace pattern ('{00000..99999}.tar') may expand to
MAX_PARAMETERS = 1 << 28         # numbers in a checkpoint's tensors (1 GiB in fp32; the shipped one has about 7.9M)
MAX_JSON_DEPTH = 32              # nesting of a JSON token record


def mib(n: int) -> str:
    """Bytes as a short MiB figure for messages: 67108864 -> '64 MiB'."""
    return f"{n / (1 << 20):g} MiB"
