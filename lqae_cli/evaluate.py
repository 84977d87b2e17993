"""How good a checkpoint is: reconstruction against a trivial codec, codebook use, linear probe.

Everything is measured on the same images in the same run, so comparisons are ratios, not guesses.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .convert import Source, image_batches, split_loaded
from .data import list_images, to_pil, to_tensor
from .errors import LQAEError

_ENGLISH = re.compile(r"^[a-z]+$")


# --- image metrics ----------------------------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB of (B, 3, H, W) tensors in [0, 1]."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 .01, K2 .03, data range 1),
    averaged over channels and valid window positions."""
    a, b = a.double(), b.double()
    C = a.shape[1]
    w = _gaussian_window().double().expand(C, 1, 11, 11)
    mu_a, mu_b = F.conv2d(a, w, groups=C), F.conv2d(b, w, groups=C)
    saa = F.conv2d(a * a, w, groups=C) - mu_a ** 2
    sbb = F.conv2d(b * b, w, groups=C) - mu_b ** 2
    sab = F.conv2d(a * b, w, groups=C) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1).float()


def shrink_codec(img: Image.Image, factor: int) -> Image.Image:
    """The trivial codec: shrink by `factor` per side and enlarge back, both bicubic (Pillow)."""
    w, h = img.size
    return img.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BICUBIC).resize((w, h), Image.BICUBIC)


def psnr_u8(a, b) -> float:
    """PSNR in dB of two uint8 arrays of the same shape (any shape: a whole image or selected pixels)."""
    import numpy as np

    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def thumbnail_codec(images: torch.Tensor, thumb: int) -> torch.Tensor:
    """`shrink_codec` to thumb x thumb pixels, for a batch (B, 3, S, S) in [0, 1]."""
    return torch.stack([to_tensor(shrink_codec(to_pil(img), img.shape[-1] // thumb)) for img in images])


# --- codebook ----------------------------------------------------------------------
def codebook_report(ids: torch.Tensor, vocab: list[str], top: int = 20) -> dict:
    counts = Counter(ids.flatten().tolist())
    total = sum(counts.values())
    p = torch.tensor(list(counts.values()), dtype=torch.float64) / total
    english = sum(c for i, c in counts.items() if _ENGLISH.match(vocab[i]))
    return {"positions": total, "distinct": len(counts), "perplexity": float(torch.exp(-(p * p.log()).sum())),
            "top_share": float(p.max()), "english_share": english / total,
            "top_words": [[vocab[i], c / total] for i, c in counts.most_common(top)]}


# --- linear probe ------------------------------------------------------------------
def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 classes: int, epochs: int = 100, seed: int = 0) -> float:
    """LayerNorm + linear classifier (AdamW, full batch, fixed seed) -> test accuracy."""
    g = torch.Generator().manual_seed(seed)
    dim = train_x.shape[1]
    norm = torch.nn.LayerNorm(dim)
    head = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, dim, generator=g) * 0.01)
        head.bias.zero_()
    params = list(norm.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_x), generator=g).split(1024):
            opt.zero_grad()
            F.cross_entropy(head(norm(train_x[idx])), train_y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((head(norm(test_x)).argmax(1) == test_y).float().mean())


# --- running a checkpoint over a folder --------------------------------------------
@dataclass
class FolderResult:
    files: list[Path]
    labels: list[str]
    ids: torch.Tensor           # (N, g, g)
    features: torch.Tensor      # (N, n * D) mean-pooled LM hidden states (the n layers the decoder reads); with
                                # semantic words (N, 2 * n * D): the LM over them and the grid, each part's mean
    pixels: torch.Tensor        # (N, 3*H*W) raw pixels, for the control probe
    psnr: torch.Tensor
    ssim: torch.Tensor
    base_psnr: torch.Tensor
    base_ssim: torch.Tensor
    failed: list[str] = field(default_factory=list)
    samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    semantic: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0, dtype=torch.long))  # (N, K) semantic ids


def class_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else ""


def count_images(data: Path, train: Path | None = None, test: Path | None = None, limit: int | None = None) -> int:
    """How many images `evaluate` reads (for a progress bar)."""
    return len(list_images(data, limit)) + sum(len(list_images(d)) for d in (train, test) if d is not None)


