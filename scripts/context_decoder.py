"""The context decoder experiment (#18): decode each tile of a large image with a ring of its
neighbours' LM states, and cross-fade the decoded windows. Trained by scripts/train_context_decoder.py;
it did not beat feathering on the held-out photos, so it is not part of the library or the shipped
checkpoint (the figures: weights/README.md, "Images of any size").

The pieces: `ContextDecoder` (the one-tile decoder's architecture over a window of grid + 2 * ring
positions per side, with gates that start the ring unseen), `tile_windows` / `window_batch` (each tile's
window of states out of a grid's) and `TileBlender` (decoded windows into one image, cross-faded).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli.config import LQAEConfig  # noqa: E402
from lqae_cli.model import Decoder  # noqa: E402


class ContextDecoder(Decoder):
    """The decoder for one tile of a larger word grid, reading a ring of r = `ring` patches around it.

    Each tile still goes through the LM alone, exactly as when it is encoded alone; this decoder then
    reads a window of W = grid + 2r positions per side: the tile's LM states and a ring of r patches
    of its neighbours' states (from their own LM passes). Its transformer attends across the tile's
    border, its head makes the pixels of the whole window, and its convolutional refiner runs over
    them, so a tile's outer pixels see their neighbours instead of zero padding. It returns the tile's
    own pixels, or the whole window's for cross-fading. Ring positions outside the image (a tile on the
    image's edge) take no part in attention and their pixels are zero, which is what the one-tile
    decoder's padding sees."""

    def __init__(self, cfg: LQAEConfig, lm_hidden: int, ring: int = 1):
        super().__init__(cfg, lm_hidden)
        self.ring = ring
        self.window = cfg.grid_size + 2 * self.ring
        self.pos = nn.Parameter(torch.zeros(1, self.window ** 2, cfg.dec_width))
        self.ring_bias = nn.Parameter(torch.zeros(cfg.dec_depth))   # per block: added to the attention logits of ring keys
        self.ring_pixels = nn.Parameter(torch.zeros(()))           # how much of the ring's pixels the refiner sees
        g, r, W = cfg.grid_size, self.ring, self.window
        inner = torch.zeros(W, W, dtype=torch.bool)
        inner[r:r + g, r:r + g] = True
        self.register_buffer("inner", inner.flatten(), persistent=False)

    @torch.no_grad()
    def start_from(self, decoder: Decoder, ring_bias: float = -8.0) -> "ContextDecoder":
        """Take the one-tile decoder's weights (the start of training a context decoder): a ring position
        starts with the position embedding of the tile position nearest to it, the ring keys with a
        logit bias of `ring_bias` (about e^-8 of the attention: all but unseen) and the ring's pixels
        hidden from the refiner, so that it starts out decoding every tile almost exactly as the
        one-tile decoder does and learns how much of the ring to use."""
        own = {k: v for k, v in decoder.state_dict().items() if k != "pos"}
        self.load_state_dict({**own, "pos": self.pos, "ring_bias": self.ring_bias, "ring_pixels": self.ring_pixels}, strict=True)
        g, r = self.grid, self.ring
        near = (torch.arange(self.window) - r).clamp(0, g - 1)
        index = (near[:, None] * g + near[None, :]).flatten()
        self.pos.copy_(decoder.pos[:, index])
        self.ring_bias.fill_(ring_bias)
        self.ring_pixels.zero_()
        return self

    def forward(self, h: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """h (B, W*W, n*D): the window's LM states row by row (anything where absent); present (B, W*W)
        bool -> the tile's image (B, 3, grid*p, grid*p) in [-1, 1] (unclamped)."""
        return self.forward_projected(self.inp(h), present)

    def forward_projected(self, x: torch.Tensor, present: torch.Tensor, window: bool = False) -> torch.Tensor:
        """As forward, from the window's states already through `inp` (B, W*W, dec_width). window=True:
        the pixels of the whole window (B, 3, W*p, W*p), the ring's included (for `TileBlender`)."""
        B, W, g, p, r = x.shape[0], self.window, self.grid, self.p, self.ring
        x = torch.where(present.unsqueeze(-1), x, 0) + self.pos
        absent = torch.where(present, 0.0, float("-inf")).to(x.dtype).view(B, 1, 1, W * W)
        ring = (~self.inner).to(x.dtype)
        for block, bias in zip(self.blocks, self.ring_bias):
            x = block(x, absent + (bias.to(x.dtype) * ring))
        x = self.head(self.ln(x))                                      # (B, W*W, 3*p*p)
        img = x.view(B, W, W, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, W * p, W * p)
        # what the refiner sees of each pixel: all of the tile's, ring_pixels of the ring's, nothing outside the image
        seen = (present * torch.where(self.inner, 1.0, self.ring_pixels)).to(img.dtype)
        seen = seen.view(B, 1, W, 1, W, 1).expand(B, 1, W, p, W, p).reshape(B, 1, W * p, W * p)
        if self.refine is not None:
            y = img
            for layer in self.refine:  # every convolution's input is scaled so (zeros outside, as its padding)
                y = layer(y * seen) if isinstance(layer, nn.Conv2d) else layer(y)
            img = img + y
        return img if window else img[:, :, r * p:(r + g) * p, r * p:(r + g) * p]


def tile_windows(states: torch.Tensor, rows: int, cols: int, ring: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile states (T, g*g, C), row by row -> (windows (C, rows, cols, W, W), present (1, rows, cols, W, W)),
    both views, W = g + 2 * ring: each tile's states with a ring of its neighbours' around it (zero and not
    present beyond the grid's edge). Index a batch out with `window_batch`."""
    g, C = round(states.shape[1] ** 0.5), states.shape[-1]
    W = g + 2 * ring
    m = F.pad(states.reshape(rows, cols, g, g, C).permute(4, 0, 2, 1, 3).reshape(C, rows * g, cols * g), (ring,) * 4)
    present = F.pad(torch.ones(1, rows * g, cols * g, dtype=torch.uint8, device=states.device), (ring,) * 4)
    return m.unfold(1, W, g).unfold(2, W, g), present.unfold(1, W, g).unfold(2, W, g)


def window_batch(windows: torch.Tensor, present: torch.Tensor, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of the tiles numbered `tiles` (row by row) -> ((B, W*W, C), present (B, W*W) bool)."""
    cols, W = windows.shape[2], windows.shape[-1]
    i, j = tiles // cols, tiles % cols
    x = windows[:, i, j].permute(1, 2, 3, 0).reshape(len(tiles), W * W, -1)
    return x, present[0, i, j].reshape(len(tiles), W * W).bool()


def blend_ramp(tile: int, margin: int) -> torch.Tensor:
    """(tile + 2 * margin,) weights along one side of a decoded window: rising linearly from the window's
    edge over 2 * margin pixels (so at a tile border about one half, and the neighbour's window the
    other half), 1 inside."""
    n = tile + 2 * margin
    u = torch.arange(n, dtype=torch.float)
    return (torch.minimum(u + 0.5, n - u - 0.5) / (2 * margin)).clamp(max=1.0)


class TileBlender:
    """Puts decoded windows (each tile with a margin of pixels on every side) into one image: every
    pixel is the weighted mean of the windows that cover it, weighted by `blend_ramp`, so neighbouring
    tiles' decodes cross-fade over the 2 * margin pixels around their border."""

    def __init__(self, rows: int, cols: int, tile: int, margin: int, device=None):
        self.cols, self.tile, self.m = cols, tile, margin
        self.sum = torch.zeros(3, rows * tile + 2 * margin, cols * tile + 2 * margin, device=device)
        self.weight = torch.zeros(1, *self.sum.shape[1:], device=device)
        ramp = blend_ramp(tile, margin).to(device)
        self.w = ramp[:, None] * ramp[None, :]

    def add(self, tiles: torch.Tensor, windows: torch.Tensor) -> None:
        """tiles: their numbers (row by row); windows (B, 3, tile + 2m, tile + 2m)."""
        t, n = self.tile, self.tile + 2 * self.m
        for k, win in zip(tiles.tolist(), windows):
            r, c = divmod(k, self.cols)
            self.sum[:, r * t:r * t + n, c * t:c * t + n] += win * self.w
            self.weight[:, r * t:r * t + n, c * t:c * t + n] += self.w

    def image(self) -> torch.Tensor:
        """-> (3, rows * tile, cols * tile): the grid's pixels (the margins beyond it dropped)."""
        m = self.m
        return (self.sum / self.weight.clamp(min=1e-12))[:, m:self.sum.shape[1] - m, m:self.sum.shape[2] - m]
