"""Cold start: `lqae encode IMAGE` wall time beside `python -c "import torch"`, medians of N runs, interleaved.

    python benchmarks/cold_start.py [--runs 7] [--image examples/...]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--image", default=str(next(iter(sorted((ROOT / "examples").glob("*.png"))))))
    a = ap.parse_args()
    header("cold start")
    cmds = {"import torch": [sys.executable, "-c", "import torch"],
            "lqae encode": [sys.executable, "-m", "lqae_cli", "encode", a.image]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(a.runs):  # interleaved, so both see the same machine noise
        for name, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<14} median {med[k]:.3f} s  (runs: {', '.join(f'{t:.2f}' for t in v)})")
    ratio = med["lqae encode"] / med["import torch"]
    print(f"ratio          {ratio:.2f}x the torch import (goal: at most 1.20x) -> {'met' if ratio <= 1.2 else 'not met'}")


if __name__ == "__main__":
    main()
