"""Cold start: `lqae encode IMAGE` wall time beside `python -c "import torch"`, medians of N runs, interleaved.

    python benchmarks/cold_start.py [--runs 7] [--image examples/...]

As a user's install runs them: the children may write bytecode (pip compiles an installed package's
modules at install time; a PYTHONDONTWRITEBYTECODE=1 in this shell would otherwise make every run of an
in-tree checkout compile lqae's sources again, about 40 ms that no installed copy pays), and one untimed
run of each comes first (bytecode written, files in the page cache, the per-machine caches filled).
"""
from __future__ import annotations

import argparse
import os
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
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for run in range(a.runs + 1):  # interleaved, so both see the same machine noise; run 0 is the untimed warm-up
        for name, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if run:
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<14} median {med[k]:.3f} s  (runs: {', '.join(f'{t:.2f}' for t in v)})")
    ratio = med["lqae encode"] / med["import torch"]
    print(f"ratio          {ratio:.2f}x the torch import (goal: at most 1.20x) -> {'met' if ratio <= 1.2 else 'not met'}")


if __name__ == "__main__":
    main()
