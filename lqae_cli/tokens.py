"""Token files: write the formats `encode` prints, and read any of them back (detected, not declared).

Formats: text (one line per token row, images separated by a blank line), json
(one object), jsonl (one object per line), ids (integers, one line per row).
Token strings map to ids through the vocabulary, never by re-tokenising text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

FORMATS = ("text", "json", "jsonl", "ids")


class TokenError(ValueError):
    """Token input that does not fit the checkpoint."""


@dataclass
class TokenGrid:
    ids: list[list[int]]      # (grid, grid)
    source: str | None = None


def record(grid: TokenGrid, vocab: list[str], checkpoint: str, fingerprint: str) -> dict:
    return {"source": grid.source, "checkpoint": checkpoint, "lm_fingerprint": fingerprint,
            "grid": [len(grid.ids), len(grid.ids[0])], "ids": grid.ids,
            "tokens": [[vocab[i] for i in row] for row in grid.ids]}


def pretty_json(rec: dict) -> str:
    """One key per line and one grid row per line: readable, and still plain JSON."""
    def value(v):
        if isinstance(v, list) and v and isinstance(v[0], list):
            rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in v)
            return f"[\n  {rows}\n ]"
        return json.dumps(v, ensure_ascii=False)

    return "{\n" + ",\n".join(f" {json.dumps(k)}: {value(v)}" for k, v in rec.items()) + "\n}\n"


def format_grid(grid: TokenGrid, fmt: str, vocab: list[str], checkpoint: str = "", fingerprint: str = "") -> str:
    """One image in one format, ending with a newline."""
    if fmt == "text":
        return "".join(" ".join(vocab[i] for i in row) + "\n" for row in grid.ids)
    if fmt == "ids":
        return "".join(" ".join(str(i) for i in row) + "\n" for row in grid.ids)
    if fmt == "json":
        return pretty_json(record(grid, vocab, checkpoint, fingerprint))
    if fmt == "jsonl":
        return json.dumps(record(grid, vocab, checkpoint, fingerprint), ensure_ascii=False) + "\n"
    raise TokenError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def parse_tokens(text: str, token_id, allowed: set[int], grid: int) -> list[TokenGrid]:
    """Any format `format_grid` writes -> token grids. `token_id(str) -> int | None` is the vocabulary."""
    if not text.strip():
        raise TokenError("empty token input")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return _parse_json(text, token_id, allowed, grid)
    return _parse_plain(text, token_id, allowed, grid)


def _check_id(i: int, allowed: set[int], where: str) -> int:
    if i not in allowed:
        raise TokenError(f"{where}: id {i} is not in the checkpoint's allowed vocabulary")
    return i


def _shape(flat: list[int], grid: int, where: str) -> list[list[int]]:
    if len(flat) != grid * grid:
        raise TokenError(f"{where}: expected {grid * grid} tokens ({grid}x{grid}), got {len(flat)}")
    return [flat[r * grid:(r + 1) * grid] for r in range(grid)]


def _parse_json(text: str, token_id, allowed, grid) -> list[TokenGrid]:
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
            for tok in _flatten(obj["tokens"]):
                i = token_id(str(tok))
                if i is None or i not in allowed:
                    raise TokenError(f"{where}: token '{tok}' is not in the checkpoint's allowed vocabulary")
                flat.append(i)
        else:
            flat = [_check_id(int(i), allowed, where) for i in _flatten(obj["ids"])]
        out.append(TokenGrid(_shape(flat, grid, where), obj.get("source")))
    return out


def _flatten(x) -> list:
    return [y for row in x for y in (row if isinstance(row, list) else [row])]


def _parse_plain(text: str, token_id, allowed, grid) -> list[TokenGrid]:
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
        out.append(TokenGrid(_shape(flat, grid, where)))
    return out
