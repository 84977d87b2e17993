"""Encoding and decoding many things at once: files, folders, lists of paths, pipes.

`Destination` says where a batch's outputs go, by one rule for encode and decode alike; `encode_all`
and `decode_all` run a tokenizer over the inputs. Every output file is written to a temporary name
and renamed, so an interrupted run leaves no partial file; finished outputs are skipped on the next
run; one bad input (or one output that cannot be written) is reported and counted, never fatal to the others.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import torch

from .data import list_images
from .errors import ImageError, LQAEError, TokenError
from .fileio import atomic_write_bytes
from .limits import MAX_IMAGE_BYTES, MAX_TOKEN_BYTES, mib
from .tiles import prepare_image
from .tokens import WordGrid, format_grid

TOKEN_SUFFIX = {"text": ".txt", "ids": ".txt", "json": ".json", "jsonl": ".json"}
TOKEN_FILE_SUFFIXES = (".txt", ".json", ".jsonl")
Advance = Callable[[int], None]


@dataclass
class Tally:
    converted: int = 0
    skipped: int = 0
    failed: int = 0
    unreported: dict = field(default_factory=dict)  # cause -> failures counted but not printed again (a full disk)

    def fail(self, what: str, why: str, cause: str | None = None) -> None:
        """Count and report a failure (on stderr, even under --quiet: errors always show). Failures with the
        same `cause` (a full disk) are reported once; the rest are counted, and `notes` says how many."""
        self.failed += 1
        if cause is not None:
            if cause in self.unreported:
                self.unreported[cause] += 1
                return
            self.unreported[cause] = 0
        what = shorten(what, 150)
        print(f"Error: {what}: {shorten(why, 291 - len(what))}", file=sys.stderr, flush=True)  # at most 300 characters

    def notes(self) -> list[str]:
        """One line per cause reported once and counted since (see `fail`)."""
        return [f"{n} more output{'s' if n != 1 else ''} not written ({cause})" for cause, n in self.unreported.items() if n]

    def summary(self) -> str:
        return f"converted {self.converted}, skipped {self.skipped}, failed {self.failed}"


def shorten(text: str, n: int) -> str:
    """At most n characters on one line: a long name or message keeps its start and end."""
    text = " ".join(text.split())
    return text if len(text) <= n else f"{text[:n // 2 - 2]}...{text[len(text) - (n - n // 2 - 1):]}"


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


_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


def repeated_cause(why: str) -> str | None:
    """A write failure that will repeat for every later output (a full disk): reported once (Tally.fail)."""
    return next((cause for cause in _FULL.values() if cause in why.lower()), None)


def check_outputs(outputs: list[tuple[str, Path]], inputs: list[Path]) -> None:
    """Refuse, before any work, a batch where two inputs would write one output (`a.png` and `a.jpg` both to
    `a.txt`) or an output would replace an input (`decode t.txt -o t.txt`). `outputs`: (input name, path)."""
    seen: dict[Path, str] = {}
    for name, out in outputs:
        other = seen.setdefault(out, name)
        if other is not name:
            short = Path(name).name if Path(name).parent == Path(other).parent else name
            both = f"{other} and {short}" if other != name else f"two images of {name}"
            raise LQAEError(f"{both} would both be written to {out}: rename one, or convert them separately")
    ids = set()
    for p in inputs:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
    for name, out in outputs:
        with contextlib.suppress(OSError):
            st = os.stat(out)
            if (st.st_dev, st.st_ino) in ids:
                raise LQAEError(f"the output {out} is an input ({name}); writing it would destroy it: give another output")


def refuse_input_folder(dest: "Destination", folders: list[Path]) -> None:
    """An output folder that is one of the input folders would mix outputs with inputs (and replace files
    that share an output's name, such as a caption `a.txt` beside `a.png`): refused."""
    if dest.kind != "folder" or not dest.path.exists():
        return
    for folder in folders:
        with contextlib.suppress(OSError):
            if os.path.samefile(folder, dest.path):
                raise LQAEError(f"the output folder {dest.path} is the input folder {folder}: give another (-o DIR)")


def remove_stale_temps(outputs: list[Path]) -> int:
    """Remove the temporary files (`.NAME.XXXXXXXX.tmp`, made by atomic writes) that a killed run left beside
    these outputs; returns how many. One listing per folder."""
    from .fileio import temp_prefix

    names: dict[Path, set[str]] = {}
    for p in outputs:
        names.setdefault(p.parent, set()).add(temp_prefix(p.name)[1:-1])
    removed = 0
    for folder, wanted in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            n = e.name
            if not (n.startswith(".") and n.endswith(".tmp")):
                continue
            name, _, rand = n[1:-4].rpartition(".")
            if name in wanted and len(rand) == 8 and e.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
                    removed += 1
    return removed


def is_finished(path: Path) -> bool:
    """Whether an existing output is whole, not merely there: a token file that ends its last line and
    (JSON) parses, a PNG that ends with its IEND chunk, a tar that reads to its end. Anything else is redone."""
    import tarfile

    try:
        if path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - 12))
            tail = f.read(12)
            if path.suffix == ".png":
                return head == b"\x89PNG\r\n\x1a\n" and tail[4:8] == b"IEND"
            if path.suffix in (".txt", ".json"):
                if not 0 < size <= MAX_TOKEN_BYTES:
                    return False
                f.seek(0)
                text = f.read().decode("utf-8")
                return text.endswith("\n") and (path.suffix != ".json" or isinstance(json.loads(text), dict))
        if path.suffix == ".tar":
            with tarfile.open(path, mode="r|") as tar:
                for _ in tar:  # a stream reads past every member's data: a cut-off tar fails here
                    pass
            return True
    except (OSError, ValueError, EOFError, tarfile.TarError):  # unreadable, not UTF-8, not JSON, a cut-off tar
        return False
    return size > 0


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


