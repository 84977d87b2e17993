"""Which precision the hardware runs fastest: bf16 only where it is native *and* measured faster.

CPUs differ: with AVX-512 BF16 or AMX a bf16 matrix product can be several times faster than fp32;
with AVX2 only, bf16 is emulated and several times slower; and even some CPUs that list
`avx512_bf16` run this model's products slower in bf16 than in fp32. So "auto" asks two things:
does the device have native bf16 (CPU flags `avx512_bf16`/`amx_bf16`, or a CUDA device that supports
it), and is a bf16 product of the model's shapes at least BF16_MIN_SPEEDUP faster than fp32 there?
Only then is it bf16. The timing costs a few tenths of a second the first time (oneDNN builds its
bf16 kernels), so a CPU's result is kept in the user's cache folder ($XDG_CACHE_HOME/lqae, else
~/.cache/lqae), keyed by the CPU model, its flags, the torch version and the thread count.

Decoding has a third choice, on request only: "int8", the decoder's linear layers dynamically quantised
to int8 (weights per tensor; the frozen LM and the convolutions stay fp32; CPUs only). Dynamic
quantisation scales each layer's input by the range of the whole batch, so an image's int8 decode
depends slightly on which images share its batch; that is why decode's "auto" never picks it (auto is
bf16 where encode's auto is, else fp32). Its cost in quality and its speed are in the model card
(`scripts/decode_precision.py`).
"""
from __future__ import annotations

import functools
import time

import torch

from .runtime import SharedSettings

PRECISIONS = ("fp32", "bf16")
CHOICES = ("auto", *PRECISIONS)
DECODE_PRECISIONS = ("fp32", "bf16", "int8")
DECODE_CHOICES = ("auto", *DECODE_PRECISIONS)
BF16_MIN_SPEEDUP = 1.15
SPEEDUP_CACHE = "bf16-speedup.json"


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def restore() -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn

    return restore


_STRICT_FP32 = SharedSettings(_no_tf32)


def strict_fp32() -> SharedSettings:
    """fp32 products and convolutions computed in full fp32 inside the block: CUDA's TF32 shortcuts
    (cuDNN convolutions use them by default) are switched off and the previous settings restored after
    (after the last of several threads inside it leaves). The reference words are fp32 words; TF32 rounds
    inputs to 10 mantissa bits and moves some."""
    return _STRICT_FP32


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # the flags say what the CPU has; torch's capability what its kernels may use (ATEN_CPU_CAPABILITY=avx2
        # holds them to AVX2 on an AVX-512 CPU, and bf16 is then emulated)
        capability = str(torch.backends.cpu.get_cpu_capability())
        has = bool({"avx512_bf16", "amx_bf16"} & cpu_flags()) and capability.startswith("AVX512")
        return has or "BF16" in capability or "AMX" in capability
    return False


def _matmul_seconds(dtype: torch.dtype, device: torch.device, repeats: int = 5) -> float:
    a = torch.randn(4096, 256, device=device, dtype=dtype)  # an encoder batch of 64 images by a 256-wide layer
    b = torch.randn(256, 1024, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def cpu_key() -> str:
    """This CPU as its arithmetic is concerned: model, flags, torch version and capability, threads."""
    import hashlib
    import platform

    model = platform.processor()
    if platform.system() == "Linux":
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    flags = hashlib.sha1(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{model}|{flags}|torch {torch.__version__} {capability}|{torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=None)
def bf16_speedup(device: torch.device) -> float:
    """fp32 time / bf16 time of a product of the model's shapes on this device (measured once; on a CPU,
    once per machine: the result is cached on disk)."""
    from .runtime import read_cache, write_cache

    key = None
    if device.type == "cpu":
        key = cpu_key()
        cached = read_cache(SPEEDUP_CACHE).get(key)
        if isinstance(cached, float):
            return cached
    speedup = _matmul_seconds(torch.float32, device) / _matmul_seconds(torch.bfloat16, device)
    if key is not None:
        write_cache(SPEEDUP_CACHE, {**read_cache(SPEEDUP_CACHE), key: speedup})
    return speedup


def auto_precision(device: torch.device) -> str:
    """"bf16" where it is native and at least BF16_MIN_SPEEDUP faster than fp32 here, else "fp32"."""
    if not native_bf16(device):
        return "fp32"
    return "bf16" if bf16_speedup(device) >= BF16_MIN_SPEEDUP else "fp32"


def explain(device: torch.device) -> str:
    """One line for `lqae info`: what auto picks here, and why."""
    if not native_bf16(device):
        return f"fp32 ({device.type}: no native bf16)"
    return (f"{auto_precision(device)} ({device.type}: native bf16, measured {bf16_speedup(device):.2f}x fp32's speed; "
            f"bf16 needs {BF16_MIN_SPEEDUP}x)")


def int8_supported() -> bool:
    """Whether this torch can run dynamically quantised linear layers on the CPU."""
    engines = set(torch.backends.quantized.supported_engines)
    return hasattr(torch.ao.quantization, "quantize_dynamic") and bool({"x86", "fbgemm", "onednn"} & engines)


def quantize_linears(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` with its nn.Linear layers dynamically quantised to int8 (CPU inference only)."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch points eager-mode quantisation users to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def explain_decode(device: torch.device) -> str:
    """One line for `lqae info`: what decode's auto picks here, and the int8 choice."""
    return (f"{auto_precision(device)} (as encode's auto); --precision int8 "
            + ("runs the decoder's linear layers in int8 (an image's decode then depends slightly on its batch)"
               if device.type == "cpu" and int8_supported() else "is not available here"))


def resolve_decode(precision: str, device: torch.device) -> str:
    """Decode's precision: "int8" only on a CPU whose torch runs it; anything else as `resolve` (auto
    never picks int8)."""
    from .errors import ConfigError

    if precision == "int8":
        if device.type != "cpu":
            raise ConfigError(f"int8 decoding runs on CPUs only (this model is on {device.type}); use auto, fp32 or bf16")
        if not int8_supported():
            raise ConfigError(f"this torch ({torch.__version__}) has no dynamic int8 quantisation; use auto, fp32 or bf16")
        return "int8"
    return resolve(precision, device, DECODE_CHOICES)


def resolve(precision: str, device: torch.device, choices: tuple[str, ...] = CHOICES) -> str:
    """"auto" -> this device's choice; "fp32"/"bf16" as given; anything else raises ConfigError naming
    the `choices` the caller takes."""
    from .errors import ConfigError

    if precision == "auto":
        return auto_precision(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}' (choose {', '.join(choices)})")
    return precision
