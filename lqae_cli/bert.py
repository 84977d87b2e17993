"""The frozen language model's layers without transformers: a plain BERT encoder over input embeddings.

Decode and training only run the LM on word embeddings and read its layers' outputs. Importing
transformers (and torch's compiler with it) and building its model took most of a decode's start
(its first batch 4.8 s against 0.8 s for the next, benchmarks/README.md); this module is the same arithmetic
written out. It does exactly what transformers'
BertModel does in evaluation with an all-ones attention mask, operation by operation in the same order
(inputs + token type 0, + positions, LayerNorm; per layer: query, key and value products, scaled
dot-product attention with no mask and the scale 1/sqrt(head size), the output product added to the
layer's input before its LayerNorm, the erf GELU feed-forward likewise), so its outputs are the
same numbers (tests compare them with transformers' on every path: inference, autograd, bf16
autocast). Where there is no autograd, the residual sums and the GELU are computed in place, which
gives the same numbers without new activation-sized buffers.

`load_bert(lm_dir)` returns None for anything else (another architecture, relative positions, a
decoder, another activation, weights under other names or shapes); the caller then uses
transformers. Weights are read from model.safetensors only; the word-embedding table (the codebook,
read separately) and the pooler are not loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import gelu, residual


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.scaling = self.head_size ** -0.5
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (f(x).view(B, T, self.heads, self.head_size).transpose(1, 2) for f in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=self.scaling)
        return y.transpose(1, 2).contiguous().reshape(B, T, D).contiguous()


class _DenseNorm(nn.Module):
    """LayerNorm(dense(h) + residual), as BERT closes each sub-layer."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual(x, self.dense(h)))


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = _Attention(hidden, heads)
        self.attention.output = _DenseNorm(hidden, hidden, eps)
        self.intermediate = _Dense(hidden, intermediate)
        self.output = _DenseNorm(intermediate, hidden, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention.output(self.attention.self(x), x)
        return self.output(gelu(self.intermediate.dense(a)), a)


class _Table(nn.Module):
    """An embedding table that is only indexed directly (no lookup module, no random init to overwrite)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, dim))


class _Embeddings(nn.Module):
    def __init__(self, hidden: int, positions: int, types: int, eps: float):
        super().__init__()
        self.position_embeddings = _Table(positions, hidden)
        self.token_type_embeddings = _Table(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class Bert(nn.Module):
    """BERT's encoder over input embeddings; parameter names as in the model's safetensors file."""

    def __init__(self, hidden: int, layers: int, heads: int, intermediate: int, positions: int, types: int, eps: float):
        super().__init__()
        self.embeddings = _Embeddings(hidden, positions, types, eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(hidden, heads, intermediate, eps) for _ in range(layers))

    def hidden_states(self, embeds: torch.Tensor, layers: int = 1) -> torch.Tensor:
        """(B, T, D) input embeddings -> the outputs of the last `layers` layers side by side, oldest
        first: (B, T, layers * D)."""
        T = embeds.shape[1]
        e = self.embeddings
        x = embeds + e.token_type_embeddings.weight[0]           # token type 0 everywhere
        x = e.LayerNorm(x + e.position_embeddings.weight[:T])
        outs = []
        for layer in self.encoder.layer:
            x = layer(x)
            outs.append(x)
        return outs[-1] if layers == 1 else torch.cat(outs[-layers:], dim=-1)


SUPPORTED = {"hidden_act": "gelu", "position_embedding_type": "absolute"}  # (transformers' defaults where absent)


def load_bert(lm_dir: Path) -> Bert | None:
    """The BERT in lm_dir (config.json + model.safetensors) as a frozen `Bert` in evaluation mode, or None
    when it is not one this module computes exactly as transformers does."""
    from safetensors import safe_open

    lm_dir = Path(lm_dir)
    try:
        cfg = json.loads((lm_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "bert" or any(cfg.get(k, v) != v for k, v in SUPPORTED.items()):
        return None
    if cfg.get("is_decoder") or cfg.get("add_cross_attention") or cfg.get("chunk_size_feed_forward", 0):
        return None
    try:
        dims = [int(cfg[k]) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                      "max_position_embeddings")]
        types, eps = int(cfg.get("type_vocab_size", 2)), float(cfg.get("layer_norm_eps", 1e-12))
    except (KeyError, TypeError, ValueError):
        return None
    if min(dims) <= 0 or types <= 0 or dims[0] % dims[2]:
        return None
    with torch.device("meta"):
        model = Bert(*dims, types, eps)
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(lm_dir / "model.safetensors"), framework="pt") as f:
            keys = set(f.keys())
            prefix = "" if keys >= set(wanted) else "bert."
            if not all(prefix + k in keys for k in wanted):
                return None
            tensors = {k: f.get_tensor(prefix + k) for k in wanted}
    except Exception:  # noqa: BLE001 - unreadable: let transformers say what is wrong
        return None
    if any(tuple(t.shape) != wanted[k] or t.dtype != torch.float32 for k, t in tensors.items()):
        return None
    model.load_state_dict(tensors, assign=True)
    return model.eval().requires_grad_(False)
