"""Point-MAE transformer encoder (Pang et al., ECCV 2022) as a frozen 3D feature extractor.

Module and parameter names follow the official ``MaskTransformer`` (``encoder``, ``pos_embed``,
``blocks.blocks.<i>``, ``norm``) so the release checkpoint's ``MAE_encoder.*`` tensors load 1:1
(see ``cmdr_ros.model.weights``). The CUDA-only helpers of the reference code (pointnet2 furthest point
sampling, KNN_CUDA, three_nn) are replaced by pure PyTorch functions that give the same indices on CPU
and GPU. Inference uses no masking and no randomness (no DropPath, FPS from a fixed start): a fixed input gives
a fixed output. The group encoder's BatchNorm uses either its running statistics or, as the reference does (it
runs Point-MAE in train mode), the statistics of each frame's groups (``Encoder.frame_stats``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: pointnet2's FPS kernel ignores points whose squared norm is at most this (zero padding).
_FPS_ORIGIN_EPS = 1e-3  # pointnet2's kernel: `if (mag <= 1e-3) continue;`
#: default budget for one chunk of a query-by-reference distance matrix (elements, ~64 MB in float32).
_CHUNK_ELEMS = 1 << 24


def farthest_point_sample(xyz: torch.Tensor, npoint: int, start_idx: int = 0) -> torch.Tensor:
    """Indices ``[B, npoint]`` of iterative farthest point sampling of ``xyz`` ``[B, N, 3]``.

    Same result as pointnet2's CUDA ``furthest_point_sample`` used by Point-MAE and M3DM: start at
    ``start_idx``; each next index is the point whose squared distance to the selected set (the minimum
    over selected points, computed as dx*dx + dy*dy + dz*dz in the input dtype) is largest, ties going
    to the lowest index; points near the origin (squared norm <= 1e-3, the kernel's own test: a ball of radius 0.032
    around the origin, i.e. around the centre of a normalised cloud) are never picked after the start. One loop over ``npoint``, vectorised over B and N.

    If fewer than ``npoint`` distinct points exist (N < npoint), every remaining distance is 0 once all
    are selected and the sampler keeps returning the lowest-index point, so the output keeps its fixed
    shape with repeated indices (as the CUDA kernel does).
    """
    if xyz.ndim != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"farthest_point_sample expects [B, N, 3] points, got {tuple(xyz.shape)}")
    b, n, _ = xyz.shape
    if n == 0 or not 0 <= start_idx < n:
        raise ValueError(f"farthest_point_sample needs start_idx in [0, {n}), got {start_idx}")
    # contiguous per-axis planes and preallocated buffers: strided [..., i] views make each step ~40x slower
    axes = [a.contiguous() for a in xyz.unbind(-1)]
    d, t = torch.empty_like(axes[0]), torch.empty_like(axes[0])

    def sq_dist_to(c: torch.Tensor) -> torch.Tensor:
        """Squared distances of all points to c ``[B, 3]`` into ``d``, summed x, y, z in order."""
        for a, axis in enumerate(axes):
            torch.sub(axis, c[:, a:a + 1], out=t)
            if a == 0:
                torch.mul(t, t, out=d)
            else:
                d.add_(t.mul_(t))
        return d

    # running min squared distance to the selected set; -1 keeps origin points out of every argmax
    dist = sq_dist_to(torch.zeros(b, 3, dtype=xyz.dtype, device=xyz.device))
    dist = torch.where(dist <= _FPS_ORIGIN_EPS, torch.full_like(dist, -1.0), torch.full_like(dist, 1e10))
    idx = torch.empty(b, npoint, dtype=torch.long, device=xyz.device)
    cur = torch.full((b,), start_idx, dtype=torch.long, device=xyz.device)
    for i in range(npoint):
        idx[:, i] = cur
        if i == npoint - 1:
            break
        torch.minimum(dist, sq_dist_to(xyz.gather(1, cur.view(b, 1, 1).expand(b, 1, 3)).squeeze(1)), out=dist)
        cur = dist.argmax(dim=1)
    return idx


def _rows_per_chunk(n_ref: int, batch: int, chunk_elems: int) -> int:
    return max(1, chunk_elems // max(1, n_ref * batch))


def knn_indices(ref: torch.Tensor, query: torch.Tensor, k: int, chunk_elems: int = _CHUNK_ELEMS) -> torch.Tensor:
    """Indices ``[B, M, k]`` of the k nearest ``ref`` points ``[B, N, 3]`` of each ``query`` ``[B, M, 3]``,
    nearest first.

    Distances are computed directly (not via the |a|^2 + |b|^2 - 2ab expansion, which loses the
    millimetre neighbourhoods of metre-scale coordinates in float32), in chunks of queries so that a
    chunk's distance matrix has at most ``chunk_elems`` entries. If N < k the N neighbours are repeated
    cyclically to keep the shape; max-pooling group encoders are unchanged by such repeats.
    """
    b, n, _ = ref.shape
    kk = min(k, n)
    rows = _rows_per_chunk(n, b, chunk_elems)
    parts = []
    for q in query.split(rows, dim=1):
        d = torch.cdist(q, ref, compute_mode="donot_use_mm_for_euclid_dist")
        parts.append(d.topk(kk, dim=-1, largest=False, sorted=True).indices)
    idx = torch.cat(parts, dim=1)
    if kk < k:
        idx = idx[..., torch.arange(k, device=idx.device) % kk]
    return idx


def interpolate_to_points(points: torch.Tensor, centers: torch.Tensor, k: int = 3, eps: float = 1e-8,
                          chunk_elems: int = _CHUNK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-distance interpolation from group centres ``[G, 3]`` to points ``[N, 3]``.

    Returns the indices ``[N, k]`` of the k nearest centres and weights ``[N, k]`` summing to 1, so that
    ``(center_feats[idx] * weights[..., None]).sum(1)`` is the per-point feature. As in M3DM's
    ``interpolating_points`` (and pointnet2's three_nn, whose kernel returns squared distances), the
    weight is ``1 / (d^2 + eps)`` with d the Euclidean distance, i.e. inverse *squared* distance. Chunked
    over points for memory.
    """
    if centers.shape[0] < k:
        raise ValueError(f"interpolate_to_points needs at least k={k} centres, got {centers.shape[0]}")
    rows = _rows_per_chunk(centers.shape[0], 1, chunk_elems)
    idx_parts, w_parts = [], []
    for p in points.split(rows, dim=0):
        d = torch.cdist(p, centers, compute_mode="donot_use_mm_for_euclid_dist")
        dk, ik = d.topk(k, dim=-1, largest=False, sorted=True)
        recip = 1.0 / (dk * dk + eps)
        idx_parts.append(ik)
        w_parts.append(recip / recip.sum(dim=-1, keepdim=True))
    return torch.cat(idx_parts), torch.cat(w_parts)


