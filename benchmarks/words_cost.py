"""What `encode --words auto` costs: in-process encode of the same images with all words, with a fixed count and with
auto, alternating, medians of --repeats runs each, and the ratios.

    python benchmarks/words_cost.py [--images 128] [--repeats 3] [--data data/heldout/emoji]

auto decodes every candidate count (4, 8, ..., 64 words: 16 decodes per image, fp32) to measure which one
stays within 0.5 dB of all words, so it costs what those decodes cost; a fixed count costs only the ranking.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import header


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("data/heldout/emoji"))
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    import torch

    import lqae_cli as lqae
    from lqae_cli.data import list_images

    rates = header("encode with fewer words")
    tok = lqae.load(a.weights, "cpu")
    files = list_images(a.data, a.images)
    x = torch.stack([tok.pixels(f) for f in files])
    tok.encode_grids(x[:8], [None] * 8, words="auto")                 # the LM loads, caches warm
    times = {"all": [], "32": [], "auto": []}
    for _ in range(a.repeats):
        for k in times:
            t = time.perf_counter()
            tok.encode_grids(x, [None] * len(x), words=None if k == "all" else k)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"--words {k:5s} {len(x)} images: {v:.2f} s, {len(x) / v:.1f} images/s (median of {a.repeats}); "
              f"{v / med['all']:.2f}x the time of all words")
    print(f"(fp32 matmul rate in this run {rates['fp32']:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
