"""Why tile seams remain after feathering: three experiments on the held-out photos at native size
(the figures are in weights/README.md, "Images of any size").

    python scripts/seam_diagnostics.py oracle      # one best colour offset per tile and channel (reads the original)
    python scripts/seam_diagnostics.py shifted     # windows of words shifted by half a tile, decoded
    python scripts/seam_diagnostics.py stage [--steps 3000]
        # a decoder stage: two 3x3 convolutions over the stitched final decoder states (across tile
        # borders) predicting a pixel correction, trained on the training photos at two tile-grid offsets

Each prints PSNR and the seam gap (PSNR of the 4-pixel bands along inner tile borders minus PSNR
elsewhere) per photo and the mean. None of them ships: see the model card.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_tiles import border_mask  # noqa: E402
from lqae_cli import load  # noqa: E402
from lqae_cli.data import to_uint8  # noqa: E402
from lqae_cli.evaluate import psnr_u8 as psnr  # noqa: E402
from lqae_cli.tiles import feather_seams, join_ids, stitch, tile_grid  # noqa: E402

T = 64  # the shipped checkpoint's tile



def report(name: str, original: Image.Image, ways: dict, scores: dict, cover=None) -> None:
    x = np.asarray(original)
    h, w = x.shape[:2]
    band = border_mask(h, w, T)
    keep = np.ones((h, w), bool) if cover is None else cover
    for way, img in ways.items():
        y = to_uint8(img)[:h, :w]
        b, rest = band & keep, ~band & keep
        r = (psnr(x[keep], y[keep]), psnr(x[b], y[b]) - psnr(x[rest], y[rest]))
        scores.setdefault(way, []).append(r)
        print(f"{name:8s} {way:16s} PSNR {r[0]:.2f} dB  seam gap {r[1]:+.2f} dB", flush=True)


def decode_features(model, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles -> (final decoder states (n, 64, width), decoded tiles (n, 3, T, T)), as `decode` computes them."""
    d = model.decoder
    with torch.no_grad():
        ids = model.encode(tiles)
        x = d.inp(model.run_lm(model.quantizer.codebook[ids.flatten(1)])) + d.pos
        for block in d.blocks:
            x = block(x)
        f = d.ln(x)
        out = d.head(f)
        n, g, p = out.shape[0], d.grid, d.p
        img = out.view(n, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, g * p, g * p)
        img = img + d.refine(img)
    return f, ((img + 1) / 2).clamp(0, 1)


def stitched(model, img: Image.Image):
    """(decoder states as a map (width, rows*8, cols*8), stitched decode, padded original (3, H, W))."""
    tiles, R, C = tile_grid(img, T)
    fs, ds = zip(*(decode_features(model, part) for part in tiles.split(64)))
    f = torch.cat(fs)
    fmap = f.view(R, C, 8, 8, -1).permute(4, 0, 2, 1, 3).reshape(-1, R * 8, C * 8)
    return fmap, stitch(torch.cat(ds), R, C), stitch(tiles, R, C)


def oracle(tok, photos, scores) -> None:
    for name, img in photos.items():
        _, dec, orig = stitched(tok.model, img)
        R, C = dec.shape[1] // T, dec.shape[2] // T
        offset = (orig - dec).view(3, R, T, C, T).mean((2, 4)).repeat_interleave(T, 1).repeat_interleave(T, 2)
        report(name, img, {"raw": dec, "feather": feather_seams(dec, T), "oracle offset": dec + offset,
                           "oracle + feather": feather_seams((dec + offset).clamp(0, 1), T)}, scores)


