"""Training: one process, or several with `torchrun` (DistributedDataParallel, gloo on CPU, nccl on CUDA).

Rank 0 alone logs and writes files; every file is written atomically. The model
checkpoint (`--out`) holds only the trained tensors; the resumable training state
(optimizer, scheduler, step, RNG) lives beside it in `<out stem>.state.safetensors`.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import load_model, read_tensors, save_model, save_tensors
from .config import TrainArgs, preset
from .curves import plot_curves
from .data import TrainImages, collate_skip_none, list_images, load_image, to_pil
from .errors import CheckpointError, ConfigError, LQAEError
from .fileio import atomic_write
from .lm import LanguageModel
from .model import LQAE
from .quantizer import usage_stats
from .runtime import keep_freed_memory
from .distributed import Ranks, setup_ranks


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training: None = fp32; "auto" is bf16 only where it is native and
    measured faster on this device (precision.auto_precision)."""
    from .precision import resolve

    return torch.bfloat16 if resolve(precision, device) == "bf16" else None


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
    """Restore the optimizer and random streams from a state file; one that does not fit this run (crafted,
    damaged, or from another model) raises CheckpointError naming it, before any state is changed."""
    n_params = sum(p.numel() for group in opt.param_groups for p in group["params"])
    tensors, meta = read_tensors(path, max_numbers=3 * n_params + (1 << 20))  # two moments per number, steps, RNG
    try:
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        groups = json.loads(meta["param_groups"])
        step, elapsed = int(meta["step"]), float(meta.get("elapsed", 0))
        rng = tensors.get(f"rng.cpu.{rank}", tensors["rng.cpu.0"])
        if step < 0 or not math.isfinite(elapsed) or rng.dtype != torch.uint8 or rng.ndim != 1:
            raise ValueError("step, elapsed time or random state out of range")
        params = [p for group in opt.param_groups for p in group["params"]]
        for i, st in state.items():
            for name, v in st.items():
                if name in ("exp_avg", "exp_avg_sq") and tuple(v.shape) != tuple(params[i].shape):
                    raise ValueError(f"optim.{i}.{name} has shape {list(v.shape)}, its parameter {list(params[i].shape)}")
        saved = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": groups})
        try:
            torch.set_rng_state(rng)
            if "rng.cuda" in tensors and torch.cuda.is_available():
                torch.cuda.set_rng_state(tensors["rng.cuda"])
        except (RuntimeError, ValueError, TypeError):
            opt.load_state_dict(saved)
            raise
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a usable training state for this run ({exc.__class__.__name__}: "
                              f"{str(exc)[:100]}); delete it to start over") from None
    return step, elapsed


def save_grid(path: Path, inputs: torch.Tensor, recons: torch.Tensor, n: int = 8) -> None:
    """A PNG: inputs on the top row, reconstructions below."""
    n = min(n, len(inputs))
    rows = torch.cat([torch.cat(list(inputs[:n]), dim=2), torch.cat(list(recons[:n]), dim=2)], dim=1)
    atomic_write(path, lambda tmp: to_pil(rows).save(tmp, format="PNG"))


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


def build_model(args: TrainArgs, device: torch.device) -> LQAE:
    """A fresh model from the preset, or the --init checkpoint's (its geometry, LM, vocabulary and weights)."""
    try:
        if args.init is not None:
            model = load_model(args.init, device)
            model.cfg = replace(model.cfg, **{"mask_ratio": args.mask_ratio, "mask_policy": args.mask_policy, "recon_loss": args.recon_loss, **args.overrides})
            if args.decoder_lm_layers is not None:
                try:
                    model.read_more_lm_layers(args.decoder_lm_layers)
                except ConfigError as exc:
                    raise LQAEError(f"--decoder-lm-layers: {exc}") from None
        else:
            lm = LanguageModel.load(args.lm)
            cfg = preset(args.preset, **{"image_size": args.image_size, "patch_size": args.patch_size, "mask_ratio": args.mask_ratio,
                                         "mask_policy": args.mask_policy,
                                         "recon_loss": args.recon_loss, "lm_name": args.lm, "lm_fingerprint": lm.fingerprint,
                                         "vocab_rule": args.vocab_rule, **args.overrides,
                                         **({"decoder_lm_layers": args.decoder_lm_layers} if args.decoder_lm_layers else {})})
            model = LQAE(cfg, lm).to(device)
    except TypeError as exc:  # an override that is not a config field
        raise ConfigError(str(exc)) from None
    if args.freeze_encoder:
        model.freeze_encoder()
    return model


