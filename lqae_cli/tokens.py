"""Token files: write the formats `encode` prints, and read any of them back (detected, not declared).

Formats: text (one line per token row, images separated by a blank line), json
(one object), jsonl (one object per line), ids (integers, one line per row).
Token strings map to ids through the vocabulary, never by re-tokenising text.

Semantic words (image-level words, best first) come before the grid: in text and ids as a first line
in square brackets, `[cat kitten pet animal tabby]`; in JSON records as "semantic" (words) and
"semantic_ids". They are optional everywhere: a grid without them reads as before.

The size of the image a grid was made from (when it is not one whole tile at the checkpoint's size)
comes first of all: in text and ids as a comment line `# size 333x517` (width x height in pixels), in
JSON as "size": [333, 517]. Decoding crops to it; a grid without it decodes to the grid's own size.

A position whose word was dropped (`encode --words K`) holds the mask mark `_` in text and ids, "_" in
JSON "tokens" and the language model's mask id (MASK_ID_NAME's id, 103 in BERT vocabularies) in JSON
"ids"; replacing a word by `_` by hand drops it. Decoding fills masked positions in. The semantic line
cannot hold a mark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import TokenError

FORMATS = ("text", "json", "jsonl", "ids")
MASK_MARK = "_"            # a dropped word, in text and ids
MASK_ID_NAME = "[MASK]"    # the language model's token that a dropped word becomes
SIZE_PREFIX = "# size "    # the first line of a text or ids grid that carries its image's size


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
    semantic_ids: list[int] | None = None   # image-level word ids, best first (None: none given)
    semantic: list[str] | None = None       # the same words as the vocabulary spells them

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the token grid."""
        return len(self.ids), len(self.ids[0]) if self.ids else 0

    @property
    def kept(self) -> int:
        """How many positions hold a word (not the mask mark)."""
        return sum(w != MASK_MARK for row in self.words for w in row)

    @property
    def head(self) -> str:
        """The lines before the grid in text and ids: the size line (when the grid has a pixel size)."""
        return f"{SIZE_PREFIX}{self.pixel_size[0]}x{self.pixel_size[1]}\n" if self.pixel_size is not None else ""

    @property
    def text(self) -> str:
        """What `lqae encode` prints: the size line (when the grid has a pixel size), the semantic words in
        square brackets (when it has them), then the grid's words, one line per token row."""
        head = self.head + (f"[{' '.join(self.semantic)}]\n" if self.semantic is not None else "")
        return head + "".join(" ".join(row) + "\n" for row in self.words)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def from_ids(cls, ids: list[list[int]], vocab: list[str], source: str | None = None,
                 pixel_size: tuple[int, int] | None = None, semantic_ids: list[int] | None = None) -> "WordGrid":
        sem = None if semantic_ids is None else [int(i) for i in semantic_ids]
        word = lambda i: MASK_MARK if vocab[i] == MASK_ID_NAME else vocab[i]
        return cls([list(map(int, row)) for row in ids], [[word(i) for i in row] for row in ids], source,
                   None if pixel_size is None else (int(pixel_size[0]), int(pixel_size[1])),
                   sem, None if sem is None else [vocab[i] for i in sem])


def record(grid: WordGrid, checkpoint: str, fingerprint: str, tile: int | None = None) -> dict:
    """The JSON record of a grid; a tiled grid also carries the tile size in pixels and the image size."""
    rec = {"source": grid.source, "checkpoint": checkpoint, "lm_fingerprint": fingerprint, "grid": list(grid.shape)}
    if grid.pixel_size is not None:
        rec.update(tile=tile, size=list(grid.pixel_size))
    if grid.semantic is not None:
        rec.update(semantic=grid.semantic, semantic_ids=grid.semantic_ids)
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
        head = grid.head + (f"[{' '.join(map(str, grid.semantic_ids))}]\n" if grid.semantic_ids is not None else "")
        return head + "".join(" ".join(MASK_MARK if w == MASK_MARK else str(i) for i, w in zip(ids, words)) + "\n"
                              for ids, words in zip(grid.ids, grid.words))
    if fmt == "json":
        return pretty_json(record(grid, checkpoint, fingerprint, tile))
    if fmt == "jsonl":
        return json.dumps(record(grid, checkpoint, fingerprint, tile), ensure_ascii=False) + "\n"
    raise TokenError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


def parse_tokens(text: str, vocab: list[str], token_id, allowed: set[int], grid: int,
                 excluded: frozenset[int] = frozenset()) -> list[WordGrid]:
    """Any format `format_grid` writes -> word grids. `token_id(str) -> int | None` is the vocabulary;
    a word or id outside `allowed`, or a grid that is not grid x grid, raises TokenError naming the line
    (a word of the checkpoint's `excluded` list says so)."""
    if not text.strip():
        raise TokenError("empty token input")
    stripped = text.lstrip()
    parse = _parse_json if stripped.startswith("{") else _parse_plain
    vocabulary = Vocabulary(vocab, token_id, allowed, excluded)
    return [WordGrid.from_ids(ids, vocab, source, size, semantic) for ids, source, size, semantic in parse(text, vocabulary, grid)]


