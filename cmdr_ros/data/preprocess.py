"""The paper's input preprocessing (MVTec 3D-AD protocol), after background removal (``background.py``).

* ``SquareFrame``: centred padding to a square and the way back, so anomaly maps computed on the square grid
  can be returned at the input resolution: zeros for xyz (the reference's zero-padded cloud), the edge values
  for RGB and ground-truth masks (the reference pads them with ``edge``).
* Resizing: bicubic (antialiased, PIL-like) for RGB, nearest for xyz and masks, ImageNet normalisation (frames
  larger than the training data are first brought to its size the same way: ``frame_size.fit_frame``).
* ``prepare_xyz``: background removal, then the square padding.
* ``PreprocessCache``: background removal costs time per sample, so its result is cached on disk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cmdr_ros import CmdrError
from cmdr_ros.config import PreprocessConfig
from cmdr_ros.data.background import remove_background

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PreprocessConfig fields that only decide whether a cloud is refused, never what comes out
_REFUSAL_LIMITS = ("max_points_per_cell", "max_dbscan_pairs")
# PreprocessConfig fields that never change what comes out: not part of a cache key
_NOT_IN_RESULT = _REFUSAL_LIMITS + ("cluster",)


@dataclass(frozen=True)
class SquareFrame:
    """Centred padding of an ``height`` x ``width`` image to ``side`` x ``side`` (side = max(h, w))."""

    height: int
    width: int

    @classmethod
    def of(cls, h: int, w: int) -> SquareFrame:
        if h < 1 or w < 1:
            raise ValueError(f"image size must be positive, got {h}x{w}")
        return cls(int(h), int(w))

    @property
    def side(self) -> int:
        return max(self.height, self.width)

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    def pad(self, arr: np.ndarray, fill: float = 0) -> np.ndarray:
        """HxW or HxWxC -> side x side (x C), the image centred, the rest ``fill``."""
        if arr.shape[:2] != (self.height, self.width):
            raise ValueError(f"expected a {self.height}x{self.width} array, got shape {arr.shape}")
        out = np.full((self.side, self.side) + arr.shape[2:], fill, dtype=arr.dtype)
        out[self.top:self.top + self.height, self.left:self.left + self.width] = arr
        return out

    def pad_edge(self, arr: np.ndarray) -> np.ndarray:
        """HxW or HxWxC -> side x side (x C), the image centred, each margin pixel a copy of the nearest edge pixel
        (the reference's padding of RGB images and ground-truth masks)."""
        if arr.shape[:2] != (self.height, self.width):
            raise ValueError(f"expected a {self.height}x{self.width} array, got shape {arr.shape}")
        rows = (self.top, self.side - self.height - self.top)
        cols = (self.left, self.side - self.width - self.left)
        return np.pad(arr, (rows, cols) + ((0, 0),) * (arr.ndim - 2), mode="edge")

    def unpad(self, arr_side: np.ndarray) -> np.ndarray:
        """side x side (x C) -> the original HxW (x C) window (a view of the input)."""
        if arr_side.shape[:2] != (self.side, self.side):
            raise ValueError(f"expected a {self.side}x{self.side} array, got shape {arr_side.shape}")
        return arr_side[self.top:self.top + self.height, self.left:self.left + self.width]

    def to_input(self, map_grid: np.ndarray | torch.Tensor, interpolation: str = "bilinear") -> np.ndarray:
        """A GxG map on the square grid -> float32 HxW at input resolution (resize to side, then crop)."""
        if isinstance(map_grid, torch.Tensor):
            map_grid = map_grid.detach().cpu().numpy()
        if map_grid.ndim != 2 or map_grid.shape[0] != map_grid.shape[1]:
            raise ValueError(f"expected a square GxG map, got shape {map_grid.shape}")
        if interpolation == "nearest":
            full = resize_nearest(map_grid.astype(np.float32), self.side)
        elif interpolation == "bilinear":
            t = torch.from_numpy(np.ascontiguousarray(map_grid, dtype=np.float32))[None, None]
            full = F.interpolate(t, size=(self.side, self.side), mode="bilinear", align_corners=False)[0, 0].numpy()
        else:
            raise ValueError(f"unknown interpolation '{interpolation}': expected 'bilinear' or 'nearest'")
        return np.ascontiguousarray(self.unpad(full))


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 (already square) -> float32 size x size x 3 in [0, 1].

    Bicubic with antialiasing on the uint8 tensor, which is how torchvision reproduces PIL's
    ``Image.resize(BICUBIC)`` that the reference pipeline uses (rounded and clamped to 0..255).
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {rgb.dtype} {rgb.shape}")
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    out = TF.resize(t, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.permute(1, 2, 0).numpy().astype(np.float32) / 255.0


def normalize_imagenet(rgb01: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) in [0, 1] -> ImageNet mean/std normalised (new tensor, same dtype and device)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb01.dtype, device=rgb01.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb01.dtype, device=rgb01.device).view(3, 1, 1)
    return (rgb01 - mean) / std


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index per output index, computed exactly as torch's ``interpolate(mode='nearest')`` does
    (float32 scale in/out, floor, clamp), so both give identical results for every size."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    """HxW or HxWxC (any dtype) -> size x size (x C) by nearest neighbour (torch 'nearest' semantics)."""
    return resize_nearest_to(arr, size, size)


def resize_nearest_to(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxW or HxWxC (any dtype) -> height x width (x C) by nearest neighbour (torch 'nearest' semantics)."""
    rows = _nearest_index(arr.shape[0], height)
    cols = _nearest_index(arr.shape[1], width)
    return arr[rows[:, None], cols[None, :]]


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Ground-truth mask -> bool size x size: nearest resize, then > 0.5 (the paper's protocol)."""
    return resize_nearest(np.asarray(mask, dtype=np.float32), size) > 0.5


def prepare_xyz(xyz: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """HxWx3 cloud -> side x side x 3: background removal as configured, then centred square padding."""
    cfg = cfg or PreprocessConfig()
    cleaned = remove_background(xyz, cfg)
    return SquareFrame.of(*cleaned.shape[:2]).pad(cleaned)


def default_cache_dir() -> Path:
    """``$CMDR_CACHE_DIR`` if set, else ``~/.cache/cmdr_ros/preprocessed``."""
    env = os.environ.get("CMDR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cmdr_ros" / "preprocessed"


class PreprocessCache:
    """Disk cache of ``prepare_xyz`` results, one compressed ``.npz`` per (file, settings).

    The key hashes the file's absolute path, size and mtime_ns with the preprocessing settings, so an
    edited file or changed settings is a miss (not the refusal limits nor the cluster method: they never change a
    result, so entries written before the cluster setting existed stay valid).
    ``cfg`` is required (keyword) because it is part of the key: it must be the configuration
    ``compute_fn`` uses.
    """

    def __init__(self, cache_dir: str | Path | None = None, *, cfg: PreprocessConfig) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cfg = cfg

    def key(self, path: str | Path) -> str:
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError as err:
            raise CmdrError(f"{path}: cannot read the file to preprocess ({err.strerror})") from err
        settings = {k: v for k, v in self.cfg.to_dict().items() if k not in _NOT_IN_RESULT}
        ident = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "cfg": settings}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def file_for(self, path: str | Path) -> Path:
        return self.cache_dir / f"{self.key(path)}.npz"

    def get_or_compute(self, path: str | Path, compute_fn: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``path``; on a miss (or an unreadable cache file) ``compute_fn()`` and store it."""
        entry = self.file_for(path)
        if entry.is_file():
            try:
                with np.load(entry) as data:
                    return data["xyz"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                log.warning("cache file %s unreadable (%s): recomputing", entry, err)
        result = compute_fn()
        self._store(entry, result)
        return result

    def _store(self, entry: Path, arr: np.ndarray) -> None:
        """Atomic write (temporary file + os.replace); a cache that cannot be written only costs speed."""
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez_compressed(f, xyz=arr)
                os.replace(tmp, entry)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            log.warning("could not write cache file %s (%s)", entry, err)
