"""WebDataset shards in and out: tar files of samples, as img2dataset writes them.

A shard is a tar whose members are grouped into samples by key: `000123.jpg`, `000123.json` and
`000123.txt` are the sample `000123` (the key is the member's path up to the first dot of its
file name). `encode` reads the image of each sample, in order, and writes one *token shard* per
input shard, `OUT/<shard name>.tar`: every member of the sample but its image, unchanged (a caption
`<key>.txt`, metadata `<key>.json`, anything else), then `<key>.lqae.txt` (the words, one line per
token row) and `<key>.lqae.json` (the record `--format json` prints, plus the key). `decode` reads
token shards and writes image shards, `OUT/<shard name>.tar`: every member but the words, unchanged,
then `<key>.png`. Tar in, tar out (PAX headers: names of any length), so both sides stay streamable
WebDataset shards.

Member names are untrusted: an absolute name or one that climbs out (`../x.png`, `a/../../x.png`),
a link, FIFO or device member, a member larger than MAX_IMAGE_BYTES, and a key that comes back after
other samples are counted failures, named, and not carried (never made safe). A sample whose image
cannot be read, or that has no image, is a counted failure whose members pass through.

Every output shard is written under a temporary name and renamed when whole: a finished shard (one
that reads whole) is skipped on a rerun and an interrupted one is redone whole. A shard that is not
a tar, or that breaks before its end (cut off), is one failure and gives no output shard.
"""
from __future__ import annotations

import glob
import io
import json
import contextlib
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from .convert import shorten
from .data import IMAGE_SUFFIXES
from .errors import ImageError, LQAEError
from .limits import MAX_IMAGE_BYTES, MAX_PATTERN_NAMES, mib
from .fileio import atomic_write
from .tiles import prepare_image
from .tokens import WordGrid, format_grid, record

SHARD_SUFFIX = ".tar"
WORDS = "lqae"  # a sample's words go in KEY.lqae.txt and KEY.lqae.json
_BRACE = re.compile(r"\{([^{}]*)\}")


def _options(body: str) -> tuple[int, object]:
    """A brace's body -> (how many names it gives, a function making them), counted before any is made."""
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") else 0
        if len(lo) > 18 or len(hi) > 18:  # no brace of ten billion billion names
            return MAX_PATTERN_NAMES + 1, None
        return max(0, int(hi) - int(lo) + 1), lambda: [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    return body.count(",") + 1, lambda: body.split(",")


def expand_braces(pattern: str) -> list[str]:
    """`a/{00000..00003}.tar` -> a/00000.tar ... a/00003.tar (zero padding kept); `{x,y}` -> both. A pattern
    that would expand to more than MAX_PATTERN_NAMES names is refused (LQAEError) before any is made."""
    total = 1
    for m in _BRACE.finditer(pattern):
        total *= _options(m.group(1))[0]
        if total > MAX_PATTERN_NAMES:
            raise LQAEError(f"the pattern {pattern[:80]} expands to more than {MAX_PATTERN_NAMES:,} names "
                            "(MAX_PATTERN_NAMES): split it")
    return _expand(pattern)


def _expand(pattern: str) -> list[str]:
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [out for o in _options(m.group(1))[1]() for out in _expand(head + o + tail)]


def shard_paths(inputs: list[str]) -> tuple[list[Path], list[str], list[tuple[str, str]]]:
    """Split inputs into tar shards (brace patterns and globs expanded, sorted) and everything else.
    Returns (shards, other inputs, (pattern, error) for patterns that match nothing)."""
    shards, others, errors = [], [], []
    for item in inputs:
        names = expand_braces(item)
        if not any(n.endswith(SHARD_SUFFIX) for n in names):
            others.append(item)
            continue
        found = []
        for n in names:
            found += sorted(glob.glob(n)) if glob.has_magic(n) else ([n] if Path(n).exists() else [])
        missing = [n for n in names if not glob.has_magic(n) and not Path(n).exists()]
        errors += [(n, "no such shard") for n in missing]
        if not found and not missing:
            errors.append((item, "no shard matches"))
        shards += [Path(f) for f in found]
    return sorted(set(shards)), others, errors


def sample_key(member_name: str) -> tuple[str, str]:
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'); 'a.seg.png' -> ('a', 'seg.png') (WebDataset's rule)."""
    path = Path(member_name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext.lower()


@dataclass
class Member:
    name: str
    data: bytes
    mtime: int = 0
    mode: int = 0o644


@dataclass
class Sample:
    key: str
    members: list[Member] = field(default_factory=list)   # its regular members, in order, image included
    image: Member | None = None                           # its first image member


class ShardDamaged(Exception):
    """The tar ends or breaks before its end: nothing converted from it may count as finished."""


def safe_member_name(name: str) -> bool:
    """A member name that stays inside the shard: relative, no '..' part (tarfile's `data` filter refuses
    the same), no empty name."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name and ":" not in path.parts[0]


def _kind(member: tarfile.TarInfo) -> str:
    return ("symbolic link" if member.issym() else "hard link" if member.islnk() else "FIFO" if member.isfifo()
            else "device" if member.ischr() or member.isblk() else f"type {member.type!r}")


