"""Build the example images (small, free to ship) and their token files with the shipped checkpoint.

    python examples/make_examples.py --emoji-package package
Sources: Noto emoji (Apache-2.0, emoji-datasource-google), Fashion-MNIST (MIT, Debian's
dataset-fashion-mnist), scikit-image's 'chelsea' photo (public domain / CC0: a 64x64 crop, and the whole
451x300 photo as a JPEG for `--size native`), and one picture drawn here.
"""
from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
EMOJI = {"emoji-cat.png": "1f431.png", "emoji-rocket.png": "1f680.png", "emoji-pizza.png": "1f355.png"}


def drawn_sunset(size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    for y in range(size):
        t = y / size
        d.line([(0, y), (size, y)], fill=(int(250 - 120 * t), int(140 - 80 * t), int(60 + 120 * t)))
    d.ellipse([18, 26, 46, 54], fill=(255, 210, 80))
    d.rectangle([0, 44, size, size], fill=(30, 60, 110))
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emoji-package", type=Path, required=True)
    ap.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    a = ap.parse_args()
    for name, src in EMOJI.items():
        rgba = Image.open(a.emoji_package / "img" / "google" / "64" / src).convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.split()[3])
        rgb.save(HERE / name)
    import skimage.data

    cat = Image.fromarray(skimage.data.chelsea())
    cat.crop((100, 20, 300, 220)).resize((64, 64), Image.BICUBIC).save(HERE / "photo-cat.png")
    cat.save(HERE / "photo-chelsea.jpg", quality=90)
    with gzip.open(a.fashion / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    Image.fromarray(images[0]).resize((64, 64), Image.BICUBIC).save(HERE / "fashion-boot.png")
    drawn_sunset().save(HERE / "drawn-sunset.png")
    for png in sorted(HERE.glob("*.png")):
        if png.name.endswith(".rec.png"):
            continue
        tokens = subprocess.run([sys.executable, "-m", "lqae_cli", "encode", str(png.relative_to(HERE.parent))],
                                check=True, capture_output=True, text=True, cwd=HERE.parent).stdout
        png.with_suffix(".txt").write_text(tokens)
        print(png.name, "->", png.with_suffix(".txt").name)


if __name__ == "__main__":
    main()
