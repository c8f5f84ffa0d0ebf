"""Inference-time map variants of one trained detector, for ``tools/eval_variants.py``: fused maps at several
fusion sizes combined into one, and test-time augmentation (TTA) of the input.

Both reuse the trained heads as they are and fit nothing: a variant only changes how the heads' maps of a test
frame are computed and combined.

- Scales: the fused map ``F`` computed at each fusion size (``ModelConfig.fusion_size``: the distance maps upsampled
  to N x N before the paper's box filters), each brought to the largest size (bilinear) and combined pixel by pixel:
  ``mean`` or ``max`` of the raw maps, or ``nmean``, the mean of each map divided by its mean non-zero value (the
  normalisation ``fusion.pro_scores`` applies). The image score and pixel scores are then computed on the combined
  map as on ``F``.
- TTA: the input is transformed (pixels and cloud together), the backbones and heads run on it, and its fused map is
  transformed back onto the original pixels; the maps of the identity and each transform are averaged (raw ``F``:
  the same model, so the same scale). Transforms are exact on the model's square grids: ``hflip`` mirrors the columns
  and negates x (a mirror image of the part seen by the same camera: a right-hand thread becomes a left-hand one),
  ``vflip`` the rows and y, ``rot180`` both (a rotation of the part by 180 degrees about the camera's axis: rigid, so
  FPFH histograms are unchanged and the normals turn with the part). The backbones run once per transform.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from cmdr_ros.data.model_input import ModelInput
from cmdr_ros.model import fusion

#: per transform: the flipped pixel axes (0: rows, 1: columns of an [H, W] map) and the sign of x, y, z in the cloud
TRANSFORMS: dict[str, tuple[tuple[int, ...], tuple[float, float, float]]] = {
    "hflip": ((1,), (-1.0, 1.0, 1.0)),
    "vflip": ((0,), (1.0, -1.0, 1.0)),
    "rot180": ((0, 1), (-1.0, -1.0, 1.0)),
}
COMBINE = ("mean", "max", "nmean")


def _flip(x: torch.Tensor | None, axes: tuple[int, ...], lead: int) -> torch.Tensor | None:
    """``x`` flipped on the pixel ``axes`` (0 rows, 1 columns) of its dimensions ``lead`` and ``lead + 1``."""
    return None if x is None else torch.flip(x, [lead + a for a in axes])


def transform_input(inp: ModelInput, name: str) -> ModelInput:
    """``inp`` under the transform ``name`` (``TRANSFORMS``): RGB, cloud and masks flipped together, the cloud's
    coordinates re-signed (invalid points stay 0); ``frame`` and ``valid_input`` stay those of the frame as it came."""
    axes, sign = TRANSFORMS[name]
    xyz = _flip(inp.xyz, axes, 0)
    if xyz is not None:
        xyz = xyz * torch.tensor(sign, dtype=xyz.dtype)
    return dataclasses.replace(inp, rgb=_flip(inp.rgb, axes, 1), xyz=xyz, valid=_flip(inp.valid, axes, 0),
                               xyz_valid=_flip(inp.xyz_valid, axes, 0))


def map_back(fused: torch.Tensor, name: str) -> torch.Tensor:
    """A ``[B, S, S]`` map of the transformed input back on the original pixels (each transform is its own inverse)."""
    return _flip(fused, TRANSFORMS[name][0], fused.dim() - 2)


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
