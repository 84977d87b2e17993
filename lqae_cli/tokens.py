"""Token files: write the formats `encode` prints, and read any of them back (detected, not declared).

Formats: text (one line per token row, images separated by a blank line), json
(one object), jsonl (one object per line), ids (integers, one line per row).
Token strings map to ids through the vocabulary, never by re-tokenising text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import TokenError

FORMATS = ("text", "json", "jsonl", "ids")


@dataclass(frozen=True)
class WordGrid:
    """One image as words: `ids[r][c]` is the vocabulary id of the word at token row r, column c,
    `words[r][c]` the same word as the vocabulary spells it; `source` names the image, if known."""

    ids: list[list[int]]      # (rows, cols)
    words: list[list[str]]    # (rows, cols)
    source: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the token grid."""
        return len(self.ids), len(self.ids[0]) if self.ids else 0

    @property
    def text(self) -> str:
        """The words, one line per token row (what `lqae encode` prints)."""
        return "".join(" ".join(row) + "\n" for row in self.words)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def from_ids(cls, ids: list[list[int]], vocab: list[str], source: str | None = None) -> "WordGrid":
        return cls([list(map(int, row)) for row in ids], [[vocab[i] for i in row] for row in ids], source)


def record(grid: WordGrid, checkpoint: str, fingerprint: str) -> dict:
    return {"source": grid.source, "checkpoint": checkpoint, "lm_fingerprint": fingerprint,
            "grid": list(grid.shape), "ids": grid.ids, "tokens": grid.words}


def pretty_json(rec: dict) -> str:
    """One key per line and one grid row per line: readable, and still plain JSON."""
    def value(v):
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            return f"[\n  {rows}\n ]"
        return json.dumps(v, ensure_ascii=False)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in rec.items()) + "\n}\n"


def format_grid(grid: WordGrid, fmt: str, checkpoint: str = "", fingerprint: str = "") -> str:
    """One image in one format, ending with a newline."""
    if fmt == "text":
        return grid.text
    if fmt == "ids":
        return "".join(" ".join(str(i) for i in row) + "\n" for row in grid.ids)
    if fmt == "json":
        return pretty_json(record(grid, checkpoint, fingerprint))
    if fmt == "jsonl":
        return json.dumps(record(grid, checkpoint, fingerprint), ensure_ascii=False) + "\n"
    raise TokenError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def parse_tokens(text: str, vocab: list[str], token_id, allowed: set[int], grid: int) -> list[WordGrid]:
    """Any format `format_grid` writes -> word grids. `token_id(str) -> int | None` is the vocabulary;
    a word or id outside `allowed`, or a grid that is not grid x grid, raises TokenError naming the line."""
    if not text.strip():
        raise TokenError("empty token input")
    stripped = text.lstrip()
    parse = _parse_json if stripped.startswith("{") else _parse_plain
    return [WordGrid.from_ids(ids, vocab, source) for ids, source in parse(text, token_id, allowed, grid)]


def _check_id(i: int, allowed: set[int], where: str) -> int:
    if i not in allowed:
        raise TokenError(f"{where}: id {i} is not in the checkpoint's allowed vocabulary")
    return i


def _shape(flat: list[int], grid: int, where: str) -> list[list[int]]:
    if len(flat) != grid * grid:
        raise TokenError(f"{where}: expected {grid * grid} tokens ({grid}x{grid}), got {len(flat)}")
    return [flat[r * grid:(r + 1) * grid] for r in range(grid)]


def _parse_json(text: str, token_id, allowed, grid) -> list[tuple[list[list[int]], str | None]]:
    objs, pos, decoder = [], 0, json.JSONDecoder()
    while True:  # one object, JSON Lines, or pretty objects one after another
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TokenError(f"line {exc.lineno}: not valid JSON ({exc.msg})") from None
        objs.append(obj)
    out = []
    for n, obj in enumerate(objs, 1):
        where = f"record {n}"
        if not isinstance(obj, dict) or ("tokens" not in obj and "ids" not in obj):
            raise TokenError(f"{where}: a JSON token record needs 'tokens' or 'ids'")
        if "tokens" in obj:  # tokens win: they are what a person edits
            flat = []
            for tok in _flatten(obj["tokens"], where):
                i = token_id(str(tok))
                if i is None or i not in allowed:
                    raise TokenError(f"{where}: token '{tok}' is not in the checkpoint's allowed vocabulary")
                flat.append(i)
        else:
            flat = []
            for i in _flatten(obj["ids"], where):
                if not isinstance(i, int) or isinstance(i, bool):
                    raise TokenError(f"{where}: ids must be integers, got {json.dumps(i)[:40]}")
                flat.append(_check_id(i, allowed, where))
        source = obj.get("source")
        out.append((_shape(flat, grid, where), source if isinstance(source, str) else None))
    return out


def _flatten(x, where: str) -> list:
    """A grid (list of rows) or a flat list -> a flat list of its cells."""
    if not isinstance(x, list) or any(isinstance(y, (list, dict)) for row in x if isinstance(row, list) for y in row):
        raise TokenError(f"{where}: 'tokens' and 'ids' must be a list of rows (or one flat list)")
    return [y for row in x for y in (row if isinstance(row, list) else [row])]


def _parse_plain(text: str, token_id, allowed, grid) -> list[tuple[list[list[int]], None]]:
    """Text or ids; blank lines separate images."""
    blocks: list[list[tuple[int, str]]] = [[]]
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            blocks[-1].append((n, line))
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    words = [w for b in blocks for _, line in b for w in line.split()]
    as_ids = all(w.isdigit() for w in words) and not all(token_id(w) in allowed for w in words)
    out = []
    for block in blocks:
        flat = []
        for n, line in block:
            for w in line.split():
                if as_ids:
                    flat.append(_check_id(int(w), allowed, f"line {n}"))
                    continue
                i = token_id(w)
                if i is None or i not in allowed:
                    raise TokenError(f"line {n}: '{w}' is not in the checkpoint's allowed vocabulary")
                flat.append(i)
        first, last = block[0][0], block[-1][0]
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        out.append((_shape(flat, grid, where), None))
    return out
