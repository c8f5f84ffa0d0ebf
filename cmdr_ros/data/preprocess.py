"""The paper's input preprocessing (MVTec 3D-AD protocol; in the team's notes, which live outside this repository
at ../shared/PAPER_NOTES.md: "Inputs and preprocessing").

* ``remove_background``: RANSAC plane fit on a border strip, clear the plane, keep the largest DBSCAN
  cluster (seeded so that a sample always gives the same result). The clustering is Open3D's DBSCAN
  (``PreprocessConfig.cluster="dbscan"``, the paper's code, 2-3 s per 400x400 frame) or the same clustering
  computed on a grid of cells (``"grid"``, ~10 ms: ``_largest_cluster_grid``). Degenerate clouds (too few
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
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cmdr_ros import CmdrError
from cmdr_ros.config import PreprocessConfig  # noqa: F401 - defined with the other settings, used here
from cmdr_ros.geometry import valid_mask  # noqa: F401 - re-exported for the detector

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PreprocessCache", "PreprocessConfig", "SquareFrame", "check_cloud",
           "check_dbscan_cost", "default_cache_dir", "normalize_imagenet", "prepare_xyz", "remove_background",
           "resize_mask", "resize_nearest", "resize_rgb", "valid_mask"]

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
# PreprocessConfig fields that never change what comes out: not part of a cache key
_NOT_IN_RESULT = _REFUSAL_LIMITS + ("cluster",)


def _clean_copy(xyz: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy with every invalid point (any non-finite coordinate) set to exactly 0."""
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise CmdrError(f"organized point cloud must be HxWx3, got shape {xyz.shape}")
    out = np.array(xyz, dtype=np.float32, copy=True, order="C")
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad[..., 0] | bad[..., 1] | bad[..., 2]] = 0
    return out


def _nonzero(clean: np.ndarray) -> np.ndarray:
    """``valid_mask`` of a ``_clean_copy`` (all finite): any coordinate non-zero. Per channel, because numpy's
    reductions over a last axis of length 3 are ~10x slower than three elementwise passes."""
    return (clean[..., 0] != 0) | (clean[..., 1] != 0) | (clean[..., 2] != 0)


def _border_strip(h: int, w: int, border: int) -> np.ndarray:
    strip = np.zeros((h, w), dtype=bool)
    strip[:border] = strip[-border:] = True
    strip[:, :border] = strip[:, -border:] = True
    return strip


def _columns(points: np.ndarray) -> np.ndarray:
    """Nx3 points -> contiguous 3xN float64: numpy reduces an Nx3 array along axis 0 ~20x slower than rows."""
    return np.ascontiguousarray(np.asarray(points).T, dtype=np.float64)


def _cell_counts(points: np.ndarray, eps: float) -> np.ndarray:
    """Number of points in each occupied cube of side ``eps`` (the grid floor(p / eps)), in no order."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    cols = np.floor(_columns(points) / eps)
    lo = cols.min(axis=1)
    dims = cols.max(axis=1) - lo + 1
    size = float(np.prod(dims))
    if size < 2.0 ** 62:  # integer keys (the usual case): counted without sorting 3 float columns
        ijk = (cols - lo[:, None]).astype(np.int64)
        key = (ijk[0] * int(dims[1]) + ijk[1]) * int(dims[2]) + ijk[2]
        if size <= 8 * len(key) + (1 << 16):
            counts = np.bincount(key)
            return counts[counts > 0]
        return np.unique(key, return_counts=True)[1]
    cells = cols.T[np.lexsort(cols)]  # float keys: no int64 overflow
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
    cols = _columns(pts)
    lo, hi = cols.min(axis=1), cols.max(axis=1)
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

    ``cfg.cluster`` "dbscan": Open3D's DBSCAN, after ``check_dbscan_cost`` (CmdrError instead of clustering
    points too dense to cluster). "grid": ``_largest_cluster_grid``, the same clusters in milliseconds; its cost
    does not grow with the number of neighbour pairs, so that check (and max_dbscan_pairs) does not apply.
    """
    if cfg.cluster == "grid":
        return _largest_cluster_grid(points, cfg.dbscan_eps, cfg.dbscan_min_points)
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


