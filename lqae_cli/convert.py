"""Encoding and decoding many things at once: files, folders, lists of paths, pipes.

`Destination` says where a batch's outputs go, by one rule for encode and decode alike; `encode_all`
and `decode_all` run a tokenizer over the inputs. Every output file is written to a temporary name
and renamed, so an interrupted run leaves no partial file; finished outputs are skipped on the next
run; one bad input (or one output that cannot be written) is reported and counted, never fatal to the others.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

import torch

from .data import list_images, load_image
from .errors import ImageError, LQAEError, TokenError
from .fileio import atomic_write_bytes
from .tokens import WordGrid, format_grid

TOKEN_SUFFIX = {"text": ".txt", "ids": ".txt", "json": ".json", "jsonl": ".json"}
TOKEN_FILE_SUFFIXES = (".txt", ".json", ".jsonl")
Advance = Callable[[int], None]


@dataclass
class Tally:
    converted: int = 0
    skipped: int = 0
    failed: int = 0

    def fail(self, what: str, why: str) -> None:
        """Count and report a failure (on stderr, even under --quiet: errors always show)."""
        self.failed += 1
        print(f"Error: {what}: {why}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        return f"converted {self.converted}, skipped {self.skipped}, failed {self.failed}"


# --- where outputs go -----------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """Where a batch's outputs go: "stdout", one "file", a "folder" that mirrors the inputs, or a
    "jsonl" file (encode only) that gathers one record per image."""

    kind: str
    path: Path | None = None

    @classmethod
    def choose(cls, output: str | None, many: bool, jsonl: bool = False) -> "Destination":
        """The one rule, for encode and decode: None or '-' is stdout; with `jsonl`, a .jsonl path is a
        JSON Lines file; an existing folder or a path ending in a separator is a folder; with several
        inputs (a folder, a list, or a stream of many images) a path that does not exist is a folder
        too; otherwise a path is one output file."""
        if output in (None, "-"):
            return cls("stdout")
        path = Path(output)
        if jsonl and path.suffix == ".jsonl":
            return cls("jsonl", path)
        if path.is_dir() or output.endswith(("/", os.sep)) or (many and not path.exists()):
            return cls("folder", path)
        if many:
            raise LQAEError(f"{output} is a file, but there are several inputs: give a folder (-o DIR)")
        return cls("file", path)

    def for_rank(self, ranks) -> "Destination":
        """Under torchrun each rank writes only its own outputs: a folder's mirrored files are disjoint,
        a JSON Lines file becomes one per rank (`NAME-00000-of-00004.jsonl`); stdout and single files
        cannot be shared, and are refused."""
        if not ranks.distributed:
            return self
        if self.kind == "jsonl":
            name = f"{self.path.stem}-{ranks.rank:05d}-of-{ranks.world:05d}{self.path.suffix}"
            return Destination("jsonl", self.path.with_name(name))
        if self.kind != "folder":
            raise LQAEError("under torchrun every rank writes its own outputs: give an output folder or a .jsonl file (-o)")
        return self

    def file_for(self, rel: PurePath, suffix: str, inside=None) -> Path:
        """The output file for an input at relative path `rel`, in a folder destination (`inside`: as in
        safe_output)."""
        return safe_output(self.path, rel, suffix, inside)


def write_file(path: Path, data: bytes) -> str | None:
    """Write one finished output atomically: None, or why it could not be written (a folder in the way,
    a full disk, no permission): a failure of that one input, and the batch goes on."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        return f"cannot write {path} ({exc.strerror or exc.__class__.__name__})"
    return None


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


def folder_check(outdir: Path):
    """A per-run check for safe_output: folder -> whether it lies inside outdir once resolved (symlinks
    followed), each folder resolved once (a batch has thousands of files in few folders)."""
    base = Path(outdir).resolve()

    @functools.lru_cache(maxsize=None)
    def inside(folder: Path) -> bool:
        resolved = folder.resolve()
        return resolved == base or base in resolved.parents

    return inside


def safe_output(outdir: Path, rel: PurePath, suffix: str, inside=None) -> Path:
    """outdir/rel with a new suffix, refusing anything that resolves outside outdir (symlinks included).
    `inside`: this run's folder_check(outdir), if there is one."""
    target = outdir / Path(rel).with_suffix(suffix)
    if not (inside or folder_check(outdir))(target.parent):
        raise LQAEError(f"output {target} would be written outside {outdir}")
    if target.is_symlink():
        raise LQAEError(f"output {target} is a symbolic link; refusing to write through it")
    return target