def make_loader(files: list[Path], image_size: int, args: TrainArgs, ranks: Ranks, start_step: int):
    """Batches for this rank from step `start_step` on: the same images a run from the start would see."""
    dataset = EpochImages(files, image_size, seed=args.seed, smooth_share=args.smooth_share)
    sampler = EpochSampler(len(files), args.batch_size, args.seed, ranks.rank, ranks.world, start_step)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                       collate_fn=collate_skip_none, persistent_workers=args.workers > 0,
                                       pin_memory=ranks.device.type == "cuda",
                                       generator=torch.Generator().manual_seed(args.seed))  # leaves the global RNG alone


METRIC_KEYS = ("loss", "mse", "commit", "entropy", "decorrelation", "psnr", "distinct", "perplexity", "top_share")


class TrainLog:
    """Rank 0's view of the run: averages over each logging window into `<out>.metrics.jsonl`, validation,
    the progress bar on stderr, sample grids."""

    def __init__(self, args: TrainArgs, model: LQAE, val_files: list[Path], ranks: Ranks, autocast_dtype, start: int):
        self.args, self.model, self.val_files, self.ranks, self.autocast_dtype = args, model, val_files, ranks, autocast_dtype
        out = Path(args.out)
        self.path = out.with_name(out.stem + ".metrics.jsonl")
        self.samples = out.with_name(out.stem + ".samples")
        self.window: list[dict] = []
        self.window_t, self.window_imgs = time.time(), 0
        self.last: dict = {}
        self.progress = None
        if ranks.is_main and not args.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task("train", total=args.steps, completed=start, info="")
            self.progress.start()

    def step(self, step: int, out: dict, images: torch.Tensor, lr: float, elapsed_s: float) -> None:
        self.window.append({k: float(out[k].detach() if torch.is_tensor(out[k]) else out[k]) for k in METRIC_KEYS})
        self.window_imgs += len(images) * self.ranks.world
        a = self.args
        if not self.ranks.is_main:
            return
        if step % a.log_every == 0 or step == a.steps:
            now = time.time()
            m = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[0]}
            m.update(step=step, lr=lr, images_per_s=self.window_imgs / max(now - self.window_t, 1e-9), elapsed_s=round(elapsed_s, 1))
            if self.val_files and (step % a.val_every == 0 or step == a.steps):
                m.update(validate(self.model, self.val_files, self.ranks.device, self.autocast_dtype))
            self.last = m
            with open(self.path, "a") as f:
                f.write(json.dumps(m) + "\n")
            if self.progress is not None:
                self.progress.update(self.task, completed=step, info=f"loss {m['loss']:.4f} psnr {m['psnr']:.2f} "
                                     f"words {m['distinct']:.0f} {m['images_per_s']:.1f} img/s")
            self.window, self.window_t, self.window_imgs = [], now, 0
        if a.sample_every and step % a.sample_every == 0:
            save_grid(self.samples / f"step_{step:07d}.png", images.float(), out["recon"])

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class Checkpointer:
    """Writes the model (`--out`) and the resumable state beside it; under DDP every rank joins in
    (buffers from rank 0, a check that all ranks hold the same weights, every rank's RNG), rank 0 writes."""

    def __init__(self, args: TrainArgs, model: LQAE, opt, ranks: Ranks, autocast_dtype, init_record: dict | None):
        self.args, self.model, self.opt, self.ranks = args, model, opt, ranks
        self.precision = "bf16" if autocast_dtype else "fp32"
        self.init_record = init_record

    def record(self, step: int, wall_time_s: float) -> dict:
        a, world = self.args, self.ranks.world
        rec = {"step": step, "images_seen": step * a.batch_size * world, "world_size": world,
               "device": str(self.ranks.device), "precision": self.precision, "wall_time_s": round(wall_time_s, 1),
               "data": [str(d) for d in a.data], "lr": a.lr, "batch_size": a.batch_size * world, "steps": a.steps,
               "seed": a.seed, "mask_ratio": a.mask_ratio, "mask_policy": a.mask_policy, "preset": a.preset, "smooth_share": a.smooth_share}
        if a.freeze_encoder:
            rec["trained"] = "decoder only (encoder frozen)"
        if self.init_record is not None:  # the phase this run started from
            rec["preset"] = self.init_record.get("preset", a.preset)
            rec["init"] = {"checkpoint": Path(a.init).name, **self.init_record}
        return rec

    def save(self, step: int, wall_time_s: float, metrics: dict) -> None:
        ranks_identical = None
        if self.ranks.distributed:
            for b in self.model.buffers():
                dist.broadcast(b, 0)
            ranks_identical = weights_identical_across_ranks(self.model, self.ranks.world)
            rng_states = [torch.empty_like(torch.get_rng_state()) for _ in range(self.ranks.world)]
            dist.all_gather(rng_states, torch.get_rng_state())
        else:
            rng_states = [torch.get_rng_state()]
        if self.ranks.is_main:
            rec = self.record(step, wall_time_s)
            if ranks_identical is not None:
                rec["ranks_identical"] = ranks_identical
            out = Path(self.args.out)
            save_model(self.model, out, training=rec, metrics=metrics)
            save_state(state_path(out), self.opt, step, self.args, rec["wall_time_s"], rng_states)
            log = out.with_name(out.stem + ".metrics.jsonl")
            if log.exists():
                plot_curves(log, out.with_name(out.stem + ".curves.png"))
        if self.ranks.distributed:
            dist.barrier()


