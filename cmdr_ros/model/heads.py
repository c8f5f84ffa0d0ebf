"""The four learned CMDR-IAD heads, as the reference code builds them (layer order and parameter counts stated on
each class and tested; README, "The model").

All heads take per-pixel feature maps shaped ``[B, C, G, G]`` and return the same layout, so the
same code serves the paper's 224x224 grid (768-d DINO / 1152-d Point-MAE features) and small
CPU-friendly grids. Module structure and sizes reproduce the reference parameter counts exactly
(checked in ``test/test_heads.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmdr_ros.config import cross_modal, uses
from cmdr_ros.model.dropout import Dropout, attention


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def _to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H*W, C] -> [B, C, H, W]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class MappingMLP(nn.Module):
    """Cross-modal mapping ``in -> (in+out)/2 -> out`` applied to every pixel.

    Linear, GELU, [Linear, GELU, LayerNorm, Dropout, Linear, GELU, LayerNorm], Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        hidden = (in_dim + out_dim) // 2
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return _to_map(self.net(_to_tokens(x)), h, w)


class WindowedSelfAttention(nn.Module):
    """Multi-head self-attention inside consecutive windows of the flattened sequence.

    A sequence whose length is not a multiple of the window is padded; padded keys are masked out.
    Uses ``scaled_dot_product_attention`` (fused kernels) instead of an explicit softmax, except while training on CPU
    (``dropout.attention``).
    """

    def __init__(self, dim: int, num_heads: int, window: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.window, self.dropout = num_heads, window, dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        win = self.window
        pad = (-n) % win
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        nw = x.shape[1] // win
        qkv = self.qkv(x).reshape(b * nw, win, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [b*nw, heads, win, hd]
        mask = None
        if pad:
            valid = torch.arange(nw * win, device=x.device).reshape(nw, win) < n
            mask = valid.repeat(b, 1)[:, None, None, :]  # keys only
        out = attention(q, k, v, mask, self.dropout, self.training)
        out = out.transpose(1, 2).reshape(b, nw * win, c)[:, :n]
        return self.proj_drop(self.proj(out))


class WindowedTransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int = 8, window: int = 128, mlp_ratio: float = 2.0,
                 dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowedSelfAttention(dim, num_heads, window, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim), Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Reconstruction2D(nn.Module):
    """2D reconstruction decoder on the ``[B, dim, G, G]`` map (dim 768 in the paper).

    Per-pixel projection dim -> dim/2, one windowed-attention block over the flattened grid, three 3x3
    transposed convs (dim/2 -> 256 -> 128 -> dim/2 at the paper's size) with BatchNorm and GELU, and a
    per-pixel reconstruction MLP dim/2 -> 2*dim -> GELU -> Dropout -> dim -> LayerNorm (the reference's order;
    checkpoints of the layout without that Dropout are migrated by ``checkpoint.migrate``).
    """

    def __init__(self, dim: int, num_heads: int = 8, window: int = 128, dropout: float = 0.1,
                 conv_channels: tuple[int, int] | None = None):
        super().__init__()
        hid = dim // 2
        if num_heads > 1 and hid % num_heads:
            num_heads = math.gcd(hid, num_heads)
        c1, c2 = conv_channels or (max(8, hid * 2 // 3), max(8, hid // 3))
        self.proj = nn.Sequential(
            nn.Linear(dim, hid), nn.GELU(), nn.LayerNorm(hid), Dropout(dropout),
            nn.Linear(hid, hid), nn.GELU(), nn.LayerNorm(hid),
        )
        self.block = WindowedTransformerBlock(hid, num_heads, window, mlp_ratio=2.0, dropout=dropout)
        self.convs = nn.Sequential(
            nn.ConvTranspose2d(hid, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.GELU(),
            nn.ConvTranspose2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.GELU(),
            nn.ConvTranspose2d(c2, hid, 3, padding=1), nn.BatchNorm2d(hid), nn.GELU(),
        )
        self.recon = nn.Sequential(nn.Linear(hid, 2 * dim), nn.GELU(), Dropout(dropout), nn.Linear(2 * dim, dim),
                                   nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        t = self.block(self.proj(_to_tokens(x)))
        m = self.convs(_to_map(t, h, w))
        return _to_map(self.recon(_to_tokens(m)), h, w)


class SqueezeExcite1d(nn.Module):
    """Channel attention over a ``[B, C, L]`` sequence (reduction r)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        mid = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, mid), nn.ReLU(), nn.Linear(mid, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=2))[:, :, None]


class Reconstruction3D(nn.Module):
    """3D reconstruction decoder on the flattened ``[B, G*G, dim]`` sequence (dim 1152 in the paper).

    A Linear over the sequence axis L -> L/32 (GELU, LayerNorm, Dropout) and L/32 -> L/32 (GELU, LayerNorm; no
    Dropout after it, as in the reference's ``FeatureDecoder``), five stride-2
    transposed 1-D convs dim -> 2dim/3 -> 4dim/9 -> 2dim/9 -> dim/9 -> dim (BatchNorm+GELU, Tanh last)
    back to length L, then squeeze-and-excitation channel attention. Tied to the grid size: the
    sequence length L = G*G must be a multiple of 32 (G a multiple of 8).
    """

    def __init__(self, dim: int, grid: int, dropout: float = 0.1, se_reduction: int = 8,
                 channels: tuple[int, ...] | None = None):
        super().__init__()
        seq = grid * grid
        if seq % 32:
            raise ValueError(f"3D decoder needs a grid that is a multiple of 8, got {grid}")
        self.grid, short = grid, seq // 32
        self.seq_proj = nn.Sequential(
            nn.Linear(seq, short), nn.GELU(), nn.LayerNorm(short), Dropout(dropout),
            nn.Linear(short, short), nn.GELU(), nn.LayerNorm(short),
        )
        chans = channels or (dim, max(8, round(dim * 2 / 3)), max(8, round(dim * 4 / 9)),
                             max(8, round(dim * 2 / 9)), max(8, round(dim / 9)), dim)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.ConvTranspose1d(cin, cout, kernel_size=4, stride=2, padding=1))
            last = i == len(chans) - 2
            layers += [nn.Tanh()] if last else [nn.BatchNorm1d(cout), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.se = SqueezeExcite1d(dim, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h != self.grid or w != self.grid:
            raise ValueError(f"3D decoder built for a {self.grid}x{self.grid} grid, got {h}x{w}")
        seq = self.seq_proj(x.flatten(2))  # [B, C, L/32]
        return self.se(self.convs(seq)).reshape(b, c, h, w)


class CMDRHeads(nn.Module):
    """The heads a mode needs: ``rgbd`` all four, ``3d`` only ``rec3d``, ``2d`` only ``rec2d``."""

    def __init__(self, mode: str, dim2d: int | None, dim3d: int | None, grid: int, window: int = 128,
                 num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        self.mode = mode
        if uses(mode, "2d"):
            self.rec2d = Reconstruction2D(dim2d, num_heads=num_heads, window=window, dropout=dropout)
        if uses(mode, "3d"):
            self.rec3d = Reconstruction3D(dim3d, grid, dropout=dropout)
        if cross_modal(mode):
            self.map2to3 = MappingMLP(dim2d, dim3d, dropout)
            self.map3to2 = MappingMLP(dim3d, dim2d, dropout)

    def head_names(self) -> list[str]:
        return [n for n, _ in self.named_children()]

    def forward(self, f2d: torch.Tensor | None, f3d: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Predictions of every head: ``map2to3`` (target f3d), ``map3to2`` (target f2d), ``rec2d``, ``rec3d``."""
        out = {}
        if hasattr(self, "rec2d"):
            out["rec2d"] = self.rec2d(f2d)
        if hasattr(self, "rec3d"):
            out["rec3d"] = self.rec3d(f3d)
        if hasattr(self, "map2to3"):
            out["map2to3"] = self.map2to3(f2d)
            out["map3to2"] = self.map3to2(f3d)
        return out


HEAD_TARGET = {"rec2d": "2d", "rec3d": "3d", "map2to3": "3d", "map3to2": "2d"}
