"""Training throughput of the default preset: images/s per step, fp32 vs bf16 autocast, side by side.

    python benchmarks/train_speed.py [--steps 6] [--batch-size 64] [--preset base]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import header, matmul_rate  # noqa: E402


def main() -> None:
    import torch

    from lqae_cli.config import preset
    from lqae_cli.lm import LanguageModel
    from lqae_cli.model import LQAE
    from lqae_cli.train import resolve_precision

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    header(f"training step, preset {a.preset}, batch {a.batch_size}, device {a.device}")
    device = torch.device(a.device)
    if device.type == "cpu":  # as `lqae train` does (MALLOC_TRIM_THRESHOLD_ set: malloc's own settings, to compare)
        from lqae_cli.runtime import keep_freed_memory

        print(f"malloc  keeps freed memory: {keep_freed_memory()}")
    lm = LanguageModel.load()
    model = LQAE(preset(a.preset, lm_fingerprint=lm.fingerprint), lm).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.rand(a.batch_size, 3, model.cfg.image_size, model.cfg.image_size, device=device)
    modes = {"fp32": None, "bf16": torch.bfloat16}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for step in range(a.steps + 1):  # interleaved; the first round is warm-up
        for name, dtype in modes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times[name].append(time.perf_counter() - t)
    T = model.cfg.num_tokens
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lm_params = sum(p.numel() for n, p in lm.transformer.named_parameters() if "embeddings" not in n)
    # forward 2*params*tokens; backward ~2x that (the LM: inputs only, ~1x)
    flops = (2 * trained * T * 3 + 2 * lm_params * (T + 2) * 2) * a.batch_size
    rates = {"fp32": matmul_rate("float32"), "bf16": matmul_rate("bfloat16")} if device.type == "cpu" else {}
    for name in modes:
        med = statistics.median(times[name])
        share = f", {flops / med / 1e9 / rates[name]:.0%} of the {rates[name]:.0f} GFLOP/s {name} matmul rate measured here" if rates else ""
        print(f"{name}  median step {med:.2f} s = {a.batch_size / med:.1f} images/s{share}")
    print(f"bf16 speed-up {statistics.median(times['fp32']) / statistics.median(times['bf16']):.2f}x "
          f"(auto precision picks {'bf16' if resolve_precision('auto', device) else 'fp32'} here)")


if __name__ == "__main__":
    main()
