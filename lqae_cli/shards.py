"""WebDataset shards in and out: tar files of samples, as img2dataset writes them.

A shard is a tar whose members are grouped into samples by key: `000123.jpg`, `000123.json` and
`000123.txt` are the sample `000123` (the key is the member's path up to the first dot of its
file name). `encode` reads the image of each sample, in order, and writes one *token shard* per
input shard, `OUT/<shard name>.tar`, holding `<key>.txt` (the words, one line per token row) and
`<key>.json` (the record `--format json` prints, plus the key); `decode` reads token shards and
writes image shards, `OUT/<shard name>.tar` with `<key>.png`. Tar in, tar out, so both sides stay
streamable WebDataset shards.

Every output shard is written under a temporary name and renamed when whole: a finished shard is
skipped on a rerun and an interrupted one is redone whole. A sample whose image cannot be read, or
that has no image, is reported and counted; a shard that is not a readable tar is one failure.
"""
from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import IMAGE_SUFFIXES, load_image
from .errors import ImageError, LQAEError, TokenError
from .limits import MAX_PATTERN_NAMES
from .fileio import atomic_write
from .tokens import WordGrid, format_grid, record

SHARD_SUFFIX = ".tar"
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
class Sample:
    key: str
    name: str                   # the image member's name, or the key when there is none
    data: bytes | None          # the image member's bytes (None: no image member)
    error: str | None = None


def read_samples(shard: Path) -> Iterator[Sample]:
    """The samples of a tar shard, in order, with each sample's image member (the first one it has).
    A shard that is not a readable tar raises LQAEError; an unreadable member is that sample's error."""
    try:
        tar = tarfile.open(shard, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise LQAEError(f"not a readable tar shard ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    current: Sample | None = None
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = sample_key(member.name)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = Sample(key, key, None)
                if current.data is None and current.error is None and f".{ext.rsplit('.', 1)[-1]}" in IMAGE_SUFFIXES:
                    f = tar.extractfile(member)
                    current.name, current.data = member.name, f.read() if f is not None else b""
        except (tarfile.TarError, OSError) as exc:  # a truncated or corrupt shard: what came before stands
            if current is not None:
                yield current
            yield Sample("?", f"{shard.name} after the last good member", None,
                         f"corrupt tar ({exc.__class__.__name__}: {str(exc)[:80]})")
            return
    if current is not None:
        yield current


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # no timestamps: the same inputs give the same bytes
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    data = _tar_bytes(members)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def encode_shard(tok, shard: Path, out: Path, tally, *, batch_size: int = 64, precision: str = "fp32", advance=None) -> None:
    """One image shard -> one token shard at `out` (`key.txt` and `key.json` per sample)."""
    members: list[tuple[str, bytes]] = []
    batch: list[tuple[Sample, torch.Tensor]] = []
    where = str(shard)

    def flush() -> None:
        if not batch:
            return
        grids = tok.encode_grids(torch.stack([t for _, t in batch]), [f"{where}/{s.name}" for s, _ in batch], precision)
        for (s, _), grid in zip(batch, grids):
            rec = {"key": s.key, **record(grid, tok.name, tok.lm_fingerprint)}
            members.extend([(f"{s.key}.txt", format_grid(grid, "text").encode()),
                            (f"{s.key}.json", (json.dumps(rec, ensure_ascii=False) + "\n").encode())])
        tally.converted += len(batch)
        if advance:
            advance(len(batch))
        batch.clear()

    try:
        for s in read_samples(shard):
            if s.error is not None or s.data is None:
                tally.fail(f"{where}/{s.name}", s.error or "sample has no image member")
                continue
            try:
                batch.append((s, load_image(io.BytesIO(s.data), tok.image_size)))
            except ImageError as exc:
                tally.fail(f"{where}/{s.name}", str(exc))
            if len(batch) >= batch_size:
                flush()
    except LQAEError as exc:
        tally.fail(where, str(exc))
        return
    flush()
    _write_shard(out, members)


def decode_shard(tok, shard: Path, out: Path, tally, *, batch_size: int = 64, precision: str = "auto", advance=None) -> None:
    """One token shard (`key.json` or `key.txt` members) -> one image shard at `out` (`key.png`)."""
    from .convert import png_bytes

    grids: list[tuple[str, WordGrid]] = []
    where = str(shard)
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            seen: set[str] = set()
            for member in tar:
                key, ext = sample_key(member.name)
                if not member.isfile() or ext not in ("json", "txt") or key in seen:
                    continue
                f = tar.extractfile(member)
                try:
                    parsed = tok.parse((f.read() if f else b"").decode("utf-8"))
                except (TokenError, UnicodeDecodeError) as exc:
                    tally.fail(f"{where}/{member.name}", str(exc))
                    continue
                seen.add(key)
                grids.append((key, parsed[0]))
    except (tarfile.TarError, OSError) as exc:
        tally.fail(where, f"not a readable tar shard ({exc.__class__.__name__}: {str(exc)[:80]})")
        return
    members = []
    for start in range(0, len(grids), batch_size):
        chunk = grids[start:start + batch_size]
        images = tok.decode([g for _, g in chunk], precision=precision, batch_size=batch_size)
        members += [(f"{key}.png", png_bytes(img)) for (key, _), img in zip(chunk, images)]
        tally.converted += len(chunk)
        if advance:
            advance(len(chunk))
    _write_shard(out, members)


def _samples_in(shard: Path) -> int:
    """How many samples a finished output shard holds (its .json or .png members)."""
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            return sum(1 for m in tar if m.isfile() and m.name.endswith((".json", ".png")))
    except (tarfile.TarError, OSError):
        return 1


def convert_shards(tok, shards: list[Path], outdir: Path, tally, *, decode: bool = False, skip_existing: bool = True,
                   advance=None, **kw) -> None:
    """Every shard into `outdir/<shard name>.tar`; a finished output shard is skipped (counted as one)."""
    seen: dict[str, Path] = {}
    for shard in shards:
        if shard.name in seen:
            tally.fail(str(shard), f"has the same name as {seen[shard.name]}; their outputs would collide")
            continue
        seen[shard.name] = shard
        out = outdir / shard.name
        if skip_existing and out.exists():
            tally.skipped += _samples_in(out)
            continue
        try:
            (decode_shard if decode else encode_shard)(tok, shard, out, tally, advance=advance, **kw)
        except OSError as exc:
            tally.fail(str(shard), f"cannot write {out} ({exc.strerror or exc.__class__.__name__})")
