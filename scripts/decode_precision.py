"""The cost of the fast decodes in quality: PSNR of fp32, bf16 and int8 (the decoder's linear layers) decodes
of the same fp32 words, on each held-out set (after scripts/build_data.py has built data/), and how often
each differs from the fp32 decode in a pixel.

    python scripts/decode_precision.py [--weights PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.data import list_images, load_image  # noqa: E402
from lqae_cli.evaluate import psnr  # noqa: E402
from evaluate_shipped import SETS  # noqa: E402  (the held-out sets, as the model card's evaluation reads them)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    a = ap.parse_args()
    tok = load(a.weights, "cpu")
    print(f"auto here (encode and decode): {tok.auto_precision}")
    for name, (folder, limit) in SETS.items():
        files = list_images(Path(folder), limit)
        x = torch.stack([load_image(f, tok.image_size) for f in files])
        ids = torch.cat([tok.encode_pixels(part) for part in x.split(256)])
        out = {p: torch.cat([tok.decode_ids(part, p) for part in ids.split(256)]) for p in ("fp32", "bf16", "int8")}
        quantised = {p: (v * 255).round() / 255 for p, v in out.items()}  # as the PNGs hold them
        scores = {p: psnr(v, x).mean().item() for p, v in quantised.items()}
        line = "  ".join(f"{p} {scores[p]:.3f} dB ({scores[p] - scores['fp32']:+.3f}; "
                         f"{(quantised[p] != quantised['fp32']).float().mean().item():.1%} of 8-bit values differ)"
                         for p in ("bf16", "int8"))
        print(f"{name:8s} {len(files):5d} images  PSNR fp32 decode {scores['fp32']:.3f} dB  {line}", flush=True)

if __name__ == "__main__":
    main()
