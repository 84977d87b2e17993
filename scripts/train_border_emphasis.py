"""Seam experiment: fine-tune the whole shipped model (encoder, matching, decoder; the LM frozen in the loop)
with the reconstruction error of each image's outer patches weighted more, to test whether tile seams come
from the words of a tile's outer patches (weights/README.md, "Images of any size").

    python scripts/train_border_emphasis.py --out runs/border --steps 800 --border-weight 4
    python scripts/evaluate_tiles.py --weights runs/border/border.safetensors   # seams at native size
    python scripts/evaluate_shipped.py --weights runs/border/border.safetensors # the held-out sets

Training images: every image under data/train (scripts/build_data.py), augmented as `lqae train` does.
The loss is the model's training loss with the batch MSE replaced by a weighted one (the outer `patch`
pixels on every side of a 64x64 image count --border-weight times); commitment, entropy and decorrelation
terms as configured. The checkpoint is written every --save-every steps (atomically); a rerun with the
same --out resumes from it (the optimizer starts afresh). An experiment: the words change, so it ships only
if it wins everywhere.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lqae_cli import load  # noqa: E402
from lqae_cli.checkpoint import read_card, save_model  # noqa: E402
from lqae_cli.data import TrainImages, collate_skip_none, list_images  # noqa: E402


def border_weight(size: int, patch: int, weight: float) -> torch.Tensor:
    """(1, 1, size, size): `weight` within `patch` pixels of the image's edge, 1 inside."""
    u = torch.arange(size)
    near = (u < patch) | (u >= size - patch)
    return (1 + (weight - 1) * (near[:, None] | near[None, :]).float())[None, None]


def loss_of(model, images: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float]:
    x = images * 2 - 1
    q = model.quantizer(model.encoder(x))
    recon = model.decoder(model.run_lm(q.embeds)).float()
    err = (recon - x).pow(2)
    loss = (err * w).sum() / (w.sum() * x.shape[0] * 3)
    cfg = model.cfg
    loss = (loss + cfg.commit_weight * q.commit_loss + cfg.entropy_weight * q.entropy_loss
            + cfg.decorrelation_weight * q.decorrelation_loss)
    return loss, -10 * math.log10(max(err.detach().mean().item() / 4, 1e-10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/border"))
    ap.add_argument("--data", type=Path, default=Path("data/train"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--border-weight", type=float, default=4.0)
    ap.add_argument("--save-every", type=int, default=100)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    ckpt = a.out / "border.safetensors"
    torch.manual_seed(0)
    tok = load(ckpt if ckpt.exists() else None, "cpu")
    card = read_card(tok.path)
    done = card.get("training", {}).get("border_emphasis", {}).get("steps", 0)
    model = tok.model.train()
    model.requires_grad_(True)
    model.quantizer.requires_grad_(False)  # its matching space is fitted, not learned
    files = list_images(a.data)
    data = TrainImages(files, tok.image_size, seed=done, smooth_share=0.25)
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, collate_fn=collate_skip_none,
                                         num_workers=1, generator=torch.Generator().manual_seed(done), drop_last=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr, weight_decay=5e-4)
    w = border_weight(tok.image_size, tok.config.patch_size, a.border_weight)
    print(f"{len(files)} images, from step {done}", flush=True)
    step, t0, psnrs = done, time.time(), []
    while step < a.steps:
        for images in loader:
            if images is None:
                continue
            for g in opt.param_groups:
                g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
            loss, psnr = loss_of(model, images, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            psnrs.append(psnr)
            if step % 20 == 0:
                print(f"step {step} loss {loss.item():.4f} PSNR {sum(psnrs[-20:]) / 20:.2f} dB "
                      f"{(time.time() - t0) / len(psnrs):.2f} s/step", flush=True)
            if step % a.save_every == 0 or step == a.steps:
                training = {**card.get("training", {}), "border_emphasis": {
                    "script": "scripts/train_border_emphasis.py", "steps": step, "batch_size": a.batch, "lr": a.lr,
                    "border_weight": a.border_weight, "data": str(a.data)}}
                save_model(model.eval(), ckpt, training, card.get("metrics"))
                model.train()
                print(f"saved {ckpt} at step {step}", flush=True)
            if step >= a.steps:
                break


if __name__ == "__main__":
    main()