def read_stdin(what: str, binary: bool):
    if sys.stdin.isatty():
        raise LQAEError(f"'-' reads {what} from standard input, but standard input is a terminal")
    return sys.stdin.buffer.read() if binary else sys.stdin.read()


# --- encode --------------------------------------------------------------------
@dataclass
class Source:
    name: str                      # shown in messages and recorded in JSON
    path: Path | None = None       # a file ...
    data: bytes | None = None      # ... or bytes read from stdin
    root: Path | None = None       # the folder it was found in (mirrored under an output folder)
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
        for r in batch_ranges(len(sources), batch_size):
            yield [dataset[i] for i in r]
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                         prefetch_factor=4)
    yield from loader


def split_loaded(batch) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, str]]]:
    """A batch from image_batches -> (index, image) pairs that loaded, (index, error) pairs that did not."""
    return [(i, t) for i, t, err in batch if err is None], [(i, err) for i, _, err in batch if err is not None]


def gather_sources(inputs: list[str], from_list: str | None = None) -> tuple[list[Source], list[tuple[str, str]], bool]:
    """Inputs (files, folders, '-') and a list of paths (a file or '-') -> (sources, (input, error) pairs,
    whether there are several inputs: a folder, a list or more than one item)."""
    sources, errors = [], []
    for item in inputs:
        if item == "-":
            sources.append(Source(name="-", data=read_stdin("an image", binary=True)))
            continue
        path = Path(item)
        if path.is_dir():
            sources += [Source(str(f), f, root=path) for f in list_images(path)]
        elif path.exists():
            sources.append(Source(str(path), path, root=path.parent))
        else:
            errors.append((item, "no such file or folder"))
    if from_list is not None:
        if from_list == "-":
            lines = read_stdin("paths", binary=False).splitlines()
        else:
            try:
                lines = Path(from_list).read_text().splitlines()
            except OSError as exc:
                raise LQAEError(f"cannot read the list {from_list}: {exc.strerror}") from None
        for line in (l.strip() for l in lines):
            if not line:
                continue
            if Path(line).is_file():
                sources.append(Source(line, Path(line)))
            else:
                errors.append((line, "no such file"))
    many = len(inputs) > 1 or from_list is not None or any(Path(i).is_dir() for i in inputs if i != "-")
    return sources, errors, many


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


def token_format(dest: Destination, fmt: str | None) -> str:
    """The format written: jsonl into a .jsonl file; else as asked; else json for a single .json file, else text."""
    if dest.kind == "jsonl":
        return "jsonl"
    if fmt is not None:
        return fmt
    return "json" if dest.kind == "file" and dest.path.suffix == ".json" else "text"


def encode_all(tok, sources: list[Source], dest: Destination, fmt: str = "text", *, batch_size: int = 64,
               workers: int = 0, skip_existing: bool = True, precision: str = "fp32", size=None,
               advance: Advance | None = None, tile_progress: Advance | None = None, tally: Tally | None = None) -> Tally:
    """Encode `sources` with tokenizer `tok` into `dest` in format `fmt`; returns the tally.
    A folder destination gets one token file per source (mirroring its path under its root).
    `size` as in `Tokenizer.encode` (None: one tile per image); `tile_progress` is told of every batch of
    tiles done (an image of many tiles takes a while)."""
    tally = tally if tally is not None else Tally()
    inside = folder_check(dest.path) if dest.kind == "folder" else None
    todo = []
    done_jsonl = finished_jsonl_sources(dest.path) if dest.kind == "jsonl" and skip_existing else set()
    for s in sources:
        if dest.kind == "folder":
            try:
                rel = PurePath("stdin") if s.path is None else relative_for_output(s.path, s.root)
                s.out = dest.file_for(rel, TOKEN_SUFFIX[fmt], inside)
            except LQAEError as exc:
                tally.fail(s.name, str(exc))
                continue
        elif dest.kind == "file":
            s.out = dest.path
        if skip_existing and ((s.out is not None and s.out.exists()) or s.name in done_jsonl):
            tally.skipped += 1
        else:
            todo.append(s)

    if advance:
        advance(len(sources) - len(todo))  # skipped, or failed before reading
    jsonl_file = open(dest.path, "a", encoding="utf-8") if dest.kind == "jsonl" else None
    stdout_first = True

    def encode_batch(batch) -> tuple[list[tuple[int, str | None, str | None]], int]:
        """A loaded batch -> ((index, text, error) per source: failures first, then the rest in order; a
        source with its own output file is written here (text None), the others' text is returned;
        the batch's size)."""
        good, failed = split_loaded(batch)
        out: list[tuple[int, str | None, str | None]] = [(i, None, err) for i, err in failed]
        if size is None and good:
            ids = tok.encode_pixels(torch.stack([t for _, t in good]), precision).cpu().tolist()
            good = [(i, WordGrid.from_ids(g, tok.vocab, todo[i].name)) for (i, _), g in zip(good, ids)]
        for i, grid in good:
            text = format_grid(grid, fmt, tok.name, tok.lm_fingerprint, tok.image_size)
            out.append((i, text, None) if todo[i].out is None else (i, None, write_file(todo[i].out, text.encode("utf-8"))))
        return out, len(batch)

    lanes = batch_lanes(tok.device) if size is None and workers <= 0 else 1
    if size is not None:
        loads = ((lambda b=b: b) for b in tiled_batches(tok, todo, size, precision, batch_size, tile_progress))
    elif lanes > 1:  # each lane reads its own batches: the reading is what the lanes overlap
        dataset = SourceImages(todo, tok.image_size)
        loads = ((lambda r=r: [dataset[i] for i in r]) for r in batch_ranges(len(todo), batch_size))
    else:
        loads = ((lambda b=b: b) for b in image_batches(todo, tok.image_size, batch_size, workers))
    try:
        with contextlib.closing(in_lanes(lambda load: encode_batch(load()), loads, lanes)) as done:
            for results, n in done:
                for i, text, err in results:
                    if err is not None:
                        tally.fail(todo[i].name, err)
                        continue
                    if text is not None and jsonl_file is not None:
                        jsonl_file.write(text)
                        jsonl_file.flush()
                    elif text is not None:
                        if not stdout_first and fmt in ("text", "ids"):
                            sys.stdout.write("\n")
                        sys.stdout.write(text)
                        stdout_first = False
                    tally.converted += 1
                sys.stdout.flush()
                if advance:
                    advance(n)
    finally:
        if jsonl_file is not None:
            jsonl_file.close()
    return tally


