"""Batch encode (folder of images -> token files) and batch decode (token files -> PNGs), images/s,
plus peak memory of encoding a larger folder. Uses real subprocesses of the CLI, as a user would.

    python benchmarks/batch_codec.py [--images 2000] [--repeats 3] [--memory-images 10000] [--source data/heldout]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, matmul_rate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_folder(dst: Path, n: int, source: Path | None) -> None:
    """n 64x64 PNGs: copies from a source folder (cycled) or random pictures when there is none."""
    from PIL import Image
    import torch

    dst.mkdir(parents=True)
    files = sorted(p for p in source.rglob("*.png")) if source and source.exists() else []
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        out = dst / f"{i // 500:03d}" / f"{i:06d}.png"
        out.parent.mkdir(exist_ok=True)
        if files:
            shutil.copyfile(files[i % len(files)], out)
        else:
            arr = (torch.rand(64, 64, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(out)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of that child process alone, from wait4)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--memory-images", type=int, default=10000)
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "heldout")
    ap.add_argument("--workers", type=int, default=None, help="passed to the CLI; default: the CLI's own default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    header("batch encode / decode")
    lqae = [sys.executable, "-m", "lqae_cli"]
    workers = ["--workers", str(a.workers)] if a.workers is not None else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "imgs", a.images, a.source)
        # fp32 (the default) and bf16 encodes alternate, so both see the same machine state
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for r in range(a.repeats):
            for prec in runs:
                out = tmp / f"tokens-{prec}"
                shutil.rmtree(out, ignore_errors=True)
                wall, _ = timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(out), "--quiet", *workers,
                                        "--device", a.device, "--precision", prec])
                runs[prec].append(wall)
        n_tok = len(list((tmp / "tokens-fp32").rglob("*.txt")))
        same = total = 0
        for f in (tmp / "tokens-fp32").rglob("*.txt"):
            ref, fast = f.read_text().split(), (tmp / "tokens-bf16" / f.relative_to(tmp / "tokens-fp32")).read_text().split()
            same, total = same + sum(x == y for x, y in zip(ref, fast)), total + len(ref)
        enc_s = statistics.median(runs["fp32"])
        dec_s, dec_mb = timed(lqae + ["decode", str(tmp / "tokens-fp32"), "-o", str(tmp / "pngs"), "--quiet", "--device", a.device])
        n_png = len(list((tmp / "pngs").rglob("*.png")))
        for prec, walls in runs.items():
            med = statistics.median(walls)
            print(f"encode  {prec}: {n_tok} images in {med:.1f} s = {n_tok / med:.0f} images/s (floor 150), median of "
                  f"{len(walls)} runs ({', '.join(f'{n_tok / w:.0f}' for w in walls)}), process start included")
        print(f"encode  bf16/fp32 speed ratio {statistics.median(runs['fp32']) / statistics.median(runs['bf16']):.2f}x; "
              f"{same / total:.2%} of bf16 words equal the fp32 words")
        print(f"decode  {n_png} images in {dec_s:.1f} s = {n_png / dec_s:.0f} images/s (floor 40), process start included")
        # FLOP share: encoder + search per image against the measured fp32 matmul rate
        sys.path.insert(0, str(ROOT))
        from lqae_cli import load

        model = load(None, "cpu").model
        enc_flops = 2 * sum(p.numel() for p in model.encoder.parameters()) * model.cfg.num_tokens
        search_flops = 2 * model.cfg.num_tokens * model.quantizer.num_allowed * model.cfg.match_dim
        lm_params = sum(p.numel() for n, p in model.lm.transformer.named_parameters() if "embeddings" not in n)
        dec_flops = 2 * (sum(p.numel() for p in model.decoder.parameters()) + lm_params) * (model.cfg.num_tokens + 2)
        rate = matmul_rate("float32")
        print(f"matmul  {rate:.0f} GFLOP/s fp32 measured in this run")
        print(f"encode  {(enc_flops + search_flops) / 1e6:.0f} MFLOP/image -> {(enc_flops + search_flops) * n_tok / enc_s / 1e9 / rate:.1%} of that rate")
        print(f"decode  {dec_flops / 1e6:.0f} MFLOP/image (LM + decoder, patch-linear part) -> {dec_flops * n_png / dec_s / 1e9 / rate:.1%} of that rate")
        del model
        # memory: a folder 5x larger; the peak must not grow with the number of images
        if a.memory_images:
            make_folder(tmp / "big", a.memory_images, a.source)
            small_s, small_mb = timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(tmp / "t2"), "--quiet", *workers])
            big_s, big_mb = timed(lqae + ["encode", str(tmp / "big"), "-o", str(tmp / "t3"), "--quiet", *workers])
            print(f"memory  encode peak RSS {small_mb:.0f} MiB for {a.images} images, {big_mb:.0f} MiB for {a.memory_images} images "
                  f"(main process; floor 1024 MiB, not growing); {a.memory_images / big_s:.0f} images/s")


if __name__ == "__main__":
    main()
