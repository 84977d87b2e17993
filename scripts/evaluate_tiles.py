"""Whole held-out photos at native size: lqae `--size native` against the codec "shrink 8x per side, enlarge back
(bicubic)", with what tiles cost at their borders.

    python scripts/evaluate_tiles.py [--weights PATH] [--photos data/heldout/whole-photos] [--out runs/tiles]

Per photo and on average:
- PSNR of the whole image, lqae and the codec;
- the seam gap: PSNR of the 4-pixel bands centred on inner tile borders minus PSNR of the pixels in no
  band, for the bands along rows and along columns separately, the two averaged; the codec's gap on the
  same bands beside it (its own 8x8 blocks are weakest there too);
- tile drift: each 64x64 tile's mean colour error (decode minus photo, per channel, in 8-bit levels),
  its spread across tiles (standard deviation, channels averaged), beside the codec's on the same tiles.

The photos are scripts/build_photo_set.py's folder (its manifest names each one's kind and source), never
used in training. Writes per photo `NAME-side-by-side.png` (photo | lqae | codec) and, for the sheet of
the model card, `sheet.png`: for each photo named by --sheet, the three side by side, then 3x zooms of the
flattest region around a tile corner and of --zoom regions (NAME:X,Y, e.g. a face).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.evaluate import psnr_u8 as psnr, shrink_codec  # noqa: E402

BAND = 4
ZOOM, ZOOM_SIDE = 3, 64


def band_masks(h: int, w: int, tile: int, band: int = BAND) -> tuple[np.ndarray, np.ndarray]:
    """(rows near a horizontal inner border, columns near a vertical one) as (h, w) masks; a border counts
    when a whole band fits inside the image on both sides."""
    def near(n: int) -> np.ndarray:
        m = np.zeros(n, bool)
        for b in range(tile, n - band // 2 + 1, tile):
            m[b - band // 2:b + band // 2] = True
        return m

    rows, cols = near(h), near(w)
    return np.broadcast_to(rows[:, None], (h, w)), np.broadcast_to(cols[None, :], (h, w))


def seam_gap(x: np.ndarray, y: np.ndarray, tile: int) -> float:
    """The seam gap of decode y against photo x (dB; negative: the bands are worse)."""
    rows, cols = band_masks(*x.shape[:2], tile)
    rest = ~(rows | cols)
    gaps = [psnr(x[m], y[m]) - psnr(x[rest], y[rest]) for m in (rows, cols) if m.any()]
    return float(np.mean(gaps)) if gaps else 0.0


def tile_drift(x: np.ndarray, y: np.ndarray, tile: int) -> float:
    """Spread across whole tiles of their mean colour error, in 8-bit levels."""
    h, w = x.shape[0] // tile * tile, x.shape[1] // tile * tile
    err = (y[:h, :w].astype(np.float64) - x[:h, :w]).reshape(h // tile, tile, w // tile, tile, 3).mean((1, 3))
    return float(err.reshape(-1, 3).std(0).mean()) if err.size > 3 else 0.0


def flattest_corner(x: np.ndarray, tile: int, side: int = ZOOM_SIDE) -> tuple[int, int]:
    """The top-left of the side x side window centred on an inner tile corner where the photo varies least."""
    best, where = None, (0, 0)
    for cy in range(tile, x.shape[0] - side // 2 + 1, tile):
        for cx in range(tile, x.shape[1] - side // 2 + 1, tile):
            win = x[cy - side // 2:cy + side // 2, cx - side // 2:cx + side // 2].astype(np.float64)
            v = win.std((0, 1)).mean()
            if best is None or v < best:
                best, where = v, (cx - side // 2, cy - side // 2)
    return where


def zooms(images: list[Image.Image], x0: int, y0: int) -> Image.Image:
    """The same window of each image, enlarged ZOOM times (nearest), side by side."""
    box = (x0, y0, x0 + ZOOM_SIDE, y0 + ZOOM_SIDE)
    big = ZOOM_SIDE * ZOOM
    out = Image.new("RGB", (len(images) * (big + 6) - 6, big), "white")
    for k, im in enumerate(images):
        out.paste(im.crop(box).resize((big, big), Image.NEAREST), (k * (big + 6), 0))
    return out


def side_by_side(images: list[Image.Image], gap: int = 6) -> Image.Image:
    w, h = images[0].size
    out = Image.new("RGB", (len(images) * (w + gap) - gap, h), "white")
    for k, im in enumerate(images):
        out.paste(im, (k * (w + gap), 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--photos", type=Path, default=Path("data/heldout/whole-photos"))
    ap.add_argument("--out", type=Path, default=Path("runs/tiles"))
    ap.add_argument("--sheet", default="", help="comma list of photo names for sheet.png")
    ap.add_argument("--zoom", action="append", default=[], help="NAME:X,Y: a 3x zoom of that 64x64 window in the sheet")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tok = load(a.weights, "cpu")
    tile = tok.image_size
    manifest = a.photos / "manifest.json"
    entries = json.loads(manifest.read_text()) if manifest.is_file() else [
        {"name": p.stem, "kind": ""} for p in sorted(a.photos.glob("*.png"))]
    rows, pictures = [], {}
    for e in entries:
        img = Image.open(a.photos / f"{e['name']}.png").convert("RGB")
        ours = tok.decode(tok.encode(img, size="native"))
        base = shrink_codec(img, tok.config.patch_size)
        x, y, z = (np.asarray(i) for i in (img, ours, base))
        r = {"name": e["name"], "kind": e.get("kind", ""), "size": list(img.size), "psnr": psnr(x, y), "codec_psnr": psnr(x, z),
             "seam_gap": seam_gap(x, y, tile), "codec_seam_gap": seam_gap(x, z, tile),
             "drift": tile_drift(x, y, tile), "codec_drift": tile_drift(x, z, tile)}
        rows.append(r)
        print(f"{r['name']:18s} {r['kind']:8s} {img.width}x{img.height}  PSNR {r['psnr']:.2f} (codec {r['codec_psnr']:.2f}) dB  "
              f"seam gap {r['seam_gap']:+.2f} (codec {r['codec_seam_gap']:+.2f}) dB  "
              f"drift {r['drift']:.2f} (codec {r['codec_drift']:.2f}) levels", flush=True)
        side_by_side([img, ours, base]).save(a.out / f"{e['name']}-side-by-side.png")
        pictures[e["name"]] = (img, ours, base)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "codec_psnr", "seam_gap", "codec_seam_gap", "drift", "codec_drift")}
    print(f"{'mean':18s} {'':8s} {len(rows)} photos  PSNR {mean['psnr']:.2f} (codec {mean['codec_psnr']:.2f}) dB  "
          f"seam gap {mean['seam_gap']:+.2f} (codec {mean['codec_seam_gap']:+.2f}) dB  "
          f"drift {mean['drift']:.2f} (codec {mean['codec_drift']:.2f}) levels")
    worst = min(r["seam_gap"] - r["codec_seam_gap"] for r in rows)
    print(f"seam gap minus the codec's: mean {mean['seam_gap'] - mean['codec_seam_gap']:+.2f} dB, worst photo {worst:+.2f} dB; "
          f"photos above the codec in PSNR: {sum(r['psnr'] > r['codec_psnr'] for r in rows)} of {len(rows)}; "
          f"drift at most the codec's: {sum(r['drift'] <= r['codec_drift'] for r in rows)} of {len(rows)}")
    if a.json:
        a.json.write_text(json.dumps({"checkpoint": tok.name, "photos": rows, "mean": mean}, indent=1) + "\n")
    if a.sheet:
        parts = []
        for name in a.sheet.split(","):
            img, ours, base = pictures[name]
            parts.append(side_by_side([img, ours, base]))
            parts.append(zooms([img, ours, base], *flattest_corner(np.asarray(img), tile)))
            for z in a.zoom:
                zname, _, xy = z.partition(":")
                if zname == name:
                    parts.append(zooms([img, ours, base], *map(int, xy.split(","))))
        width = max(p.width for p in parts)
        sheet = Image.new("RGB", (width, sum(p.height + 8 for p in parts)), "white")
        y = 0
        for p in parts:
            sheet.paste(p, (0, y))
            y += p.height + 8
        sheet.save(a.out / "sheet.png")


if __name__ == "__main__":
    main()