def batch_ranges(n: int, batch_size: int) -> list[range]:
    """The index ranges of n items in batches of batch_size (the last one shorter)."""
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def batch_lanes(device: torch.device, threads: int | None = None) -> int:
    """How many batches `encode_all` and `decode_all` work on at once. On a CPU with two or more torch
    threads, two: each lane reads, converts and writes its own batches with half the threads, so one
    lane's reading and writing (Python, one core) runs while the other's model has the cores (the
    README's speed table has what it gains). Elsewhere one. The words are the same either way; a
    decoded pixel's last bits depend on the thread count, as they do between machines (about 1 in
    100,000 8-bit values differs by 1 between one thread and two, README)."""
    threads = threads or torch.get_num_threads()
    return 2 if device.type == "cpu" and threads >= 2 else 1


def in_lanes(fn, items, lanes: int):
    """fn over items, the results yielded in the items' order. With lanes > 1 the first item runs alone
    with all of torch's threads (whatever is built on first use is built once), the rest on `lanes`
    threads with torch's threads shared among them (restored after), at most 2 x lanes at once."""
    items = iter(items)
    if lanes <= 1:
        yield from map(fn, items)
        return
    first = next(items, None)
    if first is None:
        return
    yield fn(first)
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // lanes))
    pool, pending = ThreadPoolExecutor(lanes, thread_name_prefix="lqae-lane"), deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * lanes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def tiled_batches(tok, sources: list[Source], size, precision: str, batch_size: int, progress: Advance | None = None):
    """Like image_batches, for images of any size: one source at a time, as (index, WordGrid|None, error|None)."""
    for i, s in enumerate(sources):
        try:
            image = s.data if s.data is not None else s.path
            yield [(i, tok.encode(image, size=size, precision=precision, batch_size=batch_size, progress=progress), None)]
        except ImageError as exc:
            yield [(i, None, str(exc).removeprefix(f"{s.path}: "))]


class progress_for:
    """Context manager: (progress, advance(n)) with an images/s readout; silent when disabled."""

    def __init__(self, console, total: int | None, label: str, enabled: bool, unit: str = "img"):
        from .runtime import progress_bar

        self.progress = progress_bar(console, total, label, enabled)
        self.total, self.unit = total, unit  # total None: unknown (a count with no bar end)

    def __enter__(self):
        self.progress.start()
        task = self.progress.add_task("", total=self.total, rate="")
        t0, count = time.time(), [0]

        def advance(n: int) -> None:
            count[0] += n
            self.progress.update(task, advance=n, rate=f"{count[0] / max(time.time() - t0, 1e-9):.0f} {self.unit}/s")

        return self.progress, advance

    def __exit__(self, *exc):
        self.progress.stop()
        return False