class Vocabulary:
    """A checkpoint's words as token input may use them: word and id checks with the messages a person
    editing a token file needs (`where`, when given, leads the message: "line 4")."""

    def __init__(self, vocab: list[str], token_id, allowed: set[int], excluded: frozenset[int]):
        self.vocab, self.token_id, self.allowed, self.excluded = vocab, token_id, allowed, excluded
        self.mask_id = token_id(MASK_ID_NAME)

    def position(self, v, where: str | None = None, words: bool = True) -> int:
        """A grid position's word (or, words=False, id): the mask mark (or the mask id) stands for a
        dropped word and gives the mask id; anything else is checked as `word` (or `id`) checks it."""
        if words:
            return self.mask_id if v == MASK_MARK and self.mask_id is not None else self.word(v, where)
        return v if v == self.mask_id and v is not None else self.id(v, where)

    def semantic(self, v, where: str | None = None, words: bool = True) -> int:
        """A semantic word (or id): as `word` / `id` check it, and never the mask mark."""
        if v == MASK_MARK or (not words and v == self.mask_id):
            raise TokenError(f"{where + ': ' if where else ''}the mask mark cannot stand among the semantic words (drop the word instead)")
        return self.word(v, where) if words else self.id(v, where)

    def word(self, w: str, where: str | None = None) -> int:
        i = self.token_id(w)
        at = f"{where}: " if where else ""
        if i is not None and i in self.excluded:
            raise TokenError(f"{at}'{w[:40]}' is excluded from the checkpoint's vocabulary (its list of words not to print)")
        if i is None or i not in self.allowed:
            raise TokenError(f"{at}'{w[:40]}' is not in the checkpoint's allowed vocabulary")
        return i

    def id(self, i: int, where: str | None = None) -> int:
        at = f"{where}: " if where else ""
        if i in self.excluded:
            raise TokenError(f"{at}id {i} ('{self.vocab[i]}') is excluded from the checkpoint's vocabulary")
        if i not in self.allowed:
            raise TokenError(f"{at}id {i} is not in the checkpoint's allowed vocabulary")
        return i


MAX_SEMANTIC = 64  # words on a semantic line


def _semantic_line(line: str) -> list[str] | None:
    """The words of a `[w1 w2 ...]` line, or None for any other line."""
    t = line.strip()
    if not (t.startswith("[") and t.endswith("]")):
        return None
    return t[1:-1].split()


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


def _parse_json(text: str, vocabulary: "Vocabulary", grid) -> list[tuple]:
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
        def one_id(value, words: bool, semantic: bool = False) -> int:
            check = vocabulary.semantic if semantic else vocabulary.position
            if words:  # words win over ids: they are what a person edits
                return check(str(value), where)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TokenError(f"{where}: ids must be integers, got {json.dumps(value)[:40]}")
            return check(value, where, words=False)

        words = "tokens" in obj
        rows = [(f"{where} row {r + 1}", [one_id(v, words) for v in row]) for r, row in enumerate(_rows(obj["tokens" if words else "ids"], obj.get("grid"), where))]
        semantic = None
        if "semantic" in obj or "semantic_ids" in obj:
            values = obj["semantic" if "semantic" in obj else "semantic_ids"]
            if not isinstance(values, list) or len(values) > MAX_SEMANTIC:
                raise TokenError(f"{where}: 'semantic' and 'semantic_ids' must be lists of at most {MAX_SEMANTIC} words or ids")
            semantic = [one_id(v, "semantic" in obj, semantic=True) for v in values]
        source = obj.get("source")
        out.append((_shape(rows, grid, where), source if isinstance(source, str) else None, _pixel_size(obj.get("size"), where), semantic))
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


def _size_line(line: str, n: int) -> tuple[int, int] | None:
    """The (width, height) of a `# size WxH` line, or None for any other line."""
    t = line.strip()
    if not t.startswith(SIZE_PREFIX.strip()):
        return None
    w, _, h = t[len(SIZE_PREFIX):].strip().partition("x")
    if not (w.isdigit() and h.isdigit() and 0 < int(w) <= 1 << 20 and 0 < int(h) <= 1 << 20):
        raise TokenError(f"line {n}: a size line reads '{SIZE_PREFIX}WIDTHxHEIGHT' in pixels, e.g. '{SIZE_PREFIX}333x517'")
    return int(w), int(h)


def _parse_plain(text: str, vocabulary: "Vocabulary", grid) -> list[tuple]:
    """Text or ids; blank lines separate images; a block may start with its size line, then its semantic line."""
    blocks: list[list[tuple[int, str]]] = [[]]
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            blocks[-1].append((n, line))
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    sizes = []
    for i, block in enumerate(blocks):
        size = _size_line(block[0][1], block[0][0])
        sizes.append(size)
        if size is not None:
            if len(block) == 1:
                raise TokenError(f"line {block[0][0]}: a size line needs a grid of words after it")
            blocks[i] = block[1:]
    semantic_lines = {n: _semantic_line(b[0][1]) for b in blocks for n in [b[0][0]]}
    words = [w for b in blocks for n, line in b
             for w in (line.split() if semantic_lines.get(n) is None else semantic_lines[n]) if w != MASK_MARK]
    as_ids = all(w.isdigit() for w in words) and not all(vocabulary.token_id(w) in vocabulary.allowed for w in words)

    def one_id(w: str, where: str, semantic: bool = False) -> int:
        check = vocabulary.semantic if semantic else vocabulary.position
        return check(int(w) if as_ids and w != MASK_MARK else w, where, words=not as_ids or w == MASK_MARK)

    out = []
    for block, size in zip(blocks, sizes):
        semantic = semantic_lines[block[0][0]]
        if semantic is not None:
            n = block[0][0]
            if len(semantic) > MAX_SEMANTIC:
                raise TokenError(f"line {n}: {len(semantic)} semantic words (at most {MAX_SEMANTIC})")
            semantic = [one_id(w, f"line {n}", semantic=True) for w in semantic]
            block = block[1:]
            if not block:
                raise TokenError(f"line {n}: a semantic line needs a grid of words after it")
        rows = [(f"line {n}", [one_id(w, f"line {n}") for w in line.split()]) for n, line in block]
        first, last = block[0][0], block[-1][0]
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        out.append((_shape(rows, grid, where), None, size, semantic))
    return out
