"""`lqae show`: a contact sheet of input | reconstruction | the words on the patch grid.

Fonts come from Pillow itself (its built-in scalable default font), so nothing depends on system fonts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .data import to_pil
from .errors import LQAEError

PANEL = 512          # pixels per panel side
PAD = 16
TITLE = 28
# light tints for words that repeat in one image: 1x (none), 2x, 3x, 4+x
REPEAT_TINTS = [None, (255, 236, 179), (255, 204, 153), (255, 171, 145)]


@dataclass
class WordCell:
    row: int
    col: int
    word: str        # the token as the vocabulary spells it
    shown: str       # what fits in the cell (ellipsis when shortened)
    count: int       # how often the word occurs in this image


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_text(word: str, width: int, fnt) -> str:
    if fnt.getlength(word) <= width:
        return word
    for n in range(len(word) - 1, 0, -1):
        s = word[:n] + "…"
        if fnt.getlength(s) <= width:
            return s
    return "…"


def layout_words(tokens: list[list[str]], cell: int, fnt) -> list[WordCell]:
    """Where each word goes on the grid, as drawn."""
    counts = Counter(w for row in tokens for w in row)
    return [WordCell(r, c, w, fit_text(w, cell - 4, fnt), counts[w]) for r, row in enumerate(tokens) for c, w in enumerate(row)]


def word_panel(background: Image.Image, tokens: list[list[str]]) -> tuple[Image.Image, list[WordCell]]:
    cell = PANEL // max(len(tokens), len(tokens[0]))
    faded = Image.blend(background.convert("RGB").resize((PANEL, PANEL), Image.BICUBIC), Image.new("RGB", (PANEL, PANEL), "white"), 0.72)
    draw = ImageDraw.Draw(faded, "RGBA")
    fnt = font(max(8, min(18, cell // 4)))
    cells = layout_words(tokens, cell, fnt)
    for wc in cells:
        x, y = wc.col * cell, wc.row * cell
        tint = REPEAT_TINTS[min(wc.count, len(REPEAT_TINTS)) - 1]
        if tint:
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], fill=tint + (120,))
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], outline=(0, 0, 0, 60))
        draw.text((x + cell / 2, y + cell / 2), wc.shown, font=fnt, fill=(20, 20, 20), anchor="mm")
    return faded, cells


def placeholder(text: str) -> Image.Image:
    img = Image.new("RGB", (PANEL, PANEL), (235, 235, 235))
    ImageDraw.Draw(img).text((PANEL / 2, PANEL / 2), text, font=font(24), fill=(90, 90, 90), anchor="mm")
    return img


def sheet(rows: list[tuple[str, Image.Image | None, Image.Image, list[list[str]], list[str] | None]]
          ) -> tuple[Image.Image, list[list[WordCell]]]:
    """rows of (title, input or None, reconstruction, tokens, semantic words or None) -> one PNG sheet
    and the cells drawn. The semantic words stand in brackets above the word grid."""
    width = 3 * PANEL + 4 * PAD
    height = len(rows) * (PANEL + TITLE + PAD) + PAD
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    fnt = font(16)
    all_cells = []
    for i, (title, inp, rec, tokens, semantic) in enumerate(rows):
        y = PAD + i * (PANEL + TITLE + PAD)
        draw.text((PAD, y + 4), fit_text(title, 2 * PANEL + PAD, fnt), font=fnt, fill=(0, 0, 0))
        if semantic is not None:
            words = fit_text(f"[{' '.join(semantic)}]", PANEL, font(18))
            draw.text((PAD + 2 * (PANEL + PAD), y + 2), words, font=font(18), fill=(20, 60, 160))
        left = inp.resize((PANEL, PANEL), Image.NEAREST) if inp is not None else placeholder("(from tokens)")
        panel, cells = word_panel(inp if inp is not None else rec, tokens)
        for k, img in enumerate([left, rec.resize((PANEL, PANEL), Image.NEAREST), panel]):
            out.paste(img, (PAD + k * (PANEL + PAD), y + TITLE))
        all_cells.append(cells)
    return out, all_cells


REGION_TILES = 2  # a large image is shown as a window of 2 x 2 tiles, so its words stay legible


def contact_sheet(tok, images: list, tokens: str | None = None, size=None, region: tuple[int, int] | None = None,
                  words=None) -> tuple[Image.Image, int]:
    """A sheet with one row per image (input | reconstruction | its words) and, with `tokens` (a token
    file or '-'), one row per grid in it (its reconstruction | its words). Returns (sheet, rows).
    With `size` (as for encode; None is "auto"), an image of several tiles is shown as a window of REGION_TILES x REGION_TILES tiles:
    the one whose top-left tile is `region` (tile row, tile column), else the one at the image's centre.
    `words` as for encode: the dropped words are drawn as the mask mark and filled in by the decode."""
    from .convert import Tally, read_token_inputs
    from .tiles import fit, parse_size

    size = parse_size(size, tok.image_size)
    rows = []
    for image in images:
        if size is not None:
            img = fit(tok.rgb(image), size, tok.image_size)
            if size != "auto" or img.size != (tok.image_size, tok.image_size):
                rows.append(_region_row(tok, str(image), img, region, words))
                continue
        x = tok.pixels(image)
        grid = tok.encode(to_pil(x), words=words)
        rows.append((str(image), to_pil(x), tok.decode(grid), grid.words, grid.semantic))
    if tokens is not None:
        for job in read_token_inputs(tok, str(tokens), Tally()):
            rows.append((f"{job.name} (tokens)", None, tok.decode(job.grid), job.grid.words, job.grid.semantic))
    return sheet(rows)[0], len(rows)


def _region_row(tok, name: str, img: Image.Image, region: tuple[int, int] | None, words=None):
    grid = tok.encode(img, size="native", words=words)
    decoded = tok.decode(grid)
    g, t, n = tok.grid_size, tok.image_size, REGION_TILES
    tile_rows, tile_cols = grid.shape[0] // g, grid.shape[1] // g
    r, c = region if region is not None else ((tile_rows - n) // 2, (tile_cols - n) // 2)
    r, c = max(0, min(r, tile_rows - 1)), max(0, min(c, tile_cols - 1))
    nr, nc = min(n, tile_rows - r), min(n, tile_cols - c)
    box = (c * t, r * t, (c + nc) * t, (r + nr) * t)
    words = [row[c * g:(c + nc) * g] for row in grid.words[r * g:(r + nr) * g]]
    title = f"{name}: tiles {r}-{r + nr - 1} x {c}-{c + nc - 1} of {tile_rows} x {tile_cols} ({img.width}x{img.height} px)"
    return title, img.crop(box), decoded.crop(box), words, grid.semantic


def save_png(path, img: Image.Image) -> None:
    """Write a PNG atomically; a path that cannot be written raises LQAEError."""
    from .fileio import atomic_write

    try:
        atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    except OSError as exc:
        raise LQAEError(f"cannot write {path} ({exc.strerror or exc.__class__.__name__})") from None