def shifted(tok, photos, scores) -> None:
    for name, img in photos.items():
        tiles, R, C = tile_grid(img, T)
        ids = torch.cat([tok.encode_pixels(p) for p in tiles.split(64)])
        grid = torch.tensor(join_ids(ids, R, C))
        dec = stitch(torch.cat([tok.decode_ids(p, "fp32") for p in ids.split(64)]), R, C)
        out, where = dec.clone(), [(r, c) for r in range(R - 1) for c in range(C - 1)]
        windows = torch.stack([grid[r * 8 + 4:r * 8 + 12, c * 8 + 4:c * 8 + 12] for r, c in where])
        for (r, c), t in zip(where, torch.cat([tok.decode_ids(p, "fp32") for p in windows.split(64)])):
            out[:, r * T + T // 2:r * T + 3 * T // 2, c * T + T // 2:c * T + 3 * T // 2] = t
        cover = np.zeros((img.height, img.width), bool)
        cover[T // 2:(R - 1) * T + T // 2, T // 2:(C - 1) * T + T // 2] = True
        report(name, img, {"tiles": dec, "shifted windows": out}, scores, cover)


def patch_edges(h: int, w: int, y0: int = 0, x0: int = 0) -> torch.Tensor:
    """(4, h, w) at one pixel per patch: is the patch on its tile's top, bottom, left, right edge."""
    py, px = torch.arange(y0, y0 + h) % 8, torch.arange(x0, x0 + w) % 8
    return torch.stack([(py == 0)[:, None].expand(h, w), (py == 7)[:, None].expand(h, w),
                        (px == 0)[None].expand(h, w), (px == 7)[None].expand(h, w)]).float()


def border_ramp(h: int, w: int, width: int, y0: int = 0, x0: int = 0) -> torch.Tensor:
    """(1, h, w) pixel weights: 1 next to a tile border, falling linearly to 0 at `width` pixels from it
    (the larger of the two axes' weights), for the window whose top-left pixel is (y0, x0)."""
    def axis(n: int, start: int) -> torch.Tensor:
        p = (torch.arange(start, start + n) % T).float()
        d = torch.minimum(p, T - 1 - p) + 0.5
        return (1 - (d - 0.5) / width).clamp(0, 1)

    return torch.maximum(axis(h, y0)[:, None], axis(w, x0)[None, :])[None]


class Stage(nn.Module):
    def __init__(self, states: int, width: int = 128):
        super().__init__()
        self.a = nn.Conv2d(states + 4, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.c = nn.Conv2d(width, 3 * 64, 1)
        nn.init.zeros_(self.c.weight)
        nn.init.zeros_(self.c.bias)

    def forward(self, fmap, edges):
        h = F.gelu(self.a(torch.cat([fmap, edges], 1)))
        return F.pixel_shuffle(self.c(h + F.gelu(self.b(h))), 8)


def stage(tok, photos, scores, train_photos, steps: int, batch: int = 16, crop: int = 16, border: int = 0) -> None:
    """border 0: the correction is added everywhere, to the raw stitch. border N: to the feathered stitch,
    and only within N pixels of a tile border (ramped), so tile interiors stay exactly as decoded."""
    torch.manual_seed(0)
    data = []
    for name, img in train_photos.items():
        for dy, dx in ((0, 0), (32, 32)):
            fmap, dec, orig = stitched(tok.model, img.crop((dx, dy, img.width, img.height)))
            data.append((fmap.half(), feather_seams(dec, T) if border else dec, orig))
    net = Stage(data[0][0].shape[0])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sizes = torch.tensor([f.shape[1] * f.shape[2] for f, _, _ in data], dtype=torch.float)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        parts = []
        for k in torch.multinomial(sizes, batch, replacement=True).tolist():
            fmap, dec, orig = data[k]
            y = int(torch.randint(0, fmap.shape[1] - crop + 1, (1,)))
            x = int(torch.randint(0, fmap.shape[2] - crop + 1, (1,)))
            px = (slice(None), slice(y * 8, (y + crop) * 8), slice(x * 8, (x + crop) * 8))
            ramp = border_ramp(crop * 8, crop * 8, border, y * 8, x * 8) if border else torch.ones(1, crop * 8, crop * 8)
            parts.append((fmap[:, y:y + crop, x:x + crop].float(), patch_edges(crop, crop, y, x), dec[px], orig[px], ramp))
        f, e, d, o, r = (torch.stack(t) for t in zip(*parts))
        err = (d + r * net(f, e) - o).pow(2)[..., 8:-8, 8:-8]
        loss = err.mean() if not border else (err * (r[..., 8:-8, 8:-8] > 0)).sum() / (r[..., 8:-8, 8:-8] > 0).sum() / 3
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % max(1, steps // 10) == 0:
            print(f"step {step + 1}/{steps}  {-10 * math.log10(loss.item()):.2f} dB", flush=True)
    with torch.no_grad():
        for name, img in photos.items():
            fmap, dec, _ = stitched(tok.model, img)
            corr = net(fmap[None], patch_edges(*fmap.shape[1:])[None])[0]
            if border:
                base = feather_seams(dec, T)
                out = (base + border_ramp(*dec.shape[1:], border) * corr).clamp(0, 1)
                report(name, img, {"feather": base, f"stage, border {border}": out}, scores)
            else:
                out = (dec + corr).clamp(0, 1)
                report(name, img, {"feather": feather_seams(dec, T), "stage": out, "stage + feather": feather_seams(out, T)}, scores)


def main() -> None:
    import build_data

    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", choices=["oracle", "shifted", "stage"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--border", type=int, default=0, help="stage: correct only within this many pixels of a tile border")
    a = ap.parse_args()
    tok = load(None, "cpu")
    photos = build_data.load_photos()
    held = {n: Image.fromarray(photos[n]).convert("RGB") for n in sorted(build_data.HELDOUT_PHOTOS)}
    scores: dict = {}
    if a.experiment == "oracle":
        oracle(tok, held, scores)
    elif a.experiment == "shifted":
        shifted(tok, held, scores)
    else:
        train = {n: Image.fromarray(p).convert("RGB") for n, p in sorted(photos.items())
                 if n not in build_data.HELDOUT_PHOTOS and n != "retina"}
        stage(tok, held, scores, train, a.steps, border=a.border)
    for way, rs in scores.items():
        print(f"mean     {way:16s} PSNR {np.mean([r[0] for r in rs]):.2f} dB  seam gap {np.mean([r[1] for r in rs]):+.2f} dB")


if __name__ == "__main__":
    main()
