"""CMDR-IAD anomaly scoring as pure functions: the paper's test-time scoring, each formula stated on its function
(README, "The model", for where the project follows the reference code instead of the paper's text).

Every map is a tensor shaped ``[B, H, W]`` (or ``[H, W]``, treated as a batch of one); nothing here holds
state, so the node, the CLI and the benchmarks share one definition of the maths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x[None], True) if x.dim() == 2 else (x, False)


def feature_distance(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pixel ``|| a/|a| - b/|b| ||_2`` of ``[B, C, H, W]`` feature maps -> ``[B, H, W]``; 0 where invalid."""
    d = torch.linalg.vector_norm(F.normalize(a, dim=1) - F.normalize(b, dim=1), dim=1)
    return d if valid is None else d * valid.to(d.dtype)


def box_filter(x: torch.Tensor, size: int, passes: int = 1) -> torch.Tensor:
    """``passes`` rounds of a ``size`` x ``size`` mean filter (stride 1, zero padding counted, like avg_pool2d)."""
    y, squeeze = _batched(x)
    y = y[:, None]
    for _ in range(passes):
        y = F.avg_pool2d(y, size, stride=1, padding=size // 2)
    y = y[:, 0]
    return y[0] if squeeze else y


def smooth_rec2d(d_rec2d: torch.Tensor) -> torch.Tensor:
    """The 2D reconstruction distance is smoothed first: 3 passes of 5x5, then 2 passes of 7x7."""
    return box_filter(box_filter(d_rec2d, 5, 3), 7, 2)


def smooth_fused(fused: torch.Tensor) -> torch.Tensor:
    """Final smoothing of the fused map: 5 passes of 5x5, then 3 passes of 7x7."""
    return box_filter(box_filter(fused, 5, 5), 7, 3)


def _per_image_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1).view(-1, *([1] * (x.dim() - 1)))


def reliability_gated_mapping_anomaly(d_map2d: torch.Tensor, d_map3d: torch.Tensor) -> torch.Tensor:
    """A_map = sigmoid(W * J) * J with J = d_map2d * d_map3d and W = 4 + 2 s / (mean(s) + 1e-8),
    where s = sqrt(avgpool7x7((J - mean(J))^2)) is the local deviation of J (means per image)."""
    j, squeeze = _batched(d_map2d * d_map3d)
    centred = (j - _per_image_mean(j)) ** 2
    s = torch.sqrt(F.avg_pool2d(centred[:, None], 7, stride=1, padding=3)[:, 0])
    w = 4.0 + 2.0 * s / (_per_image_mean(s) + EPS)
    a = torch.sigmoid(w * j) * j
    return a[0] if squeeze else a


def confidence_weighted_reconstruction_anomaly(d_rec2d: torch.Tensor, d_rec3d: torch.Tensor,
                                               beta: float = 0.3) -> torch.Tensor:
    """A_rec = (w2 d2 + w3 d3) / (w2 + w3 + 1e-8) with w = exp(-beta d)."""
    w2, w3 = torch.exp(-beta * d_rec2d), torch.exp(-beta * d_rec3d)
    return (w2 * d_rec2d + w3 * d_rec3d) / (w2 + w3 + EPS)


def fuse_rgbd(d_map2d: torch.Tensor, d_map3d: torch.Tensor, d_rec2d: torch.Tensor, d_rec3d: torch.Tensor,
              valid: torch.Tensor, beta: float = 0.3) -> torch.Tensor:
    """Full CMDR-IAD fusion: F = A_map * A_rec(smoothed d_rec2d, d_rec3d), zeroed at invalid pixels, smoothed."""
    a_map = reliability_gated_mapping_anomaly(d_map2d, d_map3d)
    a_rec = confidence_weighted_reconstruction_anomaly(smooth_rec2d(d_rec2d), d_rec3d, beta)
    return smooth_fused(a_map * a_rec * valid.to(a_map.dtype))


def anomaly_map_3d(d_rec3d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """3D-only mode: the 3D reconstruction distance, zeroed at invalid pixels, one 5x5 box pass."""
    return box_filter(d_rec3d * valid.to(d_rec3d.dtype), 5, 1)


def anomaly_map_2d(d_rec2d: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """2D-only mode: the 2D reconstruction distance with its paper smoothing, zeroed at invalid pixels."""
    return smooth_rec2d(d_rec2d * valid.to(d_rec2d.dtype)) * valid.to(d_rec2d.dtype)


def memory_bank_gate(fused: torch.Tensor, d_banks: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """The memory-bank branch's gate (``ModelConfig.memory_bank``): F_bank = F * prod over modalities of box5(D_m),
    D_m the distance of each pixel's feature to the nearest good one (``memory_bank.nearest_distance``), zeroed at
    invalid pixels and smoothed by one 5x5 box pass like the 3D-only map. A product, as CMDR-IAD fuses its mapping
    and reconstruction anomalies: a pixel scores high only where the heads and the bank both find it unlike the
    good parts, and no scale between the two has to be fitted."""
    v = valid.to(fused.dtype)
    out = fused
    for d in d_banks:
        out = out * box_filter(d * v, 5, 1)
    return out


def _nonzero_mean(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    nz = flat != 0
    return (flat * nz).sum(1) / nz.sum(1).clamp_min(1)


def image_score(fused: torch.Tensor) -> torch.Tensor:
    """max(F) / sqrt(mean of the non-zero values of F), per image -> ``[B]`` (0 for an all-zero map)."""
    f, squeeze = _batched(fused)
    denom = torch.sqrt(_nonzero_mean(f))
    s = torch.where(denom > 0, f.flatten(1).amax(1) / denom.clamp_min(EPS), torch.zeros_like(denom))
    return s[0] if squeeze else s


def pixel_scores(fused: torch.Tensor) -> torch.Tensor:
    """Per-image normalised pixel scores for P-AUROC: F / sqrt(mean(F))."""
    f, squeeze = _batched(fused)
    out = f / torch.sqrt(_per_image_mean(f)).clamp_min(EPS)
    return out[0] if squeeze else out


def sqrt_nonzero_scores(fused: torch.Tensor) -> torch.Tensor:
    """The reference's 3D-only pixel scores, for P-AUROC and AUPRO alike: F / (sqrt(mean of non-zero F) + 1e-6)."""
    f, squeeze = _batched(fused)
    out = f / (torch.sqrt(_nonzero_mean(f)) + 1e-6).view(-1, 1, 1)
    return out[0] if squeeze else out


def normalized_scores(fused: torch.Tensor, norm: str, metric: str) -> torch.Tensor:
    """Per-image pixel scores of ``metric`` ("p_auroc" or "aupro") under ``config.pixel_norm`` ``norm``: "split"
    (``pixel_scores`` for P-AUROC, ``pro_scores`` for AUPRO) or "sqrt_nonzero" (``sqrt_nonzero_scores`` for both)."""
    if norm == "sqrt_nonzero":
        return sqrt_nonzero_scores(fused)
    if norm != "split":
        raise ValueError(f"unknown pixel normalisation {norm!r}")
    return pixel_scores(fused) if metric == "p_auroc" else pro_scores(fused)


def pro_scores(fused: torch.Tensor) -> torch.Tensor:
    """Per-image normalised pixel scores for AUPRO: F / mean of the non-zero values of F."""
    f, squeeze = _batched(fused)
    out = f / _nonzero_mean(f).clamp_min(EPS).view(-1, 1, 1)
    return out[0] if squeeze else out
