"""The rate-distortion table and plot of the model card from `lqae eval DIR --words table -f json` outputs.

    for s in emoji icons photos; do lqae eval data/heldout/$s --words table -f json > runs/rd/$s.json; done
    lqae eval data/heldout/fashion --words table --limit 500 -f json > runs/rd/fashion.json
    python scripts/plot_words.py runs/rd/*.json --out weights/words-rate.png

Prints a markdown table per set (words kept, bits per image, PSNR; the best thumbnail codec within those
bits) and draws PSNR against bits per image: lqae's fixed counts as a line, `auto` as a dot, the
codec's best choices as a dashed line, one panel per set.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H, PAD = 360, 260, 44
LQAE, AUTO, CODEC = (40, 90, 200), (200, 60, 40), (120, 120, 120)


def table(r: dict) -> str:
    lines = [f"{Path(r['data']).name} ({r['images']} images)", "",
             "| words kept | mean words | bits / image | PSNR lqae | best thumbnail codec within those bits | its PSNR |",
             "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        c = row["codec"]
        codec = "none fits" if c is None else f"{c['side']}x{c['side']} px, {c['bits_per_channel']} bits/channel ({c['bits']} bits)"
        lines.append(f"| {row['words']} | {row['mean_words']:.1f} | {row['bits']:.0f} | {row['psnr']:.2f} dB | {codec} | "
                     + ("" if c is None else f"{c['psnr']:.2f} dB") + " |")
    t = r["thumbnail_8x8_4bit"]
    lines.append(f"\n8x8 thumbnail at 4 bits per channel: {t['bits']} bits, {t['psnr']:.2f} dB")
    return "\n".join(lines)


def panel(r: dict) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    small, big = ImageFont.load_default(size=11), ImageFont.load_default(size=13)
    d.text((PAD, 8), f"{Path(r['data']).name}: PSNR dB against bits per image", font=big, fill=(0, 0, 0))
    fixed = [(row["bits"], row["psnr"]) for row in r["rows"] if row["words"] != "auto"]
    auto = [(row["bits"], row["psnr"]) for row in r["rows"] if row["words"] == "auto"]
    codec = sorted({(row["codec"]["bits"], row["codec"]["psnr"]) for row in r["rows"] if row["codec"]})
    pts = fixed + auto + codec
    b0, b1 = 0, max(b for b, _ in pts) * 1.05
    p0, p1 = min(p for _, p in pts) - 0.5, max(p for _, p in pts) + 0.5
    x = lambda b: PAD + (b - b0) / (b1 - b0) * (W - PAD - 12)
    y = lambda p: H - PAD + 10 - (p - p0) / (p1 - p0) * (H - PAD - 40)
    d.rectangle([PAD, 30, W - 12, H - PAD + 10], outline=(180, 180, 180))
    for frac in (0, 0.5, 1):
        v = p0 + frac * (p1 - p0)
        d.text((4, y(v) - 6), f"{v:.1f}", font=small, fill=(90, 90, 90))
        b = b0 + frac * (b1 - b0)
        d.text((x(b) - 10, H - PAD + 14), f"{b:.0f}", font=small, fill=(90, 90, 90))
    for series, colour in ((fixed, LQAE), (codec, CODEC)):
        if len(series) > 1:
            d.line([(x(b), y(p)) for b, p in series], fill=colour, width=2)
        for b, p in series:
            d.ellipse([x(b) - 3, y(p) - 3, x(b) + 3, y(p) + 3], fill=colour)
    for b, p in auto:
        d.ellipse([x(b) - 5, y(p) - 5, x(b) + 5, y(p) + 5], fill=AUTO)
    for n, (label, colour) in enumerate((("lqae, K words", LQAE), ("lqae auto", AUTO), ("thumbnail codec", CODEC))):
        lx = PAD + 4 + n * 105
        d.line([(lx, H - 11), (lx + 12, H - 11)], fill=colour, width=3)
        d.text((lx + 15, H - 18), label, font=small, fill=colour)
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    reports = [json.loads(p.read_text()) for p in a.reports]
    for r in reports:
        print(table(r) + "\n")
    sheet = Image.new("RGB", (W * len(reports), H), "white")
    for i, r in enumerate(reports):
        sheet.paste(panel(r), (i * W, 0))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)


if __name__ == "__main__":
    main()