def read_stdin(what: str, binary: bool, limit: int = MAX_TOKEN_BYTES):
    """All of standard input, at most `limit` bytes (more is refused, naming the limit); text is UTF-8."""
    if sys.stdin.isatty():
        raise LQAEError(f"'-' reads {what} from standard input, but standard input is a terminal")
    data = read_capped(sys.stdin.buffer, limit, f"{what} on standard input",
                       "MAX_IMAGE_BYTES" if limit == MAX_IMAGE_BYTES else "MAX_TOKEN_BYTES")
    # text: bytes that are not UTF-8 stay as surrogates, so only the image (record) they are in fails
    return data if binary else data.decode("utf-8", errors="surrogateescape")


def write_stdout(text: str) -> None:
    """Write (and flush) data on standard output; a failure other than a closed pipe (a full disk) is one line."""
    try:
        if text:
            sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise LQAEError(f"cannot write standard output ({exc.strerror or exc.__class__.__name__})") from None


def read_capped(f, limit: int, what: str, name: str) -> bytes:
    """Read a binary file object to its end, refusing (LQAEError) more than `limit` bytes (the limit `name`)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise LQAEError(f"{what}: more than {mib(limit)}, the limit ({name}); split it")
    return data


def read_token_file(path: Path) -> str:
    """A token file as text, refused beyond MAX_TOKEN_BYTES before reading (TokenError) or when not UTF-8;
    special files (FIFOs, devices) are never opened."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise TokenError("not a regular file (a FIFO, device or socket is never opened)")
        if st.st_size > MAX_TOKEN_BYTES:
            raise TokenError(f"{st.st_size / (1 << 20):.0f} MiB, more than {mib(MAX_TOKEN_BYTES)} for a token file, "
                             "the limit (MAX_TOKEN_BYTES); split it")
        with open(path, "rb") as f:
            data = read_capped(f, MAX_TOKEN_BYTES, "the token file", "MAX_TOKEN_BYTES")
    except OSError as exc:
        raise TokenError(f"cannot read ({exc.strerror or exc.__class__.__name__})") from None
    except LQAEError as exc:
        raise TokenError(str(exc)) from None
    return data.decode("utf-8", errors="surrogateescape")  # bytes that are not UTF-8: see read_stdin


