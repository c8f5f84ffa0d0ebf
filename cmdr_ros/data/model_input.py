"""One raw frame brought to the model's grids: ``prepare_input`` -> ``ModelInput``.

A frame larger than the training data is first brought to its size (``frame_size.fit_frame``), then background
removal of the cloud (unless done already), square padding and resizing to the grid (xyz, valid mask) and to the 2D
backbone's input size (RGB); results map back to the frame as it came (``ModelInput.frame``, ``valid_input``). Depends on the config and the data helpers only; the model
(``cmdr_ros.model.detector``) consumes ``ModelInput`` and never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig
from cmdr_ros.data.background import remove_background
from cmdr_ros.data.frame_size import MAX_SIDE, fit_frame
from cmdr_ros.data.preprocess import SquareFrame, resize_nearest, resize_nearest_to, resize_rgb
from cmdr_ros.geometry import valid_mask


@dataclass
class ModelInput:
    """One frame ready for the backbones (all tensors on the CPU)."""

    rgb: torch.Tensor | None  # [3, S, S] in [0, 1]
    xyz: torch.Tensor | None  # [R, R, 3], R = config.xyz_size or the grid G: what the 3D backbone sees
    valid: torch.Tensor  # [G, G] bool
    frame: SquareFrame  # geometry of the input as it came (before ``fit_frame``), to map results back
    valid_input: np.ndarray  # [H, W] bool valid mask at the input resolution (as it came)
    xyz_valid: torch.Tensor | None = None  # [R, R] bool, the valid points of ``xyz`` when R != G (else ``valid``)

    @property
    def points_valid(self) -> torch.Tensor:
        """The valid mask of ``xyz`` (the points the 3D backbone may use)."""
        return self.valid if self.xyz_valid is None else self.xyz_valid


def working_side(config: ModelConfig) -> int:
    """The longest side a frame keeps before background removal: the training data's (``frame_size.MAX_SIDE``), or
    the model's largest input when that is larger."""
    inputs = [config.grid, config.xyz_size or 0, config.fusion_size or 0, config.rgb_size if config.uses_2d else 0]
    return max(MAX_SIDE, *inputs)


def prepare_input(rgb: np.ndarray | None, xyz: np.ndarray | None, config: ModelConfig,
                  background_removed: bool = False) -> ModelInput:
    """Bring a raw frame (RGB uint8 HxWx3, xyz float HxWx3 metres with invalid = 0) to the model's grids.

    A frame larger than ``working_side`` is first brought to it (``fit_frame``: nearest for xyz, bicubic for RGB).
    The xyz map goes through the configured background removal unless ``background_removed`` says the
    caller already did it (the dataset cache, which may hold it fitted already), then both are square-padded (xyz
    with zeros, RGB with its edge values, as the reference) and resized. ``frame`` and ``valid_input`` stay those of
    the frame as it came.
    """
    if config.uses_3d and xyz is None:
        raise CmdrError(f"mode '{config.mode}' needs a point cloud (xyz), none was given")
    if config.uses_2d and rgb is None:
        raise CmdrError(f"mode '{config.mode}' needs an RGB image, none was given")
    if rgb is not None and (rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8):
        raise CmdrError(f"RGB image must be HxWx3 uint8, got shape {rgb.shape} dtype {rgb.dtype}")
    if xyz is not None and (xyz.ndim != 3 or xyz.shape[2] != 3):
        raise CmdrError(f"xyz map must be HxWx3, got shape {xyz.shape}")
    if rgb is not None and xyz is not None and rgb.shape[:2] != xyz.shape[:2]:
        raise CmdrError(f"RGB {rgb.shape[:2]} and xyz {xyz.shape[:2]} are not pixel-aligned (sizes differ)")
    h, w = (rgb if rgb is not None else xyz).shape[:2]
    frame = SquareFrame.of(h, w)
    g = config.grid
    rgb, xyz = fit_frame(rgb, xyz, working_side(config))

    xyz_t = xyz_valid = None
    if xyz is not None:
        clean = xyz if background_removed else remove_background(xyz, config.preprocess)
        valid_input = valid_mask(clean)
        if valid_input.shape != (h, w):
            valid_input = resize_nearest_to(valid_input, h, w)
        padded = SquareFrame.of(*clean.shape[:2]).pad(clean)
        small = resize_nearest(padded, g).astype(np.float32)
        small_valid = valid_mask(small)
        if config.uses_3d and not small_valid.any():
            raise CmdrError("the point cloud has no valid point left after preprocessing (all-invalid frame)")
        valid = torch.from_numpy(small_valid)
        if config.uses_3d:
            side = config.xyz_size or g
            pts_map, pts_valid = small, small_valid
            if side != g:
                pts_map = resize_nearest(padded, side).astype(np.float32)
                pts_valid = valid_mask(pts_map)
                xyz_valid = torch.from_numpy(pts_valid)
            if config.normalize_points and pts_valid.any():
                pts = pts_map[pts_valid]
                lo, hi = pts.min(0), pts.max(0)
                scale = max(float((hi - lo).max()) / 2, 1e-9)
                pts_map = np.where(pts_valid[..., None], (pts_map - (lo + hi) / 2) / scale, 0).astype(np.float32)
            xyz_t = torch.from_numpy(pts_map)
    else:
        valid_input = np.ones((h, w), bool)
        valid = torch.ones(g, g, dtype=torch.bool)
    rgb_t = None
    if config.uses_2d:
        square = SquareFrame.of(*rgb.shape[:2]).pad_edge(rgb)
        rgb_t = torch.from_numpy(resize_rgb(square, config.rgb_size)).permute(2, 0, 1).contiguous()
    return ModelInput(rgb_t, xyz_t, valid, frame, valid_input, xyz_valid)


def prepare_chunk(points: np.ndarray, config: ModelConfig) -> ModelInput:
    """One chunk of the "chunks" pipeline (``cmdr_ros.data.scans.chunk_scan``: ``grid * grid`` points, already
    scaled per axis) as the model's input: the points in sequence order laid out row by row as the grid, every
    cell valid (a point scaled to the origin is a point, not the 'no measurement' marker)."""
    g = config.grid
    pts = np.asarray(points, dtype=np.float32)
    if pts.shape != (g * g, 3):
        raise CmdrError(f"a chunk of this model holds {g * g} points (Nx3), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise CmdrError("the chunk holds non-finite coordinates")
    return ModelInput(None, torch.from_numpy(pts.reshape(g, g, 3).copy()), torch.ones(g, g, dtype=torch.bool),
                      SquareFrame.of(g, g), np.ones((g, g), bool))
