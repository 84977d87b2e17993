"""Go on training the shipped checkpoint on a CUDA GPU for a few minutes: the whole model with the
reconstruction error of each image's outer patches weighted (`border_weight`), then the decoder alone on
the words that come out, as phases 8 and 9 of `scripts/train_shipped.sh` do. Phases 10 and 11 of the
shipped checkpoint were made with it on an NVIDIA H200 (weights/TRAINING.md). Built for a GPU machine
reached by copying files to it: at most 64 MiB of files in per call (the LM's 91 MB does not fit as it
is), at most 16 MiB per file back.

    python scripts/gpu_retrain.py pack --out .gpu [--weights START]  # here: LM, start weights, images (58 MiB)
    python scripts/gpu_retrain.py run --pack .gpu --out OUT --tag p10 --border-weight 4 --minutes 7  # there
    python scripts/gpu_retrain.py join OUT/p10 runs/gpu-retrain/p10.safetensors                      # here

The pack and the repository's tracked files travel together, and with the 28 MB checkpoint in weights/
they exceed 64 MiB: for the call, untrack it (`git rm --cached weights/lqae-base.safetensors` and list it
in .git/info/exclude, with .gpu/), then put it back (`git reset weights/lqae-base.safetensors`). A second
`pack --weights` rewrites only the start weights.

What the pack holds, and what is not exact in it:
- the LM (all-MiniLM-L6-v2, from the installed package): its layers' weight matrices in bf16 (exactly what
  bf16 autocast multiplies with), the word-embedding rows of the allowed words and of the first 1,000 ids
  (the special tokens) in bf16, the rest in fp32; xz-compressed. Rows outside those are zero there and
  never read. Training there sees the codebook rounded to bf16 (a relative error below 0.4%); the words of
  the result are chosen here, from the fp32 table, as always;
- the start weights (the shipped checkpoint unless --weights) with the trained parameters in bf16 (the
  fitted matching space exact): loaded there, they score as here to within 0.005 dB;
- the training images: the emoji and Fashion-MNIST training images (as `scripts/build_data.py` made
  them; Fashion at its 28x28 source size) and the 14 training photos whole; the held-out emoji and photo
  crops for the validation figures printed there.

`run` draws every batch afresh (data loader workers): an emoji, a Fashion-MNIST image or a random square
crop of a photo (side from 64 pixels to half the photo's shorter side, as `build_data.py` cuts its
crops, resized with a reducing gap of 3 for speed), in the shares of the shipped phases 6-9 (emoji 2x, photos 2x), then `lqae train`'s augmentation
(random resized crop, flip, a quarter smoothed). The learning rate follows the time budget (warm-up,
then cosine). It writes the final checkpoint in parts under 16 MiB and a JSON log.
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))        # build_data
from lqae_cli.data import random_resized_crop, smoothed, to_tensor  # noqa: E402

PART_BYTES = 15 * 2**20
SHARES = {"emoji": 6876, "fashion": 12000, "photos": 22400}   # images per epoch of the shipped phases 6-9


# --- compressed tensors -------------------------------------------------------------------------------
def save_xz(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    raw = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    path.write_bytes(lzma.compress(raw, preset=6))


def from_bytes(raw: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's bytes -> (tensors, metadata)."""
    from safetensors.torch import load

    n = int.from_bytes(raw[:8], "little")                       # safetensors: header length, JSON header
    return load(raw), json.loads(raw[8:8 + n]).get("__metadata__", {})


