"""The stitcher: a small convolutional stage that decodes each tile with what its neighbours show.

Tiles are encoded alone (a tile's words are exactly the words it gets alone) and decoded alone, so two
neighbours can disagree: a colour step along their shared border (a seam) and a brightness or hue of
its own in each tile (drift), which shows as a patchwork across a flat wall or sky. The stitcher reads
the whole stitched canvas of decoded tiles and returns it corrected, in two branches:

- a coarse branch, one cell per patch (8x8 pixels), with dilated convolutions that see about four tiles
  around each cell: it learns a smooth colour correction, which evens out drift between neighbours;
- a fine branch at full resolution (about 11 pixels around each pixel) that mends the seams themselves.

Both read, beside the colours, two maps of how near each pixel lies to an inner tile border (the image's
outer edges are not borders), so they act where tiles meet. The final layer of each branch starts at
zero (the stitcher starts as the identity). A canvas of one tile has no neighbours and is returned as
it is: a 64x64 image's decode does not depend on the stitcher.

Memory stays bounded for any canvas: the fine branch runs over bands of BAND rows with HALO rows of
context on either side (more than its reach, so each band's output equals the whole canvas's), in place.
The result does not depend on how the tiles were batched.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NEAR = 8      # pixels from an inner border over which the border maps fall from 1 to 0
BAND = 64     # rows of the canvas per pass of the fine branch
HALO = 8      # rows of context above and below a band (the fine branch reaches 5)


def border_maps(h: int, w: int, tile: int, y0: int = 0, rows: int | None = None) -> torch.Tensor:
    """(2, rows, w): per pixel of canvas rows y0.. y0+rows, 1 - distance / NEAR to the nearest inner
    horizontal (channel 0) and vertical (channel 1) tile border, clamped at 0."""
    def near(n: int, start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count, dtype=torch.float32) + 0.5
        borders = torch.arange(tile, n, tile, dtype=torch.float32)
        if not len(borders):
            return torch.zeros(count)
        d = (pos[:, None] - borders[None, :]).abs().min(1).values
        return (1 - d / NEAR).clamp_(min=0)

    rows = h - y0 if rows is None else rows
    ys, xs = near(h, y0, rows), near(w, 0, w)
    return torch.stack([ys[:, None].expand(rows, w), xs[None, :].expand(rows, w)])


class Stitcher(nn.Module):
    """Stitched canvas (3, H, W) in [0, 1], H and W whole tiles -> the canvas corrected (see the module
    docstring). `channels`: the fine branch's width (the coarse branch has twice as many)."""

    def __init__(self, channels: int, patch: int, tile: int):
        super().__init__()
        c, k = channels, 2 * channels
        self.patch, self.tile = patch, tile
        self.coarse = nn.Sequential(
            nn.Conv2d(5, k, 3, padding=1), nn.GELU(),
            nn.Conv2d(k, k, 3, padding=2, dilation=2), nn.GELU(),
            nn.Conv2d(k, k, 3, padding=4, dilation=4), nn.GELU(),
            nn.Conv2d(k, k, 3, padding=8, dilation=8), nn.GELU(),
            nn.Conv2d(k, 3, 3, padding=1))
        self.fine = nn.Sequential(
            nn.Conv2d(5, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.GELU(),
            nn.Conv2d(c, 3, 3, padding=1))
        for last in (self.coarse[-1], self.fine[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def coarse_correction(self, canvas: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the coarse branch's correction at one cell per patch (B, 3, H/p, W/p)."""
        B, _, H, W = canvas.shape
        maps = border_maps(H, W, self.tile).to(canvas)
        x = torch.cat([canvas * 2 - 1, maps.expand(B, -1, -1, -1)], 1)
        return self.coarse(F.avg_pool2d(x, self.patch))

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        """Training and small canvases: (B, 3, H, W) in [0, 1] -> corrected, unclamped."""
        B, _, H, W = canvas.shape
        x = canvas + F.interpolate(self.coarse_correction(canvas), scale_factor=self.patch, mode="bilinear", align_corners=False)
        maps = border_maps(H, W, self.tile).to(canvas)
        return x + self.fine(torch.cat([x * 2 - 1, maps.expand(B, -1, -1, -1)], 1))

    @torch.no_grad()
    def apply(self, canvas: torch.Tensor) -> torch.Tensor:
        """One canvas (3, H, W) in [0, 1], corrected in place and clamped to [0, 1]; a canvas of one tile
        is returned unchanged. Works through bands of rows, so memory stays a few bands' worth."""
        _, H, W = canvas.shape
        if H <= self.tile and W <= self.tile:
            return canvas
        weight = next(self.parameters())
        dtype, device = weight.dtype, weight.device
        up = F.interpolate(self.coarse_correction(canvas[None].to(device, dtype)).float(), scale_factor=self.patch,
                           mode="bilinear", align_corners=False)[0].to(canvas.device)
        canvas.add_(up)
        del up
        previous = None  # the input rows the next band's upper halo needs, as they were before this band
        for y0 in range(0, H, BAND):
            a, b = max(0, y0 - HALO), min(H, y0 + BAND + HALO)
            window = canvas[:, a:b].clone()
            if previous is not None:
                window[:, :y0 - a] = previous
            previous = canvas[:, max(0, y0 + BAND - HALO):y0 + BAND].clone()
            maps = border_maps(H, W, self.tile, a, b - a).to(device, dtype)
            out = self.fine(torch.cat([window.to(device, dtype) * 2 - 1, maps], 0)[None])[0].float().to(canvas.device)
            canvas[:, y0:y0 + BAND] += out[:, y0 - a:y0 - a + min(BAND, H - y0)]
        return canvas.clamp_(0, 1)
