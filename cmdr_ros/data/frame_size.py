"""Frames larger than the training data brought down to its size before the expensive steps (``fit_frame``).

The model was trained on MVTec 3D-AD style frames of at most ``MAX_SIDE`` pixels a side (800x800 and 400x400 tiffs),
background-removed at that size and then resized to the model's grids (``model_input.prepare_input``). A sensor with
more pixels (an industrial 3D camera's 1920x1200) is first brought to at most ``MAX_SIDE`` on its longer side, the
aspect ratio kept, with the resampling the training pipeline uses for each kind of data (``preprocess``): nearest
neighbour for the organized cloud (every point one the sensor measured, never a blend of a part's edge with the
table behind it), bicubic with antialiasing for the colour image. A frame within ``MAX_SIDE`` passes unchanged.

``prepare_input`` (the node, ``cmdr predict``, ``cmdr bag eval``, training) and ``cmdr bag to-dataset`` call it, so
the background removal of a frame of such a sensor sees the same pixels on the cell, offline and in the dataset
recorded from it.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cmdr_ros.data.preprocess import resize_nearest_to

# The longest side of the training data (MVTec 3D-AD's 800x800 frames): larger frames are brought to it
MAX_SIDE = 800


def fitted_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) of a ``height`` x ``width`` frame brought to at most ``max_side`` on its longer side (aspect
    ratio kept, each side rounded, at least 1); the size itself when it is within ``max_side``."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    longest = max(height, width)
    if longest <= max_side:
        return int(height), int(width)
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_xyz(xyz: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """An HxWx3 organized cloud at ``fitted_size``: nearest neighbour (the input itself when it fits)."""
    h, w = fitted_size(*xyz.shape[:2], max_side)
    return xyz if (h, w) == xyz.shape[:2] else resize_nearest_to(xyz, h, w)


def fit_rgb(rgb: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """A uint8 HxWx3 image at ``fitted_size``: bicubic with antialiasing, rounded to uint8 as ``resize_rgb`` does
    (torchvision's reproduction of PIL's resize), the input itself when it fits."""
    h, w = fitted_size(*rgb.shape[:2], max_side)
    if (h, w) == rgb.shape[:2]:
        return rgb
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    out = TF.resize(t, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())


def fit_frame(rgb: np.ndarray | None, xyz: np.ndarray | None,
              max_side: int = MAX_SIDE) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rgb, xyz) each at ``fitted_size`` of its own shape (None stays None). Pixel-aligned inputs stay aligned;
    an input fitted already passes unchanged, so fitting twice is fitting once."""
    return (None if rgb is None else fit_rgb(rgb, max_side)), (None if xyz is None else fit_xyz(xyz, max_side))
