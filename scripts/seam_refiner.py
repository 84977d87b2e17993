"""An experiment, not shipped: a learned seam refiner for images decoded tile by tile (`lqae_cli/tiles.py`).

Tried because decoded tiles disagree at their borders; it did not beat the training-free feathering that
`lqae decode` uses (`tiles.feather_seams`), so the library does not use it. Figures: weights/README.md,
"Images of any size". `scripts/seam_pairs.py` makes the training pairs, `scripts/train_seams.py` trains
and scores it.

`SeamRefiner` is a small convolutional net over the stitched image that knows where the tile borders are:
its input is the (feathered) stitched decode plus two maps that rise towards the nearest tile border
across x and across y, and it adds a correction to the image. Two branches:

- a full-resolution trunk: a 3x3 stem and residual blocks of two dilated 3x3 convolutions (dilations
  1, 2, 4, 8 by default), which sees `radius` pixels around each output (32 by default, half a tile);
- a context branch on the image averaged over `pool` x `pool` blocks (one pixel per word patch), a few
  3x3 convolutions there, upsampled bilinearly and added to the trunk: it sees several tiles around a pixel.

The last convolution starts at zero, so an untrained refiner returns its input. `refine` runs over large
images in windows (the context branch once over the whole averaged image, the trunk window by window with
a margin of `radius` pixels that is thrown away), equal to one pass over the whole image.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lqae_cli.errors import ConfigError

WINDOW = 256   # trunk window (pixels per side, a multiple of the tile) when refining large images

_LIMITS = {"tile": (8, 1024), "width": (4, 256), "context_width": (4, 256), "context_depth": (1, 16),
           "pool": (1, 64), "border_scale": (0.1, 64.0)}


@dataclass(frozen=True)
class SeamConfig:
    tile: int = 64                 # the tile size of the checkpoint it refines (pixels)
    width: int = 32                # trunk channels
    dilations: tuple = (1, 2, 4, 8)  # one residual block of two 3x3 convolutions per entry
    context_width: int = 32        # context-branch channels
    context_depth: int = 3         # 3x3 convolutions in the context branch
    pool: int = 8                  # the context branch works on pool x pool averages (the patch size)
    border_scale: float = 3.0      # the border maps fall as exp(-distance / border_scale)
    feathered: bool = True         # refine the feathered stitch (`tiles.feather_seams`), not the raw one

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "feathered":
                if not isinstance(v, bool):
                    raise ConfigError("seam config: feathered must be true or false")
                continue
            if f.name == "dilations":
                if (not isinstance(v, (tuple, list)) or not 1 <= len(v) <= 16
                        or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 64 for d in v)):
                    raise ConfigError("seam config: dilations must be 1 to 16 integers in 1..64")
                object.__setattr__(self, "dilations", tuple(v))
                continue
            lo, hi = _LIMITS[f.name]
            want = float if f.name == "border_scale" else int
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
                raise ConfigError(f"seam config: {f.name} must be {'a number' if want is float else 'an integer'}")
            if not (lo <= v <= hi) or (isinstance(v, float) and not math.isfinite(v)):
                raise ConfigError(f"seam config: {f.name} {v} is outside {lo}..{hi}")
        if self.tile % self.pool:
            raise ConfigError(f"seam config: pool {self.pool} must divide the tile {self.tile}")

    @property
    def radius(self) -> int:
        """Pixels around an output pixel that the trunk reads (stem, blocks, head)."""
        return 1 + 2 * sum(self.dilations) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def border_maps(height: int, width: int, tile: int, scale: float, y0: int = 0, x0: int = 0,
                device=None) -> torch.Tensor:
    """(1, 2, height, width): exp(-d / scale), d the distance in pixels to the nearest tile border across
    y (channel 0) and across x (channel 1), for the window whose top-left pixel is (y0, x0) of the
    stitched image (tiles start at 0). Symmetric: a flipped tile gives the flipped map."""
    def axis(n: int, start: int) -> torch.Tensor:
        p = (torch.arange(start, start + n, device=device) % tile).float()
        return torch.exp(-torch.minimum(p, tile - 1 - p) / scale)

    ys, xs = axis(height, y0), axis(width, x0)
    return torch.stack([ys[:, None].expand(height, width), xs[None, :].expand(height, width)])[None]


class _Block(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.a = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.b = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.b(F.relu(self.a(h)))


class SeamRefiner(nn.Module):
    """(B, 3, H, W) stitched decodes in [0, 1] + border maps -> refined images (unclamped)."""

    def __init__(self, cfg: SeamConfig):
        super().__init__()
        self.cfg = cfg
        w, c = cfg.width, cfg.context_width
        self.stem = nn.Conv2d(5, w, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(w, d) for d in cfg.dilations)
        self.context_in = nn.Conv2d(5, c, 3, padding=1)
        self.context = nn.ModuleList(nn.Conv2d(c, c, 3, padding=2 ** i, dilation=2 ** i) for i in range(cfg.context_depth))
        self.context_out = nn.Conv2d(c, w, 1)
        self.head = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def prepare(self, stitched: torch.Tensor) -> torch.Tensor:
        """A raw stitched decode (3, H, W) -> the refiner's input image (feathered if the config says so)."""
        from lqae_cli.tiles import feather_seams

        x = stitched.float()
        return feather_seams(x, self.cfg.tile) if self.cfg.feathered else x

    def inputs(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([x * 2 - 1, maps.expand(x.shape[0], -1, -1, -1).to(x.dtype)], 1)

    def context_features(self, inp: torch.Tensor) -> torch.Tensor:
        """The context branch on the pooled input (B, 5, H, W) -> (B, width, H / pool, W / pool)."""
        h = F.relu(self.context_in(F.avg_pool2d(inp, self.cfg.pool)))
        for conv in self.context:
            h = h + F.relu(conv(h))
        return self.context_out(h)

    def trunk(self, inp: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The trunk on (B, 5, h, w) with the context already upsampled to (B, width, h, w) -> correction."""
        h = F.relu(self.stem(inp)) + context
        for block in self.blocks:
            h = block(h)
        return self.head(F.relu(h))

    def forward(self, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """One pass over whole images (training): x (B, 3, H, W), H and W multiples of pool; maps (1 or B, 2, H, W)."""
        inp = self.inputs(x, maps)
        ctx = F.interpolate(self.context_features(inp), scale_factor=self.cfg.pool, mode="bilinear", align_corners=False)
        return x + self.trunk(inp, ctx)

    @torch.no_grad()
    def refine(self, img: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
        """A raw stitched decode (3, H, W) in [0, 1], H and W multiples of the tile -> refined, clamped to [0, 1].
        Equal (to float rounding) to forward() over the whole image; memory bounded by the window."""
        cfg, p, r = self.cfg, self.cfg.pool, self.cfg.radius
        _, H, W = img.shape
        if H % cfg.tile or W % cfg.tile:
            raise ConfigError(f"seam refiner: image {W}x{H} is not whole {cfg.tile}-pixel tiles")
        x = self.prepare(img)[None]
        inp = self.inputs(x, border_maps(H, W, cfg.tile, cfg.border_scale, device=x.device))
        ctx = self.context_features(inp)                                   # (1, w, H / p, W / p)
        out = torch.empty_like(x)
        m = -(-r // p) * p                                                 # the margin, whole pooled pixels
        for y0 in range(0, H, window):
            for x0 in range(0, W, window):
                y1, x1 = min(y0 + window, H), min(x0 + window, W)
                a, b, c, d = max(0, y0 - m), min(H, y1 + m), max(0, x0 - m), min(W, x1 + m)
                # the context upsampled over one more pooled pixel each side, as a whole-image upsampling does
                ca, cb, cc, cd = max(0, a // p - 1), min(H // p, b // p + 1), max(0, c // p - 1), min(W // p, d // p + 1)
                up = F.interpolate(ctx[..., ca:cb, cc:cd], scale_factor=p, mode="bilinear", align_corners=False)
                up = up[..., a - ca * p:b - ca * p, c - cc * p:d - cc * p]
                corr = self.trunk(inp[..., a:b, c:d], up)
                out[..., y0:y1, x0:x1] = x[..., y0:y1, x0:x1] + corr[..., y0 - a:y1 - a, x0 - c:x1 - c]
        return out[0].clamp(0, 1)


# --- files -------------------------------------------------------------------------------------------
def save_refiner(refiner: SeamRefiner, path: Path, base: dict, training: dict | None = None,
                 metrics: dict | None = None) -> None:
    """Write the refiner atomically; `base` identifies the checkpoint it refines ({"config": the base's
    config JSON, "lm_fingerprint": ...})."""
    from lqae_cli.checkpoint import save_tensors

    meta = {"lqae_seams": refiner.cfg.to_json(), "base": json.dumps(base), "training": json.dumps(training or {}),
            "metrics": json.dumps(metrics or {})}
    save_tensors(Path(path), refiner.state_dict(), meta)


# --- training ----------------------------------------------------------------------------------------
def read_pairs(folder: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The pairs `scripts/seam_pairs.py` writes: for each `NAME-DY-DX-dec.png`, (its stem, the original
    `NAME-orig.png` from pixel (DY, DX) on, padded to the decode's size by repeating edge pixels, the
    decode), both (3, H, W) uint8."""
    import numpy as np
    from PIL import Image

    out = []
    for dec_path in sorted(Path(folder).glob("*-dec.png")):
        name, dy, dx = dec_path.name[:-len("-dec.png")].rsplit("-", 2)
        dec = np.asarray(Image.open(dec_path).convert("RGB"))
        orig = np.asarray(Image.open(Path(folder) / f"{name}-orig.png").convert("RGB"))[int(dy):, int(dx):]
        H, W = dec.shape[:2]
        orig = np.pad(orig, ((0, H - orig.shape[0]), (0, W - orig.shape[1]), (0, 0)), mode="edge")
        out.append((dec_path.name[:-len("-dec.png")], *(torch.from_numpy(np.array(a)).permute(2, 0, 1)
                                                          for a in (orig, dec))))
    return out


def band_weights(maps: torch.Tensor, band: int, weight: float, scale: float) -> torch.Tensor:
    """1 everywhere, 1 + weight within `band` pixels of a tile border (read off the border maps)."""
    near = (maps > math.exp(-(band - 0.5) / scale)).any(1, keepdim=True)
    return 1 + weight * near.float()


def train_refiner(pairs: list[tuple[torch.Tensor, torch.Tensor]], cfg: SeamConfig, *, steps: int = 2000,
                  batch: int = 16, crop: int = 192, lr: float = 2e-3, band_weight: float = 1.0, band: int = 2,
                  device="cpu", seed: int = 0, max_seconds: float | None = None,
                  log=None) -> tuple[SeamRefiner, dict]:
    """Train a refiner on (original, stitched decode) pairs, each (3, H, W) uint8 or float in [0, 1] with
    tiles starting at (0, 0). Random crops (whole pooled pixels apart from the tile grid, so the border
    maps stay aligned), flips and transposes; MSE with `band_weight` more weight within `band` pixels of
    a border; AdamW with a cosine schedule. The decodes are raw stitches (feathered here if the config says).
    With `max_seconds`, the step count is cut after 50 steps to what fits in that time (the schedule follows). Returns the refiner (eval mode) and a training record."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    refiner = SeamRefiner(cfg).to(device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    total = [steps]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, total[0]) / total[0])))
    # each pair as one (8, H, W) float tensor on the device: original, decode, border maps
    stacks = []
    for orig, dec in pairs:
        o, d = (t.float() / 255 if t.dtype == torch.uint8 else t.float() for t in (orig, dec))
        d = refiner.prepare(d)
        H, W = d.shape[-2:]
        if H < crop or W < crop:
            continue
        stacks.append(torch.cat([o, d, border_maps(H, W, cfg.tile, cfg.border_scale)[0]]).to(device))
    if not stacks:
        raise ConfigError(f"no training pair is at least {crop}x{crop} pixels")
    sizes = torch.tensor([s.shape[-1] * s.shape[-2] for s in stacks], dtype=torch.float)
    p = cfg.pool
    t0, losses, record = time.time(), [], {}
    refiner.train()
    step = 0
    while step < total[0]:
        if max_seconds and step == 50:
            per_step = (time.time() - t0) / 50
            total[0] = max(51, min(total[0], int(max_seconds / per_step)))
        items = []
        for k in torch.multinomial(sizes, batch, replacement=True, generator=g).tolist():
            s = stacks[k]
            H, W = s.shape[-2:]
            y = int(torch.randint(0, (H - crop) // p + 1, (1,), generator=g)) * p
            x = int(torch.randint(0, (W - crop) // p + 1, (1,), generator=g)) * p
            c = s[:, y:y + crop, x:x + crop]
            flip = torch.randint(0, 2, (3,), generator=g).tolist()
            if flip[0]:
                c = c.flip(-1)
            if flip[1]:
                c = c.flip(-2)
            if flip[2]:
                c = c.transpose(-1, -2)[[0, 1, 2, 3, 4, 5, 7, 6]]
            items.append(c)
        b = torch.stack(items)
        orig, dec, maps = b[:, :3], b[:, 3:6], b[:, 6:]
        out = refiner(dec, maps)
        w = band_weights(maps, band, band_weight, cfg.border_scale)
        loss = ((out - orig).pow(2) * w).mean() / w.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
        if log and step % max(1, total[0] // 20) == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            log(f"step {step}/{total[0]}  weighted mse {recent:.6f}  ({-10 * math.log10(max(recent, 1e-12)):.2f} dB)  "
                f"{time.time() - t0:.0f} s")
    record = {"steps": total[0], "batch": batch, "crop": crop, "lr": lr, "band_weight": band_weight, "band": band,
              "pairs": len(stacks), "seed": seed, "seconds": round(time.time() - t0, 1), "device": str(device),
              "final_weighted_mse": sum(losses[-50:]) / len(losses[-50:])}
    return refiner.eval(), record