def read_samples(shard: Path, tally) -> Iterator[Sample]:
    """The samples of a tar shard, in order, each with all its regular members (read whole) and its first
    image member. Members that cannot be carried are counted failures naming them: a name that is absolute
    or climbs out ('..'), a link, FIFO or device, a member larger than MAX_IMAGE_BYTES, a second member of
    one name, a key that comes back after other samples (a duplicate). A shard that is not a tar raises
    LQAEError; one that breaks or ends early raises ShardDamaged (after the whole samples before it)."""
    where = str(shard)
    try:
        tar = tarfile.open(shard, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise LQAEError(f"not a readable tar shard ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    current: Sample | None = None
    seen: set[str] = set()
    duplicate = None
    with tar:
        try:
            for member in tar:
                name = member.name
                what = f"{where}/{shorten(name, 80)}"
                if member.isdir():
                    continue
                if not safe_member_name(name):
                    tally.fail(what, "member name is absolute or climbs out of the shard ('..'): not carried")
                    continue
                if not member.isfile():
                    tally.fail(what, f"a {_kind(member)} member is not carried (only regular files are)")
                    continue
                key, ext = sample_key(name)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if key == duplicate:
                    continue
                if current is None:
                    if key in seen:
                        tally.fail(what, f"the key {shorten(key, 60)} comes back after other samples (a duplicate): not carried")
                        duplicate = key
                        continue
                    seen.add(key)
                    current, duplicate = Sample(key), None
                if member.size > MAX_IMAGE_BYTES:
                    tally.fail(what, f"{member.size:,} bytes, more than the limit of {mib(MAX_IMAGE_BYTES)} per member "
                                     "(MAX_IMAGE_BYTES): not carried")
                    continue
                if any(m.name == name for m in current.members):
                    tally.fail(what, "a second member of this name: not carried")
                    continue
                f = tar.extractfile(member)
                m = Member(name, f.read() if f is not None else b"", int(member.mtime), member.mode & 0o777)
                if len(m.data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                current.members.append(m)
                if current.image is None and f".{ext.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES:
                    current.image = m
        except (tarfile.TarError, OSError, EOFError) as exc:  # cut off or corrupt: the sample it was in is lost
            raise ShardDamaged(f"the tar breaks after {len(seen) - 1 if current else len(seen)} whole samples "
                               f"({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if current is not None:
        yield current


class _ShardWriter:
    """Members into an open tar stream, PAX format (names of any length); generated members have no timestamp,
    so the same inputs give the same bytes."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, m: Member) -> None:
        info = tarfile.TarInfo(m.name)
        info.size, info.mtime, info.mode = len(m.data), m.mtime, m.mode
        self.tar.addfile(info, io.BytesIO(m.data))

    def close(self) -> None:
        self.tar.close()


def _write_shard_stream(path: Path, fill, tally, where: str) -> bool:
    """fill(writer) writes the members; the shard appears at `path` only when fill returns (atomic rename).
    Returns whether it was written; a damaged input or a failed write is one counted failure of `where`."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            writer = _ShardWriter(f)
            fill(writer)
            writer.close()

    try:
        atomic_write(path, write)
    except ShardDamaged as exc:
        tally.fail(where, f"{exc}; no output shard written, run again once it is whole")
        return False
    except LQAEError as exc:
        tally.fail(where, str(exc))
        return False
    return True


def encode_shard(tok, shard: Path, out: Path, tally, *, batch_size: int = 64, precision: str = "fp32", advance=None,
                 size="auto", words=None) -> None:
    """One image shard -> one token shard at `out`: every member but the image, unchanged, then the sample's
    words as `KEY.lqae.txt` and its record as `KEY.lqae.json`. A sample whose image is missing or unreadable
    is a counted failure and all its members pass through. A shard that breaks before its end is one
    failure and gives no output (a rerun tries it again); its samples are not counted as converted."""
    where = str(shard)
    converted = [0]

    def fill(writer: _ShardWriter) -> None:
        pending: list[tuple[Sample, object]] = []  # (sample, its prepared image or None)

        def flush() -> None:
            ready = [(s, t) for s, t in pending if t is not None]
            grids = iter(tok.encode_prepared([t for _, t in ready], [f"{where}/{s.image.name}" for s, _ in ready], size,
                                             precision, words, batch_size) if ready else [])
            for s, t in pending:
                for m in s.members:
                    if t is None or m is not s.image:
                        writer.add(m)
                if t is not None:
                    grid = next(grids)
                    rec = {"key": s.key, **record(grid, tok.name, tok.lm_fingerprint, tok.image_size)}
                    writer.add(Member(f"{s.key}.{WORDS}.txt", format_grid(grid, "text").encode()))
                    writer.add(Member(f"{s.key}.{WORDS}.json", (json.dumps(rec, ensure_ascii=False) + "\n").encode()))
            converted[0] += len(ready)
            if advance:
                advance(len(ready))
            pending.clear()

        for s in read_samples(shard, tally):
            tensor = None
            if s.image is None:
                tally.fail(f"{where}/{shorten(s.key, 80)}", "sample has no image member")
            else:
                try:
                    tensor = prepare_image(io.BytesIO(s.image.data), size, tok.image_size)
                except ImageError as exc:
                    tally.fail(f"{where}/{shorten(s.image.name, 80)}", str(exc))
            pending.append((s, tensor))
            if sum(t is not None for _, t in pending) >= batch_size or len(pending) >= 4 * batch_size:
                flush()
        flush()

    if _write_shard_stream(out, fill, tally, where):
        tally.converted += converted[0]


def decode_shard(tok, shard: Path, out: Path, tally, *, batch_size: int = 64, precision: str = "auto", advance=None) -> None:
    """One token shard -> one image shard at `out`: every member but the words (`KEY.lqae.json`, else
    `KEY.lqae.txt`), unchanged, then the decoded image as `KEY.png`. A sample without words, with words
    that do not parse, or with a `KEY.png` already, is a counted failure and its members pass through."""
    from .convert import parse_record, png_bytes

    where = str(shard)
    converted = [0]

    def words_of(s: Sample) -> tuple[list[Member], WordGrid | None]:
        """(the members that pass through, the grid or None after counting why not)."""
        words = {m.name: m for m in s.members if m.name in (f"{s.key}.{WORDS}.json", f"{s.key}.{WORDS}.txt")}
        rest = [m for m in s.members if m.name not in words]
        source = words.get(f"{s.key}.{WORDS}.json") or words.get(f"{s.key}.{WORDS}.txt")
        if source is None:
            tally.fail(f"{where}/{shorten(s.key, 80)}", f"sample has no words member ({WORDS}.json or {WORDS}.txt)")
            return s.members, None
        if any(m.name == f"{s.key}.png" for m in rest):
            tally.fail(f"{where}/{shorten(s.key, 80)}", f"the sample has a {s.key}.png already; not replaced")
            return s.members, None
        try:
            grid = parse_record(tok, source.data.decode("utf-8"), 1, 1, 1)
        except UnicodeDecodeError as exc:
            grid = f"not UTF-8 text (byte {exc.start})"
        if isinstance(grid, str):
            tally.fail(f"{where}/{shorten(source.name, 80)}", grid)
            return s.members, None
        return rest, grid

    def fill(writer: _ShardWriter) -> None:
        pending: list[tuple[Sample, list[Member], WordGrid | None]] = []

        def flush() -> None:
            ready = [g for _, _, g in pending if g is not None]
            images = iter(tok.decode(ready, precision=precision, batch_size=batch_size) if ready else [])
            for s, rest, grid in pending:
                for m in rest:
                    writer.add(m)
                if grid is not None:
                    writer.add(Member(f"{s.key}.png", png_bytes(next(images))))
            converted[0] += len(ready)
            if advance:
                advance(len(ready))
            pending.clear()

        for s in read_samples(shard, tally):
            pending.append((s, *words_of(s)))
            if sum(g is not None for _, _, g in pending) >= batch_size or len(pending) >= 4 * batch_size:
                flush()
        flush()

    if _write_shard_stream(out, fill, tally, where):
        tally.converted += converted[0]


def _finished_samples(shard: Path) -> int | None:
    """How many samples (keys) a finished output shard holds; None when it does not read whole (then it is redone)."""
    try:
        keys = set()
        with tarfile.open(shard, mode="r|") as tar:
            for m in tar:
                keys.add(sample_key(m.name)[0])
        return len(keys)
    except (tarfile.TarError, OSError, EOFError):
        return None


def convert_shards(tok, shards: list[Path], outdir: Path, tally, *, decode: bool = False, skip_existing: bool = True,
                   advance=None, **kw) -> None:
    """Every shard into `outdir/<shard name>.tar`; a finished output shard (one that reads whole) is skipped,
    its samples counted as skipped. An output that would replace its own input is refused before any work."""
    from .convert import SPECIAL, is_regular, remove_stale_temps

    seen: dict[str, Path] = {}
    for shard in [s for s in shards if not is_regular(s)]:
        tally.fail(str(shard), SPECIAL)
    shards = [s for s in shards if is_regular(s)]
    for shard in shards:
        out = outdir / shard.name
        with contextlib.suppress(OSError):
            if out.exists() and os.path.samefile(out, shard):
                raise LQAEError(f"the output {out} is the input shard {shard}: give another output folder (-o DIR)")
    remove_stale_temps([outdir / s.name for s in shards])
    for shard in shards:
        if shard.name in seen:
            tally.fail(str(shard), f"has the same name as {seen[shard.name]}; their outputs would collide")
            continue
        seen[shard.name] = shard
        out = outdir / shard.name
        done = _finished_samples(out) if skip_existing and out.exists() else None
        if done is not None:
            tally.skipped += done
            continue
        try:
            (decode_shard if decode else encode_shard)(tok, shard, out, tally, advance=advance, **kw)
        except OSError as exc:
            tally.fail(str(shard), f"cannot write {out} ({exc.strerror or exc.__class__.__name__})", None)