def folder_batches(sources: list[Source], size: int, batch_size: int, workers: int, failed: list[str], progress=None):
    """Batches of the sources' images at size x size: (the (index, pixels) pairs that loaded, their pixels
    stacked (B, 3, size, size)); an unreadable image goes into `failed` as "name: why", every image read
    into `progress`."""
    for batch in image_batches(sources, size, batch_size, workers):
        good, bad = split_loaded(batch)
        failed += [f"{sources[i].name}: {err}" for i, err in bad]
        if progress:
            progress(len(batch))
        if good:
            yield good, torch.stack([t for _, t in good])


@torch.no_grad()
def run_folder(tok, root: Path, batch_size: int = 64, workers: int = 1, limit: int | None = None,
               reconstruct: bool = True, progress=None) -> FolderResult:
    """A tokenizer over every image under root: words, LM features, pixels, and (with `reconstruct`)
    PSNR/SSIM of its reconstructions and of the thumbnail codec's, per image."""
    model = tok.model
    files = list_images(root, limit)
    sources = [Source(name=str(f), path=f) for f in files]
    size, thumb = model.cfg.image_size, model.cfg.grid_size
    device = next(model.parameters()).device
    keep, ids, sems, feats, pix, ps, ss, bps, bss, failed, samples = [], [], [], [], [], [], [], [], [], [], []
    for good, x in folder_batches(sources, size, batch_size, workers, failed, progress):
        x = x.to(device)
        i, sem = model.encode(x, semantic=True)
        h = model.run_lm(model.quantizer.codebook[i.flatten(1)])
        keep += [files[j] for j, _ in good]
        ids.append(i.cpu())
        sems.append(sem.cpu())
        # the probe's features: the LM over all the words a reader gets, the semantic ones first; the means over
        # the semantic words and over the grid side by side
        if sem.shape[1] == 0:
            feats.append(h.float().mean(1).cpu())
        else:
            read = model.run_lm(model.quantizer.codebook[torch.cat([sem, i.flatten(1)], 1)]).float()
            k = sem.shape[1]
            feats.append(torch.cat([read[:, :k].mean(1), read[:, k:].mean(1)], 1).cpu())
        pix.append(x.flatten(1).cpu())
        if reconstruct:
            rec = ((model.decoder(h).float() + 1) / 2).clamp(0, 1)
            base = thumbnail_codec(x.cpu(), thumb)
            ps.append(psnr(rec.cpu(), x.cpu()))
            ss.append(ssim(rec.cpu(), x.cpu()))
            bps.append(psnr(base, x.cpu()))
            bss.append(ssim(base, x.cpu()))
            if len(samples) < 8:
                samples += [(x[k].cpu(), rec[k].cpu(), base[k]) for k in range(min(8 - len(samples), len(x)))]
    cat = lambda xs: torch.cat(xs) if xs else torch.empty(0)
    return FolderResult(keep, [class_of(f, Path(root)) for f in keep], cat(ids), cat(feats), cat(pix),
                        cat(ps), cat(ss), cat(bps), cat(bss), failed, samples, cat(sems))


