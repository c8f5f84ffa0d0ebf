"""The paper's input preprocessing (MVTec 3D-AD protocol; in the team's notes, which live outside this repository
at ../shared/PAPER_NOTES.md: "Inputs and preprocessing").

* ``remove_background``: RANSAC plane fit on a border strip, clear the plane, keep the largest DBSCAN
  cluster (Open3D, seeded so that a sample always gives the same result). Degenerate clouds (too few
  points, huge coordinates, all points coincident, points packed so densely that DBSCAN's neighbour lists
  would grow quadratically) are refused first with a CmdrError (``check_cloud``, ``check_dbscan_cost``):
  Open3D's DBSCAN on N coincident points needs N^2 neighbour entries and never returns.
* ``SquareFrame``: centred zero-padding to a square and the way back, so anomaly maps computed on the
  square grid can be returned at the input resolution.
* Resizing: bicubic (antialiased, PIL-like) for RGB, nearest for xyz and masks, ImageNet normalisation.
* ``PreprocessCache``: background removal costs seconds per sample, so its result is cached on disk.
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
from cmdr_ros.config import PreprocessConfig  # noqa: F401 - defined with the other settings, used here
from cmdr_ros.geometry import valid_mask  # noqa: F401 - re-exported for the detector

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Coordinates beyond this (metres) are no measurement: squares of 1e30 overflow float32, and distances
# between such points lose all precision in float64. Sensors report invalid points as 0 or NaN.
MAX_ABS_COORDINATE = 1e6
# A cloud whose bounding box is smaller than this fraction of dbscan_eps on every axis is one point
# repeated (a stuck sensor): nothing to fit a plane to or to cluster.
COINCIDENT_FRACTION = 0.1
# PreprocessConfig fields that only decide whether a cloud is refused, never what comes out
_REFUSAL_LIMITS = ("max_points_per_cell", "max_dbscan_pairs")


def _clean_copy(xyz: np.ndarray) -> np.ndarray:
    """A float32 copy with every invalid point (any non-finite coordinate) set to exactly 0."""
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise CmdrError(f"organized point cloud must be HxWx3, got shape {xyz.shape}")
    out = np.array(xyz, dtype=np.float32, copy=True)
    out[~np.isfinite(out).all(axis=-1)] = 0
    return out


def _border_strip(h: int, w: int, border: int) -> np.ndarray:
    strip = np.zeros((h, w), dtype=bool)
    strip[:border] = strip[-border:] = True
    strip[:, :border] = strip[:, -border:] = True
    return strip


def _cell_counts(points: np.ndarray, eps: float) -> np.ndarray:
    """Number of points in each occupied cube of side ``eps`` (the grid floor(p / eps)), in no order."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    cells = np.floor(np.asarray(points, dtype=np.float64) / eps)  # float keys: no int64 overflow
    cells = cells[np.lexsort(cells.T)]
    starts = np.flatnonzero(np.r_[True, (cells[1:] != cells[:-1]).any(axis=1)])
    return np.diff(np.r_[starts, len(cells)])


def check_cloud(points: np.ndarray, cfg: PreprocessConfig) -> None:
    """Raise CmdrError unless the Nx3 valid points of a cloud can go through background removal.

    Refused: fewer than ``cfg.dbscan_min_points`` points (no object can be found), a coordinate beyond
    +-``MAX_ABS_COORDINATE`` m (no measurement; the maths overflows), all points within
    ``COINCIDENT_FRACTION * dbscan_eps`` of each other (one point repeated: a stuck sensor), and more than
    ``cfg.max_points_per_cell`` points in one cube of side ``dbscan_eps`` (coincident or duplicated points:
    DBSCAN's neighbour lists grow with the square of that count and it would run out of memory instead of
    returning). Costs ~20 ms for a 400x400 cloud.
    """
    pts = np.asarray(points)
    n = len(pts)
    if n < cfg.dbscan_min_points:
        raise CmdrError(f"the point cloud has only {n} valid point(s), at least {cfg.dbscan_min_points} "
                        "(preprocess dbscan_min_points) are needed for background removal")
    if not np.isfinite(pts).all():
        raise CmdrError("the point cloud's valid points contain NaN or infinite coordinates")
    lo, hi = pts.min(axis=0).astype(np.float64), pts.max(axis=0).astype(np.float64)
    biggest = float(max(np.abs(lo).max(), np.abs(hi).max()))
    if biggest > MAX_ABS_COORDINATE:
        raise CmdrError(f"the point cloud has coordinates up to {biggest:.3g} m, beyond +-{MAX_ABS_COORDINATE:g} m: "
                        "not a measurement (a sensor's invalid-point marker other than 0/NaN?)")
    extent = hi - lo
    if extent.max() < COINCIDENT_FRACTION * cfg.dbscan_eps:
        raise CmdrError(f"all {n} valid points of the cloud coincide (bounding box {extent[0]:.3g} x "
                        f"{extent[1]:.3g} x {extent[2]:.3g} m, below {COINCIDENT_FRACTION:g} x dbscan_eps "
                        f"{cfg.dbscan_eps:g} m): a stuck sensor or a degenerate cloud, nothing to inspect")
    densest = int(_cell_counts(pts, cfg.dbscan_eps).max())
    if densest > cfg.max_points_per_cell:
        raise CmdrError(f"{densest} of the cloud's {n} valid points lie in one {cfg.dbscan_eps:g} m cube (limit "
                        f"preprocess max_points_per_cell={cfg.max_points_per_cell}): coincident or duplicated "
                        "points (a stuck sensor?); DBSCAN clustering of them would not finish")


