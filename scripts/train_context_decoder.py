"""Train the context decoder of scripts/context_decoder.py (each tile of a large image decoded with a ring
of its neighbours' LM states) and score it on the held-out photos. An experiment: it did not beat
feathering, so nothing here ships (weights/README.md, "Images of any size").

    python scripts/train_context_decoder.py --out runs/context --steps 3000 [--border-weight 4]
        # the tile's own pixels; run here for 1,000 steps with weight 1, resumed with weight 4, stopped at 1,600
    python scripts/train_context_decoder.py --out runs/context --steps 1500 --border-weight 2 \
        --blend --tag=-blend --init runs/context/state-r1.pt
        # then the whole window's pixels, decoded windows cross-faded (TileBlender)

The encoder, the words and the frozen LM are not touched: every tile of a training photo is encoded alone
and run through the LM alone, as at inference, and its LM states (through the decoder's input layer, which
stays fixed) are cached once (runs/context/cache.pt, about 1 GB). Training then only runs the context
decoder: it starts from the shipped one-tile decoder's weights (the ring gated off) and learns to rebuild
a tile (and its ring) from its window of states. The training photos are those of scripts/build_data.py
minus the held-out ones, each at scales 1, 0.75 and 0.5, mirrored or not, at four tile-grid offsets (so
tile borders fall everywhere). Every --eval-every steps it decodes the held-out photos at native size and
prints PSNR and the seam gap (as scripts/evaluate_tiles.py measures them) with and without feathering.
Training states are saved every --save-every steps and a rerun resumes from them.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_data  # noqa: E402
from evaluate_tiles import border_mask  # noqa: E402
from lqae_cli import load  # noqa: E402
from lqae_cli.data import to_uint8  # noqa: E402
from lqae_cli.evaluate import psnr_u8 as psnr  # noqa: E402
from lqae_cli.tiles import feather_seams, stitch, tile_grid  # noqa: E402
from context_decoder import ContextDecoder, TileBlender, tile_windows, window_batch  # noqa: E402

SCALES = (1.0, 0.75, 0.5)
OFFSETS = ((0, 0), (32, 32), (16, 48), (48, 16))
GATE_LR = 1e-2


@torch.no_grad()
def tile_states(tok, img: Image.Image, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """-> (per-tile states through the decoder's input layer (T, 64, width) fp16, padded image (3, H, W) uint8, rows, cols)."""
    model = tok.model
    tiles, rows, cols = tile_grid(img, tok.image_size)
    out = []
    for part in tiles.split(batch):
        ids = model.encode(part)
        out.append(model.decoder.inp(model.run_lm(model.quantizer.codebook[ids.flatten(1)])).half())
    return torch.cat(out), (stitch(tiles, rows, cols) * 255).round().to(torch.uint8), rows, cols


def variants(img: Image.Image):
    for scale in SCALES:
        im = img if scale == 1 else img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        for flip in (False, True):
            imf = im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im
            for dy, dx in OFFSETS:
                if imf.width - dx >= 128 and imf.height - dy >= 128:
                    yield f"s{scale}-f{int(flip)}-o{dy},{dx}", imf.crop((dx, dy, imf.width, imf.height))


def build_cache(tok, path: Path) -> dict:
    if path.exists():
        return torch.load(path)
    photos = build_data.load_photos()
    train, held = [], []
    t0 = time.time()
    for name in sorted(photos):
        img = Image.fromarray(photos[name]).convert("RGB")
        if name in build_data.HELDOUT_PHOTOS:
            held.append((name, img.size, *tile_states(tok, img)))
            continue
        for tag, im in variants(img):
            train.append((f"{name}-{tag}", *tile_states(tok, im)))
        print(f"cached {name}: {sum(t[1].shape[0] for t in train)} training tiles so far ({time.time() - t0:.0f} s)", flush=True)
    cache = {"train": train, "held": held}
    torch.save(cache, path)
    return cache


def decode_photo(dec: ContextDecoder, states: torch.Tensor, rows: int, cols: int, blend: bool, batch: int = 64) -> torch.Tensor:
    """Cached per-tile states -> the photo (3, H, W) in [0, 1]: each tile decoded from its window, the tiles
    put side by side, or (blend) the decoded windows cross-faded."""
    wins, present = tile_windows(states.float(), rows, cols, dec.ring)
    blender, tiles = TileBlender(rows, cols, dec.grid * dec.p, dec.ring * dec.p), []
    for idx in torch.arange(rows * cols).split(batch):
        out = dec.forward_projected(*window_batch(wins, present, idx), window=blend)
        blender.add(idx, out) if blend else tiles.append(out)
    return ((blender.image() if blend else stitch(torch.cat(tiles), rows, cols)) + 1).div(2).clamp(0, 1)


@torch.no_grad()
def evaluate(dec: ContextDecoder, held, tile: int, blend: bool) -> dict:
    dec.eval()
    scores = {}
    for name, (w, h), states, target, rows, cols in held:
        x = target.permute(1, 2, 0).numpy()[:h, :w]
        band = border_mask(h, w, tile)
        img = decode_photo(dec, states, rows, cols, blend)
        for way, im in (("context", img), ("context+feather", feather_seams(img, tile))):
            y = to_uint8(im)[:h, :w]
            scores.setdefault(way, []).append((psnr(x, y), psnr(x[band], y[band]) - psnr(x[~band], y[~band])))
            print(f"  {name:8s} {way:16s} PSNR {scores[way][-1][0]:.2f} dB  seam gap {scores[way][-1][1]:+.2f} dB", flush=True)
    dec.train()
    return {way: tuple(float(np.mean(v)) for v in zip(*s)) for way, s in scores.items()}


def windowed(train, ring: int, tile: int, patch: int) -> list:
    """Each cached training image as (its tiles' windows of states and their presence, from `tile_windows`;
    its pixels padded by the ring's width with zeros; tile columns), made once so that sampling a window
    copies only that window."""
    m = ring * patch
    return [(*tile_windows(states, rows, cols, ring), F.pad(target, (m, m, m, m)), cols)
            for _, states, target, rows, cols in train]


def sample(prepared, weights: torch.Tensor, batch: int, tile: int, margin: int, gen: torch.Generator):
    """A batch of random tiles' windows: (states (B, W*W, width), present (B, W*W), pixels of the whole
    window (B, 3, tile + 2 * margin, same) in [-1, 1])."""
    xs, ps, ys = [], [], []
    for k in torch.multinomial(weights, batch, replacement=True, generator=gen).tolist():
        wins, present, padded, cols = prepared[k]
        t = int(torch.randint(wins.shape[1] * cols, (1,), generator=gen))
        x, p = window_batch(wins, present, torch.tensor([t]))
        r, c = divmod(t, cols)
        xs.append(x), ps.append(p), ys.append(padded[:, r * tile:(r + 1) * tile + 2 * margin, c * tile:(c + 1) * tile + 2 * margin])
    y = torch.stack(ys).float() / 127.5 - 1
    return torch.cat(xs).float(), torch.cat(ps), y


def tile_weights(present: torch.Tensor, ring: int, weight: float, tile: int = 64, patch: int = 8) -> torch.Tensor:
    """(B, 1, tile, tile) loss weights over a tile's own pixels: `weight` on its outer patch on each side that
    has a neighbour, else 1."""
    W = round(present.shape[1] ** 0.5)
    p = present.view(-1, W, W)
    up, down, left, right = p[:, 0, ring], p[:, -1, ring], p[:, ring, 0], p[:, ring, -1]
    w = torch.ones(len(p), 1, tile, tile)
    for side, rows, cols in ((up, slice(0, patch), slice(None)), (down, slice(tile - patch, tile), slice(None)),
                             (left, slice(None), slice(0, patch)), (right, slice(None), slice(tile - patch, tile))):
        w[side.nonzero().flatten(), :, rows, cols] = weight
    return w


def window_weights(present: torch.Tensor, ring: int, weight: float, patch: int = 8) -> torch.Tensor:
    """(B, 1, W*p, W*p) loss weights over a window's pixels: 0 outside the image, `weight` within one patch
    of a tile border that has a neighbour on its other side (where windows are cross-faded), else 1."""
    W = round(present.shape[1] ** 0.5)
    n, lo, hi = W * patch, ring * patch, (W - ring) * patch
    pres = present.view(-1, 1, W, 1, W, 1).expand(-1, 1, W, patch, W, patch).reshape(-1, 1, n, n).float()
    u = torch.arange(n)
    near = ((u >= lo - patch) & (u < lo + patch)) | ((u >= hi - patch) & (u < hi + patch))
    band = (near[:, None] | near[None, :]).float()
    return pres * (1 + (weight - 1) * band)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/context"))
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--ring", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--border-weight", type=float, default=1.0,
                    help="loss weight of a tile's outer patches on sides with a neighbour (1: plain MSE)")
    ap.add_argument("--blend", action="store_true",
                    help="train on the whole window's pixels and cross-fade decoded windows (else the tile's own pixels, side by side)")
    ap.add_argument("--tag", default="", help="suffix of the training state's file name")
    ap.add_argument("--init", type=Path, default=None, help="start from the decoder weights of this training state")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=100)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = load(a.weights, "cpu")
    dec = ContextDecoder(tok.config, tok.model.lm.hidden_size, a.ring).start_from(tok.model.decoder)
    dec.inp.requires_grad_(False)  # the cache holds states already through it
    state_path = a.out / f"state-r{a.ring}{a.tag}.pt"
    # the two ring gates (attention bias, pixel share) move at GATE_LR: Adam's steps are about the learning
    # rate whatever the gradient, and a gate starts where its gradient is tiny
    gates = [dec.ring_bias, dec.ring_pixels]
    rest = [p for p in dec.parameters() if p.requires_grad and all(p is not g for g in gates)]
    opt = torch.optim.AdamW([{"params": rest, "lr": a.lr, "scale": 1.0},
                             {"params": gates, "lr": GATE_LR, "scale": GATE_LR / a.lr}], weight_decay=0.0)
    step = 0
    if a.init and not state_path.exists():
        dec.load_state_dict(torch.load(a.init)["decoder"])
        print(f"context decoder weights from {a.init}", flush=True)
    if state_path.exists():
        st = torch.load(state_path)
        dec.load_state_dict(st["decoder"]), opt.load_state_dict(st["opt"])
        step = st["step"]
        print(f"resumed at step {step}", flush=True)
    cache = build_cache(tok, a.out / "cache.pt")
    train, held = cache["train"], cache["held"]
    print(f"{len(train)} training images, {sum(t[1].shape[0] for t in train)} tiles; {len(held)} held-out photos", flush=True)
    if step == 0:
        print("start (the one-tile decoder's weights):", evaluate(dec, held, tok.image_size, a.blend), flush=True)
    # each photo's share of the samples grows with the square root of its tiles, not with its tiles (the
    # largest photo, retina, would otherwise be a third of them), split among its variants by their tiles
    photo = [t[0].split("-s")[0] for t in train]
    tiles = torch.tensor([float(t[1].shape[0]) for t in train])
    per_photo = {n: sum(float(t) for m, t in zip(photo, tiles) if m == n) for n in set(photo)}
    weights = torch.tensor([float(t) / per_photo[n] ** 0.5 for n, t in zip(photo, tiles)])
    tile, patch = tok.image_size, tok.config.patch_size
    prepared = windowed(train, a.ring, tile, patch)
    gen = torch.Generator().manual_seed(step)
    t0, losses = time.time(), []
    while step < a.steps:
        lr = a.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        x, p, y = sample(prepared, weights, a.batch, tile, a.ring * patch, gen)
        if a.blend:
            w = window_weights(p, a.ring, a.border_weight, patch)
        else:
            m = a.ring * patch
            w, y = tile_weights(p, a.ring, a.border_weight, tile, patch), y[:, :, m:-m, m:-m]
        loss = ((dec.forward_projected(x, p, window=a.blend) - y).pow(2) * w).sum() / (w.sum() * 3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 50 == 0:
            mse = np.mean(losses[-50:]) / 4
            print(f"step {step} loss {np.mean(losses[-50:]):.5f} ({-10 * math.log10(mse):.2f} dB) lr {lr:.2e} "
                  f"ring bias {[round(float(b), 2) for b in dec.ring_bias]} ring pixels {float(dec.ring_pixels):.2f} "
                  f"{(time.time() - t0) / len(losses):.2f} s/step", flush=True)
        if step % a.save_every == 0 or step == a.steps:
            torch.save({"decoder": dec.state_dict(), "opt": opt.state_dict(), "step": step}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
        if step % a.eval_every == 0 or step == a.steps:
            print(f"step {step}:", evaluate(dec, held, tok.image_size, a.blend), flush=True)


if __name__ == "__main__":
    main()
