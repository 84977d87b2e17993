"""Batch encode (folder of images -> token files) and batch decode (token files -> PNGs), images/s,
plus peak memory of encoding a larger folder. Uses real subprocesses of the CLI, as a user would.

    python benchmarks/batch_codec.py [--images 2000] [--memory-images 10000] [--source data/heldout]
"""
from __future__ import annotations

import argparse
import os
import shutil
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
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    header("batch encode / decode")
    lqae = [sys.executable, "-m", "lqae_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "imgs", a.images, a.source)
        enc_s, enc_mb = timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(tmp / "tokens"), "--quiet",
                                      "--workers", str(a.workers), "--device", a.device])
        n_tok = len(list((tmp / "tokens").rglob("*.txt")))
        dec_s, dec_mb = timed(lqae + ["decode", str(tmp / "tokens"), "-o", str(tmp / "pngs"), "--quiet", "--device", a.device])
        n_png = len(list((tmp / "pngs").rglob("*.png")))
        print(f"encode  {n_tok} images in {enc_s:.1f} s = {n_tok / enc_s:.0f} images/s (floor 150), process start included")
        print(f"decode  {n_png} images in {dec_s:.1f} s = {n_png / dec_s:.0f} images/s (floor 40), process start included")
        # FLOP share: encoder + search per image against the measured fp32 matmul rate
        sys.path.insert(0, str(ROOT))
        from lqae_cli.runtime import load

        model = load(None, "cpu")
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
            small_s, small_mb = timed(lqae + ["encode", str(tmp / "imgs"), "-o", str(tmp / "t2"), "--quiet", "--workers", str(a.workers)])
            big_s, big_mb = timed(lqae + ["encode", str(tmp / "big"), "-o", str(tmp / "t3"), "--quiet", "--workers", str(a.workers)])
            print(f"memory  encode peak RSS {small_mb:.0f} MiB for {a.images} images, {big_mb:.0f} MiB for {a.memory_images} images "
                  f"(main process; floor 1024 MiB, not growing); {a.memory_images / big_s:.0f} images/s")


if __name__ == "__main__":
    main()
