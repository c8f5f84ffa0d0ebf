"""The memory-bank branch: how far each pixel's feature lies from the nearest feature of a good training part.

PatchCore's idea (Roth et al., 2022), kept here as an optional branch beside CMDR-IAD's reconstruction and mapping
heads (``ModelConfig.memory_bank``; the ``lite3d`` preset uses it, the paper presets do not). The bank is a greedy
k-center coreset of the standardised grid features of the good training pixels (PatchCore's selection: each pick is
the pool feature farthest from those already picked, so rare good structure such as edges stays represented); the
distance is Euclidean on the standardised features. Written here (some 30 lines) rather than taken from anomalib,
whose PatchCore pulls in Lightning and its own data pipeline.
"""
from __future__ import annotations

import torch

# features drawn at random from the training pixels before the coreset selection: the selection's cost grows with
# pool size x bank size, and 100k pixels of 20 parts are plenty to pick a few thousand from
POOL = 100_000
# queries per block of the distance matrix: bounds its memory (block x bank x 4 bytes; 4096 x 2000 -> 33 MB)
BLOCK = 4096


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0, pool: int = POOL) -> torch.Tensor:
    """``size`` rows of ``features`` ``[N, C]`` by greedy k-center selection on a random pool of at most ``pool``
    rows (all rows when ``size >= N``). Deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    feats = features.float()
    if size >= len(feats):
        return feats.clone()
    if len(feats) > pool:
        feats = feats[torch.randperm(len(feats), generator=gen)[:pool]]
    # squared distances to the picked set, updated in place: a row times the [C, N] transpose (~10x faster here than
    # the [N, C] matrix times a column) into one reused buffer (fresh 100k-float temporaries cost more than the maths)
    cols = feats.T.contiguous()
    sq = (feats * feats).sum(1)[None]
    buf = torch.empty_like(sq)
    nearest = torch.full_like(sq, float("inf"))
    picked = [int(torch.randint(len(feats), (1,), generator=gen))]
    while len(picked) < size:
        i = picked[-1]
        torch.mm(feats[i:i + 1], cols, out=buf)
        buf.mul_(-2.0).add_(sq).add_(sq[0, i])
        torch.minimum(nearest, buf, out=nearest)
        picked.append(int(nearest.argmax()))
    return feats[picked].clone()


def nearest_distance(features: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per-pixel Euclidean distance of ``features`` ``[B, C, H, W]`` to the nearest row of ``bank`` ``[N, C]`` ->
    ``[B, H, W]``. Written as |a|^2 - 2ab + |b|^2 (a matrix product, which exports to ONNX and is fast), in blocks
    of ``BLOCK`` pixels."""
    b, c, h, w = features.shape
    q = features.permute(0, 2, 3, 1).reshape(-1, c)
    bank_t = bank.T.contiguous()
    bank_sq = (bank * bank).sum(1)
    out = []
    for i in range(0, q.shape[0], BLOCK):
        part = q[i:i + BLOCK]
        # min over the bank of |b|^2 - 2ab, then + |a|^2 (constant along the bank: added once per pixel)
        d2 = torch.addmm(bank_sq, part, bank_t, alpha=-2.0).amin(1) + (part * part).sum(1)
        out.append(d2.clamp_min(0).sqrt())
    return torch.cat(out).reshape(b, h, w)
