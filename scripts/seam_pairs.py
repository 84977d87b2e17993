"""Training pairs for the experimental seam refiner (`scripts/seam_refiner.py`): each training photo at native size, cut into
tiles at a few offsets of the tile grid, every tile encoded and decoded alone by the shipped checkpoint, the
decoded tiles stitched side by side (no feathering). Writes `NAME-orig.png` (the photo) and, per offset,
`NAME-DY-DX-dec.png` (the stitched decode of the photo from pixel (DY, DX) on, padded to whole tiles by
repeating edge pixels as encoding pads it; `lqae_cli.seams.read_pairs` rebuilds the matching original).

    python scripts/seam_pairs.py [--out runs/seams/pairs] [--offsets 0,0 32,32]

The photos are the training ones of scripts/build_data.py (never `chelsea`, `china`, `camera`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.tiles import stitch, tile_grid  # noqa: E402
from lqae_cli.data import to_pil  # noqa: E402


def main() -> None:
    import build_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/seams/pairs"))
    ap.add_argument("--offsets", nargs="+", default=["0,0", "32,32"])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--heldout", action="store_true", help="the held-out photos (for evaluation) instead of the training ones")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tok = load(a.weights, "cpu")
    S = tok.image_size
    photos = build_data.load_photos()
    held = set(build_data.HELDOUT_PHOTOS)
    for name in sorted(held if a.heldout else set(photos) - held):
        Image.fromarray(photos[name]).convert("RGB").save(a.out / f"{name}-orig.png")
        for off in a.offsets:
            dy, dx = (int(v) for v in off.split(","))
            stem = a.out / f"{name}-{dy:02d}-{dx:02d}"
            if stem.with_name(stem.name + "-dec.png").exists():
                continue
            t0 = time.time()
            img = Image.fromarray(photos[name]).convert("RGB")
            img = img.crop((dx, dy, img.width, img.height))
            tiles, rows, cols = tile_grid(img, S)
            dec = []
            for part in tiles.split(a.batch_size):
                dec.append(tok.decode_ids(tok.encode_pixels(part), "fp32").cpu())
            to_pil(stitch(torch.cat(dec), rows, cols)).save(stem.with_name(stem.name + "-dec.png"))
            print(f"{stem.name}: {rows}x{cols} tiles in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
