"""Teach a checkpoint's stitcher (lqae_cli/stitch.py): the stage that evens out tile borders when an image of
several tiles is decoded. Everything else stays as it is: the words, the decoder, the semantic head.

    python scripts/train_stitch.py --init runs/shipped/p13.safetensors --out runs/shipped/lqae-base-stitch.safetensors

Training canvases are crops of the training photos of scripts/build_data.py (never its held-out photos,
nor any photo of scripts/build_photo_set.py), each at a random scale from a quarter to the full size,
flipped at random, cut into tiles of the checkpoint's size at a random offset: each tile is encoded alone
and decoded alone (a quarter of the canvases with each tile keeping a random number of its most detailed
words, as `encode --words` writes them), as `lqae decode` stitches them. The stitcher learns to map that
canvas to the photo: the squared error, counted BORDER_WEIGHT times within two pixels of an inner tile
border, plus the squared error of each tile's mean colour (the drift), TILE_WEIGHT times. The decodes
are made once (bf16 autocast, as `lqae decode` runs where bf16 is native); then only the stitcher trains.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lqae_cli.checkpoint import load_model, save_model  # noqa: E402
from lqae_cli.keep import detail_scores, keep_order, masked  # noqa: E402
from lqae_cli.stitch import Stitcher  # noqa: E402
from lqae_cli.tiles import stitch, tile_grid  # noqa: E402

BORDER_WEIGHT = 4.0
TILE_WEIGHT = 16.0


def training_photos() -> dict[str, Image.Image]:
    import build_data

    return {name: Image.fromarray(a).convert("RGB") for name, a in sorted(build_data.load_photos().items())
            if name not in build_data.HELDOUT_PHOTOS}


def canvases(model, photos: dict[str, Image.Image], n: int, tiles: int, seed: int, batch: int = 64):
    """n (decoded canvas, photo crop) pairs, (n, 3, tiles*S, tiles*S) float32 each."""
    S = model.cfg.image_size
    side = tiles * S
    rng = np.random.default_rng(seed)
    names = list(photos)
    crops = []
    while len(crops) < n:
        img = photos[names[rng.integers(len(names))]]
        scale = math.exp(rng.uniform(math.log(0.25), 0.0))
        w, h = round(img.width * scale), round(img.height * scale)
        if min(w, h) < side:
            continue
        small = img.resize((w, h), Image.BICUBIC) if scale < 1 else img
        x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = small.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append((crop, rng.random() < 0.25))
    originals, decoded, pending = [], [], []
    mask_id = model.lm.mask_id

    def flush():
        ids = torch.cat([i for i, _ in pending])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as `lqae decode` runs where bf16 is native
            out = torch.cat([model.decode(part) for part in ids.split(batch)]).float()
        for k, (_, (rows, cols)) in enumerate(pending):
            decoded.append(stitch(out[k * rows * cols:(k + 1) * rows * cols], rows, cols))
        pending.clear()

    for k, (crop, drop) in enumerate(crops):
        t, rows, cols = tile_grid(crop, S)
        ids = model.encode(t)
        if drop:
            keep = torch.from_numpy(rng.integers(8, ids[0].numel(), len(ids)))
            ids = masked(ids, keep, keep_order(detail_scores(t, model.cfg.patch_size)), mask_id)
        pending.append((ids, (rows, cols)))
        originals.append(stitch(t, rows, cols))
        if sum(len(i) for i, _ in pending) >= batch:
            flush()
        if (k + 1) % 200 == 0:
            print(f"decoded {k + 1}/{n} canvases", file=sys.stderr, flush=True)
    if pending:
        flush()
    return torch.stack(decoded), torch.stack(originals)


def loss_fn(out: torch.Tensor, x: torch.Tensor, tile: int, weight: torch.Tensor) -> torch.Tensor:
    err = out - x
    pixel = (err.pow(2) * weight).mean()
    drift = F.avg_pool2d(err, tile).pow(2).mean()
    return pixel + TILE_WEIGHT * drift


def band_weight(side: int, tile: int) -> torch.Tensor:
    near = torch.zeros(side)
    for b in range(tile, side, tile):
        near[b - 2:b + 2] = 1
    m = torch.maximum(near[:, None], near[None, :])
    return 1 + (BORDER_WEIGHT - 1) * m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--canvases", type=int, default=1500)
    ap.add_argument("--tiles", type=int, default=3, help="tiles per side of a training canvas")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.time()
    torch.manual_seed(a.seed)
    base = load_model(a.init, torch.device("cpu"))
    base.eval()
    S = base.cfg.image_size
    dec, orig = canvases(base, training_photos(), a.canvases, a.tiles, a.seed)
    print(f"{len(dec)} canvases decoded in {time.time() - t_start:.0f}s; stitched PSNR "
          f"{(-10 * torch.log10((dec - orig).pow(2).flatten(1).mean(1))).mean():.2f} dB", file=sys.stderr, flush=True)
    stitcher = Stitcher(a.channels, base.cfg.patch_size, S)
    opt = torch.optim.AdamW(stitcher.parameters(), lr=a.lr, weight_decay=0.0)
    weight = band_weight(a.tiles * S, S)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(a.steps):
        lr = a.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(len(dec), (a.batch_size,), generator=gen)
        loss = loss_fn(stitcher(dec[idx]), orig[idx], S, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step == 0:
            with torch.no_grad():
                base_loss = loss_fn(dec[idx], orig[idx], S, weight)
            print(f"step {step + 1}/{a.steps} loss {loss.item():.5f} (unstitched {base_loss.item():.5f}) "
                  f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    stitcher.eval()
    model = base
    model.cfg = replace(model.cfg, stitch_channels=a.channels)
    model.stitcher = stitcher
    training = {"trained": "stitcher", "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
                "canvases": a.canvases, "tiles": a.tiles, "border_weight": BORDER_WEIGHT, "tile_weight": TILE_WEIGHT,
                "wall_time_s": round(time.time() - t_start), "script": "scripts/train_stitch.py",
                "init": base.card["training"]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, a.out, training, base.card["metrics"])
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
