"""Training curves as a PNG (Pillow only): loss, PSNR (train and validation), codebook usage."""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H, PAD = 420, 260, 44
SERIES = [  # (title, [(metric key, colour, label)], log scale)
    ("loss (log scale)", [("loss", (200, 60, 40), "total"), ("mse", (40, 90, 200), "mse")], True),
    ("PSNR dB", [("psnr", (40, 90, 200), "train batch"), ("val_psnr", (30, 150, 70), "validation")], False),
    ("codebook", [("distinct", (120, 60, 170), "distinct words / batch"), ("perplexity", (230, 140, 20), "perplexity")], False),
]


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _panel(rows: list[dict], title: str, series, log: bool) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    small, big = ImageFont.load_default(size=11), ImageFont.load_default(size=13)
    d.text((PAD, 8), title, font=big, fill=(0, 0, 0))
    pts = {k: [(r["step"], r[k]) for r in rows if k in r and r[k] is not None and (not log or r[k] > 0)] for k, _, _ in series}
    allv = [v for p in pts.values() for _, v in p]
    steps = [s for p in pts.values() for s, _ in p]
    if not allv:
        return img
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = min(map(f, allv)), max(map(f, allv))
    hi = hi if hi > lo else lo + 1
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    x = lambda s: PAD + (s - s0) / (s1 - s0) * (W - PAD - 12)
    y = lambda v: H - PAD + 10 - (f(v) - lo) / (hi - lo) * (H - PAD - 40)
    d.rectangle([PAD, 30, W - 12, H - PAD + 10], outline=(180, 180, 180))
    for frac in (0, 0.5, 1):
        val = lo + frac * (hi - lo)
        label = f"{10 ** val:.3g}" if log else f"{val:.3g}"
        yy = H - PAD + 10 - frac * (H - PAD - 40)
        d.text((4, yy - 6), label, font=small, fill=(90, 90, 90))
    d.text((PAD, H - PAD + 14), f"step {s0}", font=small, fill=(90, 90, 90))
    d.text((W - 80, H - PAD + 14), f"step {s1}", font=small, fill=(90, 90, 90))
    for n, (k, colour, label) in enumerate(series):
        p = pts[k]
        if len(p) > 1:
            d.line([(x(s), y(v)) for s, v in p], fill=colour, width=2)
        elif p:
            d.ellipse([x(p[0][0]) - 2, y(p[0][1]) - 2, x(p[0][0]) + 2, y(p[0][1]) + 2], fill=colour)
        lx = PAD + 6 + n * 170
        d.line([(lx, H - 11), (lx + 14, H - 11)], fill=colour, width=2)
        d.text((lx + 18, H - 18), label, font=small, fill=colour)
    return img


def plot_curves(metrics_path: Path, out: Path) -> None:
    from .fileio import atomic_write

    rows = read_metrics(metrics_path)
    sheet = Image.new("RGB", (W * len(SERIES), H), "white")
    for i, (title, series, log) in enumerate(SERIES):
        sheet.paste(_panel(rows, title, series, log), (i * W, 0))
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"))
