"""Test-time transforms of a prepared frame (``ModelConfig.score_tta``): the frame's RGB, organized cloud and masks
transformed together, and a map of the transformed frame brought back onto the frame's pixels.

Each transform is exact on the model's square grids and is its own inverse: ``hflip`` mirrors the columns and
negates x (a mirror image of the part seen by the same camera: a right-hand thread becomes a left-hand one),
``vflip`` the rows and y, ``rot180`` both (the part turned by 180 degrees about the camera's axis: a rigid motion, so
FPFH histograms do not change and the normals turn with the part). Nothing is fitted: the trained heads score the
transformed frame as they score any frame.
"""
from __future__ import annotations

import dataclasses

import torch

from cmdr_ros.config import TTA_TRANSFORMS
from cmdr_ros.data.model_input import ModelInput

#: per transform: the flipped pixel axes (0: rows, 1: columns) and the factors of the cloud's x, y, z
TRANSFORMS: dict[str, tuple[tuple[int, ...], tuple[float, float, float]]] = {
    "hflip": ((1,), (-1.0, 1.0, 1.0)),
    "vflip": ((0,), (1.0, -1.0, 1.0)),
    "rot180": ((0, 1), (-1.0, -1.0, 1.0)),
}
assert tuple(TRANSFORMS) == TTA_TRANSFORMS


def _flip(x: torch.Tensor | None, axes: tuple[int, ...], lead: int) -> torch.Tensor | None:
    """``x`` flipped on the pixel ``axes`` (0 rows, 1 columns) of its dimensions ``lead`` and ``lead + 1``."""
    return None if x is None else torch.flip(x, [lead + a for a in axes])


def transform_input(inp: ModelInput, name: str) -> ModelInput:
    """``inp`` under the transform ``name``: RGB ``[3, S, S]``, cloud ``[R, R, 3]`` and masks flipped together, the
    cloud's coordinates multiplied by the transform's factors (invalid points stay 0); ``frame`` and ``valid_input``
    stay those of the frame as it came."""
    axes, factors = TRANSFORMS[name]
    xyz = _flip(inp.xyz, axes, 0)
    if xyz is not None:
        xyz = xyz * torch.tensor(factors, dtype=xyz.dtype)
    return dataclasses.replace(inp, rgb=_flip(inp.rgb, axes, 1), xyz=xyz, valid=_flip(inp.valid, axes, 0),
                               xyz_valid=_flip(inp.xyz_valid, axes, 0))


def transform_maps(maps: torch.Tensor, name: str) -> torch.Tensor:
    """``[..., S, S]`` maps of frames (masks, grid features) moved as the transform ``name`` moves the pixels."""
    return _flip(maps, TRANSFORMS[name][0], maps.dim() - 2)


def map_back(maps: torch.Tensor, name: str) -> torch.Tensor:
    """``[..., S, S]`` maps of transformed frames back on the frames' pixels (every transform is its own inverse)."""
    return transform_maps(maps, name)