# ----------------------------------------------------------------------------------- grid DBSCAN
# Open3D's DBSCAN stores every point's eps-neighbour list (~1000 per point on a 400x400 MVTec frame: 2-3 s);
# scikit-learn's does the same. The grid method reaches the same labels without listing neighbours: two cell
# grids (fine side h = eps / (2 sqrt 3), coarse side 2h = eps / sqrt 3) give, from cell coordinates alone,
#   * pairs certainly within eps: points in the same or 26-adjacent fine cells (|difference| < 2h per axis);
#   * every pair possibly within eps: points in coarse cells at most 2 apart per axis (125 offsets);
# and exact distances are computed only where those two disagree. Nothing here is a library routine because no
# library offers DBSCAN with a neighbour-count shortcut; the loops below run over chunks or rounds, not points.
_SQRT3 = float(np.sqrt(3.0))
# cell sides shrunk by this factor so that rounding in floor(p / h) never puts a pair at >= eps into
# "certainly within eps" (its effect: borderline pairs get an exact test)
_GRID_SHRINK = 1 - 1e-6
_PAIR_CHUNK = 1 << 20  # point pairs whose distances are computed at once (~50 MB of temporaries)


def _cube(r: int) -> np.ndarray:
    g = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def _half(offsets: np.ndarray) -> np.ndarray:
    """The offsets after (0, 0, 0) in lexicographic order: each unordered cell pair once."""
    return offsets[[tuple(o) > (0, 0, 0) for o in offsets]]


_FINE_NEAR = _cube(1)
# fine offsets whose cells can hold a point within eps: gap between the cells at most 2 sqrt(3) h (= eps, shrunk)
_FINE_REACH = _cube(4)[(np.maximum(np.abs(_cube(4)) - 1, 0) ** 2).sum(axis=1) <= 12]
_COARSE_NEAR = _cube(2)


class _Grid:
    """Occupied cells of integer point coordinates ``ijk`` (3 x N): ``cell`` per point, ``counts`` and ``ijk``
    (ncells x 3) per cell, and lookups of neighbour cells up to ``reach`` cells away on each axis."""

    def __init__(self, ijk: np.ndarray, reach: int) -> None:
        n = ijk.shape[1]
        shifted = ijk - ijk.min(axis=1)[:, None]
        dims = shifted.max(axis=1) + 1 + 2 * reach
        if float(np.prod(dims.astype(np.float64))) > 2.0 ** 62:
            # kilometres of extent: close every gap wider than ``reach`` to reach + 1 (neighbourhoods unchanged)
            for a in range(3):
                u, inv = np.unique(shifted[a], return_inverse=True)
                shifted[a] = np.r_[0, np.cumsum(np.minimum(np.diff(u), reach + 1))][inv]
            dims = shifted.max(axis=1) + 1 + 2 * reach
        self.strides = np.array([dims[1] * dims[2], dims[2], 1], dtype=np.int64)
        # the margin of ``reach`` cells: neighbour keys never wrap
        key = (shifted[0] + reach) * self.strides[0] + (shifted[1] + reach) * self.strides[1] + shifted[2] + reach
        size = int(np.prod(dims))
        self.table: np.ndarray | None = None  # key -> cell, where the bounding box is small enough
        if size <= 8 * n + (1 << 16):
            occupied = np.bincount(key, minlength=size)
            self.keys = np.flatnonzero(occupied)
            self.counts = occupied[self.keys]
            self.table = np.full(size, -1, dtype=np.int64)
            self.table[self.keys] = np.arange(len(self.keys))
            self.cell = self.table[key]
        else:
            self.keys, self.cell, self.counts = np.unique(key, return_inverse=True, return_counts=True)
        member = np.empty(len(self.keys), dtype=np.int64)
        member[self.cell] = np.arange(n)  # any member: they share their coordinates
        self.ijk = ijk[:, member].T

    def neighbours(self, cells: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, neighbour) for every occupied cell at one of ``offsets`` from ``cells[i]``."""
        query = self.keys[cells][:, None] + (offsets @ self.strides)[None, :]
        if self.table is not None:
            found = self.table[query]
        else:
            pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            found = np.where(self.keys[pos] == query, pos, -1)
        i, j = np.nonzero(found >= 0)
        return i, found[i, j]


class _Members:
    """The points ``idx`` grouped by their cell (``cell`` per point, ``ncells`` cells)."""

    def __init__(self, idx: np.ndarray, cell: np.ndarray, ncells: int) -> None:
        self.members = idx[np.argsort(cell[idx], kind="stable")]
        self.count = np.bincount(cell[idx], minlength=ncells)
        self.start = np.cumsum(self.count) - self.count

    def expand(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(i, member) for every member of ``cells[i]``."""
        n = self.count[cells]
        i = np.repeat(np.arange(len(cells)), n)
        pos = np.arange(len(i)) - np.repeat(np.cumsum(n) - n, n) + self.start[cells][i]
        return i, self.members[pos]


