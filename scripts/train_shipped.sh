#!/usr/bin/env bash
# The thirteen training phases of weights/lqae-base.safetensors, in order: nine on a CPU, two on a GPU, then on a CPU
# the semantic head and the decoder for dropped words (weights/TRAINING.md says why each).
# Needs data/ from scripts/build_data.py (weights/README.md, "Data"). Every phase writes a resumable
# checkpoint: after an interruption, run this script again; finished phases are skipped and the
# interrupted one resumes exactly.
# On the 2-core CPU of this project's machines the nine phases took 6.8 hours in all.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/shipped}
D=${DATA_ROOT:-data}
EXTRA=${EXTRA:-}                         # appended to every phase: a smoke run uses EXTRA="--steps 2 --batch-size 4 ..."
DATA="$D/train $D/train/emoji"           # the emoji folder listed twice: 2x weight
PHOTOS2="$DATA $D/train/photos"          # phases 6-9 weight the photo crops 2x as well
COMMON="--batch-size 64 --warmup 50 --val $D/heldout/emoji --save-every 50"

finished() {  # the checkpoint's training record says it reached its last step
  python3 -c "import sys; from lqae_cli.checkpoint import read_card; t = read_card(sys.argv[1])['training']; sys.exit(t['step'] < t['steps'])" "$1"
}

phase() {  # phase N OUT ARGS...: run it, resume it, or skip it when finished
  local n=$1 out=$2; shift 2
  if [[ -f $out ]] && finished "$out"; then
    echo "phase $n: finished ($out)" >&2
    return
  fi
  echo "phase $n -> $out" >&2
  lqae train "$@" $EXTRA --out "$out" $([[ -f $out ]] && echo --resume)
}

# 1: the whole model; the words are decided here (mask 0.25, MSE)
phase 1 $RUNS/p1.safetensors $DATA --steps 1400 --batch-size 64 --lr 4e-4 --warmup 100 --mask-ratio 0.25 \
  --val $D/heldout/emoji --val-every 100 --save-every 50
# 2: the decoder alone on the phase-1 words, unmasked
phase 2 $RUNS/p2.safetensors $DATA --init $RUNS/p1.safetensors --freeze-encoder --steps 2000 --batch-size 64 --lr 3e-4 \
  --warmup 100 --mask-ratio 0 --seed 1 --val $D/heldout/emoji --val-every 200 --save-every 100
# 3: the whole model again, per-image log-MSE
phase 3 $RUNS/p3.safetensors $DATA --init $RUNS/p2.safetensors --recon-loss log_mse --steps 1000 --lr 2e-4 \
  --mask-ratio 0.25 --seed 3 --val-every 250 $COMMON
# 4: the decoder alone, a quarter of the images smoothed
phase 4 $RUNS/p4.safetensors $DATA --init $RUNS/p3.safetensors --freeze-encoder --recon-loss log_mse --smooth-share 0.25 \
  --steps 1500 --lr 2e-4 --mask-ratio 0 --seed 4 --val-every 250 $COMMON
# 5: the decoder alone, reading all six LM layers (the new layers enter with zero weights)
phase 5 $RUNS/p5.safetensors $DATA --init $RUNS/p4.safetensors --freeze-encoder --decoder-lm-layers 6 --recon-loss log_mse \
  --smooth-share 0.25 --steps 2500 --lr 2e-4 --mask-ratio 0 --seed 7 --val-every 1000 $COMMON
# 6, 7: the decoder alone, photo crops 2x
phase 6 $RUNS/p6.safetensors $PHOTOS2 --init $RUNS/p5.safetensors --freeze-encoder --recon-loss log_mse --smooth-share 0.25 \
  --steps 1500 --lr 1.5e-4 --mask-ratio 0 --seed 8 --val-every 500 $COMMON