def split_by_class(labels: list[str], test_share: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """A stratified split with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == c]
        idx = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_test = max(1, round(len(idx) * test_share)) if len(idx) > 1 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return sorted(train), sorted(test)


def probe_report(train: FolderResult, test: FolderResult, train_idx=None, test_idx=None) -> dict:
    classes = sorted(set(train.labels) | set(test.labels))
    index = {c: k for k, c in enumerate(classes)}
    ty = torch.tensor([index[l] for l in train.labels])
    sy = torch.tensor([index[l] for l in test.labels])
    tr = slice(None) if train_idx is None else torch.tensor(train_idx)
    te = slice(None) if test_idx is None else torch.tensor(test_idx)
    lm_acc = linear_probe(train.features[tr], ty[tr], test.features[te], sy[te], len(classes))
    px_acc = linear_probe(train.pixels[tr], ty[tr], test.pixels[te], sy[te], len(classes))
    n_train = len(ty[tr]) if train_idx is not None else len(ty)
    n_test = len(sy[te]) if test_idx is not None else len(sy)
    majority = Counter(sy[te].tolist()).most_common(1)[0][1] / n_test
    return {"classes": len(classes), "train_images": n_train, "test_images": n_test,
            "lm_features_accuracy": lm_acc, "raw_pixels_accuracy": px_acc, "majority_class_accuracy": majority}


def evaluate(tok, data: Path, train: Path | None = None, test: Path | None = None, batch_size: int = 64,
             workers: int = 1, limit: int | None = None, progress=None) -> tuple[dict, FolderResult]:
    """The report `lqae eval` prints (see format_report) and the per-image results."""
    model = tok.model
    res = run_folder(tok, data, batch_size, workers, limit, progress=progress)
    if len(res.files) == 0:
        raise LQAEError(f"no readable images under {data}")
    report = {"data": str(data), "images": len(res.files), "failed": len(res.failed),
              "checkpoint": tok.name, "lm_fingerprint": model.cfg.lm_fingerprint,
              "reconstruction": {
                  "psnr": float(res.psnr.mean()), "ssim": float(res.ssim.mean()),
                  "thumbnail_psnr": float(res.base_psnr.mean()), "thumbnail_ssim": float(res.base_ssim.mean()),
                  "thumbnail_size": model.cfg.grid_size,
                  "psnr_gain_db": float(res.psnr.mean() - res.base_psnr.mean()),
                  "tokens_bits": model.cfg.num_tokens * math.log2(model.quantizer.num_allowed),
                  "thumbnail_bits": 3 * 8 * model.cfg.grid_size ** 2},
              "codebook": codebook_report(res.ids, model.lm.vocab)}
    if train is not None and test is not None:
        tr = run_folder(tok, train, batch_size, workers, reconstruct=False, progress=progress)
        te = run_folder(tok, test, batch_size, workers, reconstruct=False, progress=progress)
        report["probe"] = probe_report(tr, te)
    elif len(set(res.labels)) > 1:
        tr_idx, te_idx = split_by_class(res.labels)
        report["probe"] = probe_report(res, res, tr_idx, te_idx)
    if tok.semantic_words and len(set(res.labels)) > 1:
        report["meaning"] = meaning_of(tok, data, res)
    return report, res


def meaning_of(tok, root: Path, res: FolderResult) -> dict:
    """`lqae_cli.meaning`'s figures for a folder's results (its sub-folders are the categories)."""
    from .meaning import SentenceEncoder, meaning_report, read_names

    vocab = tok.vocab
    semantic = [[vocab[i] for i in row] for row in res.semantic.tolist()]
    grid = [[vocab[i] for i in row] for row in res.ids.flatten(1).tolist()]
    return meaning_report(SentenceEncoder(tok.model.lm), semantic, grid, res.labels, read_names(Path(root), res.files))


def save_sample_grid(path: Path, samples) -> None:
    """Rows of input | reconstruction | thumbnail codec, enlarged 2x."""
    from .fileio import atomic_write

    rows = [torch.cat([x, r, b], dim=2) for x, r, b in samples]
    img = to_pil(torch.cat(rows, dim=1))
    img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def format_report(r: dict) -> str:
    rec, cb = r["reconstruction"], r["codebook"]
    lines = [f"data              {r['data']}  ({r['images']} images, {r['failed']} unreadable)",
             f"reconstruction    PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}",
             f"thumbnail codec   PSNR {rec['thumbnail_psnr']:.2f} dB  SSIM {rec['thumbnail_ssim']:.3f}  "
             f"({rec['thumbnail_size']}x{rec['thumbnail_size']} px, bicubic)",
             f"gain              {rec['psnr_gain_db']:+.2f} dB",
             f"codebook          {cb['distinct']} distinct words over {cb['positions']} positions, perplexity {cb['perplexity']:.0f}, "
             f"top word {cb['top_share']:.1%}, whole English words {cb['english_share']:.1%}",
             "top words         " + ", ".join(f"{w} {s:.1%}" for w, s in cb["top_words"])]
    if "meaning" in r:
        from .meaning import format_meaning

        lines.append(format_meaning(r["meaning"]))
    if "probe" in r:
        p = r["probe"]
        lines.append(f"linear probe      LM features {p['lm_features_accuracy']:.1%}  raw pixels {p['raw_pixels_accuracy']:.1%}  "
                     f"majority {p['majority_class_accuracy']:.1%}  ({p['classes']} classes, {p['train_images']} train / {p['test_images']} test)")
    return "\n".join(lines)


def evaluate_at_size(tok, data: Path, size, limit: int | None = None, progress=None) -> tuple[dict, list[str]]:
    """Whole images at `size` ("native" or a multiple of the checkpoint's size, as `lqae encode --size`):
    PSNR of the stitched decode against the image at that size, beside the matching codec "shrink by the
    patch size per side, enlarge back (bicubic)" (the same 8x for the shipped checkpoint). Returns the report
    and the images that could not be read."""
    import numpy as np

    from .errors import ImageError
    from .tiles import fit, parse_size

    size = parse_size(size, tok.image_size) or tok.image_size
    files = list_images(data, limit)
    factor = tok.config.patch_size
    ours, base, failed, pixels = [], [], [], 0
    for f in files:
        try:
            img = fit(tok.rgb(f), size, tok.image_size)
        except ImageError as exc:
            failed.append(f"{f}: {str(exc).removeprefix(f'{f}: ')}")
            continue
        w, h = img.size
        decoded = tok.decode(tok.encode(img, size="native"))
        ours.append(psnr_u8(img, decoded))
        base.append(psnr_u8(img, shrink_codec(img, factor)))
        pixels += w * h
        if progress:
            progress(1)
    if not ours:
        raise LQAEError(f"no readable images under {data}")
    report = {"data": str(data), "images": len(ours), "failed": len(failed), "size": size, "checkpoint": tok.name,
              "megapixels": pixels / 1e6, "psnr": float(np.mean(ours)), "codec_psnr": float(np.mean(base)),
              "codec": f"shrink {factor}x per side, enlarge back (bicubic)", "psnr_gain_db": float(np.mean(ours) - np.mean(base))}
    return report, failed


def format_size_report(r: dict) -> str:
    return "\n".join([f"data              {r['data']}  ({r['images']} images, {r['failed']} unreadable, {r['megapixels']:.1f} megapixels)",
                      f"size              {r['size']}",
                      f"reconstruction    PSNR {r['psnr']:.2f} dB",
                      f"codec             PSNR {r['codec_psnr']:.2f} dB  ({r['codec']})",
                      f"gain              {r['psnr_gain_db']:+.2f} dB"])


# --- words kept: rate and distortion ----------------------------------------------
RD_WORDS = (8, 16, 24, 32, 48, 64)


def parse_word_counts(value: str, tokens: int) -> list:
    """"8,16,auto" -> [8, 16, "auto"]; "all" -> [tokens]. Raises ConfigError for a bad count."""
    from .errors import ConfigError
    from .keep import parse_words

    out = []
    for part in value.split(","):
        part = part.strip()
        if part == "table":
            out += [k for k in RD_WORDS if k <= tokens] + ["auto"]
            continue
        k = parse_words(part, tokens)
        if k is None and part not in ("all", str(tokens)):
            raise ConfigError(f"words '{part}': give numbers of words, 'auto', 'all' or 'table'")
        out.append(tokens if k is None else k)
    if not out:
        raise ConfigError("words: give at least one count")
    return list(dict.fromkeys(out))


def word_bits(k: int, tokens: int, vocabulary: int) -> float:
    """Bits of a grid keeping k of `tokens` words: each word one of `vocabulary`, plus which positions hold one."""
    return k * math.log2(vocabulary) + (math.log2(math.comb(tokens, k)) if 0 < k < tokens else 0.0)


def quantized_thumbnail(images: torch.Tensor, side: int, bits: int) -> torch.Tensor:
    """The thumbnail codec at a bit budget: (B, 3, S, S) in [0, 1] -> shrunk to side x side (area average),
    each channel rounded to `bits` bits, enlarged back (bicubic, Pillow): 3 * bits * side^2 bits per image."""
    S = images.shape[-1]
    small = F.adaptive_avg_pool2d(images.float(), side)
    levels = 2 ** bits - 1
    small = (small * levels).round() / levels
    return torch.stack([to_tensor(to_pil(t).resize((S, S), Image.BICUBIC)) for t in small])


def rate_distortion(tok, data: Path, counts: list, limit: int | None = None, batch_size: int = 64,
                    progress=None) -> tuple[dict, list[str]]:
    """Every image of a folder at the checkpoint's size, kept to each word count in `counts` (numbers, or
    "auto" as `encode --words auto`): mean PSNR of the decodes, mean words kept, bits per image, and beside
    each count the best thumbnail codec (`quantized_thumbnail`, side 1-16, 2-8 bits per channel) that takes
    no more bits, by mean PSNR over the folder. Returns the report and the images that could not be read."""
    from .keep import detail_scores, keep_order, masked, auto_keep

    files = list_images(data, limit)
    sources = [Source(name=str(f), path=f) for f in files]
    S, T, mask_id = tok.image_size, tok.grid_size ** 2, tok.model.lm.mask_id
    vocabulary = len(tok.allowed_ids)
    decode = lambda ids: tok.decode_ids(ids, "fp32").cpu()
    scores = {k: [] for k in counts}
    kept = {k: [] for k in counts}
    images, failed = [], []
    for _, x in folder_batches(sources, S, batch_size, 0, failed, progress):
        images.append(x)
        ids = tok.encode_pixels(x).cpu()
        order = keep_order(detail_scores(x, tok.config.patch_size))
        for k in counts:
            keep = auto_keep(x, ids, order, mask_id, decode) if k == "auto" else torch.full((len(x),), k)
            scores[k].append(psnr(decode(masked(ids, keep, order, mask_id)), x))
            kept[k].append(keep.float())
    if not images:
        raise LQAEError(f"no readable images under {data}")
    x = torch.cat(images)
    codecs = {}
    for side in range(1, 17):
        for b in range(2, 9):
            codecs[(side, b)] = (3 * b * side * side, float(psnr(quantized_thumbnail(x, side, b), x).mean()))
    rows = []
    for k in counts:
        words = float(torch.cat(kept[k]).mean())
        bits = float(torch.tensor([word_bits(int(n), T, vocabulary) for n in torch.cat(kept[k]).tolist()]).mean())
        fits = [(p, side, b, cb) for (side, b), (cb, p) in codecs.items() if cb <= bits]
        best = max(fits) if fits else None
        rows.append({"words": k, "mean_words": words, "bits": bits, "psnr": float(torch.cat(scores[k]).mean()),
                     "codec": None if best is None else {"side": best[1], "bits_per_channel": best[2], "bits": best[3], "psnr": best[0]}})
    thumb8 = codecs[(tok.grid_size, 4)]
    return {"data": str(data), "images": len(x), "failed": len(failed), "checkpoint": tok.name, "tokens": T,
            "vocabulary": vocabulary, "rows": rows,
            "thumbnail_8x8_4bit": {"bits": thumb8[0], "psnr": thumb8[1]}}, failed


def format_rate_report(r: dict) -> str:
    lines = [f"data              {r['data']}  ({r['images']} images, {r['failed']} unreadable)",
             f"words kept  mean words  bits/image  PSNR lqae  | best thumbnail codec within those bits",]
    for row in r["rows"]:
        c = row["codec"]
        codec = "none fits" if c is None else f"{c['side']}x{c['side']} px, {c['bits_per_channel']} bits/channel ({c['bits']} bits): {c['psnr']:.2f} dB"
        lines.append(f"{str(row['words']):>10}  {row['mean_words']:10.1f}  {row['bits']:10.0f}  {row['psnr']:6.2f} dB  | {codec}")
    t = r["thumbnail_8x8_4bit"]
    lines.append(f"thumbnail {int(math.sqrt(r['tokens']))}x{int(math.sqrt(r['tokens']))} px at 4 bits/channel: "
                 f"{t['bits']} bits, {t['psnr']:.2f} dB")
    return "\n".join(lines)