def check_dbscan_cost(points: np.ndarray, cfg: PreprocessConfig) -> None:
    """Raise CmdrError if Open3D DBSCAN (eps ``cfg.dbscan_eps``) on the Nx3 ``points`` would be too costly.

    Open3D stores every point's full neighbour list, so time and memory grow with the number of neighbour
    pairs, estimated as the sum over eps-cubes of count^2 (exact for coincident points; real surfaces have
    ~3.3x that many pairs within eps) and bounded by ``cfg.max_dbscan_pairs``.
    """
    counts = _cell_counts(points, cfg.dbscan_eps).astype(np.float64)
    pairs = float((counts ** 2).sum())
    if pairs > cfg.max_dbscan_pairs:
        raise CmdrError(f"the {len(points)} points to cluster are too dense for DBSCAN with eps {cfg.dbscan_eps:g} m: "
                        f"about {pairs:.3g} neighbour pairs (densest cube {int(counts.max())} points), limit "
                        f"preprocess max_dbscan_pairs={cfg.max_dbscan_pairs:.3g}; subsample the cloud or raise "
                        "the limit if the sensor really is this dense")


def _fit_border_plane(xyz: np.ndarray, valid: np.ndarray, cfg: PreprocessConfig) -> np.ndarray | None:
    """Unit-normal plane (a, b, c, d) fitted by RANSAC on the border strip, or None if it cannot be fitted
    (too few border points, border points coincident or on a line, or a degenerate RANSAC result)."""
    import open3d as o3d  # heavy import, only needed here and in the clustering step

    pts = xyz[_border_strip(*valid.shape, cfg.border) & valid].astype(np.float64)
    if len(pts) < cfg.plane_ransac_n:
        log.warning("background plane not removed: %d valid points in the %d-pixel border strip, need at least %d",
                    len(pts), cfg.border, cfg.plane_ransac_n)
        return None
    # the spread along the two main directions: a point or a line does not define a plane
    spread = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(pts - pts.mean(axis=0), rowvar=False)), 0))[::-1]
    if not np.isfinite(spread).all() or spread[1] < cfg.plane_distance_threshold:
        log.warning("background plane not removed: the %d border-strip points are coincident or on a line "
                    "(spread %.3g x %.3g m, below the plane distance threshold %g m)",
                    len(pts), spread[0], spread[1], cfg.plane_distance_threshold)
        return None
    o3d.utility.random.seed(cfg.seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    try:
        plane, _ = cloud.segment_plane(distance_threshold=cfg.plane_distance_threshold,
                                       ransac_n=cfg.plane_ransac_n, num_iterations=cfg.plane_iterations)
    except RuntimeError as err:
        log.warning("background plane not removed: RANSAC plane fit failed (%s)", err)
        return None
    plane = np.asarray(plane, dtype=np.float64)
    norm = np.linalg.norm(plane[:3])
    if not np.isfinite(plane).all() or norm == 0:
        log.warning("background plane not removed: RANSAC returned a degenerate plane %s", plane)
        return None
    return plane / norm


def _largest_cluster(points: np.ndarray, cfg: PreprocessConfig) -> np.ndarray | None:
    """Bool per point: member of the largest DBSCAN cluster (noise excluded), or None if there is no cluster.
    Raises CmdrError (``check_dbscan_cost``) instead of clustering points too dense to cluster."""
    import open3d as o3d

    check_dbscan_cost(points, cfg)
    o3d.utility.random.seed(cfg.seed)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    labels = np.asarray(cloud.cluster_dbscan(eps=cfg.dbscan_eps, min_points=cfg.dbscan_min_points,
                                             print_progress=False))
    sizes = np.bincount(labels[labels >= 0])
    if sizes.size == 0:
        return None
    return labels == int(np.argmax(sizes))


def remove_background(xyz: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Zero the supporting plane and everything but the largest connected object of an HxWx3 cloud.

    Returns a new float32 HxWx3 array (the input is never modified); NaN/inf points come back as 0.
    A border strip too sparse (or too degenerate) for the plane fit skips the plane step with a warning; a
    cloud with no DBSCAN cluster at all is left as it is after the plane step, also with a warning.
    Raises CmdrError for a degenerate cloud (``check_cloud``, then ``check_dbscan_cost`` before
    clustering) when either step is enabled; a cloud without any valid point comes back all zero.
    """
    cfg = cfg or PreprocessConfig()
    out = _clean_copy(xyz)
    valid = valid_mask(out)
    if (cfg.remove_plane or cfg.keep_largest_cluster) and valid.any():
        check_cloud(out[valid], cfg)
    if cfg.remove_plane:
        plane = _fit_border_plane(out, valid, cfg)
        if plane is not None:
            dist = np.abs(out[valid].astype(np.float64) @ plane[:3] + plane[3])
            near = np.zeros_like(valid)
            near[valid] = dist < cfg.plane_clear_distance
            out[near] = 0
            valid &= ~near
    if cfg.keep_largest_cluster and valid.any():
        keep = _largest_cluster(out[valid], cfg)
        if keep is None:
            log.warning("no DBSCAN cluster (eps %g, min_points %d) among %d points: all points kept",
                        cfg.dbscan_eps, cfg.dbscan_min_points, int(valid.sum()))
        else:
            drop = np.zeros_like(valid)
            drop[valid] = ~keep
            out[drop] = 0
    return out


@dataclass(frozen=True)
class SquareFrame:
    """Centred zero-padding of an ``height`` x ``width`` image to ``side`` x ``side`` (side = max(h, w))."""

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
    rows = _nearest_index(arr.shape[0], size)
    cols = _nearest_index(arr.shape[1], size)
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
    edited file or changed settings is a miss (not the refusal limits: they never change a result).
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
        settings = {k: v for k, v in self.cfg.to_dict().items() if k not in _REFUSAL_LIMITS}
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
