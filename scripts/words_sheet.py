"""A picture of fewer words: per image, the input, its decode from all words, from `--words auto` and from a few
fixed counts, each captioned with its words and PSNR; and beside them the auto grid with its mask marks.

    python scripts/words_sheet.py examples/emoji-rocket.png examples/photo-cat.png --out weights/words-auto.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.show import font  # noqa: E402

PANEL = 192


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = (np.asarray(i, dtype=np.float64) for i in (a, b))
    return float(10 * np.log10(255 ** 2 / max(np.mean((x - y) ** 2), 1e-12)))


def grid_panel(words: list[list[str]]) -> Image.Image:
    g = len(words)
    cell = PANEL // g
    img = Image.new("RGB", (PANEL, PANEL), "white")
    d = ImageDraw.Draw(img)
    f = font(9)
    for r, row in enumerate(words):
        for c, w in enumerate(row):
            box = (c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1)
            d.rectangle(box, fill=(235, 235, 235) if w == "_" else (255, 255, 255), outline=(200, 200, 200))
            d.text((box[0] + 2, box[1] + cell // 2 - 5), w[:5], fill=(150, 150, 150) if w == "_" else (0, 0, 0), font=f)
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--counts", default="16,32")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    tok = load(a.weights, "cpu")
    counts = [int(c) for c in a.counts.split(",")]
    rows = []
    for path in a.images:
        x = Image.fromarray((tok.pixels(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        full = tok.encode(x)
        auto = tok.encode(x, words="auto")
        panels = [(x, path.name)]
        for label, grid in [("all 64 words", full), (f"auto: {auto.kept} words", auto)] + \
                [(f"{k} words", tok.encode(x, words=k)) for k in counts]:
            img = tok.decode(grid, precision="fp32")
            panels.append((img, f"{label}, {psnr(x, img):.1f} dB"))
        panels.append((grid_panel(auto.words), "the auto grid"))
        rows.append(panels)
    cols = len(rows[0])
    sheet = Image.new("RGB", (cols * (PANEL + 8), len(rows) * (PANEL + 24)), "white")
    d = ImageDraw.Draw(sheet)
    f = font(12)
    for r, panels in enumerate(rows):
        for c, (img, label) in enumerate(panels):
            x0, y0 = c * (PANEL + 8), r * (PANEL + 24)
            sheet.paste(img.resize((PANEL, PANEL), Image.NEAREST), (x0, y0 + 20))
            d.text((x0, y0 + 3), label, fill=(0, 0, 0), font=f)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