def train(args: TrainArgs) -> Path:
    """Train (or go on training) a model as `args` says; returns the checkpoint path. Ctrl-C saves a
    resumable checkpoint and re-raises KeyboardInterrupt."""
    ranks = setup_ranks(args.device)
    if ranks.device.type == "cpu":
        keep_freed_memory()
    autocast_dtype = resolve_precision(args.precision, ranks.device)
    torch.manual_seed(args.seed)  # identical initial weights on every rank
    files = [f for d in args.data for f in list_images(d)]
    if not files:
        raise LQAEError(f"no images found under {', '.join(map(str, args.data))}")
    val_files = list_images(args.val) if args.val else []
    model = build_model(args, ranks.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)

    out = Path(args.out)
    if ranks.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
    start, elapsed_before = 0, 0.0
    torch.manual_seed(args.seed * 7919 + ranks.rank)  # masking / sampling streams differ per rank
    if args.resume and out.exists() and state_path(out).exists():
        tensors, _ = read_tensors(out)
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{out} does not fit this run's model, so it cannot be resumed "
                                  f"({str(exc).splitlines()[0][:100]}); delete it or train to another --out") from None
        start, elapsed_before = load_state(state_path(out), opt, ranks.rank)

    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None) if ranks.distributed else model
    batches = iter(make_loader(files, model.cfg.image_size, args, ranks, start))
    log = TrainLog(args, model, val_files, ranks, autocast_dtype, start)
    saver = Checkpointer(args, model, opt, ranks, autocast_dtype, model.card["training"] if args.init is not None else None)
    if ranks.is_main:
        print(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {len(files)} images, "
              f"{ranks.world} process(es), device {ranks.device}, {'bf16' if autocast_dtype else 'fp32'}, "
              f"{model.quantizer.num_allowed} allowed words", file=sys.stderr)

    t_start = time.time()
    elapsed = lambda: elapsed_before + time.time() - t_start
    step, interrupted = start, False
    model.train()
    try:
        while step < args.steps:
            images = next(batches)
            if images is None:
                continue
            images = images.to(ranks.device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
            with torch.autocast(ranks.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out_d = ddp(images)
            opt.zero_grad(set_to_none=True)
            out_d["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            log.step(step, out_d, images, opt.param_groups[0]["lr"], elapsed())
            if step % args.save_every == 0 and step < args.steps:
                saver.save(step, elapsed(), log.last)
    except KeyboardInterrupt:
        interrupted = True
    saver.save(step, elapsed(), log.last)
    log.close()
    if ranks.distributed:
        dist.destroy_process_group()
    if interrupted:
        if ranks.is_main:
            print(f"interrupted at step {step}: checkpoint saved to {out}; continue with --resume", file=sys.stderr)
        raise KeyboardInterrupt
    return out
