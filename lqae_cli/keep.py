"""Which words to keep: fewer words per image, the rest written as a mask mark and filled in at decode time.

Every position of a grid gets a detail score from the image itself: how far its patch's pixels are from
the mean colour of its (up to four) neighbouring patches. A flat patch of the same colour as its
neighbours (a white background, a clear sky) scores near zero: the language model and the decoder can
fill it in from the words around it. An edge, a texture or a patch unlike its neighbours scores high.
`keep_order` ranks the positions by that score, most detailed first (ties to the earlier position), so
keeping K words keeps the first K of that order, and the K-word grid is the full grid with the other
positions replaced by the mask mark: the kept words are the full grid's words, in place.

The decoder learns to fill such grids in the training phase with `mask_policy="detail"` (model.LQAE):
each image loses a random number of its least detailed words, exactly as `--words K` drops them.

`auto` keeps, per image (or tile), the fewest words among AUTO_STEPS whose decode stays within
AUTO_TARGET_DB of the all-words decode's PSNR against the image: measured at encode time by decoding
each candidate, in one batch per image of a fixed size, so the choice does not depend on the batch.
The scores are computed in float64 from the 8-bit pixels: the same on every machine and batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

AUTO_TARGET_DB = 0.5                 # auto: the largest PSNR loss against all words
AUTO_STEP = 4                        # auto: the word counts tried are AUTO_STEP, 2 * AUTO_STEP, ..., all


def detail_scores(images: torch.Tensor, patch: int) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> (B, T) float64: per patch (row by row), the mean squared distance
    of its pixels (on the 8-bit scale) from the mean colour of its neighbouring patches."""
    x = (images.double() * 255).round()
    B, _, H, W = x.shape
    g_h, g_w = H // patch, W // patch
    means = F.avg_pool2d(x, patch)                                          # (B, 3, gh, gw)
    ones = torch.ones(1, 1, g_h, g_w, dtype=x.dtype)
    kernel = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=x.dtype).view(1, 1, 3, 3)
    count = F.conv2d(ones, kernel, padding=1)                               # neighbours inside the grid
    around = F.conv2d(means.reshape(B * 3, 1, g_h, g_w), kernel, padding=1).view(B, 3, g_h, g_w) / count
    spread = around.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return F.avg_pool2d((x - spread).pow(2).sum(1, keepdim=True), patch).flatten(1)   # (B, T)


def keep_order(scores: torch.Tensor) -> torch.Tensor:
    """(B, T) detail scores -> (B, T) positions, most detailed first; equal scores keep position order."""
    T = scores.shape[1]
    # a stable sort on -score: ties stay in position order
    return torch.sort(-scores, dim=1, stable=True).indices if T else scores.long()


def keep_masks(order: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T) orders and (B,) word counts -> (B, T) bool, True where a word is kept."""
    B, T = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(T, device=order.device).expand(B, T))
    return rank < keep.to(order.device).view(B, 1)


def auto_candidates(tokens: int) -> list[int]:
    """The word counts `auto` tries, fewest first; the last is all of them."""
    return sorted(set(range(AUTO_STEP, tokens, AUTO_STEP)) | {tokens})


def parse_words(value, tokens: int):
    """None / "all" (every word), "auto", or a number of words 0..tokens -> None, "auto" or an int."""
    from .errors import ConfigError

    if value is None or value == "all":
        return None
    if value == "auto":
        return "auto"
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"words '{value}': give a number of words per tile (0..{tokens}), 'auto' or 'all'") from None
    if not 0 <= k <= tokens:
        raise ConfigError(f"words {k}: a tile has {tokens} words; give 0..{tokens}, 'auto' or 'all'")
    return None if k == tokens else k


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1], on the 8-bit grid, in float64."""
    a, b = (a.double() * 255).round(), (b.double() * 255).round()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(255.0 ** 2 / mse)


def masked(ids: torch.Tensor, keep: torch.Tensor, order: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B, g, g) ids with all but each image's `keep` most detailed positions replaced by mask_id."""
    B = ids.shape[0]
    kept = keep_masks(order, keep).view(ids.shape)
    return torch.where(kept, ids, torch.full_like(ids, mask_id)) if B else ids


def auto_keep(pixels: torch.Tensor, ids: torch.Tensor, order: torch.Tensor, mask_id: int, decode) -> torch.Tensor:
    """Per image, the fewest words among `auto_candidates` whose decode is within AUTO_TARGET_DB of the
    all-words decode's PSNR against `pixels` -> (B,) counts. `decode(ids (n, g, g)) -> images (n, 3, S, S)`;
    each image's candidates go through it as one batch of the same size, whatever B is."""
    T = ids[0].numel() if len(ids) else 0
    counts = auto_candidates(T)
    out = []
    for b in range(len(ids)):
        keep = torch.tensor(counts)
        images = decode(masked(ids[b:b + 1].expand(len(counts), *ids.shape[1:]), keep, order[b:b + 1].expand(len(counts), T), mask_id))
        scores = psnr(images.cpu(), pixels[b:b + 1].cpu().expand(len(counts), -1, -1, -1))
        good = (scores >= scores[-1] - AUTO_TARGET_DB).nonzero()
        out.append(counts[int(good[0])])
    return torch.tensor(out, dtype=torch.long)
