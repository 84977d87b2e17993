#!/usr/bin/env bash
# Reproduce the held-out figures of weights/README.md (run from the repository root, after
# `python scripts/build_data.py ...` has built data/). Writes JSON reports to ${OUT:-runs/eval}.
set -euo pipefail
out=${OUT:-runs/eval}
mkdir -p "$out"
w=${1:-weights/lqae-base.safetensors}
for set in emoji photos fashion; do
  lqae eval "data/heldout/$set" --weights "$w" --format json --save-grid "$out/$set-samples.png" --quiet > "$out/$set.json"
done
# all held-out sets pooled: codebook use across them
lqae eval data/heldout --weights "$w" --format json --quiet > "$out/pooled.json"
# linear probe: Fashion-MNIST train split (10,000 images) -> test split (10,000)
lqae eval data/heldout/fashion --train data/probe-train/fashion --test data/heldout/fashion --weights "$w" \
  --format json --quiet > "$out/fashion-probe.json"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ["emoji", "photos", "fashion", "pooled"]:
    r = json.loads((out / f"{name}.json").read_text())
    rec, cb = r["reconstruction"], r["codebook"]
    print(f"{name:8s} {r['images']:6d} images  PSNR {rec['psnr']:.2f} (thumbnail {rec['thumbnail_psnr']:.2f})  "
          f"SSIM {rec['ssim']:.3f} (thumbnail {rec['thumbnail_ssim']:.3f})  distinct {cb['distinct']}  "
          f"top {cb['top_share']:.2%} ({cb['top_words'][0][0]})  perplexity {cb['perplexity']:.0f}")
p = json.loads((out / "fashion-probe.json").read_text())["probe"]
print(f"probe    LM features {p['lm_features_accuracy']:.2%}  raw pixels {p['raw_pixels_accuracy']:.2%}  "
      f"({p['train_images']} train / {p['test_images']} test)")
PY
