"""The cost of a bf16 decode in quality: PSNR of fp32 and bf16 decodes of the same fp32 words, on each
held-out set (after scripts/build_data.py has built data/), and how often the two differ in a pixel.

    python scripts/decode_precision.py [--weights PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.data import list_images, load_image  # noqa: E402
from lqae_cli.evaluate import psnr  # noqa: E402

SETS = {"emoji": ("data/heldout/emoji", None), "photos": ("data/heldout/photos", None), "fashion": ("data/heldout/fashion", 2000)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    a = ap.parse_args()
    tok = load(a.weights, "cpu")
    print(f"precision auto on this machine: {tok.auto_precision}")
    for name, (folder, limit) in SETS.items():
        files = list_images(Path(folder))
        if limit:
            files = files[:: max(1, len(files) // limit)][:limit]
        x = torch.stack([load_image(f, tok.image_size) for f in files])
        ids = torch.cat([tok.encode_pixels(part) for part in x.split(256)])
        out = {p: torch.cat([tok.decode_ids(part, p) for part in ids.split(256)]) for p in ("fp32", "bf16")}
        quantised = {p: (v * 255).round() / 255 for p, v in out.items()}  # as the PNGs hold them
        p32, p16 = psnr(quantised["fp32"], x).mean().item(), psnr(quantised["bf16"], x).mean().item()
        differ = (quantised["fp32"] != quantised["bf16"]).float().mean().item()
        print(f"{name:8s} {len(files):5d} images  PSNR fp32 decode {p32:.3f} dB  bf16 decode {p16:.3f} dB  "
              f"difference {p16 - p32:+.3f} dB  ({differ:.1%} of 8-bit pixel values differ)", flush=True)


if __name__ == "__main__":
    main()
