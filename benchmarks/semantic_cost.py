"""What the semantic words cost an encode: the same batches with and without them, interleaved.

In-process, on torch's default threads (not `lqae encode`'s two lanes): batches of 64 held-out images
with the semantic head and word choice (`encode(..., semantic=True)`) and without, alternating batch by
batch; prints the medians, their ratio and the share of the fp32 matmul rate the encoder's FLOPs reach
each way.

    python benchmarks/semantic_cost.py --images 2000
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import header, model_flops

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import torch

    import lqae_cli

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "heldout")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rates = header("semantic words: encode with and without them")
    tok = lqae_cli.load(device="cpu")
    files = sorted(a.source.rglob("*.png"))[: a.images]
    batches = [torch.stack([tok.pixels(f) for f in files[s:s + a.batch_size]]) for s in range(0, len(files), a.batch_size)]
    enc_flops, _ = model_flops(tok)
    model = tok.model
    times = {True: [], False: []}
    with torch.inference_mode():
        model.encode(batches[0], semantic=True)  # builds the search's state once
        for _ in range(a.rounds):
            for x in batches:
                for semantic in (False, True):
                    t = time.perf_counter()
                    model.encode(x, semantic=semantic)
                    times[semantic].append((time.perf_counter() - t) / len(x))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    for name, t in (("without", off), ("with", on)):
        print(f"{name:8s} semantic words: {1 / t:6.0f} images/s (median per-image time of {len(times[False])} batches), "
              f"encoder FLOPs at {enc_flops / t / 1e9 / rates['fp32']:.0%} of the fp32 matmul rate")
    print(f"ratio: with / without = {on / off:.3f} (the semantic words cost {on / off - 1:.1%} of an encode)")


if __name__ == "__main__":
    main()
