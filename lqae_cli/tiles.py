"""Images of any size: covered by tiles of the checkpoint's size, each tile encoded on its own.

`--size auto` (the default) keeps the aspect ratio and scales the longer side to the nearest whole
number of tiles from one to AUTO_MAX_TILES (`auto_size`): a square image of up to 96 pixels becomes the
one 64x64 tile it always was, a photo becomes up to 4x4 tiles. `--size 64` (the checkpoint's size)
squashes the whole image into one tile. `--size N` (a multiple of it) scales the image so that its
longer side is N pixels, keeping the aspect ratio; `--size native` keeps every pixel. The image is then padded on the right and bottom to whole
tiles by repeating its edge pixels (so a tile that overhangs the image sees a continuation of it, not
a black bar), cut into tiles row by row, and each tile becomes the grid x grid words it gets when
encoded alone. The word grid is the tiles side by side; decoding puts the decoded tiles side by side
and crops the padding away.

Tiles are decoded independently, so two neighbours can disagree at their shared border (a colour
step: a visible seam). `feather_seams` evens each border out: along every inner border it takes the
step between the two pixels-wide strips on either side (smoothed along the border), and ramps each
side halfway towards the other over FEATHER pixels, leaving tile interiors alone. It needs no
training and is deterministic; the model card gives what it gains.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, ImageError, TokenError
from .limits import MAX_TILES

FEATHER = 3          # pixels on each side of a tile border that are ramped towards the other side
FEATHER_SMOOTH = 5   # the step across a border is averaged over this many pixels along it


AUTO_MAX_TILES = 4   # "auto": the longer side is at most this many tiles


def parse_size(value, tile: int) -> int | str | None:
    """"auto" (also None), "native", the tile size (the whole image squashed into one tile, returned as
    None), or a multiple of it."""
    if value is None or value == "auto":
        return "auto"
    if value == "native":
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"size '{value}': give a number of pixels (a multiple of {tile}) or 'native'") from None
    if n <= 0 or n % tile:
        raise ConfigError(f"size {n}: must be a positive multiple of the checkpoint's image size {tile}, or 'native'")
    return None if n == tile else n


def tile_count(w: int, h: int, tile: int) -> int:
    """Tiles that cover w x h pixels once padded to whole tiles."""
    return -(-w // tile) * -(-h // tile)


def auto_size(w: int, h: int, tile: int) -> tuple[int, int]:
    """The "auto" size of a w x h image: the aspect ratio kept, the longer side scaled to the nearest
    whole number of tiles, at least one and at most AUTO_MAX_TILES (64 to 256 pixels for 64-pixel
    tiles). A square image up to 1.5 tiles a side becomes exactly one tile, as `--size 64` makes it."""
    longer = max(w, h)
    target = min(AUTO_MAX_TILES, max(1, round(longer / tile))) * tile
    return max(1, round(w * target / longer)), max(1, round(h * target / longer))


def prepare_image(source, size, tile: int):
    """An image (path, file object or PIL image) as encoding takes it: the (3, tile, tile) pixels in [0, 1]
    of one whole tile (`size` None: squashed; "auto": when its auto size is one whole tile), else the RGB
    PIL image, to be covered by tiles."""
    from .data import load_image, open_rgb

    img = open_rgb(source)
    if size is None or (size == "auto" and auto_size(*img.size, tile) == (tile, tile)):
        return load_image(img, tile)
    return img


def fit(img: Image.Image, size: int | str, tile: int | None = None) -> Image.Image:
    """The image at the size asked for: "auto" (`auto_size`, needs `tile`), the longer side scaled to
    `size` pixels (bicubic), or as it is ("native"). With `tile`, a result that needs more than MAX_TILES
    tiles is refused (ImageError) before resizing."""
    w, h = img.size
    if size == "native":
        new = (w, h)
    elif size == "auto":
        new = auto_size(w, h, tile)
    else:
        scale = size / max(w, h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if tile is not None and tile_count(*new, tile) > MAX_TILES:
        raise ImageError(f"{new[0]}x{new[1]} pixels make {tile_count(*new, tile):,} tiles of {tile}x{tile} once padded; "
                         f"the limit is {MAX_TILES:,} tiles (MAX_TILES): give a smaller --size")
    return img if new == img.size else img.resize(new, Image.BICUBIC)


def check_grid_size(rows: int, cols: int, g: int, pixel_size=None, tile: int | None = None) -> None:
    """Refuse (TokenError) a word grid of more than MAX_TILES tiles of g x g words, or a recorded image size
    larger than the grid's pixels (`tile` pixels per tile side), before anything is decoded."""
    tiles = -(-rows // g) * -(-cols // g)
    if tiles > MAX_TILES:
        raise TokenError(f"{rows}x{cols} words make {tiles:,} tiles of {g}x{g} words; the limit is {MAX_TILES:,} tiles (MAX_TILES)")
    if pixel_size is not None and tile is not None:
        w, h = pixel_size
        if w > cols // g * tile or h > rows // g * tile:
            raise TokenError(f"'size' {w}x{h} is larger than its grid's {cols // g * tile}x{rows // g * tile} pixels")


def tile_grid(img: Image.Image, tile: int) -> tuple[torch.Tensor, int, int]:
    """An RGB image -> (tiles (T, 3, tile, tile) in [0, 1], row by row; tile rows; tile columns), the image
    padded by repeating its edge pixels to whole tiles."""
    if tile_count(*img.size, tile) > MAX_TILES:
        raise ImageError(f"{img.size[0]}x{img.size[1]} pixels make {tile_count(*img.size, tile):,} tiles; the limit is {MAX_TILES:,} (MAX_TILES)")
    arr = np.asarray(img, dtype=np.uint8)
    h, w = arr.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    arr = np.pad(arr, ((0, rows * tile - h), (0, cols * tile - w), (0, 0)), mode="edge")
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255           # (3, H, W)
    t = t.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    return t, rows, cols


def join_ids(ids: torch.Tensor, rows: int, cols: int) -> list[list[int]]:
    """Per-tile ids (T, g, g), row by row -> one word grid (rows * g, cols * g)."""
    g = ids.shape[-1]
    return ids.view(rows, cols, g, g).permute(0, 2, 1, 3).reshape(rows * g, cols * g).tolist()


def split_ids(grid: list[list[int]], g: int) -> tuple[torch.Tensor, int, int]:
    """A word grid of whole g x g tiles -> (per-tile ids (T, g, g) row by row, tile rows, tile columns)."""
    ids = torch.tensor(grid, dtype=torch.long)
    rows, cols = ids.shape[0] // g, ids.shape[1] // g
    return ids.view(rows, g, cols, g).permute(0, 2, 1, 3).reshape(rows * cols, g, g), rows, cols


def stitch(images: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Decoded tiles (T, 3, t, t) row by row -> one image (3, rows * t, cols * t)."""
    t = images.shape[-1]
    return images.view(rows, cols, 3, t, t).permute(2, 0, 3, 1, 4).reshape(3, rows * t, cols * t)


def _feather(img: torch.Tensor, tile: int, dim: int, in_place: bool = False) -> torch.Tensor:
    """Feather the borders that cross axis `dim` (2: borders between columns, 1: between rows) of (3, H, W).
    Every border's step is measured on the image as it came, before any border is changed, so changing it
    in place gives the same numbers as changing a copy."""
    import torch.nn.functional as F

    n = img.shape[dim]
    steps = []
    for b in range(tile, n, tile):
        before = img.narrow(dim, b - 2, 2).mean(dim)                                 # (3, length of the border)
        after = img.narrow(dim, b, min(2, n - b)).mean(dim)
        steps.append((b, F.avg_pool1d((after - before)[None], FEATHER_SMOOTH, 1, FEATHER_SMOOTH // 2, count_include_pad=False)[0]))
    out = img if in_place else img.clone()
    for b, step in steps:
        for j in range(min(FEATHER, b, n - b)):
            w = 0.5 * (1 - (j + 0.5) / FEATHER)
            out.select(dim, b - 1 - j).add_(w * step)
            out.select(dim, b + j).sub_(w * step)
    return out


def feather_seams(img: torch.Tensor, tile: int, in_place: bool = False) -> torch.Tensor:
    """A stitched image (3, H, W) in [0, 1] with every inner tile border evened out (see the module docstring);
    `in_place`: in `img` itself (a large image then needs no copy of itself)."""
    return _feather(_feather(img, tile, 2, in_place), tile, 1, in_place=True).clamp_(0, 1)
