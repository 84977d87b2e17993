"""Reading images safely, and the training dataset."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps

from .errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # decompression-bomb guard
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def list_images(root: Path, limit: int | None = None) -> list[Path]:
    """Every image file under root (recursive, sorted, hidden files skipped); with `limit`, at most that
    many, evenly spaced through the sorted list (every len // limit-th)."""
    root = Path(root)
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return out[:: max(1, len(out) // limit)][:limit] if limit else out


def open_rgb(source) -> Image.Image:
    """Any image (path, file object or PIL image) -> RGB: first frame, EXIF-rotated, alpha on white,
    16-bit scaled. Raises ImageError for anything that is not a readable image of a sane size."""
    if isinstance(source, Image.Image):
        if source.width * source.height == 0:
            raise ImageError("image has no pixels (0x0)")
        return as_rgb(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            if img.width * img.height == 0:
                raise ImageError("image has no pixels (0x0)")
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(f"image too large ({img.width}x{img.height} pixels; the limit is {MAX_PIXELS:,}, MAX_PIXELS)")
            img.seek(0)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large ({exc.__class__.__name__}; the limit is {MAX_PIXELS:,} pixels, MAX_PIXELS)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
        raise ImageError(f"not a readable image ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if "exif" in img.info or img.format in ("JPEG", "MPO", "TIFF", "WEBP"):  # (reading EXIF imports Pillow's TIFF code)
        img = ImageOps.exif_transpose(img)
    return as_rgb(img)


def as_rgb(img: Image.Image) -> Image.Image:
    """A PIL image in any mode -> RGB (alpha composited on white, 16-bit and float scaled to 8 bits)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.split()[3])
        return canvas
    return img.convert("RGB")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, 3).permute(2, 0, 1).float() / 255


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) or (3, H, W) float in [0, 1] -> a (B, H, W, 3) or (H, W, 3) uint8 numpy array."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().byte()
    return (arr.permute(0, 2, 3, 1) if arr.ndim == 4 else arr.permute(1, 2, 0)).cpu().numpy()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> an RGB PIL image."""
    return Image.fromarray(to_uint8(image))


def load_image(source, size: int) -> torch.Tensor:
    """An image (path, file object or PIL image) resized (bicubic, whole frame, square) to size x size
    -> (3, size, size) in [0, 1]."""
    img = open_rgb(source)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return to_tensor(img)


def random_resized_crop(img: Image.Image, size: int, gen: torch.Generator, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    w, h = img.size
    for _ in range(10):
        area = w * h * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=gen).item())
        log_r = torch.empty(()).uniform_(*map(float, torch.log(torch.tensor(ratio))), generator=gen).item()
        aspect = float(torch.exp(torch.tensor(log_r)))
        cw, ch = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            x = int(torch.randint(0, w - cw + 1, (), generator=gen))
            y = int(torch.randint(0, h - ch + 1, (), generator=gen))
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    return img.resize((size, size), Image.BICUBIC)


def smoothed(img: Image.Image, gen: torch.Generator) -> Image.Image:
    """The image shrunk to k x k pixels (area average; k from 1 to a quarter of its side) and enlarged
    back with bicubic: a flat colour, a gradient or a soft version of real content, with real colours."""
    k = int(torch.randint(1, max(2, img.width // 4) + 1, (), generator=gen))
    return img.resize((k, k), Image.BOX).resize(img.size, Image.BICUBIC)


class TrainImages(torch.utils.data.Dataset):
    """Image files -> augmented tensors. Augmentation is seeded by (seed, epoch, index) so a resumed
    run sees exactly the images it would have seen. Unreadable files yield None and are reported once.
    `smooth_share`: that share of the images is replaced by a smoothed version of itself (`smoothed`)."""

    def __init__(self, files: list[Path], size: int, seed: int = 0, augment: bool = True, smooth_share: float = 0.0):
        self.files, self.size, self.seed, self.augment, self.smooth_share = files, size, seed, augment, smooth_share
        self.epoch = 0
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        try:
            img = open_rgb(path)
        except ImageError as exc:
            if path not in self._reported:
                self._reported.add(path)
                print(f"Warning: skipping {path}: {exc}", file=sys.stderr)
            return None
        if not self.augment:
            return to_tensor(img.resize((self.size, self.size), Image.BICUBIC))
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        img = random_resized_crop(img, self.size, gen)
        if torch.rand((), generator=gen) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.smooth_share and torch.rand((), generator=gen) < self.smooth_share:
            img = smoothed(img, gen)
        return to_tensor(img)


def collate_skip_none(batch):
    batch = [b for b in batch if b is not None]
    return torch.stack(batch) if batch else None
