"""Inference-time map variants of one trained detector, for ``tools/eval_variants.py``: fused maps at several
fusion sizes combined into one, and test-time augmentation (TTA) of the input.

Both reuse the trained heads as they are and fit nothing: a variant only changes how the heads' maps of a test
frame are computed and combined.

- Scales: the fused map ``F`` computed at each fusion size (``ModelConfig.fusion_size``: the distance maps upsampled
  to N x N before the paper's box filters), each brought to the largest size (bilinear) and combined pixel by pixel:
  ``mean`` or ``max`` of the raw maps, or ``nmean``, the mean of each map divided by its mean non-zero value (the
  normalisation ``fusion.pro_scores`` applies). The image score and pixel scores are then computed on the combined
  map as on ``F``.
- TTA: the input is transformed (pixels and cloud together, ``cmdr_ros.model.tta``: ``hflip``, ``vflip``,
  ``rot180``), the backbones and heads run on it, and its fused map is brought back onto the original pixels; the
  maps of the identity and each transform are averaged (raw ``F``: the same model, so the same scale). The backbones
  run once per transform. ``ModelConfig.score_tta`` is the model's option for the image score.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from cmdr_ros.model import fusion

COMBINE = ("mean", "max", "nmean")


def combine_maps(maps: list[torch.Tensor], how: str) -> torch.Tensor:
    """``[B, S_i, S_i]`` maps brought to the largest S (bilinear) and combined pixel by pixel (``COMBINE``)."""
    size = max(m.shape[-1] for m in maps)
    up = [m if m.shape[-1] == size else
          F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0] for m in maps]
    if how == "nmean":
        up = [fusion.pro_scores(m) for m in up]
    stack = torch.stack(up)
    if how == "max":
        return stack.amax(0)
    if how in ("mean", "nmean"):
        return stack.mean(0)
    raise ValueError(f"unknown combination {how!r}: expected one of {', '.join(COMBINE)}")


def fused_at_scales(det, feats: dict[str, torch.Tensor], valid: torch.Tensor, scales: list[int | None],
                    how: str) -> torch.Tensor:
    """The fused map of ``feats`` at each fusion size of ``scales`` (None: the detector's), combined by ``how``."""
    base = det.config
    maps = []
    try:
        for s in scales:
            det.config = base if s is None else dataclasses.replace(base, fusion_size=s)
            maps.append(det.anomaly_maps(feats, valid)["fused"])
    finally:
        det.config = base
    return maps[0] if len(maps) == 1 else combine_maps(maps, how)
