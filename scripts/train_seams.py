"""Train the experimental seam refiner (`scripts/seam_refiner.py`, not shipped) on the pairs of
scripts/seam_pairs.py, then score it on the held-out photos: PSNR and seam gap of the stitched decode as
it is, feathered (`tiles.feather_seams`, what `lqae decode` does) and refined, each cropped to the photo.

    python scripts/seam_pairs.py --offsets 0,0 32,32 16,48               # training pairs (CPU, minutes)
    python scripts/seam_pairs.py --heldout --out runs/seams/heldout       # held-out photos
    python scripts/train_seams.py --device cuda --steps 20000 --batch 32 --crop 192 --band-weight 2 --max-seconds 130

The figures in weights/README.md came from that last command on an H200 (and a second run with
`--band-weight 3 --context-width 64 --lr 1e-3 --max-seconds 125`), with the pairs of the first command
less `retina` and `hubble_deep_field` at 32,32 (the GPU machine takes 64 MiB per call).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_tiles import border_mask, patch_border_mask  # noqa: E402
from lqae_cli.checkpoint import read_card  # noqa: E402
from lqae_cli.data import to_uint8  # noqa: E402
from lqae_cli.evaluate import psnr_u8 as psnr  # noqa: E402
from seam_refiner import SeamConfig, read_pairs, save_refiner, train_refiner  # noqa: E402
from lqae_cli.tiles import feather_seams  # noqa: E402
from lqae_cli.tokenizer import weights_path  # noqa: E402



def score(refiner, heldout, tile: int, patch: int, sizes: dict) -> dict:
    """{name: {way: (psnr, seam gap, tile- minus patch-border bands)}} for raw, feather, refined."""
    out = {}
    for stem, orig, dec in heldout:
        name = stem.rsplit("-", 2)[0]
        w, h = sizes[name]
        x = orig.permute(1, 2, 0).numpy()[:h, :w]
        d = dec.float() / 255
        ways = {"raw": d, "feather": feather_seams(d, tile)}
        if refiner is not None:
            ways["refined"] = refiner.refine(d.to(next(refiner.parameters()).device)).cpu()
        mask, control = border_mask(h, w, tile), patch_border_mask(h, w, tile, patch)
        out[name] = {}
        for way, img in ways.items():
            y = to_uint8(img)[:h, :w]
            out[name][way] = (round(psnr(x, y), 3), round(psnr(x[mask], y[mask]) - psnr(x[~mask], y[~mask]), 3),
                              round(psnr(x[mask], y[mask]) - psnr(x[control], y[control]), 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=Path, default=Path("runs/seams/pairs"))
    ap.add_argument("--heldout", type=Path, default=Path("runs/seams/heldout"))
    ap.add_argument("--weights", type=Path, default=None, help="the base checkpoint (its config is recorded)")
    ap.add_argument("--out", type=Path, default=Path("runs/seams/lqae-base-seams.safetensors"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--band-weight", type=float, default=1.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--context-width", type=int, default=32)
    ap.add_argument("--dilations", default="1,2,4,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=None, help="cut the steps to what fits in this time")
    a = ap.parse_args()
    card = read_card(weights_path(a.weights))
    base = card["config"]
    cfg = SeamConfig(tile=base.image_size, width=a.width, context_width=a.context_width, pool=base.patch_size,
                     dilations=tuple(int(d) for d in a.dilations.split(",")))
    pairs = read_pairs(a.pairs)
    heldout = read_pairs(a.heldout)
    sizes = {}
    for stem, _, _ in heldout:
        name = stem.rsplit("-", 2)[0]
        from PIL import Image
        sizes[name] = Image.open(a.heldout / f"{name}-orig.png").size
    print(f"{len(pairs)} training pairs, {len(heldout)} held-out photos; refiner {asdict(cfg)}", flush=True)
    refiner, record = train_refiner([(o, d) for _, o, d in pairs], cfg, steps=a.steps, batch=a.batch, crop=a.crop,
                                    lr=a.lr, band_weight=a.band_weight, device=a.device, seed=a.seed, max_seconds=a.max_seconds,
                                    log=lambda m: print(m, flush=True))
    print(f"trained in {record['seconds']} s on {record['device']}", flush=True)
    scores = score(refiner, heldout, base.image_size, base.patch_size, sizes)
    for name, ways in scores.items():
        print(name, "  ".join(f"{w}: {p:.2f} dB gap {g:+.2f} (vs patch bands {c:+.2f})" for w, (p, g, c) in ways.items()))
    mean = {w: [round(float(np.mean([scores[n][w][i] for n in scores])), 3) for i in range(3)] for w in next(iter(scores.values()))}
    print("mean", json.dumps(mean), flush=True)
    base_id = {"config": json.loads(base.to_json())}
    params = sum(p.numel() for p in refiner.parameters())
    save_refiner(refiner.cpu(), a.out, base_id, training={**record, "parameters": params,
                                                          "pairs_folder": a.pairs.name},
                 metrics={"heldout": scores, "mean": mean})
    print(f"wrote {a.out} ({params:,} parameters)", flush=True)


if __name__ == "__main__":
    main()
