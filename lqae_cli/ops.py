"""Elementwise steps shared by the model's transformer blocks (`model.py`) and the frozen LM's layers
(`bert.py`): written in place where there is no autograd, which gives the same numbers without new
activation-sized buffers."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def in_place_ok(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether y may be overwritten by an elementwise result of x and y: no autograd to keep it for, and
    the result would have y's dtype and shape anyway (under autocast a bf16 y and an fp32 x make fp32)."""
    return not torch.is_grad_enabled() and x.dtype == y.dtype and x.shape == y.shape


def residual(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y, written into y where in_place_ok: the same numbers (IEEE addition commutes) without a
    new activation-sized buffer and its trip through memory."""
    return y.add_(x) if in_place_ok(x, y) else x + y


def gelu(h: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU of a fresh activation h (one nobody else holds), computed in place where there is no
    autograd: the same kernel, so the same numbers, without a new buffer."""
    return F.gelu(h, approximate=approximate) if torch.is_grad_enabled() else torch.ops.aten.gelu_(h, approximate=approximate)