class Group(nn.Module):
    """FPS centres and kNN neighbourhoods; each neighbourhood is expressed relative to its centre."""

    def __init__(self, num_group: int, group_size: int) -> None:
        super().__init__()
        self.num_group = num_group
        self.group_size = group_size

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyz [B, N, 3]`` -> (neighborhood ``[B, G, S, 3]`` centred, center ``[B, G, 3]``)."""
        batch = torch.arange(xyz.shape[0], device=xyz.device)
        center = xyz[batch[:, None], farthest_point_sample(xyz, self.num_group)]
        idx = knn_indices(xyz, center, self.group_size)
        neighborhood = xyz[batch[:, None, None], idx]
        return neighborhood - center.unsqueeze(2), center


class Encoder(nn.Module):
    """Mini-PointNet group embedding: 3 -> 128 -> 256, global max concatenated, 512 -> 512 -> C, max.

    ``frame_stats``: BatchNorm normalises with the statistics of the input's own groups (all B*G groups at once, as
    the reference's train-mode BatchNorm does) and never updates the running statistics, in train and eval mode.
    Off: the module's own mode decides (eval: the running statistics)."""

    #: groups per forward chunk with running statistics (bounds memory; BatchNorm is per-sample there, so exact)
    eval_chunk = 256

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.frame_stats = False
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, encoder_channel, 1))

    def _run(self, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not self.frame_stats:
            return seq(x)
        for layer in seq:
            if isinstance(layer, nn.BatchNorm1d):  # batch statistics, running buffers neither read nor written
                x = F.batch_norm(x, None, None, layer.weight, layer.bias, training=True, eps=layer.eps)
            else:
                x = layer(x)
        return x

    def _embed(self, groups: torch.Tensor) -> torch.Tensor:
        feature = self._run(self.first_conv, groups)  # [n, 256, S]
        global_feat = feature.max(dim=2, keepdim=True).values
        feature = torch.cat([global_feat.expand(-1, -1, groups.shape[2]), feature], dim=1)
        return self._run(self.second_conv, feature).max(dim=2).values

    def forward(self, point_groups: torch.Tensor) -> torch.Tensor:
        """``[B, G, S, 3]`` -> ``[B, G, encoder_channel]``."""
        bs, g, s, _ = point_groups.shape
        groups = point_groups.reshape(bs * g, s, 3).transpose(1, 2)
        if self.training or self.frame_stats:  # batch statistics need every group in one pass
            out = self._embed(groups)
        else:
            out = torch.cat([self._embed(c) for c in groups.split(self.eval_chunk)])
        return out.reshape(bs, g, self.encoder_channel)


class Mlp(nn.Module):
    """Transformer feed-forward: Linear -> GELU -> Linear."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention, fused qkv projection without bias, scale head_dim^-0.5."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)) (MLP ratio 4, GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Stack of blocks; the positional embedding is added to the input of every block (as in Point-MAE)."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, fetch_idx: Sequence[int]) -> list[torch.Tensor]:
        """Run all blocks and return the outputs of the blocks listed in ``fetch_idx`` (in that order)."""
        outputs = []
        for block in self.blocks:
            x = block(x + pos)
            outputs.append(x)
        return [outputs[i] for i in fetch_idx]


class PointMAEEncoder(nn.Module):
    """Point-MAE encoder as a feature extractor: points ``[B, N, 3]`` -> (centres ``[B, G, 3]``,
    features ``[B, G, len(fetch_idx) * trans_dim]``).

    Features are the final LayerNorm applied to the outputs of blocks ``fetch_idx`` (paper: blocks 4, 8,
    12 -> 1152-d), concatenated. Defaults are the released ShapeNet model (21,825,024 parameters).
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, num_heads: int = 6, num_group: int = 1024,
                 group_size: int = 128, encoder_dims: int = 384, fetch_idx: Sequence[int] = (3, 7, 11)) -> None:
        super().__init__()
        if encoder_dims != trans_dim:
            raise ValueError(f"encoder_dims ({encoder_dims}) must equal trans_dim ({trans_dim}) for Point-MAE")
        if not fetch_idx or any(not 0 <= i < depth for i in fetch_idx):
            raise ValueError(f"fetch_idx {tuple(fetch_idx)} must index blocks 0..{depth - 1}")
        self.trans_dim, self.num_group, self.group_size = trans_dim, num_group, group_size
        self.fetch_idx = tuple(fetch_idx)
        self.out_dim = len(self.fetch_idx) * trans_dim
        self.group_divider = Group(num_group, group_size)
        self.encoder = Encoder(encoder_dims)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads)
        self.norm = nn.LayerNorm(trans_dim)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"PointMAEEncoder expects points [B, N, 3], got {tuple(points.shape)}")
        neighborhood, center = self.group_divider(points)
        tokens = self.encoder(neighborhood)
        fetched = self.blocks(tokens, self.pos_embed(center), self.fetch_idx)
        return center, torch.cat([self.norm(x) for x in fetched], dim=-1)
