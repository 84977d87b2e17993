"""Whole photos at native resolution: lqae `--size native` against the codec "shrink 8x per side, enlarge back
(bicubic)", and the seam gap (PSNR of the 4-pixel bands along tile borders minus PSNR inside the tiles).
Writes a side-by-side picture (original | lqae native | the codec) per photo.

    python scripts/evaluate_tiles.py [--weights PATH] [--out runs/tiles]

The photos are the held-out ones of scripts/build_data.py (`chelsea`, `china`, `camera`), from the
installed scikit-image and scikit-learn.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.evaluate import psnr_u8 as psnr, shrink_codec  # noqa: E402

BAND = 4


def border_mask(h: int, w: int, tile: int, band: int = BAND) -> np.ndarray:
    """True within band / 2 pixels of an inner tile border (one with a whole band inside the image on both sides)."""
    def near(n: int) -> np.ndarray:
        m = np.zeros(n, bool)
        for b in range(tile, n - band // 2 + 1, tile):
            m[b - band // 2:b + band // 2] = True
        return m

    return near(h)[:, None] | near(w)[None, :]


def patch_border_mask(h: int, w: int, tile: int, patch: int, band: int = BAND) -> np.ndarray:
    """The same bands along the borders between patches inside tiles (the control: every 8x8 patch
    becomes one word, so patch borders are where any patch code is weakest)."""
    return border_mask(h, w, patch, band) & ~border_mask(h, w, tile, band)


def main() -> None:
    import build_data

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/tiles"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tok = load(a.weights, "cpu")
    photos = build_data.load_photos()
    rows = []
    for name in sorted(build_data.HELDOUT_PHOTOS):
        img = Image.fromarray(photos[name]).convert("RGB")
        ours = tok.decode(tok.encode(img, size="native"))
        base = shrink_codec(img, tok.config.patch_size)
        x, y, z = (np.asarray(i) for i in (img, ours, base))
        mask = border_mask(img.height, img.width, tok.image_size)
        control = patch_border_mask(img.height, img.width, tok.image_size, tok.config.patch_size)
        gap = psnr(x[mask], y[mask]) - psnr(x[~mask], y[~mask])
        rows.append((name, img.size, psnr(x, y), psnr(x, z), gap, psnr(x[mask], z[mask]) - psnr(x[~mask], z[~mask]),
                     psnr(x[mask], y[mask]) - psnr(x[control], y[control])))
        print(f"{name:8s} {img.width}x{img.height}  PSNR lqae native {rows[-1][2]:.2f} dB  codec (8x shrink) {rows[-1][3]:.2f} dB  "
              f"seam gap lqae {gap:+.2f} dB  (codec {rows[-1][5]:+.2f}); tile-border bands minus patch-border bands "
              f"{rows[-1][6]:+.2f} dB", flush=True)
        sheet = Image.new("RGB", (3 * img.width + 20, img.height), "white")
        for k, im in enumerate((img, ours, base)):
            sheet.paste(im, (k * (img.width + 10), 0))
        sheet.save(a.out / f"{name}-side-by-side.png")
    print(f"mean     PSNR lqae native {np.mean([r[2] for r in rows]):.2f} dB  codec {np.mean([r[3] for r in rows]):.2f} dB  "
          f"seam gap {np.mean([r[4] for r in rows]):+.2f} dB; tile- minus patch-border bands {np.mean([r[6] for r in rows]):+.2f} dB")


if __name__ == "__main__":
    main()
