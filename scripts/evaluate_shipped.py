"""Reproduce the held-out figures of weights/README.md (after scripts/build_data.py has built data/).

    python scripts/evaluate_shipped.py [--weights weights/lqae-base.safetensors] [--out runs/eval]

Per held-out set: PSNR/SSIM beside the 8x8-thumbnail codec (same images, same run) and codebook use;
all sets pooled: codebook use; Fashion-MNIST: linear probe on LM features vs raw pixels (train split
-> test split). The same functions as `lqae eval`. Then flat colours: 1,000 random uniform images,
how many distinct words each grid position gives them and how well they come back (the
thumbnail codec returns a flat colour exactly, so it has no row there).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli.evaluate import codebook_report, probe_report, psnr, run_folder, save_sample_grid  # noqa: E402
from lqae_cli import load  # noqa: E402

SETS = {"emoji": ("data/heldout/emoji", None), "photos": ("data/heldout/photos", None),
        "fashion": ("data/heldout/fashion", 2000)}  # 2,000 of the 10,000 test images for reconstruction


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/eval"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = load(a.weights, "cpu")
    model = tok.model
    report, all_ids = {"checkpoint": tok.name, "sets": {}}, []
    for name, (folder, limit) in SETS.items():
        t = time.time()
        res = run_folder(tok, Path(folder), limit=limit)
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
        if name == "photos":
            report["photo_groups"] = groups_by_thumbnail(res.psnr, res.base_psnr)
            for g in report["photo_groups"]:
                print(f"  thumbnail {g['range']:>9s} dB  {g['crops']:4d} crops  lqae {g['psnr']:.2f}  thumbnail {g['thumbnail_psnr']:.2f}  "
                      f"gap {g['psnr'] - g['thumbnail_psnr']:+.2f}", flush=True)
    pooled = codebook_report(torch.cat(all_ids), model.lm.vocab)
    report["pooled"] = pooled
    print(f"pooled   {pooled['positions'] // model.cfg.num_tokens:6d} images  distinct {pooled['distinct']}  "
          f"top {pooled['top_share']:.2%} '{pooled['top_words'][0][0]}'  perplexity {pooled['perplexity']:.0f}", flush=True)
    t = time.time()
    train = run_folder(tok, Path("data/probe-train/fashion"), reconstruct=False)
    test = run_folder(tok, Path("data/heldout/fashion"), reconstruct=False)
    report["fashion_probe"] = probe_report(train, test)
    p = report["fashion_probe"]
    print(f"probe    LM features {p['lm_features_accuracy']:.2%}  raw pixels {p['raw_pixels_accuracy']:.2%}  "
          f"majority {p['majority_class_accuracy']:.2%}  ({p['train_images']} train / {p['test_images']} test, {time.time() - t:.0f} s)")
    report["flat_colours"] = flat_colour_report(model)
    f = report["flat_colours"]
    print(f"flat     {f['images']:6d} colours  words per position median {f['words_per_position_median']:.0f} "
          f"(min {f['words_per_position_min']}, max {f['words_per_position_max']})  PSNR median {f['psnr_median']:.2f} dB")
    (a.out / "report.json").write_text(json.dumps(report, indent=1))


def groups_by_thumbnail(lqae: torch.Tensor, base: torch.Tensor, edges=(18, 21, 24, 27, 30)) -> list[dict]:
    """Mean PSNR of lqae and of the thumbnail codec per band of the thumbnail's own PSNR (busy -> smooth)."""
    bounds = [float("-inf"), *edges, float("inf")]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        sel = (base >= lo) & (base < hi)
        if sel.any():
            label = f"<{hi:g}" if lo == float("-inf") else f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"
            out.append({"range": label, "crops": int(sel.sum()), "psnr": float(lqae[sel].mean()),
                        "thumbnail_psnr": float(base[sel].mean())})
    return out


@torch.no_grad()
def flat_colour_report(model, n: int = 1000, seed: int = 0) -> dict:
    """n uniformly random flat colours: distinct words per grid position, and their reconstruction PSNR."""
    colours = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))
    size = model.cfg.image_size
    images = colours[:, :, None, None].expand(-1, -1, size, size).contiguous()
    ids = torch.cat([model.encode(part) for part in images.split(100)]).flatten(1)      # (n, T)
    recon = torch.cat([model.decode(part) for part in ids.view(-1, model.cfg.grid_size, model.cfg.grid_size).split(100)])
    scores = psnr(recon, images)
    per_position = torch.tensor([len(torch.unique(ids[:, t])) for t in range(ids.shape[1])]).float()
    return {"images": n, "words_per_position_median": float(per_position.median()),
            "words_per_position_min": int(per_position.min()), "words_per_position_max": int(per_position.max()),
            "distinct_words": len(torch.unique(ids)), "psnr_median": float(scores.median()), "psnr_mean": float(scores.mean())}


if __name__ == "__main__":
    main()
