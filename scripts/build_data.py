"""Assemble the training and held-out image folders from installed packages.

Sources (never downloaded at run time, never committed):
  * Noto emoji 64x64 from the npm package emoji-datasource-google@16.0.0
    (`npm pack emoji-datasource-google@16.0.0 && tar xzf emoji-datasource-google-16.0.0.tgz`)
  * Fashion-MNIST from Debian's dataset-fashion-mnist (IDX files)
  * the photos bundled with scikit-image and scikit-learn

Held out by source: every tenth base emoji (by a hash of its name, skin-tone
variants follow their base), the whole photos in HELDOUT_PHOTOS, and the
Fashion-MNIST test split.

    python scripts/build_data.py --emoji-package package --out data
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
HELDOUT_PHOTOS = {"chelsea", "china", "camera"}


def heldout_emoji(short_name: str) -> bool:
    return int(hashlib.sha1(short_name.encode()).hexdigest(), 16) % 10 == 0


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def build_emoji(package: Path, out: Path) -> tuple[int, int]:
    meta = json.loads((package / "emoji.json").read_text())
    img_dir = package / "img" / "google" / "64"
    counts = [0, 0]
    for e in meta:
        files = [e["image"]] + [v["image"] for v in (e.get("skin_variations") or {}).values()]
        held = heldout_emoji(e["short_name"])
        split = "heldout" if held else "train"
        for f in files:
            src = img_dir / f
            if not src.exists():
                continue
            rgba = Image.open(src).convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.split()[3])
            dst = out / split / "emoji" / slug(e["category"]) / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            rgb.save(dst)
            counts[held] += 1
    return counts[0], counts[1]


def load_photos() -> dict[str, np.ndarray]:
    import skimage.data as skd
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in ["astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
                 "immunohistochemistry", "camera", "coins", "moon", "grass", "gravel", "brick"]:
        photos[name] = getattr(skd, name)()
    left, right = skd.stereo_motorcycle()[:2]
    photos["motorcycle_left"], photos["motorcycle_right"] = left, right
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        photos[Path(fname).stem] = img
    return photos


def build_photos(out: Path, size: int, train_crops: int, heldout_crops: int, seed: int,
                 heldout_only: bool = False) -> tuple[int, int]:
    """Random square crops of every photo; `heldout_only` writes the held-out crops alone (the same ones:
    the random draws for the training crops are made and discarded)."""
    rng = random.Random(seed)
    counts = [0, 0]
    for name, arr in sorted(load_photos().items()):
        img = Image.fromarray(arr).convert("RGB")
        held = name in HELDOUT_PHOTOS
        split = "heldout" if held else "train"
        w, h = img.size
        for i in range(heldout_crops if held else train_crops):
            side = rng.randint(size, max(size, min(w, h) // 2))
            x, y = rng.randint(0, w - side), rng.randint(0, h - side)
            if heldout_only and not held:
                continue
            crop = img.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
            dst = out / split / "photos" / name / f"{i:05d}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            crop.save(dst)
            counts[held] += 1
    return counts[0], counts[1]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def build_fashion(root: Path, out: Path, size: int, per_class_train: int) -> tuple[int, int]:
    counts = [0, 0]
    for prefix, split, limit in [("train", "train", per_class_train), ("t10k", "heldout", None)]:
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        taken = [0] * 10
        for i, (img, label) in enumerate(zip(images, labels)):
            if limit is not None and taken[label] >= limit:
                continue
            taken[label] += 1
            dst = out / split / "fashion" / FASHION_CLASSES[label] / f"{i:05d}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((size, size), Image.BICUBIC).save(dst)
            counts[split == "heldout"] += 1
    return counts[0], counts[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emoji-package", type=Path, required=True, help="untarred emoji-datasource-google 'package' folder")
    ap.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--out", type=Path, default=Path("data"))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--photo-crops", type=int, default=800, help="crops per training photo")
    ap.add_argument("--heldout-photo-crops", type=int, default=200, help="crops per held-out photo")
    ap.add_argument("--fashion-per-class", type=int, default=1200, help="training images per Fashion-MNIST class")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print("emoji   train/heldout:", *build_emoji(a.emoji_package, a.out))
    print("photos  train/heldout:", *build_photos(a.out, a.size, a.photo_crops, a.heldout_photo_crops, a.seed))
    print("fashion train/heldout:", *build_fashion(a.fashion, a.out, a.size, a.fashion_per_class))
    # Fashion-MNIST train split for the linear probe (disjoint from nothing we evaluate on).
    print("fashion probe-train:", build_fashion_probe(a.fashion, a.out / "probe-train" / "fashion", a.size))


def build_fashion_probe(root: Path, out: Path, size: int, per_class: int = 1000) -> int:
    images = read_idx(root / "train-images-idx3-ubyte.gz")
    labels = read_idx(root / "train-labels-idx1-ubyte.gz")
    taken, n = [0] * 10, 0
    for i in range(len(labels) - 1, -1, -1):  # from the end: other images than the tokenizer's training set
        label = labels[i]
        if taken[label] >= per_class:
            continue
        taken[label] += 1
        dst = out / FASHION_CLASSES[label] / f"{i:05d}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).save(dst)
        n += 1
    return n


if __name__ == "__main__":
    main()