# --- decode --------------------------------------------------------------------
@dataclass
class TokenJob:
    name: str                   # the token file (or "stdin") it came from
    grid: WordGrid
    rel: PurePath               # where its image goes under an output folder
    out: Path | None = None


def read_token_inputs(tok, source: str, tally: Tally, pick=None) -> list[TokenJob]:
    """'-' / a token file / a folder of token files -> jobs; unreadable files in a folder are failures
    (a single file or stdin that cannot be read raises TokenError naming it). `pick` chooses which of a
    folder's sorted token files to read (this rank's part, under torchrun)."""
    def parse(text: str, where: str) -> list[WordGrid]:
        try:
            return tok.parse(text)
        except TokenError as exc:
            raise TokenError(f"{where}: {exc}") from None

    if source == "-":
        grids = parse(read_stdin("tokens", binary=False), "stdin")
        return [TokenJob("stdin", gr, _mirror(gr, n, "stdin")) for n, gr in enumerate(grids)]
    path = Path(source)
    if path.is_dir():
        jobs = []
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TOKEN_FILE_SUFFIXES)
        for f in (pick(files) if pick else files):
            try:
                grids = parse(f.read_text(encoding="utf-8"), str(f))
            except (TokenError, OSError, UnicodeDecodeError) as exc:
                tally.fail(str(f), str(exc).removeprefix(f"{f}: "))
                continue
            rel = f.relative_to(path)
            for n, gr in enumerate(grids):
                jobs.append(TokenJob(str(f), gr, rel if len(grids) == 1 else rel.with_name(f"{rel.stem}-{n:04d}{rel.suffix}")))
        return jobs
    if not path.exists():
        raise LQAEError(f"no such token file or folder: {source}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read {source} as text ({exc.__class__.__name__})") from None
    grids = parse(text, source)
    return [TokenJob(source, gr, _mirror(gr, n, path.stem)) for n, gr in enumerate(grids)]


def _mirror(grid: WordGrid, n: int, stem: str) -> PurePath:
    """Where a grid from a multi-image stream goes under a folder: its recorded source's path, else a numbered name."""
    if grid.source and grid.source != "-":
        try:
            return relative_for_output(PurePath(grid.source), None)
        except LQAEError:
            pass
    return PurePath(f"{stem}-{n:06d}")


def png_bytes(img) -> bytes:
    """A PIL image -> PNG file bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_all(tok, jobs: list[TokenJob], dest: Destination, *, batch_size: int = 64, skip_existing: bool = True,
               precision: str = "auto", advance: Advance | None = None, tally: Tally | None = None) -> Tally:
    """Decode token jobs with tokenizer `tok` into `dest` (stdout, one PNG file, or a folder of PNGs), in
    `batch_lanes` lanes; outputs and failures come in the jobs' order."""
    tally = tally if tally is not None else Tally()
    if dest.kind == "jsonl":
        raise LQAEError("decode writes PNG images: give a PNG file, a folder or '-'")
    inside = folder_check(dest.path) if dest.kind == "folder" else None
    todo = []
    for job in jobs:
        if dest.kind == "folder":
            try:
                job.out = dest.file_for(job.rel, ".png", inside)
            except LQAEError as exc:
                tally.fail(job.name, str(exc))
                continue
        elif dest.kind == "file":
            job.out = dest.path
        if skip_existing and dest.kind == "folder" and job.out.exists():
            tally.skipped += 1
        else:
            todo.append(job)
    if advance:
        advance(len(jobs) - len(todo))
    if dest.kind == "stdout" and todo and sys.stdout.isatty():
        raise LQAEError("refusing to write PNG bytes to a terminal (redirect stdout or use -o FILE)")

    def decode_batch(chunk: list[TokenJob]) -> list[tuple[TokenJob, bytes | None, str | None]]:
        """Decode a batch and write its files: (job, PNG bytes for stdout or None, why writing failed or None)."""
        out = []
        for job, img in zip(chunk, tok.decode([j.grid for j in chunk], precision=precision, batch_size=batch_size)):
            data = png_bytes(img)
            out.append((job, data, None) if job.out is None else (job, None, write_file(job.out, data)))
        return out

    chunks = [todo[r.start:r.stop] for r in batch_ranges(len(todo), batch_size)]
    for results in in_lanes(decode_batch, chunks, batch_lanes(tok.device)):
        for job, data, why in results:
            if data is not None:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            if why is not None:
                tally.fail(job.name, why)
            else:
                tally.converted += 1
        if advance:
            advance(len(results))
    return tally
