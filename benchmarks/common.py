"""Shared helpers for the benchmark scripts: machine description, medians, a matmul-rate probe."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} logical cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")


def matmul_rate(dtype_name: str = "float32", n: int = 1024, repeats: int = 10, windows: int = 7) -> float:
    """Measured dense matmul rate in GFLOP/s on the running device (the ceiling we compare against): the best of
    `windows` timings of `repeats` products, so that a moment's slowdown of a shared machine does not lower
    the ceiling (and raise every share computed from it)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * repeats / best / 1e9


def limits() -> dict[str, float]:
    """The hardware's limits measured in this run: the fp32 matmul rate, and the bf16 one where bf16 is native."""
    import torch

    from lqae_cli.precision import native_bf16

    rates = {"fp32": matmul_rate("float32")}
    if native_bf16(torch.device("cpu")):
        rates["bf16"] = matmul_rate("bfloat16")
    return rates


def header(title: str) -> dict[str, float]:
    """Print what the figures below ran on (CPU kind, cores, capability, matmul rates); returns the rates."""
    import torch

    from lqae_cli.precision import explain

    print(f"# {title}")
    print(f"machine: {machine()}")
    rates = limits()
    print("matmul: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items()) + " measured in this run (best of 7 timings of ten 1024^3 products); "
          f"precision auto here: {explain(torch.device('cpu'))}")
    sys.stdout.flush()
    return rates


def model_flops(tok) -> tuple[float, float]:
    """(encoder, decode) FLOPs per image of tokenizer `tok`'s model, counted by torch's own FlopCounterMode
    on one image: every matrix product, convolution and attention product the model runs (2 per
    multiply-add; the patch and refine convolutions at every output position, attention's two products
    per layer). torch's counter does not know the CPU's fused attention op: it is counted here as the
    CUDA ones are (`sdpa_flop_count`)."""
    import torch
    from torch.utils import flop_counter

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention}
    model = tok.model
    x = torch.rand(1, 3, tok.image_size, tok.image_size, device=tok.device)
    with torch.no_grad():
        with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as enc:
            model.encoder(x * 2 - 1)
        words = model.quantizer.codebook[model.encode(x).flatten(1)]
        with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as dec:
            model.decoder(model.run_lm(words))
    return float(enc.get_total_flops()), float(dec.get_total_flops())
