"""Dropout for the heads whose CPU masks come from numpy's PCG64 generator instead of torch's.

Why our own: torch draws CPU dropout masks from its serial mt19937 generator at ~11-16 ns an element here (2 cores);
the lite rgbd training step spent ~19 of its ~95 ms drawing them (the 2D decoder's attention dropout alone is a
1M-element mask), while numpy's PCG64 gives 16 random bits an element in ~1.3 ns. The maths is dropout's: an element
is zeroed with probability ``round(p * 65536) / 65536`` (``p`` to 16 bits) and kept ones are scaled so the
expectation is unchanged. The seed of every mask is drawn from torch's global generator, so ``torch.manual_seed``
keeps training reproducible. CUDA tensors use torch's own dropout (its generator is fast there).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # resolution of the drop probability


def _keep_scale(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of ``shape``: 0 where dropped, ``1 / (1 - p')`` where kept (``p'`` = ``p`` to 16 bits)."""
    cut = round(p * _LEVELS)
    seed = int(torch.randint(0, 2 ** 62, (1,)))  # torch's global generator decides every mask
    bits = np.random.Generator(np.random.PCG64(seed)).integers(0, _LEVELS, math.prod(shape), dtype=np.uint16)
    keep = torch.from_numpy((bits >= cut).reshape(tuple(shape)))
    return keep.to(dtype).mul_(_LEVELS / (_LEVELS - cut))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``, with the mask drawn by numpy on CPU (module docstring)."""
    if not training or p <= 0:
        return x
    if x.device.type != "cpu" or round(p * _LEVELS) >= _LEVELS:
        return F.dropout(x, p, True)
    return x * _keep_scale(x.shape, p, x.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same state, same repr) drawing its CPU masks with :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float,
              training: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with dropout ``p`` on the attention weights while training. With dropout
    on CPU, PyTorch runs its plain (math) attention; this is that computation with the mask drawn by
    :func:`dropout`. Everywhere else (inference, CUDA) the fused kernels run."""
    if not (training and p > 0 and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p if training else 0.0)
    weights = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:  # True = attend, as in scaled_dot_product_attention
        weights = weights.masked_fill(~mask, float("-inf"))
    return dropout(weights.softmax(-1), p, True) @ v