# --- encode --------------------------------------------------------------------
@dataclass
class Source:
    name: str                      # shown in messages and recorded in JSON
    path: Path | None = None       # a file ...
    data: bytes | None = None      # ... or bytes read from stdin
    root: Path | None = None       # the folder it was found in (mirrored under an output folder)
    out: Path | None = None        # where its tokens go (None = stdout / the JSONL file)


class SourceImages(torch.utils.data.Dataset):
    """Sources -> (index, image or None, error or None); runs in worker processes. The image is the
    pixels of one whole tile (tile x tile), or with `size` "auto" the RGB PIL image when it needs more
    than one tile (`lqae_cli.tiles.prepare_image`)."""

    def __init__(self, sources: list[Source], tile: int, size=None):
        self.sources, self.tile, self.size = sources, tile, size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        s = self.sources[i]
        try:
            return i, prepare_image(io.BytesIO(s.data) if s.data is not None else s.path, self.size, self.tile), None
        except ImageError as exc:
            return i, None, str(exc)
        except OSError as exc:
            return i, None, f"cannot read ({exc.strerror or exc.__class__.__name__})"


def _collate(items):
    return items


def image_batches(sources: list[Source], tile: int, batch_size: int, workers: int, size=None):
    """Yield lists of (index, image|None, error|None) (SourceImages), loaded in worker processes when it pays."""
    dataset = SourceImages(sources, tile, size)
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


SPECIAL = "not a regular file (a FIFO, device or socket is never opened)"


def is_regular(path: Path) -> bool:
    """A regular file (a symbolic link to one counts), never opened to find out: FIFOs would block."""
    import stat

    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def gather_sources(inputs: list[str], from_list: str | None = None) -> tuple[list[Source], list[tuple[str, str]], bool]:
    """Inputs (files, folders, '-') and a list of paths (a file or '-') -> (sources, (input, error) pairs,
    whether there are several inputs: a folder, a list or more than one item)."""
    sources, errors = [], []
    for item in inputs:
        if item == "-":
            sources.append(Source(name="-", data=read_stdin("an image", binary=True, limit=MAX_IMAGE_BYTES)))
            continue
        path = Path(item)
        if path.is_dir():
            for f in list_images(path):
                if is_regular(f):
                    sources.append(Source(str(f), f, root=path))
                else:
                    errors.append((str(f), SPECIAL))
        elif path.exists():
            if is_regular(path):
                sources.append(Source(str(path), path, root=path.parent))
            else:
                errors.append((item, SPECIAL))
        else:
            errors.append((item, "no such file or folder"))
    if from_list is not None:
        if from_list == "-":
            lines = read_stdin("paths", binary=False).splitlines()
        else:
            try:
                with open(from_list, "rb") as f:  # (a pipe such as <(find ...) is fine here: it is the list asked for)
                    lines = read_capped(f, MAX_TOKEN_BYTES, f"the list {from_list}", "MAX_TOKEN_BYTES").decode(
                        "utf-8", errors="surrogateescape").splitlines()
            except OSError as exc:
                raise LQAEError(f"cannot read the list {from_list}: {exc.strerror}") from None
        for line in (l.strip() for l in lines):
            if not line:
                continue
            if Path(line).is_file():
                sources.append(Source(line, Path(line)))
            else:
                errors.append((line, SPECIAL if Path(line).exists() else "no such file"))
    many = len(inputs) > 1 or from_list is not None or any(Path(i).is_dir() for i in inputs if i != "-")
    return sources, errors, many


