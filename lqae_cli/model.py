"""The Language-Quantized AutoEncoder: encoder -> words -> frozen LM -> decoder.

Public surface: `encode(images) -> ids`, `decode(ids) -> images`, and
`forward(images)` for training (losses and statistics).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import RECON_LOSSES, LQAEConfig
from .errors import ConfigError
from .lm import LanguageModel
from .ops import gelu, residual
from .quantizer import WordQuantizer, usage_stats


ENCODE_PRECISIONS = ("fp32", "bf16")
LOG_MSE_FLOOR = 1e-4  # added to each image's MSE (on the [-1, 1] scale) in "log_mse": about 46 dB, where it stops pushing
LOG_MSE_SCALE = 0.03  # "log_mse" is multiplied by a typical image's MSE, so that at that MSE its gradient equals
                      # plain MSE's and the commitment, entropy and decorrelation weights keep their meaning


def check_recon_loss(kind: str) -> None:
    if kind not in RECON_LOSSES:
        raise ConfigError(f"unknown reconstruction loss '{kind}' ({' or '.join(RECON_LOSSES)})")


def check_decoder_lm_layers(n: int, lm: LanguageModel) -> None:
    if not 1 <= n <= lm.num_layers:
        raise ConfigError(f"decoder_lm_layers {n}: the language model has {lm.num_layers} layers")


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, kind: str,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (loss, the batch MSE detached). The loss is the batch MSE, or the mean over images of
    log(MSE + floor) (times a constant): minus the mean per-image PSNR (what the evaluation scores) up
    to scale and offset. In a plain MSE a smooth image, whose error is small, hardly moves the
    gradient, though a few of its dB count as much as a busy image's.

    weight: None, or a per-pixel weight broadcastable to x (mean 1 keeps the loss's scale), by which
    each pixel's squared error counts in the loss; the returned MSE stays unweighted."""
    check_recon_loss(kind)
    err = (recon - x).pow(2)
    per_image = err.flatten(1).mean(1)
    in_loss = per_image if weight is None else (err * weight).flatten(1).mean(1)
    loss = in_loss.mean() if kind == "mse" else LOG_MSE_SCALE * torch.log(in_loss + LOG_MSE_FLOOR).mean()
    return loss, per_image.detach().mean()


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); mask: None (every position attends to every one) or an attention mask for
        scaled_dot_product_attention, e.g. additive (B, 1, 1, T)."""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)      # (B, H, T, C/H)
        x = residual(x, self.proj(y.transpose(1, 2).reshape(B, T, C)))
        fc1, act, fc2 = self.mlp
        return residual(x, fc2(gelu(fc1(self.ln2(x)), act.approximate)))


CPU_PART = 16  # images per pass through the encoder's layers in CPU inference (Encoder.forward)


class Encoder(nn.Module):
    """Image (B, 3, H, W) in [-1, 1] -> one vector per patch in the matching space (B, T, k)."""

    def __init__(self, cfg: LQAEConfig):
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.enc_width, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.enc_width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.enc_width, cfg.heads) for _ in range(cfg.enc_depth))
        self.ln = nn.LayerNorm(cfg.enc_width)
        self.head = nn.Linear(cfg.enc_width, cfg.match_dim)
        # Batch statistics keep the outputs spread like the whitened codebook (zero mean, unit variance).
        self.norm = nn.BatchNorm1d(cfg.match_dim, affine=False, momentum=0.01)

    def forward(self, x: torch.Tensor, hidden: bool = False):
        """-> the matching-space vectors (B, T, k), or with hidden=True the pair (those, the final
        normalised hidden states (B, T, C) that the semantic head reads).

        Inference on a CPU runs a large batch as nearly equal parts of at most CPU_PART images (at least
        8 each), each through every layer before the next: a part's activations stay in the core's
        cache, where a whole batch's go out to memory and back at every layer. The words do not change:
        with AVX-512 kernels each image's outputs are the same numbers either way; with AVX2 kernels the
        matrix products' last bits depend on how many rows they get (they did before parts, between
        batch sizes), which the exact word search absorbs unless a vector lies within that rounding of
        a border between two words (benchmarks/README.md gives the held-out check)."""
        B = x.shape[0]
        if x.device.type == "cpu" and B > CPU_PART and not self.training and not torch.is_grad_enabled():
            parts = [self.layers(part, hidden) for part in x.tensor_split(-(-B // CPU_PART))]
            if hidden:
                return torch.cat([u for u, _ in parts]), torch.cat([h for _, h in parts])
            return torch.cat(parts)
        return self.layers(x, hidden)

    def layers(self, x: torch.Tensor, hidden: bool = False):
        # contiguous: the sum would otherwise keep the conv's (B, C, T) layout through every residual add,
        # and each LayerNorm would copy it first
        x = self.patch(x).flatten(2).transpose(1, 2).contiguous() + self.pos  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        h = self.ln(x)                                                 # (B, T, C)
        u = self.norm(self.head(h).float().transpose(1, 2)).transpose(1, 2)  # (B, T, k)
        return (u, h) if hidden else u


class SemanticHead(nn.Module):
    """The encoder's hidden states (B, T, C) -> one unit direction per image in the LM's word-embedding
    space (B, D). The image's semantic words are the allowed words whose embeddings lie nearest to it
    (LQAE.semantic_ids). A learned query pools the patches by attention (CLIP's attention pooling);
    `depth` residual MLPs and a linear map take the pooled vector into the word space."""

    def __init__(self, cfg: LQAEConfig, lm_hidden: int):
        super().__init__()
        C = cfg.enc_width
        self.heads = cfg.heads
        self.query = nn.Parameter(torch.randn(1, 1, C) * 0.02)
        self.ln_kv = nn.LayerNorm(C)
        self.kv = nn.Linear(C, 2 * C)
        self.proj = nn.Linear(C, C)
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(C), nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))
                                  for _ in range(cfg.semantic_depth))
        self.ln = nn.LayerNorm(C)
        self.out = nn.Linear(C, lm_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(20.0)))  # training's softmax temperature (log)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        H = self.heads
        k, v = self.kv(self.ln_kv(h)).view(B, T, 2, H, C // H).permute(2, 0, 3, 1, 4)   # (B, H, T, C/H) each
        q = self.query.to(k.dtype).expand(B, 1, C).view(B, 1, H, C // H).transpose(1, 2)  # (B, H, 1, C/H)
        x = self.query + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C))
        for mlp in self.mlps:
            x = x + mlp(x)
        return F.normalize(self.out(self.ln(x[:, 0])).float(), dim=-1)  # (B, D)


class Decoder(nn.Module):
    """LM hidden states (B, T, n * D) -> image (B, 3, H, W) in [-1, 1] (unclamped).

    It reads the outputs of the LM's last n = cfg.decoder_lm_layers layers side by side. The paper
    reads only the last (n = 1). The packaged MiniLM was tuned for mean-pooled sentence embeddings,
    and its last layer keeps little of which word stands where (weights/TRAINING.md)."""

    def __init__(self, cfg: LQAEConfig, lm_hidden: int):
        super().__init__()
        self.grid, self.p = cfg.grid_size, cfg.patch_size
        self.inp = nn.Linear(lm_hidden * cfg.decoder_lm_layers, cfg.dec_width)
        self.pos = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dec_width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dec_width, cfg.heads) for _ in range(cfg.dec_depth))
        self.ln = nn.LayerNorm(cfg.dec_width)
        self.head = nn.Linear(cfg.dec_width, 3 * cfg.patch_size ** 2)
        c = cfg.refine_channels
        self.refine = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(c, 3, 3, padding=1)) if c else None
        if self.refine is not None:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.inp(h) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.head(self.ln(x))                                      # (B, T, 3*p*p)
        B, g, p = x.shape[0], self.grid, self.p
        img = x.view(B, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, g * p, g * p)
        return img + self.refine(img) if self.refine is not None else img


def state_size(cfg: LQAEConfig, lm_hidden: int) -> int:
    """How many numbers the state dict of LQAE(cfg) holds (weights and saved buffers), from the config
    alone: a checkpoint's tensors are checked against it before a model of the config's size is built."""
    p, T, k = cfg.patch_size, cfg.num_tokens, cfg.match_dim
    block = lambda w: 12 * w * w + 13 * w  # two LayerNorms, qkv, proj, a 4x MLP
    ew, dw, c = cfg.enc_width, cfg.dec_width, cfg.refine_channels
    encoder = (3 * p * p + 1) * ew + T * ew + cfg.enc_depth * block(ew) + 2 * ew + (ew + 1) * k + 2 * k + 1
    refine = (27 * c + c) + (9 * c * c + c) + (27 * c + 3) if c else 0
    decoder = ((lm_hidden * cfg.decoder_lm_layers + 1) * dw + T * dw + cfg.dec_depth * block(dw) + 2 * dw
               + (dw + 1) * 3 * p * p + refine)
    quantizer = lm_hidden + 2 * lm_hidden * k + T * k
    mlp = lambda w: 2 * w + (w + 1) * 4 * w + (4 * w + 1) * w
    semantic = (ew + 2 * ew + (ew + 1) * 2 * ew + (ew + 1) * ew + cfg.semantic_depth * mlp(ew) + 2 * ew
                + (ew + 1) * lm_hidden + 1) if cfg.semantic_words else 0
    return encoder + decoder + quantizer + semantic


def excluded_ids(lm: LanguageModel, cfg: LQAEConfig) -> list[int]:
    """The ids of the config's excluded words. A word that is not in the LM's vocabulary raises ConfigError."""
    out = []
    for w in cfg.excluded_words.split():
        i = lm.token_id(w)
        if i is None:
            raise ConfigError(f"config field excluded_words: '{w[:40]}' is not in the language model's vocabulary")
        out.append(i)
    return out


def allowed_vocabulary(lm: LanguageModel, cfg: LQAEConfig) -> torch.Tensor:
    """The ids an encoding may use: the vocabulary rule's words without the config's excluded words."""
    allowed = lm.allowed_ids(cfg.vocab_rule)
    excluded = excluded_ids(lm, cfg)
    return allowed[~torch.isin(allowed, torch.tensor(excluded, dtype=allowed.dtype))] if excluded else allowed


class LQAE(nn.Module):
    def __init__(self, cfg: LQAEConfig, lm: LanguageModel, fit_matching: bool = True):
        super().__init__()
        check_recon_loss(cfg.recon_loss)
        check_decoder_lm_layers(cfg.decoder_lm_layers, lm)
        self.cfg = cfg
        self.lm = lm  # frozen and not registered: its weights stay in their own package
        self.encoder = Encoder(cfg)
        self.quantizer = WordQuantizer(lm.word_embeddings, allowed_vocabulary(lm, cfg), cfg.match_dim,
                                       cfg.entropy_temperature, cfg.entropy_tokens, fit=fit_matching,
                                       num_positions=cfg.num_tokens, position_dither=cfg.position_dither)
        self.quantizer.codes_cache_key = f"{lm.fingerprint}/{cfg.vocab_rule}/{cfg.excluded_words}"  # refresh_codes' cache
        self.decoder = Decoder(cfg, lm.hidden_size)
        self.semantic = SemanticHead(cfg, lm.hidden_size) if cfg.semantic_words else None
        self.register_buffer("mask_embed", lm.word_embeddings[lm.mask_id].clone(), persistent=False)
        self.register_buffer("frame_embeds", lm.word_embeddings[[lm.cls_id, lm.sep_id]].clone(), persistent=False)

    # --- public surface -----------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor, precision: str = "fp32", semantic: bool = False):
        """images (B, 3, H, W) in [0, 1] at the config's size -> word ids (B, grid, grid); with
        semantic=True the pair (those, the semantic word ids (B, cfg.semantic_words), best first; (B, 0)
        for a model without a semantic head). Needs no LM layers.

        precision "fp32": the reference words, the same on every run and batch size (the search is
        exact; another device's fp32 arithmetic could still move a vector that sits within rounding
        of a border between two words).
        "bf16": the encoder runs under bf16 autocast (faster where the hardware has bf16); the
        word search stays exact, but the encoder's rounding moves a few vectors across a border,
        so a small share of words differ from the fp32 ones."""
        if precision not in ENCODE_PRECISIONS:
            raise ConfigError(f"unknown precision '{precision}' (fp32 or bf16)")
        from .precision import strict_fp32

        g = self.cfg.grid_size
        want_semantic = semantic and self.semantic is not None
        with strict_fp32():  # no TF32 on CUDA: the search's error bound assumes fp32 products
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                u = self.encoder(images * 2 - 1, hidden=want_semantic)
                if want_semantic:
                    u, h = u
                    direction = self.semantic(h)
            ids = self.quantizer.nearest_ids(self.quantizer.dithered(u)).view(-1, g, g)
            if not semantic:
                return ids
            if not want_semantic:
                return ids, torch.zeros(ids.shape[0], 0, dtype=torch.long, device=ids.device)
            return ids, self.semantic_ids(direction)

    SEMANTIC_CANDIDATES = 64  # fp32 candidates re-scored exactly per image (semantic_ids)
    SEMANTIC_DISTINCT = 0.68  # a word whose embedding's cosine with a chosen word is above this is a near-repeat
                              # ("device" after "devices", "cats" after "cat") and is passed over

    def semantic_ids(self, direction: torch.Tensor) -> torch.Tensor:
        """Unit directions (B, D) -> the ids of cfg.semantic_words allowed words, best first (B, K): the
        words nearest by cosine, passing over near-repeats of a word already chosen. Candidates come
        from one fp32 product; each image's are then re-scored in float64 and ordered by (score, lower
        id), and near-repeats judged in float64, so the choice does not depend on the batch."""
        table = self.semantic_table()                                   # (A, D) unit rows, fp32
        k = min(self.cfg.semantic_words, len(table))
        cand = (direction.float() @ table.T).topk(min(self.SEMANTIC_CANDIDATES, len(table)), dim=1).indices  # (B, C)
        rows = table[cand].double()                                     # (B, C, D)
        exact = torch.einsum("bd,bcd->bc", direction.double(), rows)
        ids = self.quantizer.allowed_ids[cand]
        order = _lexsort(ids.cpu(), -exact.cpu())                       # score, then lower id
        out = []
        for b in range(len(cand)):
            chosen: list[int] = []
            for j in order[b].tolist():
                if not chosen or float((rows[b, chosen] @ rows[b, j]).max()) <= self.SEMANTIC_DISTINCT:
                    chosen.append(j)
                    if len(chosen) == k:
                        break
            chosen += [j for j in order[b].tolist() if j not in chosen][:k - len(chosen)]  # too few distinct ones
            out.append(ids[b, chosen])
        return torch.stack(out) if out else ids[:, :k]

    def semantic_table(self) -> torch.Tensor:
        """The allowed words' embeddings, unit length (A, D): what semantic directions are matched to."""
        table = getattr(self, "_semantic_table", None)
        if table is None or table.device != self.quantizer.codebook.device:
            table = F.normalize(self.quantizer.codebook[self.quantizer.allowed_ids].float(), dim=-1)
            self._semantic_table = table
        return table

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
        """word ids (B, grid, grid) -> images (B, 3, H, W) in [0, 1]. Always through the LM, mask ratio 0.
        `decoder`: a stand-in for self.decoder (its int8 copy, `precision.quantize_linears`)."""
        words = self.quantizer.codebook[ids.flatten(1)]
        out = (decoder or self.decoder)(self.run_lm(words))
        return ((out.float() + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> dict:
        """Training pass on images (B, 3, H, W) in [0, 1]: losses, statistics and the reconstruction."""
        if self.encoder_frozen:
            return self.forward_decoder(images)
        x = images * 2 - 1
        q = self.quantizer(self.encoder(x))
        embeds = q.embeds
        if self.training and self.masks_in_training:
            embeds = self.apply_mask(embeds, images)
        recon = self.decoder(self.run_lm(embeds)).float()
        recon_loss, mse = reconstruction_loss(recon, x, self.cfg.recon_loss)
        loss = (recon_loss + self.cfg.commit_weight * q.commit_loss + self.cfg.entropy_weight * q.entropy_loss
                + self.cfg.decorrelation_weight * q.decorrelation_loss)
        mse01 = mse / 4
        return {"loss": loss, "mse": mse, "commit": q.commit_loss.detach(), "entropy": q.entropy_loss.detach(), "decorrelation": q.decorrelation_loss.detach(),
                "psnr": -10 * math.log10(max(mse01.item(), 1e-10)), "ids": q.ids, "recon": ((recon.detach() + 1) / 2).clamp(0, 1),
                **usage_stats(q.ids)}

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def freeze_encoder(self) -> None:
        """Fix the words: the encoder (BatchNorm in eval mode too) makes exactly the codes `encode` makes,
        and only the decoder learns (a second training phase, on the codes the user will see)."""
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    @torch.no_grad()
    def read_more_lm_layers(self, n: int) -> None:
        """Let the decoder read the outputs of the LM's last n layers instead of fewer: the layers it read
        keep their input weights and the new ones enter with zero weights, so at first it decodes
        exactly as before (for a decoder-only phase that goes on from a trained checkpoint)."""
        old = self.decoder.inp
        if n < self.cfg.decoder_lm_layers:
            raise ConfigError(f"the decoder reads {self.cfg.decoder_lm_layers} LM layers; it can be given more, not fewer")
        check_decoder_lm_layers(n, self.lm)
        new = nn.Linear(self.lm.hidden_size * n, old.out_features).to(old.weight.device)
        new.weight.zero_()[:, -old.in_features:] = old.weight
        new.bias.copy_(old.bias)
        self.decoder.inp = new
        self.cfg = replace(self.cfg, decoder_lm_layers=n)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def forward_decoder(self, images: torch.Tensor) -> dict:
        """Decoder-only training pass: fixed codes, the LM without gradients, MSE on the reconstruction."""
        x = images * 2 - 1
        with torch.no_grad():
            ids = self.encode(images).flatten(1)
            embeds = self.quantizer.codebook[ids]
            if self.training and self.masks_in_training:
                embeds = self.apply_mask(embeds, images)
            hidden = self.run_lm(embeds)
        recon = self.decoder(hidden).float()
        loss, mse = reconstruction_loss(recon, x, self.cfg.recon_loss)
        zero = torch.zeros((), device=x.device)
        return {"loss": loss, "mse": mse, "commit": zero, "entropy": zero, "decorrelation": zero,
                "psnr": -10 * math.log10(max(mse.item() / 4, 1e-10)), "ids": ids,
                "recon": ((recon.detach() + 1) / 2).clamp(0, 1), **usage_stats(ids)}

    # --- pieces ---------------------------------------------------------------
    @property
    def masks_in_training(self) -> bool:
        return self.cfg.mask_policy == "detail" or self.cfg.mask_ratio > 0

    DETAIL_FULL_SHARE = 0.25  # "detail" policy: the share of images that keep all their words
    DETAIL_MIN_KEEP = 4       # "detail" policy: the fewest words an image keeps

    def apply_mask(self, embeds: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """Replace positions by the mask token. Policy "random": exactly round(mask_ratio * T) random
        positions per sequence. "detail" (needs `images`, (B, 3, H, W) in [0, 1]): each image keeps its
        K most detailed words (keep.py), K uniform in [DETAIL_MIN_KEEP, T) for three images in four, all
        of them for the rest."""
        B, T, _ = embeds.shape
        if self.cfg.mask_policy == "detail":
            from .keep import detail_scores, keep_masks, keep_order

            order = keep_order(detail_scores(images.detach().float().cpu(), self.cfg.patch_size)).to(embeds.device)
            keep = torch.randint(min(self.DETAIL_MIN_KEEP, T), T, (B,), device=embeds.device)
            keep = torch.where(torch.rand(B, device=embeds.device) < self.DETAIL_FULL_SHARE, T, keep)
            masked = ~keep_masks(order, keep)
        else:
            n = round(self.cfg.mask_ratio * T)
            order = torch.rand(B, T, device=embeds.device).argsort(dim=1)
            masked = torch.zeros(B, T, dtype=torch.bool, device=embeds.device)
            masked.scatter_(1, order[:, :n], True)
        return torch.where(masked.unsqueeze(-1), self.mask_embed.to(embeds.dtype), embeds)

    def run_lm(self, embeds: torch.Tensor) -> torch.Tensor:
        """Frozen LM over word embeddings (B, T, D) -> the hidden states the decoder reads at the same
        positions: (B, T, n * D), the outputs of the LM's last n = cfg.decoder_lm_layers layers."""
        transformer = self.lm.transformer
        if next(transformer.parameters()).device != embeds.device:
            transformer.to(embeds.device)
        if self.cfg.frame_tokens:
            B = embeds.shape[0]
            cls, sep = self.frame_embeds.to(embeds.dtype).unsqueeze(0).expand(B, 2, -1).unbind(1)
            embeds = torch.cat([cls.unsqueeze(1), embeds, sep.unsqueeze(1)], dim=1)
            return self.lm.hidden_states(embeds, self.cfg.decoder_lm_layers)[:, 1:-1]
        return self.lm.hidden_states(embeds, self.cfg.decoder_lm_layers)


def _lexsort(ids: torch.Tensor, neg_scores: torch.Tensor):
    """Per row, the order of (neg_scores, ids) ascending: best score first, ties to the lower id."""
    import numpy as np

    return np.lexsort((ids.numpy(), neg_scores.numpy()), axis=1)
