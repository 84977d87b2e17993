"""Encoding and decoding many things at once: files, folders, lists of paths, pipes.

Every output file is written to a temporary name and renamed, so an interrupted
run leaves no partial file; finished outputs are skipped on the next run; one bad
input is reported and counted, never fatal to the others.
"""
from __future__ import annotations

import functools
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

import torch

from .checkpoint import atomic_write_bytes
from .data import ImageError, list_images, load_image
from .errors import LQAEError
from .tokens import TokenError, TokenGrid, format_grid, parse_tokens

TOKEN_SUFFIX = {"text": ".txt", "ids": ".txt", "json": ".json", "jsonl": ".json"}


@dataclass
class Tally:
    converted: int = 0
    skipped: int = 0
    failed: int = 0

    def fail(self, console, what: str, why: str) -> None:
        """Count and report a failure: errors are printed even under --quiet."""
        self.failed += 1
        print(f"Error: {what}: {why}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        return f"converted {self.converted}, skipped {self.skipped}, failed {self.failed}"


def write_output(tally: Tally, console, name: str, path: Path, data: bytes) -> None:
    """Write one finished output atomically and count it; a write that fails (a folder in the way,
    a full disk, no permission) is a failure of that one input, and the batch goes on."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        tally.fail(console, name, f"cannot write {path} ({exc.strerror or exc.__class__.__name__})")
    else:
        tally.converted += 1


# --- where outputs go -----------------------------------------------------------
def relative_for_output(path: PurePath, root: Path | None) -> PurePath:
    """The part of an input path to mirror under the output folder ('..' is refused)."""
    if root is not None:
        try:
            return Path(path).relative_to(root)
        except ValueError:
            pass
    rel = PurePath(*PurePath(path).parts[1:]) if PurePath(path).is_absolute() else PurePath(path)
    if ".." in rel.parts or not rel.parts:
        raise LQAEError("its path leaves the input folder ('..'); cannot mirror it safely")
    return rel


def safe_output(outdir: Path, rel: PurePath, suffix: str, resolve=Path.resolve) -> Path:
    """outdir/rel with a new suffix, refusing anything that resolves outside outdir (symlinks included).
    `resolve` may be a per-run cache of Path.resolve (a batch has thousands of files in few folders)."""
    target = outdir / Path(rel).with_suffix(suffix)
    base = resolve(outdir)
    resolved = resolve(target.parent) / target.name
    if resolved != base and base not in resolved.parents:
        raise LQAEError(f"output {target} would be written outside {outdir}")
    if target.is_symlink():
        raise LQAEError(f"output {target} is a symbolic link; refusing to write through it")
    return target


# --- encode --------------------------------------------------------------------
@dataclass
class Source:
    name: str                      # shown in messages and recorded in JSON
    path: Path | None = None       # a file ...
    data: bytes | None = None      # ... or bytes read from stdin
    out: Path | None = None        # where its tokens go (None = stdout / the JSONL file)


class SourceImages(torch.utils.data.Dataset):
    """Sources -> (index, image tensor or None, error or None); runs in worker processes."""

    def __init__(self, sources: list[Source], size: int):
        self.sources, self.size = sources, size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        s = self.sources[i]
        try:
            return i, load_image(io.BytesIO(s.data) if s.data is not None else s.path, self.size), None
        except ImageError as exc:
            return i, None, str(exc)
        except OSError as exc:
            return i, None, f"cannot read ({exc.strerror or exc.__class__.__name__})"


def _collate(items):
    return items


def image_batches(sources: list[Source], size: int, batch_size: int, workers: int):
    """Yield lists of (index, tensor|None, error|None), loaded in worker processes when it pays."""
    dataset = SourceImages(sources, size)
    if workers <= 0 or len(sources) <= batch_size:
        for start in range(0, len(sources), batch_size):
            yield [dataset[i] for i in range(start, min(start + batch_size, len(sources)))]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                         prefetch_factor=4)
    yield from loader


def split_loaded(batch) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str]]]:
    """A batch from image_batches -> (index, image) pairs that loaded, (index, error) pairs that did not."""
    return [(i, t) for i, t, err in batch if err is None], [(i, err) for i, _, err in batch if err is not None]


def gather_sources(inputs: list[str], from_list: str | None, outdir: Path | None, suffix: str) -> tuple[list[Source], list[tuple[str, str]]]:
    """Inputs (files, folders, '-') and a list of paths -> sources with output paths; plus (input, error) pairs."""
    sources, errors = [], []
    resolve = functools.lru_cache(maxsize=None)(Path.resolve)  # this run's folders, resolved once each

    def add(path: Path, root: Path | None) -> None:
        src = Source(name=str(path), path=path)
        if outdir is not None:
            try:
                src.out = safe_output(outdir, relative_for_output(path, root), suffix, resolve)
            except LQAEError as exc:
                errors.append((str(path), str(exc)))
                return
        sources.append(src)

    for item in inputs:
        if item == "-":
            if sys.stdin.isatty():
                raise LQAEError("'-' reads an image from standard input, but standard input is a terminal")
            sources.append(Source(name="-", data=sys.stdin.buffer.read(), out=outdir / f"stdin{suffix}" if outdir else None))
            continue
        path = Path(item)
        if path.is_dir():
            for f in list_images(path):
                add(f, path)
        elif path.exists():
            add(path, path.parent)
        else:
            errors.append((item, "no such file or folder"))
    if from_list is not None:
        if from_list == "-":
            if sys.stdin.isatty():
                raise LQAEError("--from-list - reads paths from standard input, but standard input is a terminal")
            lines = sys.stdin.read().splitlines()
        else:
            try:
                lines = Path(from_list).read_text().splitlines()
            except OSError as exc:
                raise LQAEError(f"cannot read the list {from_list}: {exc.strerror}") from None
        for line in (l.strip() for l in lines):
            if not line:
                continue
            path = Path(line)
            if path.is_file():
                add(path, None)
            else:
                errors.append((line, "no such file"))
    return sources, errors


def finished_jsonl_sources(path: Path) -> set[str]:
    """Sources already in a JSONL output; a trailing partial line (a hard kill) is cut off."""
    if not path.exists():
        return set()
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(raw.rfind(b"\n") + 1)
        raw = raw[: raw.rfind(b"\n") + 1]
    done = set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            done.add(json.loads(line)["source"])
        except (ValueError, KeyError, TypeError):
            continue
    return done


def encode_all(model, inputs: list[str], from_list: str | None, output: str | None, fmt: str | None,
               batch_size: int, workers: int, skip_existing: bool, console, show_progress: bool,
               tally: Tally | None = None, precision: str = "fp32") -> Tally:
    tally = tally if tally is not None else Tally()
    out_path = Path(output) if output not in (None, "-") else None
    jsonl_out = out_path is not None and out_path.suffix == ".jsonl"
    many = len(inputs) > 1 or from_list is not None or any(Path(i).is_dir() for i in inputs if i != "-")
    to_dir = out_path is not None and not jsonl_out and (many or out_path.is_dir() or output.endswith(os.sep))
    single_file = out_path is not None and not jsonl_out and not to_dir
    if jsonl_out:
        fmt = "jsonl"
    elif fmt is None:
        fmt = "json" if single_file and out_path.suffix == ".json" else "text"
    sources, errors = gather_sources(inputs, from_list, out_path if to_dir else None, TOKEN_SUFFIX[fmt])
    for what, why in errors:
        tally.fail(console, what, why)
    if single_file and len(sources) == 1:
        sources[0].out = out_path
    todo = []
    done_jsonl = finished_jsonl_sources(out_path) if jsonl_out and skip_existing else set()
    for s in sources:
        if skip_existing and ((s.out is not None and s.out.exists()) or s.name in done_jsonl):
            tally.skipped += 1
        else:
            todo.append(s)

    vocab, ckpt, fp = model.lm.vocab, model.name, model.cfg.lm_fingerprint
    device = next(model.parameters()).device
    jsonl_file = open(out_path, "a", encoding="utf-8") if jsonl_out else None
    stdout_first = True
    try:
        with progress_for(console, len(todo), "encode", show_progress) as (progress, advance):
            for batch in image_batches(todo, model.cfg.image_size, batch_size, workers):
                good, failed = split_loaded(batch)
                for i, err in failed:
                    tally.fail(console, todo[i].name, err)
                if good:
                    ids = model.encode(torch.stack([t for _, t in good]).to(device), precision).cpu().tolist()
                    for (i, _), grid in zip(good, ids):
                        src = todo[i]
                        text = format_grid(TokenGrid(grid, src.name), fmt, vocab, ckpt, fp)
                        if src.out is not None:  # a token file (never with a .jsonl output)
                            write_output(tally, console, src.name, src.out, text.encode("utf-8"))
                            continue
                        if jsonl_file is not None:
                            jsonl_file.write(text)
                            jsonl_file.flush()
                        else:
                            if not stdout_first and fmt in ("text", "ids"):
                                sys.stdout.write("\n")
                            sys.stdout.write(text)
                            stdout_first = False
                        tally.converted += 1
                sys.stdout.flush()
                advance(len(batch))
    finally:
        if jsonl_file is not None:
            jsonl_file.close()
    return tally


class progress_for:
    """Context manager: (progress, advance(n)) with an images/s readout; silent when disabled."""

    def __init__(self, console, total: int, label: str, enabled: bool):
        from .runtime import progress_bar

        self.progress = progress_bar(console, total, label, enabled)
        self.total = total

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task("", total=self.total, rate="")
        t0, count = time.time(), [0]

        def advance(n: int) -> None:
            count[0] += n
            self.progress.update(task, advance=n, rate=f"{count[0] / max(time.time() - t0, 1e-9):.0f} img/s")

        return self.progress, advance

    def __exit__(self, *exc):
        self.progress.stop()
        return False


# --- decode --------------------------------------------------------------------
@dataclass
class TokenJob:
    name: str
    grid: TokenGrid
    out: Path | None


def read_token_inputs(source: str, model, outdir: Path | None, tally: Tally, console) -> list[TokenJob]:
    """'-' / a token file / a folder of token files -> jobs; unreadable files are failures."""
    allowed = set(model.quantizer.allowed_ids.tolist())
    g = model.cfg.grid_size

    def parse(text: str, where: str) -> list[TokenGrid]:
        try:
            return parse_tokens(text, model.lm.token_id, allowed, g)
        except TokenError as exc:
            raise LQAEError(f"{where}: {exc}") from None

    if source == "-":
        if sys.stdin.isatty():
            raise LQAEError("'-' reads tokens from standard input, but standard input is a terminal")
        grids = parse(sys.stdin.read(), "stdin")
        return [TokenJob("stdin", gr, _mirror(outdir, gr, n, "stdin")) for n, gr in enumerate(grids)]
    path = Path(source)
    if path.is_dir():
        jobs = []
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".json", ".jsonl")):
            try:
                grids = parse(f.read_text(encoding="utf-8"), str(f))
            except (LQAEError, OSError, UnicodeDecodeError) as exc:
                tally.fail(console, str(f), str(exc).removeprefix(f"{f}: "))
                continue
            rel = f.relative_to(path)
            for n, gr in enumerate(grids):
                name = rel if len(grids) == 1 else rel.with_name(f"{rel.stem}-{n:04d}{rel.suffix}")
                jobs.append(TokenJob(str(f), gr, safe_output(outdir, name, ".png") if outdir else None))
        return jobs
    if not path.exists():
        raise LQAEError(f"no such token file or folder: {source}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LQAEError(f"cannot read {source} as text ({exc.__class__.__name__})") from None
    grids = parse(text, source)
    return [TokenJob(source, gr, _mirror(outdir, gr, n, path.stem)) for n, gr in enumerate(grids)]


def _mirror(outdir: Path | None, grid: TokenGrid, n: int, stem: str) -> Path | None:
    """Where a grid from a multi-image stream goes: its recorded source's path, else a numbered name."""
    if outdir is None:
        return None
    if grid.source and grid.source != "-":
        try:
            return safe_output(outdir, relative_for_output(PurePath(grid.source), None), ".png")
        except LQAEError:
            pass
    return safe_output(outdir, PurePath(f"{stem}-{n:06d}"), ".png")


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] -> a (B, H, W, 3) uint8 array."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(arr) -> bytes:
    """A (H, W, 3) uint8 array -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_all(model, source: str, output: str, batch_size: int, skip_existing: bool, console, show_progress: bool,
               tally: Tally | None = None) -> Tally:
    tally = tally if tally is not None else Tally()
    out_path = None if output == "-" else Path(output)
    looks_like_dir = out_path is not None and (out_path.is_dir() or output.endswith(os.sep) or out_path.suffix == "")
    jobs = read_token_inputs(source, model, out_path if looks_like_dir else None, tally, console)
    if not looks_like_dir:
        if len(jobs) > 1:
            raise LQAEError(f"{source} holds {len(jobs)} images; give an output folder (-o DIR) to decode them all")
        if jobs:
            jobs[0].out = out_path  # None = stdout
    todo = []
    for job in jobs:
        if skip_existing and looks_like_dir and job.out is not None and job.out.exists():
            tally.skipped += 1
        else:
            todo.append(job)
    device = next(model.parameters()).device
    with progress_for(console, len(todo), "decode", show_progress) as (_, advance):
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            ids = torch.tensor([j.grid.ids for j in chunk], dtype=torch.long, device=device)
            for job, arr in zip(chunk, to_uint8(model.decode(ids))):
                if job.out is not None:
                    write_output(tally, console, job.name, job.out, png_bytes(arr))
                    continue
                if sys.stdout.isatty():
                    raise LQAEError("refusing to write PNG bytes to a terminal (redirect stdout or use -o FILE)")
                sys.stdout.buffer.write(png_bytes(arr))
                sys.stdout.buffer.flush()
                tally.converted += 1
            advance(len(chunk))
    return tally