def load_xz(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return from_bytes(lzma.decompress(path.read_bytes()))


def save_array(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    path.write_bytes(lzma.compress(buf.getvalue(), preset=6))


def load_array(path: Path) -> np.ndarray:
    return np.load(io.BytesIO(lzma.decompress(path.read_bytes())))


# --- pack (here) ----------------------------------------------------------------------------------------
def pack(out: Path, data: Path, fashion_dir: Path, weights: Path | None = None) -> None:
    """Write the pack to `out`: the start weights (`weights`, default the shipped checkpoint) always, the
    LM and the images where they are not there yet."""
    from safetensors.torch import load_file

    from lqae_cli import load
    from lqae_cli.checkpoint import read_tensors

    from build_data import HELDOUT_PHOTOS, load_photos, read_idx

    out.mkdir(parents=True, exist_ok=True)
    tok = load(weights, "cpu")
    tensors, meta = read_tensors(tok.path)
    params = {n for n, _ in tok.model.named_parameters()}
    save_xz(out / "init.safetensors.xz", {k: v.bfloat16() if k in params else v for k, v in tensors.items()}, meta)
    if (out / "photos").is_dir():
        print(f"wrote {out / 'init.safetensors.xz'} from {tok.path}; the rest of {out} kept", flush=True)
        return
    lm = tok.model.lm
    sd = load_file(str(lm.lm_dir / "model.safetensors"))
    rows = torch.unique(torch.cat([torch.arange(1000), lm.allowed_ids(tok.config.vocab_rule)]))
    lm_t = {}
    for k, v in sd.items():
        if k.endswith("word_embeddings.weight"):
            lm_t["word_rows.ids"], lm_t["word_rows." + k] = rows, v[rows].bfloat16()
        elif v.ndim == 2 and (".layer." in k or "pooler" in k):
            lm_t[k] = v.bfloat16()
        else:
            lm_t[k] = v.float()
    save_xz(out / "lm.safetensors.xz", lm_t)
    (out / "lm").mkdir(exist_ok=True)
    for f in ("config.json", "vocab.txt"):
        shutil.copy(lm.lm_dir / f, out / "lm" / f)

    def images(root: Path, mode: str = "RGB") -> np.ndarray:
        return np.stack([np.asarray(Image.open(p).convert(mode)) for p in sorted(root.rglob("*.png"))])

    save_array(out / "emoji.npy.xz", images(data / "train" / "emoji"))
    save_array(out / "val_emoji.npy.xz", images(data / "heldout" / "emoji"))
    save_array(out / "val_photos.npy.xz", images(data / "heldout" / "photos"))
    fashion, labels = read_idx(fashion_dir / "train-images-idx3-ubyte.gz"), read_idx(fashion_dir / "train-labels-idx1-ubyte.gz")
    taken, keep = [0] * 10, []
    for i, label in enumerate(labels):          # the 1,200 per class that build_data.py takes
        if taken[label] < 1200:
            taken[label] += 1
            keep.append(i)
    save_array(out / "fashion28.npy.xz", fashion[keep])
    (out / "photos").mkdir(exist_ok=True)
    for name, arr in sorted(load_photos().items()):
        if name not in HELDOUT_PHOTOS:
            Image.fromarray(arr).convert("RGB").save(out / "photos" / f"{name}.png", optimize=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {total / 2**20:.1f} MiB", flush=True)


# --- run (there) ----------------------------------------------------------------------------------------
def unpack_lm(pack_dir: Path, work: Path, fingerprint: str):
    """The packed LM as a model folder under `work`, loaded; its fingerprint is the one the pack was made
    from (the zero rows would change the hash)."""
    from safetensors.torch import save_file

    from lqae_cli.lm import LanguageModel

    t, _ = load_xz(pack_dir / "lm.safetensors.xz")
    ids = t.pop("word_rows.ids")
    vocab = (pack_dir / "lm" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    for k in [k for k in t if k.startswith("word_rows.")]:
        rows = t.pop(k)
        name = k[len("word_rows."):]
        table = torch.zeros(len(vocab), rows.shape[1])
        table[ids] = rows.float()
        t[name] = table
    lm_dir = work / "lm"
    lm_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in t.items()}, str(lm_dir / "model.safetensors"))
    for f in ("config.json", "vocab.txt"):
        shutil.copy(pack_dir / "lm" / f, lm_dir / f)
    lm = LanguageModel.load(str(lm_dir))
    lm.__dict__["fingerprint"] = fingerprint
    return lm


class Mixture(torch.utils.data.Dataset):
    """Index k -> one augmented training image (3, 64, 64) in [0, 1], drawn as the module docstring says;
    the same k always gives the same image."""

    def __init__(self, pack_dir: Path, size: int, seed: int, smooth_share: float = 0.25):
        self.emoji = load_array(pack_dir / "emoji.npy.xz")
        self.fashion = load_array(pack_dir / "fashion28.npy.xz")
        self.photos = [Image.open(p).convert("RGB") for p in sorted((pack_dir / "photos").glob("*.png"))]
        for p in self.photos:
            p.load()
        total = sum(SHARES.values())
        self.cut = (SHARES["emoji"] / total, (SHARES["emoji"] + SHARES["fashion"]) / total)
        self.size, self.seed, self.smooth_share = size, seed, smooth_share

    def __len__(self) -> int:
        return 10**12

    def draw(self, gen: torch.Generator):
        def pick(n: int) -> int:
            return int(torch.randint(0, n, (), generator=gen))

        r = torch.rand((), generator=gen).item()
        if r < self.cut[0]:
            return Image.fromarray(self.emoji[pick(len(self.emoji))])
        if r < self.cut[1]:
            return Image.fromarray(self.fashion[pick(len(self.fashion))]).resize((self.size, self.size), Image.BICUBIC).convert("RGB")
        photo = self.photos[pick(len(self.photos))]
        w, h = photo.size
        side = self.size + pick(max(self.size, min(w, h) // 2) - self.size + 1)
        x, y = pick(w - side + 1), pick(h - side + 1)
        return photo.resize((self.size, self.size), Image.BICUBIC, box=(x, y, x + side, y + side), reducing_gap=3.0)

    def __getitem__(self, k: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        img = random_resized_crop(self.draw(gen), self.size, gen)
        if torch.rand((), generator=gen) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.smooth_share and torch.rand((), generator=gen) < self.smooth_share:
            img = smoothed(img, gen)
        return to_tensor(img)


class Batches(torch.utils.data.Sampler):
    def __init__(self, batch: int, start: int = 0):
        self.batch, self.start = batch, start

    def __iter__(self):
        k = self.start
        while True:
            yield list(range(k, k + self.batch))
            k += self.batch


def border_weight(size: int, patch: int, weight: float) -> torch.Tensor:
    """(1, 1, size, size): `weight` within `patch` pixels of the image's edge, 1 inside, scaled to mean 1
    so that the loss keeps its scale."""
    u = torch.arange(size)
    near = (u < patch) | (u >= size - patch)
    w = (1 + (weight - 1) * (near[:, None] | near[None, :]).float())[None, None]
    return w / w.mean()


def step_loss(model, images: torch.Tensor, w: torch.Tensor, whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """model.forward's (whole) or model.forward_decoder's pass with the reconstruction error weighted by
    w; -> (loss, plain batch MSE). Its own pass: forward's per-step statistics would synchronise the GPU."""
    from lqae_cli.model import reconstruction_loss

    cfg = model.cfg
    x = images * 2 - 1
    if whole:   # model.forward's pass, the loss weighted
        q = model.quantizer(model.encoder(x))
        embeds = model.apply_mask(q.embeds) if cfg.mask_ratio > 0 else q.embeds
        recon = model.decoder(model.run_lm(embeds)).float()
        loss, mse = reconstruction_loss(recon, x, cfg.recon_loss, w)
        return loss + cfg.commit_weight * q.commit_loss + cfg.entropy_weight * q.entropy_loss \
            + cfg.decorrelation_weight * q.decorrelation_loss, mse
    with torch.no_grad():   # model.forward_decoder's pass: fixed words, unmasked
        ids = model.encode(images).flatten(1)
        hidden = model.run_lm(model.quantizer.codebook[ids])
    return reconstruction_loss(model.decoder(hidden).float(), x, cfg.recon_loss, w)


@torch.no_grad()
def val_psnr(model, images: torch.Tensor) -> float:
    """Mean per-image PSNR of encode -> decode (fp32 words, as `lqae eval` scores them)."""
    model.eval()
    out = []
    for part in images.split(256):
        rec = model.decode(model.encode(part))
        out.append(-10 * torch.log10(((rec - part) ** 2).flatten(1).mean(1).clamp_min(1e-10)))
    model.train()
    return torch.cat(out).mean().item()


def matmul_tflops(device: torch.device) -> dict:
    """bf16 and fp32 (no TF32) rates of an 8192^3 product: the hardware's figure for this run."""
    from lqae_cli.precision import strict_fp32

    out = {}
    n = 8192 if device.type == "cuda" else 512
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        with strict_fp32():
            for _ in range(3):
                a @ b
            times = []
            for _ in range(10):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                a @ b
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        out[label] = round(2 * n**3 / sorted(times)[5] / 1e12, 1)
    return out


def run(a) -> None:
    from lqae_cli.checkpoint import load_model, save_model

    device = torch.device(a.device)
    work = Path(a.work) / a.tag
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    log = {"tag": a.tag, "args": {k: str(v) for k, v in vars(a).items()}, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__}
    if a.matmul:
        log["matmul_tflops"] = matmul_tflops(device)
    init_t, meta = load_xz(Path(a.pack) / "init.safetensors.xz")
    from safetensors.torch import save_file

    save_file(init_t, str(work / "init.safetensors"), metadata=meta)
    fingerprint = json.loads(meta["lm"])["fingerprint"]
    lm = unpack_lm(Path(a.pack), work, fingerprint)
    model = load_model(work / "init.safetensors", device, lm=lm)
    from dataclasses import replace

    val = {name: torch.from_numpy(load_array(Path(a.pack) / f"val_{name}.npy.xz")).permute(0, 3, 1, 2).float().div(255).to(device)
           for name in ("emoji", "photos")}
    log["val_start"] = {k: round(val_psnr(model, v), 3) for k, v in val.items()}
    print(json.dumps(log), flush=True)
    loader = torch.utils.data.DataLoader(Mixture(Path(a.pack), model.cfg.image_size, a.seed), batch_sampler=Batches(a.batch),
                                         num_workers=a.workers, pin_memory=device.type == "cuda", prefetch_factor=4,
                                         persistent_workers=True)
    batches = iter(loader)
    w = border_weight(model.cfg.image_size, model.cfg.patch_size, a.border_weight).to(device)
    history = []
    for phase, minutes, lr, whole in (("whole", a.minutes * a.whole_share, a.lr, True),
                                      ("decoder", a.minutes * (1 - a.whole_share), a.lr, False)):
        model.cfg = replace(model.cfg, mask_ratio=a.mask_ratio if whole else 0.0)
        model.train()
        model.requires_grad_(True)
        if not whole:
            model.freeze_encoder()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=5e-4)
        t0, step, window = time.time(), 0, []
        budget = minutes * 60
        while (elapsed := time.time() - t0) < budget:
            progress = elapsed / budget
            factor = min(1.0, (step + 1) / a.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
            for g in opt.param_groups:
                g["lr"] = lr * factor
            images = next(batches).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss, mse = step_loss(model, images, w, whole)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            window.append(mse)
            if step % a.log_every == 0:
                m = torch.stack(window).mean().item()
                rec = {"phase": phase, "step": step, "s": round(time.time() - t0, 1), "lr": lr * factor,
                       "train_psnr": round(-10 * math.log10(m / 4), 3), "img_per_s": round(step * a.batch / (time.time() - t0), 1)}
                history.append(rec)
                print(json.dumps(rec), flush=True)
                window = []
        log[f"{phase}_steps"], log[f"{phase}_seconds"] = step, round(time.time() - t0, 1)
        log[f"{phase}_img_per_s"] = round(step * a.batch / (time.time() - t0), 1)
        log[f"val_after_{phase}"] = {k: round(val_psnr(model, v), 3) for k, v in val.items()}
        print(json.dumps({k: log[k] for k in log if phase in k}), flush=True)
    log["history"] = history
    model.eval()
    model.cfg = replace(model.cfg, mask_ratio=0.0)
    card_training = json.loads(meta.get("training", "{}"))
    earlier = card_training.get("gpu_retrain", [])
    earlier = earlier if isinstance(earlier, list) else [earlier]       # every run of this script, oldest first
    training = {**card_training, "gpu_retrain": earlier + [{
        "script": "scripts/gpu_retrain.py", "device": log["device_name"], "batch_size": a.batch, "lr": a.lr,
        "border_weight": a.border_weight, "mask_ratio": a.mask_ratio, "whole_steps": log["whole_steps"],
        "decoder_steps": log["decoder_steps"], "whole_seconds": log["whole_seconds"], "decoder_seconds": log["decoder_seconds"],
        "images_seen": (log["whole_steps"] + log["decoder_steps"]) * a.batch, "seed": a.seed}]}
    ckpt = work / "final.safetensors"
    save_model(model.cpu(), ckpt, training, json.loads(meta.get("metrics", "{}")))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = ckpt.read_bytes()
    for i in range(math.ceil(len(data) / PART_BYTES)):
        (out / f"{a.tag}.part{i}").write_bytes(data[i * PART_BYTES:(i + 1) * PART_BYTES])
    (out / f"{a.tag}.json").write_text(json.dumps(log, indent=1))
    print(f"wrote {a.tag}: {len(data) / 2**20:.1f} MiB in {math.ceil(len(data) / PART_BYTES)} parts", flush=True)


def join(prefix: Path, dest: Path) -> None:
    """The parts `prefix`.part0, .part1, ... back into one checkpoint at `dest`; where the run's log
    `prefix`.json lies beside them, the checkpoint's metrics become that run's (its last training window
    and its validation PSNR on the held-out emoji and photo crops) instead of the start weights'."""
    from lqae_cli.checkpoint import read_card, save_tensors
    from lqae_cli.fileio import atomic_write_bytes

    parts = sorted(prefix.parent.glob(prefix.name + ".part*"), key=lambda p: int(p.suffix[5:]))
    if not parts:
        sys.exit(f"no {prefix}.part* files")
    dest.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(p.read_bytes() for p in parts)
    log_path = prefix.with_name(prefix.name + ".json")
    if log_path.exists():
        log = json.loads(log_path.read_text())
        last = log["history"][-1] if log.get("history") else {}
        metrics = {"script": "scripts/gpu_retrain.py", **{k if k.startswith("train_") else f"train_{k}": v for k, v in last.items() if k != "phase"},
                   **{f"val_psnr_{k}": v for k, v in log["val_after_decoder"].items()}}
        tensors, meta = from_bytes(raw)
        save_tensors(dest, tensors, {**{k: v for k, v in meta.items() if k != "format"}, "metrics": json.dumps(metrics)})
    else:
        atomic_write_bytes(dest, raw)
    card = read_card(dest)
    print(f"{dest}: training {json.dumps(card['training'].get('gpu_retrain'))}; metrics {json.dumps(card['metrics'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--weights", type=Path, default=None, help="the start weights (default: the shipped checkpoint)")
    r = sub.add_parser("run")
    r.add_argument("--pack", default=".gpu")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/gpu-retrain")
    r.add_argument("--tag", default="b4")
    r.add_argument("--device", default="cuda")
    r.add_argument("--minutes", type=float, default=7.0)
    r.add_argument("--whole-share", type=float, default=0.6, help="share of the time for the whole model; the rest: decoder alone")
    r.add_argument("--batch", type=int, default=512)
    r.add_argument("--lr", type=float, default=2e-4)
    r.add_argument("--warmup", type=int, default=200)
    r.add_argument("--mask-ratio", type=float, default=0.25)
    r.add_argument("--border-weight", type=float, default=4.0)
    r.add_argument("--workers", type=int, default=6)
    r.add_argument("--seed", type=int, default=12)
    r.add_argument("--log-every", type=int, default=100)
    r.add_argument("--matmul", action="store_true", help="measure the matmul rates first")
    m = sub.add_parser("matmul", help="print the matmul rates of the GPU here (or the CPU)")
    m.add_argument("--device", default="cuda")
    j = sub.add_parser("join")
    j.add_argument("prefix", type=Path)
    j.add_argument("dest", type=Path)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.out, a.data, a.fashion, a.weights)
    elif a.cmd == "run":
        run(a)
    elif a.cmd == "matmul":
        print(json.dumps({"device": a.device, "matmul_tflops": matmul_tflops(torch.device(a.device))}))
    else:
        join(a.prefix, a.dest)


if __name__ == "__main__":
    main()
