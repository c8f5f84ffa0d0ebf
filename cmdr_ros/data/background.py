"""Background removal of an organized cloud, the paper's way (the MVTec 3D-AD protocol of its reference code;
README, "The model").

``remove_background``: RANSAC plane fit on a border strip, clear the plane, keep the largest DBSCAN cluster (seeded
so that a sample always gives the same result). The clustering is Open3D's DBSCAN (``PreprocessConfig.cluster=
"dbscan"``, the paper's code, 2-3 s per 400x400 frame) or the same clustering computed on a grid of cells
(``"grid"``, ~10 ms: ``grid_dbscan.largest_cluster_grid``). Degenerate clouds (too few points, huge coordinates,
all points coincident, points packed so densely that DBSCAN's neighbour lists would grow quadratically) are refused
first with a CmdrError (``check_cloud``, ``check_dbscan_cost``): Open3D's DBSCAN on N coincident points needs N^2
neighbour entries and never returns.
"""
from __future__ import annotations

import logging

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.config import PreprocessConfig
from cmdr_ros.data.grid_dbscan import columns, largest_cluster_grid

log = logging.getLogger(__name__)

# Coordinates beyond this (metres) are no measurement: squares of 1e30 overflow float32, and distances
# between such points lose all precision in float64. Sensors report invalid points as 0 or NaN.
MAX_ABS_COORDINATE = 1e6
# A cloud whose bounding box is smaller than this fraction of dbscan_eps on every axis is one point
# repeated (a stuck sensor): nothing to fit a plane to or to cluster.
COINCIDENT_FRACTION = 0.1
# A cube of side dbscan_eps may hold this many times the points a flat patch of the cloud's own point spacing puts
# in it, (eps / spacing)^2, before its points count as coincident or duplicated (``cell_limit``): room for a
# surface crossing the cube obliquely or folded at an edge. 8 x 900 for the 0.2 mm pitch of the MVTec 3D-AD clouds
# (densest cube 729 points) stays below the absolute preprocess max_points_per_cell 7500, which keeps applying.
DENSITY_MARGIN = 8.0
# Neighbours closer than this (metres) are one point repeated, not a denser sensor (float32 resolves ~0.06 um at 1 m)
MIN_SPACING = 1e-6
# The percentile of the distinct-neighbour distances taken as the sensor's spacing: low, because a cloud resized by
# interpolation (or with gaps) also has neighbours far apart, blends of a point with an invalid 0 or across an edge
SPACING_PERCENTILE = 25


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


def _cell_counts(points: np.ndarray, eps: float) -> np.ndarray:
    """Number of points in each occupied cube of side ``eps`` (the grid floor(p / eps)), in no order."""
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    cols = np.floor(columns(points) / eps)
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


def point_spacing(clean: np.ndarray, valid: np.ndarray) -> float | None:
    """The sensor's own point spacing in an organized cloud (a ``_clean_copy`` and its valid mask): the
    ``SPACING_PERCENTILE`` percentile of the distances between distinct valid neighbours along rows and columns,
    None when no two neighbours are both valid and distinct. Coincident neighbours (closer than ``MIN_SPACING``: a
    duplicating or stuck sensor) are left out, so they cannot make the cloud look denser than its distinct points
    are."""
    gaps = []
    for a, b, both in ((clean[:, 1:], clean[:, :-1], valid[:, 1:] & valid[:, :-1]),
                       (clean[1:], clean[:-1], valid[1:] & valid[:-1])):
        d = a[both] - b[both]
        gaps.append(np.sqrt((d * d).sum(axis=1)))
    dist = np.concatenate(gaps)
    dist = dist[dist >= MIN_SPACING]
    return float(np.percentile(dist, SPACING_PERCENTILE)) if len(dist) else None


def cell_limit(cfg: PreprocessConfig, spacing: float | None = None) -> int:
    """The most points one cube of side ``dbscan_eps`` may hold: ``cfg.max_points_per_cell``, raised for a sensor
    denser than that allows to ``DENSITY_MARGIN`` times what a flat patch of its ``spacing`` (metres,
    ``point_spacing``) puts in a cube."""
    if spacing is None or not np.isfinite(spacing) or spacing <= 0:
        return cfg.max_points_per_cell
    own = DENSITY_MARGIN * (cfg.dbscan_eps / spacing) ** 2
    return cfg.max_points_per_cell if own <= cfg.max_points_per_cell else int(min(np.ceil(own), 2 ** 62))


def check_cloud(points: np.ndarray, cfg: PreprocessConfig, spacing: float | None = None) -> None:
    """Raise CmdrError unless the Nx3 valid points of a cloud can go through background removal.

    Refused: fewer than ``cfg.dbscan_min_points`` points (no object can be found), a coordinate beyond
    +-``MAX_ABS_COORDINATE`` m (no measurement; the maths overflows), all points within
    ``COINCIDENT_FRACTION * dbscan_eps`` of each other (one point repeated: a stuck sensor), and more points in one
    cube of side ``dbscan_eps`` than ``cell_limit`` allows for the sensor's own point ``spacing`` (``point_spacing``
    of the organized cloud; None: ``cfg.max_points_per_cell``): coincident or duplicated points, far more than the
    sensor's density puts there; DBSCAN's neighbour lists grow with the square of that count and it would run out
    of memory instead of returning. Costs ~20 ms for a 400x400 cloud.
    """
    pts = np.asarray(points)
    n = len(pts)
    if n < cfg.dbscan_min_points:
        raise CmdrError(f"the point cloud has only {n} valid point(s), at least {cfg.dbscan_min_points} "
                        "(preprocess dbscan_min_points) are needed for background removal")
    if not np.isfinite(pts).all():
        raise CmdrError("the point cloud's valid points contain NaN or infinite coordinates")
    cols = columns(pts)
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
    limit = cell_limit(cfg, spacing)
    if densest > limit:
        own = (f"{limit}: {DENSITY_MARGIN:g} x a flat patch at the cloud's own point spacing {1e3 * spacing:.3g} mm"
               if limit > cfg.max_points_per_cell else f"preprocess max_points_per_cell={cfg.max_points_per_cell}")
        raise CmdrError(f"{densest} of the cloud's {n} valid points lie in one {cfg.dbscan_eps:g} m cube (limit "
                        f"{own}): coincident or duplicated points (a stuck sensor?); DBSCAN clustering of them would "
                        "not finish")


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
    points too dense to cluster). "grid": ``grid_dbscan.largest_cluster_grid``, the same clusters in milliseconds; its cost
    does not grow with the number of neighbour pairs, so that check (and max_dbscan_pairs) does not apply.
    """
    if cfg.cluster == "grid":
        return largest_cluster_grid(points, cfg.dbscan_eps, cfg.dbscan_min_points)
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
    check_cloud(pts, cfg, point_spacing(out, valid))
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
