"""The Python API: load a tokenizer in one call, turn images into word grids and word grids back into images.

    import lqae_cli as lqae

    tok = lqae.load()                          # the shipped checkpoint (or a path, or $LQAE_WEIGHTS)
    grid = tok.encode("examples/emoji-cat.png")  # also a PIL image, an HWC uint8 array or a CHW tensor
    print(grid.text)                           # 8 lines of 8 words
    image = tok.decode(grid)                   # a PIL image at the checkpoint's size

Encoding never loads the language model's layers (nor imports transformers); decoding does, once.
Every failure the caller can act on raises `LQAEError` (a subclass says which kind) with a one-line message.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from PIL import Image

from .data import to_uint8
from .errors import CheckpointError, ImageError, LQAEError, TokenError
from .tokens import FORMATS, Vocabulary, WordGrid, format_grid, parse_tokens

WEIGHTS_ENV, DEVICE_ENV = "LQAE_WEIGHTS", "LQAE_DEVICE"
DEFAULT_NAME = "lqae-base"

if TYPE_CHECKING:
    import numpy

ImageLike = Union[Image.Image, str, os.PathLike, bytes, torch.Tensor, "numpy.ndarray"]


def default_weights() -> Path:
    """The shipped checkpoint: inside the installed package (`lqae_cli/weights/`, mapped from the
    repository's `weights/` when the wheel is built), else the source tree's `weights/`."""
    here = Path(__file__).resolve().parent
    for folder in (here / "weights", here.parent / "weights"):
        if (folder / f"{DEFAULT_NAME}.safetensors").is_file():
            return folder / f"{DEFAULT_NAME}.safetensors"
    return here / "weights" / f"{DEFAULT_NAME}.safetensors"


def weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The checkpoint to load: `weights`, else $LQAE_WEIGHTS, else the shipped one. Raises CheckpointError
    if that file does not exist."""
    if weights is not None:
        path, hint = Path(weights), "check the path"
    elif os.environ.get(WEIGHTS_ENV):
        path, hint = Path(os.environ[WEIGHTS_ENV]), f"check ${WEIGHTS_ENV}"
    else:
        path, hint = default_weights(), "reinstall lqae, or pass --weights PATH / set LQAE_WEIGHTS"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} ({hint})")
    return path


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """auto (or None: $LQAE_DEVICE, else auto) -> cuda, then mps, then cpu. A requested device that is
    missing raises LQAEError."""
    if isinstance(name, torch.device):
        return name
    name = (name or os.environ.get(DEVICE_ENV) or "auto").lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LQAEError("CUDA was requested but no CUDA device is available (use --device cpu)")
    if name == "mps" and not mps:
        raise LQAEError("MPS was requested but is not available (use --device cpu)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise LQAEError(f"unknown device '{name}' (use auto, cpu, cuda or mps)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise LQAEError(f"unknown device '{name}' (use auto, cpu, cuda or mps)") from None


def load(weights: str | os.PathLike | None = None, device: str | torch.device | None = None) -> "Tokenizer":
    """Load a tokenizer: the shipped checkpoint by default, a `.safetensors` path, or $LQAE_WEIGHTS.

    Args:
        weights: a checkpoint path; None means $LQAE_WEIGHTS if set, else the shipped checkpoint.
        device: "auto" (cuda, then mps, then cpu), "cpu", "cuda[:N]" or "mps"; None means $LQAE_DEVICE or auto.
    Returns:
        A ready `Tokenizer` in eval mode on that device. On a CPU, loading also asks glibc's malloc to keep
        freed memory for reuse, process-wide (`lqae_cli.runtime.keep_freed_memory`: the same numbers, a
        quarter less encoder time; set MALLOC_TRIM_THRESHOLD_ to keep your own settings).
    Raises:
        CheckpointError: the file is missing, not an lqae checkpoint, out of range, or its tensors do not
            match its config; LMError: its language model is not installed; LQAEError: a missing device.
    """
    from .checkpoint import load_model

    path = weights_path(weights)
    model = load_model(path, resolve_device(device))
    return Tokenizer(model, name=path.stem, path=path)


def describe(weights: str | os.PathLike | None = None) -> dict:
    """A checkpoint's card without building the model: path, geometry, language model and fingerprint,
    vocabulary rule and size (None when the LM is not installed), config, training record, metrics."""
    from dataclasses import asdict

    from .checkpoint import read_card
    from .errors import LMError
    from .lm import LanguageModel
    from .precision import explain, explain_decode
    from .quantizer import describe_search

    from .model import allowed_vocabulary

    path = weights_path(weights)
    card = read_card(path)
    cfg = card["config"]
    try:
        allowed = len(allowed_vocabulary(LanguageModel.load(cfg.lm_name), cfg))
    except LMError:
        allowed = None
    device = resolve_device(None)
    return {"checkpoint": str(path), "auto_precision": explain(device), "auto_decode_precision": explain_decode(device),
            "word_search": describe_search(device),
            "image_size": cfg.image_size, "patch_size": cfg.patch_size,
            "grid": [cfg.grid_size, cfg.grid_size], "tokens_per_image": cfg.num_tokens, "lm": cfg.lm_name,
            "lm_fingerprint": cfg.lm_fingerprint, "vocab_rule": cfg.vocab_rule, "allowed_vocabulary": allowed,
            "excluded_words": len(cfg.excluded_words.split()), "excluded_source": cfg.excluded_source,
            "semantic_words": cfg.semantic_words,
            "config": asdict(cfg), "training": card["training"], "metrics": card["metrics"]}


class Tokenizer:
    """A trained LQAE checkpoint as a tokenizer: `encode` images to word grids, `decode` grids to images.

    Attributes:
        model: the `LQAE` module (eval mode) for tensor-level use and fine-tuning.
        name, path: the checkpoint's file stem and path (path None for a model built in memory).
        config: the `LQAEConfig` stored in the checkpoint.
        training, metrics: the checkpoint's training record and last metrics (dicts).
        lm_name, lm_fingerprint: the frozen language model and the fingerprint of its vocabulary and table.
        vocab: the language model's vocabulary (id -> token); allowed_ids: the ids a patch can become.
        image_size, grid_size: pixels per side of the model's input and output; words per side.
    """

    def __init__(self, model, name: str = "", path: Path | None = None):
        self.model = model
        self.name = name
        self.path = path
        card = getattr(model, "card", None) or {}
        self.training: dict = card.get("training", {})
        self.metrics: dict = card.get("metrics", {})
        self._allowed: frozenset[int] | None = None
        self._excluded: frozenset[int] | None = None
        self._int8: tuple = (None, None)  # (the decoder it was made from, its int8 copy)

    # --- the card ---------------------------------------------------------------
    @property
    def config(self):
        return self.model.cfg

    @property
    def lm_name(self) -> str:
        return self.model.cfg.lm_name

    @property
    def lm_fingerprint(self) -> str:
        return self.model.cfg.lm_fingerprint or self.model.lm.fingerprint

    @property
    def vocab(self) -> list[str]:
        return self.model.lm.vocab

    @property
    def allowed_ids(self) -> frozenset[int]:
        if self._allowed is None:
            self._allowed = frozenset(self.model.quantizer.allowed_ids.tolist())
        return self._allowed

    @property
    def excluded_ids(self) -> frozenset[int]:
        """Ids of the checkpoint's excluded words (its list of words not to print): never encoded, refused
        in token input."""
        if self._excluded is None:
            from .model import excluded_ids

            self._excluded = frozenset(excluded_ids(self.model.lm, self.model.cfg))
        return self._excluded

    @property
    def semantic_words(self) -> int:
        """How many image-level words each encoding starts with (0: the checkpoint has no semantic head)."""
        return self.model.cfg.semantic_words

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @property
    def grid_size(self) -> int:
        return self.model.cfg.grid_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, {self.image_size}x{self.image_size} px -> {self.grid_size}x{self.grid_size} words, "
                f"lm={self.lm_name!r}, device={self.device.type!r})")

    # --- words <-> ids ------------------------------------------------------------
    def ids_to_words(self, ids):
        """An id, or (nested) lists / an integer tensor of ids -> the same structure of words."""
        if _is_array(ids):
            ids = ids.tolist()
        if isinstance(ids, (list, tuple)):
            return [self.ids_to_words(i) for i in ids]
        if not isinstance(ids, int) or isinstance(ids, bool) or not 0 <= ids < len(self.vocab):
            raise TokenError(f"id {ids!r} is not in the vocabulary (0..{len(self.vocab) - 1})")
        return self.vocab[ids]

    def words_to_ids(self, words):
        """A word, or (nested) lists of words -> the same structure of ids. A word the checkpoint may not
        use (unknown, special, or outside its vocabulary rule) raises TokenError."""
        if isinstance(words, (list, tuple)):
            return [self.words_to_ids(w) for w in words]
        return self.vocabulary.word(str(words))

    def grid(self, ids, source: str | None = None) -> WordGrid:
        """A WordGrid from a (grid, grid) nested list or tensor of ids or words (checked against the vocabulary)."""
        return self._checked(ids.tolist() if _is_array(ids) else ids, "grid", source)

    def parse(self, text: str) -> list[WordGrid]:
        """Token text in any format `format` writes (text, ids, json, jsonl; detected) -> word grids.
        Raises TokenError naming the line for an unknown word or a grid of the wrong size."""
        return parse_tokens(text, self.vocab, self.model.lm.token_id, self.allowed_ids, self.grid_size, self.excluded_ids)

    @property
    def vocabulary(self) -> Vocabulary:
        """The checks token input goes through (`lqae_cli.tokens.Vocabulary`)."""
        return Vocabulary(self.vocab, self.model.lm.token_id, self.allowed_ids, self.excluded_ids)

    def format(self, grid: WordGrid, fmt: str = "text") -> str:
        """One grid as text ("text": words, one line per token row), "ids", "json" or "jsonl" (one line)."""
        if fmt not in FORMATS:
            raise TokenError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
        return format_grid(grid, fmt, self.name, self.lm_fingerprint, self.image_size)

    # --- encode -----------------------------------------------------------------
    def pixels(self, image: ImageLike) -> torch.Tensor:
        """One image -> (3, S, S) float in [0, 1], S = image_size: read (a path, bytes, PIL image, HWC
        uint8 array or CHW tensor), made RGB and resized (bicubic, whole frame) exactly as `lqae encode` does."""
        from .data import load_image

        return load_image(self.rgb(image), self.image_size)

    @property
    def auto_precision(self) -> str:
        """What precision "auto" means on this tokenizer's device: "bf16" only where it is native and
        measured faster than fp32 (`lqae_cli.precision`), else "fp32"."""
        from .precision import auto_precision

        return auto_precision(self.device)

    def encode_pixels(self, pixels: torch.Tensor, precision: str = "fp32", semantic: bool = False):
        """(B, 3, S, S) float in [0, 1] -> (B, grid, grid) int64 vocabulary ids, on the model's device;
        with semantic=True the pair (those, the semantic word ids (B, semantic_words), best first).
        precision "fp32" gives the reference words (the same on every run and batch size); "bf16" runs the
        encoder in bf16 (faster only where the hardware has native bf16; about 1 word in 80 differs);
        "auto" is bf16 where that is native and faster here, else fp32."""
        from .precision import resolve

        precision = resolve(precision, self.device)
        S = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise ImageError(f"expected pixels of shape (B, 3, {S}, {S}), got {tuple(pixels.shape)}")
        with torch.inference_mode():
            return self.model.encode(pixels.to(self.device, torch.float32), precision, semantic)

    def encode_grids(self, pixels: torch.Tensor, sources: Sequence[str | None], precision: str = "fp32",
                     words=None) -> list[WordGrid]:
        """(B, 3, S, S) float in [0, 1] -> B word grids with their semantic words (when the checkpoint
        has them), named by `sources`; `words` as in `encode`."""
        ids, sem = self.encode_pixels(pixels, precision, semantic=True)
        ids = self.keep_words(pixels, ids, words).cpu().tolist()
        sem = sem.cpu().tolist() if self.semantic_words else [None] * len(sources)
        return [WordGrid.from_ids(g, self.vocab, name, None, s) for g, s, name in zip(ids, sem, sources)]

    def keep_words(self, pixels: torch.Tensor, ids: torch.Tensor, words=None) -> torch.Tensor:
        """(B, grid, grid) ids of the images `pixels` (B, 3, S, S) -> the same ids with the dropped words
        replaced by the language model's mask id (`lqae_cli.keep`): words None keeps all; K keeps each
        image's K most detailed; "auto" as many as each image needs (its decode within
        keep.AUTO_TARGET_DB of the all-words decode; this decodes, and loads the language model)."""
        from .keep import auto_keep, detail_scores, keep_order, masked, parse_words

        words = parse_words(words, self.grid_size ** 2)
        if words is None or not len(ids):
            return ids
        order = keep_order(detail_scores(pixels.cpu(), self.config.patch_size))
        if words == "auto":
            keep = auto_keep(pixels, ids.cpu(), order, self.model.lm.mask_id, lambda x: self.decode_ids(x, "fp32").cpu())
        else:
            keep = torch.full((len(ids),), words, dtype=torch.long)
        return masked(ids.cpu(), keep, order, self.model.lm.mask_id).to(ids.device)

    def encode(self, images: ImageLike | Sequence[ImageLike], *, size: int | str | None = "auto", words=None,
               precision: str = "fp32", batch_size: int = 64, progress=None) -> WordGrid | list[WordGrid]:
        """Images -> word grids.

        Args:
            images: one image or a list of them: a path, bytes of an image file, a PIL image, a numpy array
                (H, W, 3) / (H, W) uint8 (or float in [0, 1]), a tensor (3, H, W) float in [0, 1] or uint8;
                a 4-D array (B, H, W, 3) or tensor (B, 3, H, W) is a batch.
            size: "auto" (the default; None means it too): the aspect ratio kept, the longer side scaled
                to the nearest whole number of tiles from 1 to 4 (`lqae_cli.tiles.auto_size`), so a square
                image of up to 96 pixels is one tile, as with the checkpoint's size; the checkpoint's image
                size: the whole image squashed into one tile; a multiple of it: the longer side scaled to
                that many pixels, the aspect ratio kept; "native": no resizing. Beyond one tile the image
                is covered by tiles (`lqae_cli.tiles`), each tile's words exactly those it gets when
                encoded alone, and the grid is the tiles side by side; a grid that is not one whole
                tile carries the image's size (`WordGrid.pixel_size`), which decoding crops to.
            words: None (all words, the default), K (each tile keeps its K most detailed words; the others
                become the mask mark `_`, filled in by decoding) or "auto" (each tile keeps as many as it
                needs: its decode within `lqae_cli.keep.AUTO_TARGET_DB` of the all-words one). The semantic
                words are always kept. The kept words are the all-words grid's, in place.
            precision: "fp32" (the reference words), "bf16" or "auto" (see `encode_pixels`).
            batch_size: images (or tiles) per model call.
            progress: called with the number of tiles done, for a progress bar (tiled images only).
        Returns:
            One `WordGrid` for one image, a list for a list (or a 4-D batch), in order.
        Raises:
            ImageError: an input is not a readable image (the message names it).
        """
        from .keep import parse_words
        from .tiles import parse_size

        size = parse_size(size, self.image_size)
        parse_words(words, self.grid_size ** 2)
        single = not isinstance(images, (list, tuple)) and not (_is_array(images) and images.ndim == 4)
        items = [images] if single else list(images)
        names = [str(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        grids: list[WordGrid] = []
        for start in range(0, len(items), batch_size):
            part = [self.prepare(x, size) for x in items[start:start + batch_size]]
            grids += self.encode_prepared(part, names[start:start + batch_size], size, precision, words, batch_size, progress)
        return grids[0] if single else grids

    def prepare(self, image: ImageLike, size="auto"):
        """One image as `encode_prepared` takes it (`lqae_cli.tiles.prepare_image`): the (3, S, S) pixels of
        one whole tile, or the RGB image to cover with tiles."""
        from .tiles import prepare_image

        return prepare_image(self.rgb(image), size, self.image_size)

    def encode_prepared(self, items: list, names: Sequence[str | None], size="auto", precision: str = "fp32", words=None,
                        batch_size: int = 64, progress=None) -> list[WordGrid]:
        """Items from `prepare` -> word grids in order: whole tiles in one batch, the other images tile by tile."""
        grids: list[WordGrid | None] = [None] * len(items)
        whole = [i for i, x in enumerate(items) if torch.is_tensor(x)]
        if whole:
            for i, grid in zip(whole, self.encode_grids(torch.stack([items[i] for i in whole]), [names[i] for i in whole],
                                                        precision, words)):
                grids[i] = grid
        for i, x in enumerate(items):
            if grids[i] is None:
                grids[i] = self._encode_tiled(x, names[i], size, precision, batch_size, progress, words)
        return grids

    def _encode_tiled(self, image: ImageLike, name: str | None, size, precision: str, batch_size: int,
                      progress=None, words=None) -> WordGrid:
        from .tiles import fit, join_ids, tile_grid

        img = fit(self.rgb(image), size, self.image_size)
        tiles, rows, cols = tile_grid(img, self.image_size)
        ids = []
        for part in tiles.split(batch_size):
            ids.append(self.keep_words(part, self.encode_pixels(part, precision), words).cpu())
            if progress:
                progress(len(part))
        semantic = None
        if self.semantic_words:  # image-level words: the whole image at the checkpoint's size
            semantic = self.encode_pixels(self.pixels(img).unsqueeze(0), precision, semantic=True)[1][0].tolist()
        return WordGrid.from_ids(join_ids(torch.cat(ids), rows, cols), self.vocab, name, img.size, semantic)

    def rgb(self, image: ImageLike) -> Image.Image:
        """One image (any input `encode` takes) as an RGB PIL image at its own size."""
        from .data import open_rgb

        if isinstance(image, (str, os.PathLike)):
            try:
                return open_rgb(Path(image))
            except OSError as exc:
                raise ImageError(f"{image}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
        if isinstance(image, (bytes, bytearray)):
            import io

            return open_rgb(io.BytesIO(image))
        if isinstance(image, Image.Image):
            return open_rgb(image)
        if _is_array(image):
            return open_rgb(_array_to_pil(image))
        raise ImageError(f"cannot read an image from a {type(image).__name__} (give a path, bytes, a PIL image, "
                         "an HWC uint8 array or a CHW tensor)")

    # --- decode -----------------------------------------------------------------
    def decode_ids(self, ids: torch.Tensor, precision: str = "auto") -> torch.Tensor:
        """(B, grid, grid) integer ids -> (B, 3, S, S) float images in [0, 1], on the model's device.
        Runs the frozen language model (loaded on first use) and the decoder; precision "auto" runs
        them in bf16 where that is native and faster here, else fp32; "int8" (CPUs, on request) runs the
        decoder's linear layers in int8, whose dynamic scales follow the whole batch, so an image's
        decode then depends slightly on its batch (`lqae_cli.precision`; the model card gives each
        precision's cost in PSNR); "fp32" or "bf16" as asked."""
        from .precision import resolve_decode

        g = self.grid_size
        if ids.ndim != 3 or tuple(ids.shape[1:]) != (g, g):
            raise TokenError(f"expected ids of shape (B, {g}, {g}), got {tuple(ids.shape)}")
        if ids.is_floating_point() or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.vocab))):
            raise TokenError(f"ids must be integers in 0..{len(self.vocab) - 1}")
        precision = resolve_decode(precision, self.device)
        decoder = self._int8_decoder() if precision == "int8" else None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return self.model.decode(ids.to(self.device, torch.long), decoder).float()

    def _int8_decoder(self):
        """The decoder with its linear layers in int8, made on first use and kept while `model.decoder` is
        the same module (a decoder trained further in place needs a new Tokenizer for int8)."""
        from .precision import quantize_linears

        if self._int8[0] is not self.model.decoder:
            self._int8 = (self.model.decoder, quantize_linears(self.model.decoder))
        return self._int8[1]

    def decode(self, grids, *, batch_size: int = 64, precision: str = "auto", progress=None) -> Image.Image | list[Image.Image]:
        """Word grids -> RGB PIL images: a one-tile grid at the checkpoint's size; a grid of several tiles
        stitched, and cropped to the grid's `pixel_size` when it has one.

        Args:
            grids: one grid or a list of them. A grid is a `WordGrid`, a (grid, grid) nested list of ids or
                of words, a flat list of grid*grid ids or words, token text (any format; one image), or an
                integer tensor / array (grid, grid); a 3-D tensor (B, grid, grid) is a batch.
            precision: "auto" (bf16 where native and faster here, else fp32), "fp32", "bf16" or "int8"
                (see `decode_ids`).
        Returns:
            One image for one grid, a list for a list (or a 3-D batch), in order.
        Raises:
            TokenError: a word the checkpoint may not use, an id out of range, or a grid of the wrong size.
        """
        grids_ids, single = self._as_grids(grids)
        images: list[Image.Image | None] = [None] * len(grids_ids)
        one_tile = [i for i, g in enumerate(grids_ids) if g.shape == (self.grid_size, self.grid_size) and g.pixel_size is None]
        for start in range(0, len(one_tile), batch_size):
            part = one_tile[start:start + batch_size]
            ids = torch.tensor([grids_ids[i].ids for i in part], dtype=torch.long)
            for i, a in zip(part, to_uint8(self.decode_ids(ids, precision))):
                images[i] = Image.fromarray(a)
        for i, g in enumerate(grids_ids):
            if images[i] is None:
                images[i] = self._decode_tiled(g, precision, batch_size, progress)
        return images[0] if single else images

    def _decode_tiled(self, grid: WordGrid, precision: str, batch_size: int, progress=None) -> Image.Image:
        from .tiles import check_grid_size, feather_seams, split_ids

        check_grid_size(*grid.shape, self.grid_size, grid.pixel_size, self.image_size)
        tiles, rows, cols = split_ids(grid.ids, self.grid_size)
        t = self.image_size
        canvas = torch.empty(3, rows * t, cols * t)  # the one full-size copy: tiles go straight to their place
        places = canvas.view(3, rows, t, cols, t)
        done = 0
        for part in tiles.split(batch_size):
            for image in self.decode_ids(part, precision).cpu():
                r, c = divmod(done, cols)
                places[:, r, :, c, :] = image
                done += 1
            if progress:
                progress(len(part))
        pixels = feather_seams(canvas, t, in_place=True).mul_(255).round_().byte()  # (as to_uint8, without copies)
        img = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        return img.crop((0, 0, *grid.pixel_size)) if grid.pixel_size else img

    def _as_grids(self, x) -> tuple[list[WordGrid], bool]:
        """Anything `decode` accepts -> (checked word grids, whether it was one grid)."""
        g = self.grid_size
        if isinstance(x, WordGrid):
            return [self._checked(x.ids, "grid", x.source, x.pixel_size, x.semantic_ids)], True
        if isinstance(x, str):
            parsed = self.parse(x)
            if len(parsed) != 1:
                raise TokenError(f"the text holds {len(parsed)} images; use parse() and decode the list")
            return parsed, True
        if _is_array(x):
            x = x.tolist()
            if not isinstance(x, list) or not x or not isinstance(x[0], list):
                raise TokenError(f"expected ids of shape ({g}, {g}) or (B, {g}, {g})")
        if not isinstance(x, (list, tuple)):
            raise TokenError(f"cannot decode a {type(x).__name__} (give a WordGrid, ids, words or token text)")
        if len(x) == g * g and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in x):  # one flat grid
            return [self._checked([list(x[r * g:(r + 1) * g]) for r in range(g)], "grid")], True
        if x and all(isinstance(row, (list, tuple)) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in row)
                     for row in x):  # one grid of rows
            return [self._checked(x, "grid")], True
        out = []
        for n, item in enumerate(x):
            sub, one = self._as_grids(item)
            if not one:
                raise TokenError(f"grid {n}: a list of grids cannot hold another list of grids")
            out += sub
        return out, False

    def _checked(self, rows, where: str, source: str | None = None, pixel_size=None, semantic=None) -> WordGrid:
        g = self.grid_size
        width = len(rows[0]) if rows else 0
        if not rows or len(rows) % g or width % g or any(len(r) != width for r in rows):
            raise TokenError(f"{where}: expected {g}x{g} tokens, or equally long rows of whole {g}x{g} tiles; "
                             f"got rows of {[len(r) for r in rows][:g + 1]}")
        vocabulary = self.vocabulary
        ids = [[vocabulary.position(v, where, words=not isinstance(v, int)) for v in row] for row in rows]
        semantic = None if semantic is None else [vocabulary.semantic(v, where, words=not isinstance(v, int)) for v in semantic]
        return WordGrid.from_ids(ids, self.vocab, source, pixel_size, semantic)


def _is_array(x) -> bool:
    return torch.is_tensor(x) or type(x).__module__ == "numpy"


def _array_to_pil(a) -> Image.Image:
    """(H, W, 3|4) / (H, W) numpy array or (3|1, H, W) tensor; uint8, or float in [0, 1] -> PIL image."""
    import numpy as np

    if torch.is_tensor(a):
        a = a.detach().cpu()
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            a = a.permute(1, 2, 0)
        a = a.numpy()
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"expected an (H, W, 3) array or a (3, H, W) tensor, got shape {tuple(a.shape)}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise ImageError(f"expected uint8 pixels, or floats in [0, 1]; got {a.dtype}")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))