phase 7 $RUNS/p7.safetensors $PHOTOS2 --init $RUNS/p6.safetensors --freeze-encoder --recon-loss log_mse --smooth-share 0.25 \
  --steps 1500 --lr 1e-4 --mask-ratio 0 --seed 9 --val-every 500 $COMMON
# 8: the whole model with the six-layer decoder (about half the words change)
phase 8 $RUNS/p8.safetensors $PHOTOS2 --init $RUNS/p7.safetensors --recon-loss log_mse --smooth-share 0.25 \
  --steps 1000 --lr 1.5e-4 --mask-ratio 0.25 --seed 10 --val-every 250 $COMMON
# 9: the decoder alone on the phase-8 words: the shipped checkpoint
phase 9 $RUNS/lqae-base.safetensors $PHOTOS2 --init $RUNS/p8.safetensors --freeze-encoder --recon-loss log_mse \
  --smooth-share 0.25 --steps 1200 --lr 2e-4 --mask-ratio 0 --seed 11 --val-every 400 $COMMON
echo "phases 1-9 done: $RUNS/lqae-base.safetensors (evaluate with: python scripts/evaluate_shipped.py --weights $RUNS/lqae-base.safetensors)" >&2
# 10, 11 need a CUDA GPU (an NVIDIA H200 for the shipped checkpoint, 7 and 3 minutes; weights/TRAINING.md).
# Each goes on from the previous checkpoint with scripts/gpu_retrain.py, which writes the result in parts
# (a remote GPU machine may return files of at most 16 MiB) and joins them back; its schedule follows the
# clock, so a rerun lands near, not exactly on, the shipped weights:
#   python scripts/gpu_retrain.py pack --out .gpu --weights $RUNS/lqae-base.safetensors
#   python scripts/gpu_retrain.py run --pack .gpu --out $RUNS/gpu --tag p10 --border-weight 4 --minutes 7 --lr 2e-4 --seed 12
#   python scripts/gpu_retrain.py join $RUNS/gpu/p10 $RUNS/p10.safetensors
#   python scripts/gpu_retrain.py pack --out .gpu --weights $RUNS/p10.safetensors
#   python scripts/gpu_retrain.py run --pack .gpu --out $RUNS/gpu --tag p11 --border-weight 10 --minutes 3 --lr 1e-4 --warmup 100 --seed 13
#   python scripts/gpu_retrain.py join $RUNS/gpu/p11 $RUNS/p11.safetensors
# 12: the semantic head and the excluded words on the phase-11 checkpoint (CPU; the words, the decoder and the matching
# space stay as they are). Needs `pip install ".[teach]"` and data/semantic from scripts/build_semantic_data.py
# (weights/README.md, "Data"). The shipped checkpoint is its output.
if [[ -f $RUNS/p11.safetensors && ! -f $RUNS/lqae-base-semantic.safetensors ]]; then
  echo "phase 12 -> $RUNS/lqae-base-semantic.safetensors" >&2
  python3 scripts/train_semantic.py --init $RUNS/p11.safetensors --data $D --out $RUNS/lqae-base-semantic.safetensors \
    --words 5 --epochs 20 --threads 1 --seed 0
fi
# 13: the decoder alone, learning to fill in dropped words: each image keeps a random number of its most detailed
# words (three in four; the rest keep all), as `encode --words K|auto` drops them. The words stay as they are.
# Its output is the shipped checkpoint.
if [[ -f $RUNS/lqae-base-semantic.safetensors ]]; then
  phase 13 $RUNS/p13.safetensors $PHOTOS2 --init $RUNS/lqae-base-semantic.safetensors --freeze-encoder --mask-policy detail \
    --recon-loss log_mse --smooth-share 0.25 --steps 1500 --lr 1.5e-4 --seed 14 --val-every 500 --sample-every 0 $COMMON
fi
# A stitcher for tile borders, trained on phase 13's output, made held-out photos worse and was not kept:
# weights/TRAINING.md, "Phase 13".