def _chunks(weights: np.ndarray, budget: int = _PAIR_CHUNK):
    """Consecutive slices of rows whose ``weights`` sum to at most ``budget`` (a heavier row alone)."""
    cum = np.cumsum(weights)
    lo = 0
    while lo < len(weights):
        base = cum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(cum, base + budget, side="right")), lo + 1)
        yield slice(lo, hi)
        lo = hi


def _close(pts: np.ndarray, a: np.ndarray, b: np.ndarray, eps2: float) -> np.ndarray:
    """Bool per pair: point a[k] strictly within eps of point b[k] (squared distances, as Open3D's KD-tree)."""
    return ((pts[a] - pts[b]) ** 2).sum(axis=1) < eps2


def _largest_cluster_grid(points: np.ndarray, eps: float, min_points: int) -> np.ndarray | None:
    """``_largest_cluster`` with Open3D's DBSCAN semantics, on grids of cells instead of neighbour lists.

    Open3D: a point is core if at least ``min_points`` points (itself included) lie strictly within ``eps``;
    clusters are the connected sets of core points (pairs within eps), numbered in the order of their first
    core point; a non-core point within eps of a core point joins the lowest-numbered such cluster; the largest
    cluster wins, the lowest number on a tie. Computed here with exact float64 distances wherever the cells do
    not decide, so the result is the same except for pairs at eps to within rounding.
    """
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    eps2 = eps * eps
    h = eps / (2 * _SQRT3) * _GRID_SHRINK
    fine_ijk = np.floor(_columns(pts) / h).astype(np.int64)
    fine = _Grid(fine_ijk, 4)
    coarse = _Grid(fine_ijk // 2, 2)

    # core points: enough points in the 27 fine cells around (all within eps) ...
    i, nb = fine.neighbours(np.arange(len(fine.keys)), _FINE_NEAR)
    core = np.bincount(i, weights=fine.counts[nb], minlength=len(fine.keys))[fine.cell] >= min_points
    und = np.flatnonzero(~core)
    if len(und):  # ... else fine cells wholly within eps of the point count, those partly within are checked
        i, nb = fine.neighbours(fine.cell[und], _FINE_REACH)
        p = pts[und[i]]
        box_lo = fine.ijk[nb] * h - 1e-6 * h  # the cells, slightly widened against rounding
        box_hi = (fine.ijk[nb] + 1) * h + 1e-6 * h
        d2_near = (np.maximum(np.maximum(box_lo - p, p - box_hi), 0) ** 2).sum(axis=1)
        d2_far = (np.maximum(p - box_lo, box_hi - p) ** 2).sum(axis=1)
        inside, partly = d2_far < eps2, (d2_far >= eps2) & (d2_near < eps2)
        count = np.bincount(i[inside], weights=fine.counts[nb[inside]], minlength=len(und)).astype(np.int64)
        upper = count + np.bincount(i[partly], weights=fine.counts[nb[partly]], minlength=len(und))
        todo = (count < min_points) & (upper >= min_points)
        sel = partly & todo[i]
        if sel.any():
            i, nb = i[sel], nb[sel]
            members = _Members(np.arange(n), fine.cell, len(fine.keys))
            for sl in _chunks(members.count[nb]):
                k, q = members.expand(nb[sl])
                owner = i[sl][k]
                count += np.bincount(owner[_close(pts, und[owner], q, eps2)], minlength=len(und))
        core[und[count >= min_points]] = True
    core_idx = np.flatnonzero(core)
    if len(core_idx) == 0:
        return None

    # clusters: fine cells holding a core point are the graph's nodes, 26-adjacent ones certainly linked ...
    node_cells = np.unique(fine.cell[core_idx])
    node_of_cell = np.full(len(fine.keys), -1, dtype=np.int64)
    node_of_cell[node_cells] = np.arange(len(node_cells))
    i, nb = fine.neighbours(node_cells, _half(_FINE_NEAR))
    linked = node_of_cell[nb] >= 0
    edges_a, edges_b = [i[linked]], [node_of_cell[nb[linked]]]

    def components() -> np.ndarray:
        a, b = np.concatenate(edges_a), np.concatenate(edges_b)
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(len(node_cells),) * 2)
        return connected_components(graph, directed=False)[1]

    comp = components()
    # ... and coarse cells (each within one component: its 8 fine cells are adjacent) up to 2 apart, in different
    # components, are linked if an exact test finds a core pair within eps; in rounds, dropping linked ones
    core_members = _Members(core_idx, coarse.cell, len(coarse.keys))
    node = np.full(len(coarse.keys), -1, dtype=np.int64)
    node[coarse.cell[core_idx]] = node_of_cell[fine.cell[core_idx]]
    held = np.flatnonzero(core_members.count)
    i, b = coarse.neighbours(held, _half(_COARSE_NEAR))
    a = held[i]
    keep = node[b] >= 0
    a, b = a[keep], b[keep]
    keep = comp[node[a]] != comp[node[b]]
    a, b = a[keep], b[keep]
    if len(a):  # bounding boxes of each cell's core points further than eps apart: no link
        sorted_pts = pts[core_members.members]
        lo = np.zeros((len(coarse.keys), 3))
        hi = np.zeros((len(coarse.keys), 3))
        lo[held] = np.minimum.reduceat(sorted_pts, core_members.start[held], axis=0)
        hi[held] = np.maximum.reduceat(sorted_pts, core_members.start[held], axis=0)
        gap = np.maximum(np.maximum(lo[a] - hi[b], lo[b] - hi[a]), 0)
        keep = (gap ** 2).sum(axis=1) < eps2
        a, b = a[keep], b[keep]
    while len(a):
        batch = next(_chunks(core_members.count[a] * core_members.count[b]))
        pair, p = core_members.expand(a[batch])  # every core point of cell a[pair] ...
        found = []
        for sl in _chunks(core_members.count[b[batch][pair]]):  # ... against every core point of cell b[pair]
            k, q = core_members.expand(b[batch][pair[sl]])
            found.append(pair[sl][k][_close(pts, p[sl][k], q, eps2)])
        found = np.unique(np.concatenate(found))
        edges_a.append(node[a[batch][found]])
        edges_b.append(node[b[batch][found]])
        comp = components()
        a, b = a[batch.stop:], b[batch.stop:]
        keep = comp[node[a]] != comp[node[b]]
        a, b = a[keep], b[keep]

    # numbered as Open3D does: in the order of each cluster's first core point
    comp_of_core = comp[node_of_cell[fine.cell[core_idx]]]
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp_of_core, core_idx)
    number = np.empty_like(first)
    number[np.argsort(first)] = np.arange(len(first))
    labels = np.full(n, -1, dtype=np.int64)
    labels[core_idx] = number[comp_of_core]

    # border points: the lowest-numbered cluster with a core point within eps
    border = np.flatnonzero(~core)
    if len(border):
        i, nb = coarse.neighbours(coarse.cell[border], _COARSE_NEAR)
        keep = core_members.count[nb] > 0
        i, nb = i[keep], nb[keep]
        best = np.full(len(border), n, dtype=np.int64)
        for sl in _chunks(core_members.count[nb]):
            k, q = core_members.expand(nb[sl])
            owner = i[sl][k]
            hit = _close(pts, border[owner], q, eps2)
            np.minimum.at(best, owner[hit], labels[q[hit]])
        joined = best < n
        labels[border[joined]] = best[joined]
    sizes = np.bincount(labels[labels >= 0])
    return labels == int(np.argmax(sizes))


