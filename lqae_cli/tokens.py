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
    `words[r][c]` the same word as the vocabulary spells it; `source` names the image, if known.
    An image larger than the checkpoint's size is covered by tiles, each a grid x grid block of words
    (rows and columns are whole numbers of tiles); `pixel_size` is then the (width, height) the
    decoded image is cropped to (None: the grid's own size)."""

    ids: list[list[int]]      # (rows, cols)
    words: list[list[str]]    # (rows, cols)
    source: str | None = None
    pixel_size: tuple[int, int] | None = None

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
    def from_ids(cls, ids: list[list[int]], vocab: list[str], source: str | None = None,
                 pixel_size: tuple[int, int] | None = None) -> "WordGrid":
        return cls([list(map(int, row)) for row in ids], [[vocab[i] for i in row] for row in ids], source,
                   None if pixel_size is None else (int(pixel_size[0]), int(pixel_size[1])))


def record(grid: WordGrid, checkpoint: str, fingerprint: str, tile: int | None = None) -> dict:
    """The JSON record of a grid; a tiled grid also carries the tile size in pixels and the image size."""
    rec = {"source": grid.source, "checkpoint": checkpoint, "lm_fingerprint": fingerprint, "grid": list(grid.shape)}
    if grid.pixel_size is not None:
        rec.update(tile=tile, size=list(grid.pixel_size))
    return {**rec, "ids": grid.ids, "tokens": grid.words}


def pretty_json(rec: dict) -> str:
    """One key per line and one grid row per line: readable, and still plain JSON."""
    def value(v):
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            return f"[\n  {rows}\n ]"
        return json.dumps(v, ensure_ascii=False)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in rec.items()) + "\n}\n"


def format_grid(grid: WordGrid, fmt: str, checkpoint: str = "", fingerprint: str = "", tile: int | None = None) -> str:
    """One image in one format, ending with a newline."""
    if fmt == "text":
        return grid.text
    if fmt == "ids":
        return "".join(" ".join(str(i) for i in row) + "\n" for row in grid.ids)
    if fmt == "json":
        return pretty_json(record(grid, checkpoint, fingerprint, tile))
    if fmt == "jsonl":
        return json.dumps(record(grid, checkpoint, fingerprint, tile), ensure_ascii=False) + "\n"
    raise TokenError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def parse_tokens(text: str, vocab: list[str], token_id, allowed: set[int], grid: int) -> list[WordGrid]:
    """Any format `format_grid` writes -> word grids. `token_id(str) -> int | None` is the vocabulary;
    a word or id outside `allowed`, or a grid that is not grid x grid, raises TokenError naming the line."""
    if not text.strip():
        raise TokenError("empty token input")
    stripped = text.lstrip()
    parse = _parse_json if stripped.startswith("{") else _parse_plain
    return [WordGrid.from_ids(ids, vocab, source, size) for ids, source, size in parse(text, token_id, allowed, grid)]


def _check_id(i: int, allowed: set[int], where: str) -> int:
    if i not in allowed:
        raise TokenError(f"{where}: id {i} is not in the checkpoint's allowed vocabulary")
    return i


def _shape(rows: list[tuple[str, list[int]]], grid: int, where: str) -> list[list[int]]:
    """Rows of ids (each with where it came from) -> a grid: grid x grid words in any layout (one tile, as
    ever), else equally long rows making whole grid x grid tiles."""
    flat = [i for _, row in rows for i in row]
    if len(flat) == grid * grid:
        return [flat[r * grid:(r + 1) * grid] for r in range(grid)]
    width = len(rows[0][1])
    for row_where, row in rows:
        if len(row) != width:
            raise TokenError(f"{row_where}: {len(row)} tokens, but the first row has {width}: a grid's rows must be equally long")
    if len(rows) % grid or width % grid or not flat:
        raise TokenError(f"{where}: expected {grid * grid} tokens ({grid}x{grid}) or whole {grid}x{grid} tiles, got {len(flat)}"
                         + (f" ({len(rows)} rows of {width})" if len(rows) > 1 else ""))
    return [row for _, row in rows]


def _parse_json(text: str, token_id, allowed, grid) -> list[tuple[list[list[int]], str | None, tuple | None]]:
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
        def one_id(value) -> int:
            if "tokens" in obj:  # tokens win: they are what a person edits
                i = token_id(str(value))
                if i is None or i not in allowed:
                    raise TokenError(f"{where}: token '{value}' is not in the checkpoint's allowed vocabulary")
                return i
            if not isinstance(value, int) or isinstance(value, bool):
                raise TokenError(f"{where}: ids must be integers, got {json.dumps(value)[:40]}")
            return _check_id(value, allowed, where)

        rows = [(f"{where} row {r + 1}", [one_id(v) for v in row]) for r, row in enumerate(_rows(obj["tokens" if "tokens" in obj else "ids"], obj.get("grid"), where))]
        source = obj.get("source")
        out.append((_shape(rows, grid, where), source if isinstance(source, str) else None, _pixel_size(obj.get("size"), where)))
    return out


def _rows(x, shape, where: str) -> list[list]:
    """A grid (list of rows), or a flat list cut into rows by its record's "grid": [rows, cols]."""
    if not isinstance(x, list) or any(isinstance(y, (list, dict)) for row in x if isinstance(row, list) for y in row):
        raise TokenError(f"{where}: 'tokens' and 'ids' must be a list of rows (or one flat list)")
    if x and all(isinstance(row, list) for row in x):
        return x
    if any(isinstance(row, list) for row in x):
        raise TokenError(f"{where}: 'tokens' and 'ids' must be a list of rows (or one flat list)")
    if (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)
            and shape[0] * shape[1] == len(x)):
        return [x[r * shape[1]:(r + 1) * shape[1]] for r in range(shape[0])]
    return [x]


def _pixel_size(size, where: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise TokenError(f"{where}: 'size' must be [width, height] in pixels")
    return size[0], size[1]


def _parse_plain(text: str, token_id, allowed, grid) -> list[tuple[list[list[int]], None, None]]:
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
        rows = []
        for n, line in block:
            row = []
            for w in line.split():
                if as_ids:
                    row.append(_check_id(int(w), allowed, f"line {n}"))
                    continue
                i = token_id(w)
                if i is None or i not in allowed:
                    raise TokenError(f"line {n}: '{w}' is not in the checkpoint's allowed vocabulary")
                row.append(i)
            rows.append((f"line {n}", row))
        first, last = block[0][0], block[-1][0]
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        out.append((_shape(rows, grid, where), None, None))
    return out
