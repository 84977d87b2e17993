"""Decoding images of many tiles: the stitcher against feathered borders (the decode without a stitcher), side by
side in one process, and the peak memory of a 4000x3000 photo's decode.

    python benchmarks/tile_decode.py [--weights PATH] [--repeats 5] [--big]

Speed: one photo-sized grid (a held-out photo enlarged to 1024x768, 192 tiles) decoded alternately with the
checkpoint's stitcher and with feathering (the same decoder; `model.stitcher` set aside), `--repeats` times
each; medians of seconds per tile, and their ratio. With --big: a 4000x3000 grid (2,961 tiles) decoded in a
fresh subprocess per path, its peak resident memory (ru_maxrss) and time.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import header

ROOT = Path(__file__).resolve().parent.parent


def photo(width: int, height: int):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return Image.fromarray(np.asarray(load_sample_images().images[0])).convert("RGB").resize((width, height), Image.BICUBIC)


def big_child(weights: str | None, stitched: bool) -> None:
    import lqae_cli as lqae

    tok = lqae.load(weights, "cpu")
    grid = tok.encode(photo(4000, 3000), size="native")
    if not stitched:
        tok.model.stitcher = None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    tok.decode(grid)
    print(f"{time.perf_counter() - t:.1f} {before / 1024:.0f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--child", choices=["stitched", "feathered"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return big_child(a.weights, a.child == "stitched")
    import lqae_cli as lqae

    rates = header("decoding tiled images: the stitcher against feathered borders")
    tok = lqae.load(a.weights, "cpu")
    stitcher = tok.model.stitcher
    if stitcher is None:
        sys.exit("this checkpoint has no stitcher")
    grid = tok.encode(photo(1024, 768), size="native")
    tiles = len(grid.ids) * len(grid.ids[0]) // tok.grid_size ** 2
    tok.decode(grid)                                                  # the LM loads, caches warm
    times = {"stitched": [], "feathered": []}
    for _ in range(a.repeats):
        for name in times:
            tok.model.stitcher = stitcher if name == "stitched" else None
            t = time.perf_counter()
            tok.decode(grid)
            times[name].append((time.perf_counter() - t) / tiles)
    tok.model.stitcher = stitcher
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:10s} {tiles} tiles: {1000 * v:.2f} ms per tile (median of {a.repeats}), {1 / v:.0f} tiles/s")
    print(f"stitched / feathered time per tile: {med['stitched'] / med['feathered']:.3f}x "
          f"(fp32 matmul rate in this run {rates['fp32']:.0f} GFLOP/s)")
    if a.big:
        for name in ("stitched", "feathered"):
            out = subprocess.run([sys.executable, __file__, "--child", name] + (["--weights", a.weights] if a.weights else []),
                                 capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
            print(f"4000x3000 (2,961 tiles), {name}: decode {out[0]} s, peak RSS {out[2]} MiB (before the decode {out[1]} MiB)")


if __name__ == "__main__":
    main()