def remove_background(xyz: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Zero the supporting plane and everything but the largest connected object of an HxWx3 cloud.

    Returns a new float32 HxWx3 array (the input is never modified); NaN/inf points come back as 0.
    A border strip too sparse (or too degenerate) for the plane fit skips the plane step with a warning; a
    cloud with no DBSCAN cluster at all is left as it is after the plane step, also with a warning.
    Raises CmdrError for a degenerate cloud (``check_cloud``, then, for the "dbscan" cluster method,
    ``check_dbscan_cost`` before clustering) when either step is enabled; a cloud without any valid point
    comes back all zero.
    """
    cfg = cfg or PreprocessConfig()
    out = _clean_copy(xyz)
    valid = _nonzero(out)
    if not (cfg.remove_plane or cfg.keep_largest_cluster) or not valid.any():
        return out
    pts = out[valid]  # the valid points, in row-major pixel order (what Open3D is given)
    at = np.flatnonzero(valid)  # their flat pixel indices
    flat = out.reshape(-1, 3)  # a view: out is C-contiguous
    check_cloud(pts, cfg)
    if cfg.remove_plane:
        plane = _fit_border_plane(out, valid, cfg)
        if plane is not None:
            near = np.abs(pts.astype(np.float64) @ plane[:3] + plane[3]) < cfg.plane_clear_distance
            flat[at[near]] = 0
            pts, at = pts[~near], at[~near]
    if cfg.keep_largest_cluster and len(pts):
        keep = _largest_cluster(pts, cfg)
        if keep is None:
            log.warning("no DBSCAN cluster (eps %g, min_points %d) among %d points: all points kept",
                        cfg.dbscan_eps, cfg.dbscan_min_points, len(pts))
        else:
            flat[at[~keep]] = 0
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
