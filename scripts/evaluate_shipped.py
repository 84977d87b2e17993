"""Reproduce the held-out figures of weights/README.md (after scripts/build_data.py has built data/).

    python scripts/evaluate_shipped.py [--weights weights/lqae-base.safetensors] [--out runs/eval]

Per held-out set: PSNR/SSIM beside the 8x8-thumbnail codec (same images, same run) and codebook use;
all sets pooled: codebook use; Fashion-MNIST: linear probe on LM features vs raw pixels (train split
-> test split). The same functions as `lqae eval`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli.evaluate import codebook_report, probe_report, run_folder, save_sample_grid  # noqa: E402
from lqae_cli.runtime import load  # noqa: E402

SETS = {"emoji": ("data/heldout/emoji", None), "photos": ("data/heldout/photos", None),
        "fashion": ("data/heldout/fashion", 2000)}  # 2,000 of the 10,000 test images for reconstruction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/eval"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load(a.weights, "cpu")
    report, all_ids = {"checkpoint": model.name, "sets": {}}, []
    for name, (folder, limit) in SETS.items():
        t = time.time()
        res = run_folder(model, Path(folder), limit=limit)
        all_ids.append(res.ids)
        save_sample_grid(a.out / f"{name}-samples.png", res.samples)
        report["sets"][name] = {
            "images": len(res.files), "psnr": float(res.psnr.mean()), "ssim": float(res.ssim.mean()),
            "thumbnail_psnr": float(res.base_psnr.mean()), "thumbnail_ssim": float(res.base_ssim.mean()),
            "codebook": codebook_report(res.ids, model.lm.vocab)}
        r = report["sets"][name]
        print(f"{name:8s} {r['images']:6d} images  PSNR {r['psnr']:.2f} dB (thumbnail {r['thumbnail_psnr']:.2f})  "
              f"SSIM {r['ssim']:.3f} (thumbnail {r['thumbnail_ssim']:.3f})  distinct {r['codebook']['distinct']}  "
              f"top {r['codebook']['top_share']:.2%} '{r['codebook']['top_words'][0][0]}'  ({time.time() - t:.0f} s)", flush=True)
    pooled = codebook_report(torch.cat(all_ids), model.lm.vocab)
    report["pooled"] = pooled
    print(f"pooled   {pooled['positions'] // model.cfg.num_tokens:6d} images  distinct {pooled['distinct']}  "
          f"top {pooled['top_share']:.2%} '{pooled['top_words'][0][0]}'  perplexity {pooled['perplexity']:.0f}", flush=True)
    t = time.time()
    train = run_folder(model, Path("data/probe-train/fashion"), reconstruct=False)
    test = run_folder(model, Path("data/heldout/fashion"), reconstruct=False)
    report["fashion_probe"] = probe_report(train, test)
    p = report["fashion_probe"]
    print(f"probe    LM features {p['lm_features_accuracy']:.2%}  raw pixels {p['raw_pixels_accuracy']:.2%}  "
          f"majority {p['majority_class_accuracy']:.2%}  ({p['train_images']} train / {p['test_images']} test, {time.time() - t:.0f} s)")
    (a.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