def open_jsonl(path: Path):
    """The JSON Lines output, opened for appending and locked for this process alone (a second writer is
    refused with one line, never interleaved)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = open(path, "ab", buffering=0)
    except OSError as exc:
        raise LQAEError(f"cannot write {path} ({exc.strerror or exc.__class__.__name__})") from None
    try:
        import fcntl
    except ImportError:  # not on Windows: no lock there
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise LQAEError(f"another process is writing {path}: wait for it to finish, or write to another file") from None
    return f


def append_record(f, text: str) -> str | None:
    """Append one whole line to the JSON Lines output: None, or why not (then the file is cut back to its
    last whole line, so a full disk leaves no partial record)."""
    fd = f.fileno()
    end = os.fstat(fd).st_size  # written unbuffered, record by record: this is the last whole line's end
    data = memoryview(text.encode("utf-8"))
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)
        return f"cannot write {f.name} ({exc.strerror or exc.__class__.__name__})"
    return None


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
        except (ValueError, KeyError, TypeError, RecursionError):  # a line that is not one of our records
            continue
    return done


TOKEN_FILE_FORMATS = {".txt": ("text", "ids"), ".json": ("json", "jsonl"), "": ("text", "ids", "json", "jsonl")}


def token_format(dest: Destination, fmt: str | None) -> str:
    """The format written: jsonl into a .jsonl file; else as asked; else json for a single .json file, else text.
    A single output file's suffix must fit the format: .txt holds text or ids, .json a JSON record (a name
    without a suffix takes any); another suffix is refused."""
    if dest.kind == "jsonl":
        return "jsonl"
    if dest.kind == "file":
        suffix = dest.path.suffix.lower()
        fits = TOKEN_FILE_FORMATS.get(suffix)
        if fits is None:
            raise LQAEError(f"{dest.path}: a token file is .txt (text or ids), .json (a JSON record) or .jsonl (JSON Lines), "
                            f"not '{suffix}'")
        if fmt is not None and fmt not in fits:
            raise LQAEError(f"{dest.path}: --format {fmt} does not fit a '{suffix}' file (it holds {' or '.join(fits)})")
        return fmt or fits[0]
    return fmt or "text"


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}


def image_format(dest: Destination) -> str:
    """What decode writes: PNG, except into a single file whose suffix names another format Pillow writes
    (.jpg, .webp, .bmp, .tif); an unknown suffix is refused (a file named .jpg holds a JPEG)."""
    if dest.kind != "file" or not dest.path.suffix:
        return "PNG"
    suffix = dest.path.suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise LQAEError(f"{dest.path}: decode writes {', '.join(sorted(IMAGE_FORMATS))} images (or a folder), not '{suffix}'")
    return IMAGE_FORMATS[suffix]


def encode_all(tok, sources: list[Source], dest: Destination, fmt: str = "text", *, batch_size: int = 64,
               workers: int = 0, skip_existing: bool = True, precision: str = "fp32", size="auto", words=None,
               advance: Advance | None = None, tile_progress: Advance | None = None, tally: Tally | None = None) -> Tally:
    """Encode `sources` with tokenizer `tok` into `dest` in format `fmt`; returns the tally.
    A folder destination gets one token file per source (mirroring its path under its root).
    `size` and `words` as in `Tokenizer.encode` (size None: one tile per image); `tile_progress` is told of
    every batch of tiles done (an image of many tiles takes a while)."""
    tally = tally if tally is not None else Tally()
    inside = folder_check(dest.path) if dest.kind == "folder" else None
    todo = []
    refuse_input_folder(dest, list({s.root for s in sources if s.root is not None}))
    planned = []
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
        planned.append(s)
    outputs = [(s.name, s.out) for s in planned if s.out is not None]
    if dest.kind == "jsonl":
        outputs.append(("the records", dest.path))
    check_outputs(outputs, [s.path for s in planned if s.path is not None])
    remove_stale_temps([out for _, out in outputs if dest.kind != "jsonl"])
    jsonl_file = open_jsonl(dest.path) if dest.kind == "jsonl" else None
    done_jsonl = finished_jsonl_sources(dest.path) if dest.kind == "jsonl" and skip_existing else set()
    for s in planned:  # a single output file is always written (replaced); a batch skips what is finished
        if skip_existing and ((dest.kind == "folder" and s.out.exists() and is_finished(s.out)) or s.name in done_jsonl):
            tally.skipped += 1
        else:
            todo.append(s)

    if advance:
        advance(len(sources) - len(todo))  # skipped, or failed before reading
    stdout_first = True

    def encode_batch(batch) -> tuple[list[tuple[int, str | None, str | None]], int]:
        """A loaded batch -> ((index, text, error) per source: failures first, then the rest in order; a
        source with its own output file is written here (text None), the others' text is returned;
        the batch's size)."""
        good, failed = split_loaded(batch)
        out: list[tuple[int, str | None, str | None]] = [(i, None, err) for i, err in failed]
        if whole and good:
            try:
                grids = tok.encode_prepared([t for _, t in good], [todo[i].name for i, _ in good], size, precision, words,
                                            batch_size, tile_progress)
            except ImageError as exc:  # a picture too large to tile: one at a time, so the others still go
                grids = []
                for i, t in good:
                    try:
                        grids += tok.encode_prepared([t], [todo[i].name], size, precision, words, batch_size, tile_progress)
                    except ImageError as one:
                        grids.append(one)
            out += [(i, None, str(g)) for (i, _), g in zip(good, grids) if isinstance(g, Exception)]
            good = [(i, grid) for (i, _), grid in zip(good, grids) if not isinstance(grid, Exception)]
        for i, grid in good:
            text = format_grid(grid, fmt, tok.name, tok.lm_fingerprint, tok.image_size)
            out.append((i, text, None) if todo[i].out is None else (i, None, write_file(todo[i].out, text.encode("utf-8"))))
        return out, len(batch)

    whole = size in (None, "auto")  # images come in batches (auto: those of several tiles are tiled within them)
    lanes = batch_lanes(tok.device) if whole and workers <= 0 else 1
    if not whole:
        loads = ((lambda b=b: b) for b in tiled_batches(tok, todo, size, precision, batch_size, tile_progress, words))
    elif lanes > 1:  # each lane reads its own batches: the reading is what the lanes overlap
        dataset = SourceImages(todo, tok.image_size, size)
        loads = ((lambda r=r: [dataset[i] for i in r]) for r in batch_ranges(len(todo), batch_size))
    else:
        loads = ((lambda b=b: b) for b in image_batches(todo, tok.image_size, batch_size, workers, size))
    try:
        with contextlib.closing(in_lanes(lambda load: encode_batch(load()), loads, lanes)) as done:
            for results, n in done:
                for i, text, err in results:
                    if text is not None and jsonl_file is not None:
                        err = append_record(jsonl_file, text)
                    elif text is not None:
                        write_stdout(("\n" if not stdout_first and fmt in ("text", "ids") else "") + text)
                        stdout_first = False
                    if err is not None:
                        tally.fail(todo[i].name, err, repeated_cause(err))
                        continue
                    tally.converted += 1
                write_stdout("")
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
    gain is in benchmarks/README.md). Elsewhere one. The words are the same either way; a
    decoded pixel's last bits depend on the thread count, as they do between machines (about 1 in
    100,000 8-bit values differs by 1 between one thread and two, benchmarks/README.md)."""
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


def tiled_batches(tok, sources: list[Source], size, precision: str, batch_size: int, progress: Advance | None = None,
                  words=None):
    """Like image_batches, for images of any size: one source at a time, as (index, WordGrid|None, error|None)."""
    for i, s in enumerate(sources):
        try:
            image = s.data if s.data is not None else s.path
            yield [(i, tok.encode(image, size=size, words=words, precision=precision, batch_size=batch_size,
                                  progress=progress), None)]
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
    """'-' / a token file / a folder of token files -> jobs. Every image (a record, or a block of lines) is
    parsed on its own: a bad one is a counted failure naming its file and line, and the rest convert; a
    single input that holds one image and cannot be read raises TokenError naming it. Files larger than
    MAX_TOKEN_BYTES and special files are failures. `pick` chooses which of a folder's sorted token files
    to read (this rank's part, under torchrun)."""
    def parse(text: str, where: str) -> tuple[list[tuple[int, WordGrid]], int]:
        """((record index, grid) for every image that parses, how many images the text holds); failures are counted."""
        records = split_token_text(text)
        parsed = [(n, parse_record(tok, chunk, first, n + 1, len(records))) for n, (first, chunk) in enumerate(records)]
        if not records:
            raise TokenError(f"{where}: empty token input")
        if len(records) == 1 and isinstance(parsed[0][1], str):
            raise TokenError(f"{where}: {parsed[0][1]}")
        for _, result in parsed:
            if isinstance(result, str):
                tally.fail(where, result)
        return [(n, g) for n, g in parsed if not isinstance(g, str)], len(records)

    if source == "-":
        grids, count = parse(read_stdin("tokens", binary=False), "stdin")
        return [TokenJob("stdin", gr, _mirror(gr, n, "stdin")) for n, gr in grids]
    path = Path(source)
    if path.is_dir():
        jobs = []
        files, specials = token_files(path)
        for s in specials:
            tally.fail(str(s), "not a regular file (a FIFO, device or socket is never opened)")
        for f in (pick(files) if pick else files):
            try:
                grids, count = parse(read_token_file(f), str(f))
            except TokenError as exc:
                tally.fail(str(f), str(exc).removeprefix(f"{f}: "))
                continue
            rel = f.relative_to(path)
            for n, gr in grids:
                jobs.append(TokenJob(str(f), gr, rel if count == 1 else rel.with_name(f"{rel.stem}-{n:04d}{rel.suffix}")))
        return jobs
    if not path.exists():
        raise LQAEError(f"no such token file or folder: {source}")
    try:
        text = read_token_file(path)
    except TokenError as exc:
        raise TokenError(f"{source}: {exc}") from None
    grids, count = parse(text, source)
    return [TokenJob(source, gr, _mirror(gr, n, path.stem)) for n, gr in grids]


def token_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The token files under a folder (recursive, sorted; symbolic links to files followed) and the special
    files (FIFOs, devices, sockets) with a token suffix there, which are never opened."""
    import stat

    files, specials = [], []
    for p in sorted(folder.rglob("*")):
        if p.suffix not in TOKEN_FILE_SUFFIXES:
            continue
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            files.append(p)
        elif not stat.S_ISDIR(mode):
            specials.append(p)
    return files, specials


_LINES = re.compile(r"^(lines?) (\d+)(?:-(\d+))?")


def split_token_text(text: str) -> list[tuple[int, str]]:
    """Token text -> (first line number, text) of each image in it: JSON records (an object starts at the
    beginning of a line: JSON Lines and pretty records alike), else blocks of lines between blank lines."""
    lines = text.splitlines(keepends=True)
    out: list[tuple[int, list[str]]] = []
    if text.lstrip().startswith("{"):
        for n, line in enumerate(lines, 1):
            if line.startswith("{") or not out:
                if not line.strip() and not out:
                    continue
                out.append((n, []))
            out[-1][1].append(line)
    else:
        fresh = True
        for n, line in enumerate(lines, 1):
            if not line.strip():
                fresh = True
                continue
            if fresh:
                out.append((n, []))
                fresh = False
            out[-1][1].append(line)
    return [(n, "".join(chunk)) for n, chunk in out if "".join(chunk).strip()]


def parse_record(tok, chunk: str, first: int, index: int, count: int) -> WordGrid | str:
    """One image's token text -> its grid, or why not (one line: its line numbers those of the whole input,
    a JSON record also named by its number when the input holds several). Sizes are bounded first."""
    from .tiles import check_grid_size

    try:
        try:
            chunk.encode("utf-8")
        except UnicodeEncodeError as exc:  # bytes that were not UTF-8 (read_stdin)
            raise TokenError(f"not UTF-8 text (character {exc.start + 1} of this image's text)") from None
        if not chunk.lstrip().startswith("{"):  # a plain grid: its size from its shape, before any word is looked up
            rows = chunk.splitlines()
            check_grid_size(len(rows), max(len(r.split()) for r in rows), tok.grid_size)
        grids = tok.parse(chunk)
        if len(grids) != 1:
            raise TokenError("holds several images; separate them with a blank line")
        grid = grids[0]
        check_grid_size(*grid.shape, tok.grid_size, grid.pixel_size, tok.image_size)
        return grid
    except TokenError as exc:
        msg = str(exc)
    except RecursionError:
        msg = "not valid token input (JSON nested too deeply)"
    except (ValueError, OverflowError, MemoryError) as exc:  # a 100,000-digit number, an absurd value
        msg = f"not valid token input ({exc.__class__.__name__}: {str(exc)[:80]})"
    m = _LINES.match(msg)
    if m:
        shift = lambda v: str(int(v) + first - 1)  # noqa: E731
        msg = f"{m.group(1)} {shift(m.group(2))}" + (f"-{shift(m.group(3))}" if m.group(3) else "") + msg[m.end():]
    elif msg.startswith("record 1"):
        msg = f"line {first}" + (f" (record {index})" if count > 1 else "") + msg[len("record 1"):]
    elif not msg.startswith("line"):
        msg = f"line {first}: {msg}"
    return msg


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
    return image_bytes(img, "PNG")


def image_bytes(img, fmt: str = "PNG") -> bytes:
    """A PIL image -> the bytes of an image file in Pillow format `fmt` (JPEG at quality 95, WebP lossless)."""
    buf = io.BytesIO()
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def decode_all(tok, jobs: list[TokenJob], dest: Destination, *, batch_size: int = 64, skip_existing: bool = True,
               precision: str = "auto", advance: Advance | None = None, tally: Tally | None = None) -> Tally:
    """Decode token jobs with tokenizer `tok` into `dest` (stdout, one PNG file, or a folder of PNGs), in
    `batch_lanes` lanes; outputs and failures come in the jobs' order."""
    tally = tally if tally is not None else Tally()
    if dest.kind == "jsonl":
        raise LQAEError("decode writes images: give an image file (.png, .jpg, ...), a folder or '-'")
    if dest.kind == "stdout" and len(jobs) > 1:
        raise LQAEError(f"{len(jobs)} images cannot go to one standard output: give a folder (-o DIR)")
    fmt = image_format(dest)
    inside = folder_check(dest.path) if dest.kind == "folder" else None
    todo, planned = [], []
    for job in jobs:
        if dest.kind == "folder":
            try:
                job.out = dest.file_for(job.rel, ".png", inside)
            except LQAEError as exc:
                tally.fail(job.name, str(exc))
                continue
        elif dest.kind == "file":
            job.out = dest.path
        planned.append(job)
    outputs = [(job.name, job.out) for job in planned if job.out is not None]
    check_outputs(outputs, list({Path(job.name) for job in planned if job.name != "stdin"}))
    remove_stale_temps([out for _, out in outputs])
    for job in planned:  # a single output file is always written (replaced); a folder skips what is finished
        if skip_existing and dest.kind == "folder" and job.out.exists() and is_finished(job.out):
            tally.skipped += 1
        else:
            todo.append(job)
    if advance:
        advance(len(jobs) - len(todo))
    if dest.kind == "stdout" and todo and sys.stdout.isatty():
        raise LQAEError("refusing to write PNG bytes to a terminal (redirect stdout or use -o FILE)")

    def decode_batch(chunk: list[TokenJob]) -> list[tuple[TokenJob, bytes | None, str | None]]:
        """Decode a batch and write its files: (job, image bytes for stdout or None, why writing failed or None)."""
        out = []
        for job, img in zip(chunk, tok.decode([j.grid for j in chunk], precision=precision, batch_size=batch_size)):
            data = image_bytes(img, fmt)
            out.append((job, data, None) if job.out is None else (job, None, write_file(job.out, data)))
        return out

    chunks = [todo[r.start:r.stop] for r in batch_ranges(len(todo), batch_size)]
    for results in in_lanes(decode_batch, chunks, batch_lanes(tok.device)):
        for job, data, why in results:
            if data is not None:
                try:
                    sys.stdout.buffer.write(data)
                    sys.stdout.buffer.flush()
                except BrokenPipeError:
                    raise
                except OSError as exc:
                    raise LQAEError(f"cannot write standard output ({exc.strerror or exc.__class__.__name__})") from None
            if why is not None:
                tally.fail(job.name, why, repeated_cause(why))
            else:
                tally.converted += 1
        if advance:
            advance(len(results))
    return tally
