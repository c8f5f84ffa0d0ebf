"""A cloud without a camera (a laser profilometer) rasterized on a grid over its dominant plane, and scores back
to points."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry.transforms import _points, finite_rows


# ------------------------------------------------------------------------------------ plane rasterization
@dataclass
class PlaneFrame:
    """Orthonormal right-handed frame of the fitted plane: u x v = n, all in the cloud's coordinates.

    ``origin`` lies on the plane at the raster's top-left corner; the centre of cell (row r, col c) is
    origin + (c + 0.5) res u - (r + 0.5) res v: columns run along u, rows along -v, so the raster is the
    plane seen from the n side (from above), not mirrored. A point's height above the plane is
    n . (p - origin).
    """

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    n: np.ndarray


@dataclass
class Raster:
    """An unorganized cloud gridded on its dominant plane.

    xyz_map: rows x cols x 3 float32, original coordinates of the highest point (along n) per cell; 0 = empty.
    cell_of_point: N int64 flat cell index (row * cols + col) of every finite input point, -1 if non-finite.
    shape: (rows, cols). frame: the plane frame. resolution: cell side in metres. coverage: filled cells/all.
    """

    xyz_map: np.ndarray
    cell_of_point: np.ndarray
    shape: tuple[int, int]
    frame: PlaneFrame
    resolution: float
    coverage: float


def _fit_plane(pts: np.ndarray, threshold: float, seed: int) -> np.ndarray:
    """Unit plane (a, b, c, d) of the dominant plane: Open3D RANSAC (seeded, on at most 50 000 points), then a
    least-squares refit on all points within ``threshold`` of it (smallest-eigenvalue direction)."""
    import open3d as o3d  # heavy import, only needed here

    rng = np.random.default_rng(seed)
    sample = pts if len(pts) <= 50_000 else pts[np.sort(rng.choice(len(pts), 50_000, replace=False))]
    o3d.utility.random.seed(seed)
    try:
        model, _ = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(sample)).segment_plane(
            distance_threshold=threshold, ransac_n=3, num_iterations=1000)
    except RuntimeError as err:
        raise CmdrError(f"no plane could be fitted to the {len(pts)}-point cloud ({err})") from err
    model = np.asarray(model, dtype=np.float64)
    if not np.isfinite(model).all() or np.linalg.norm(model[:3]) == 0:
        raise CmdrError(f"no plane could be fitted to the {len(pts)}-point cloud (degenerate RANSAC result)")
    model /= np.linalg.norm(model[:3])
    inliers = pts[np.abs(pts @ model[:3] + model[3]) <= threshold]
    centroid = inliers.mean(axis=0)
    normal = np.linalg.eigh(np.cov(inliers - centroid, rowvar=False))[1][:, 0]
    return np.r_[normal, -normal @ centroid]


# Coordinates beyond this (metres) are no measurement (squares of 1e30 overflow float32; distances between
# such points lose all precision): such a cloud is refused.
MAX_ABS_COORDINATE = 1e6
# A raster with more cells than this along a side is refused: the model pads it to a square, so one side of
# 10^5 cells would allocate tens of gigabytes. 4096 cells of the finest useful 0.1 mm cover 0.4 m.
MAX_RASTER_SIDE = 4096
_RASTER_MIN_POINTS = 3  # a plane needs three points (the ROS node itself asks for 16)
_DEGENERATE_RATIO = 1e-9  # a spread below this fraction of the largest |coordinate| (at least 1 m) counts as zero


def _check_raster_points(p: np.ndarray) -> None:
    """Refuse finite Nx3 points that cannot be gridded on a plane: too few, huge, coincident or collinear."""
    if len(p) < _RASTER_MIN_POINTS:
        raise CmdrError(f"point cloud has {len(p)} finite points, at least {_RASTER_MIN_POINTS} are needed to "
                        "rasterize on a plane")
    biggest = float(np.abs(p).max())
    if biggest > MAX_ABS_COORDINATE:
        raise CmdrError(f"point cloud has coordinates up to {biggest:.3g} m, beyond +-{MAX_ABS_COORDINATE:g} m: "
                        "not a measurement (a sensor's invalid-point marker other than NaN?)")
    centred = p - p.mean(axis=0)
    spread = np.sqrt(np.maximum(np.linalg.eigvalsh(centred.T @ centred / len(p)), 0))[::-1]  # std per main axis
    tiny = _DEGENERATE_RATIO * max(1.0, biggest)
    if spread[0] <= tiny:
        raise CmdrError(f"all {len(p)} finite points of the cloud coincide (spread {spread[0]:.3g} m): a stuck "
                        "sensor or a degenerate cloud, nothing to rasterize")
    if spread[1] <= tiny:
        raise CmdrError(f"the {len(p)} finite points of the cloud lie on one line (spread {spread[0]:.3g} m along "
                        f"it, {spread[1]:.3g} m across): no plane to rasterize on")


def _sign_fixed(axis: np.ndarray) -> np.ndarray:
    """``axis`` or ``-axis``, whichever has a positive largest-magnitude component (a deterministic choice)."""
    return axis if axis[np.argmax(np.abs(axis))] > 0 else -axis


def rasterize_on_plane(points: np.ndarray, resolution: float | None = None, grid: int | None = None,
                       plane: Sequence[float] | None = None, distance_threshold: float | None = None,
                       seed: int = 0) -> Raster:
    """Grid an unorganized cloud (e.g. a laser profilometer's) on its dominant plane, seen from above.

    Plane: ``plane`` (a, b, c, d) with a x + b y + c z + d = 0 if given, else fitted (``_fit_plane``, inlier
    distance ``distance_threshold``, default 1 % of the cloud's bounding-box diagonal). Frame: n is the
    plane normal pointing to the side holding most off-plane points (the part on top of the plane; +z
    side of the cloud frame on a tie), u the principal in-plane axis of the points (sign: largest
    component positive), v = n x u. Grid: the points' (u, v) bounding box in square cells of
    ``resolution`` metres, or ``grid`` cells along the longer side; neither: the mean point spacing
    sqrt(area / N). Per cell the point highest along n is kept (z-buffer from above).
    Deterministic for a given input and ``seed`` (also seeds Open3D's global RNG).
    Raises CmdrError, before any heavy work, for fewer than 3 finite points, coordinates beyond
    +-``MAX_ABS_COORDINATE`` m, coincident or collinear points, and for a raster of more than
    ``MAX_RASTER_SIDE`` cells along a side (a resolution too fine for the cloud's extent).
    """
    pts = _points(points)
    finite = finite_rows(pts)
    p = pts[finite]
    if resolution is not None and grid is not None:
        raise CmdrError("give either resolution or grid for the plane raster, not both")
    if (resolution is not None and not (np.isfinite(resolution) and resolution > 0)) or \
            (grid is not None and not 1 <= int(grid) <= MAX_RASTER_SIDE):
        raise CmdrError(f"raster resolution must be finite and > 0 and grid 1..{MAX_RASTER_SIDE}, "
                        f"got resolution={resolution}, grid={grid}")
    _check_raster_points(p)
    if distance_threshold is None:
        distance_threshold = 0.01 * float(np.linalg.norm(np.ptp(p, axis=0)))
    elif not (np.isfinite(distance_threshold) and distance_threshold > 0):
        raise CmdrError(f"plane distance_threshold must be finite and > 0, got {distance_threshold}")
    if plane is None:
        model = _fit_plane(p, distance_threshold, seed)
    else:
        model = np.asarray(plane, dtype=np.float64).ravel()
        if model.size != 4 or not np.isfinite(model).all() or not np.linalg.norm(model[:3]) > 0:
            raise CmdrError(f"plane must be 4 finite numbers (a, b, c, d) with a non-zero normal, got {model.tolist()}")
        model = model / np.linalg.norm(model[:3])
    height = p @ model[:3] + model[3]
    off = np.sign(height[np.abs(height) > distance_threshold]).sum()
    if off < 0 or (off == 0 and model[2] < 0):
        model, height = -model, -height
    n = model[:3]
    e1 = np.linalg.svd(n[None])[2][1]  # any unit vector orthogonal to n
    e2 = np.cross(n, e1)
    ab = p @ np.c_[e1, e2]
    principal = np.linalg.eigh(np.cov(ab - ab.mean(axis=0), rowvar=False))[1][:, -1]
    u = _sign_fixed(np.c_[e1, e2] @ principal)
    v = np.cross(n, u)
    cu, cv = p @ u, p @ v
    u0, v1 = cu.min(), cv.max()
    extent = np.array([cv.max() - cv.min(), cu.max() - u0])  # (rows, cols) direction
    if resolution is None:
        resolution = extent.max() / int(grid) if grid is not None else float(np.sqrt(np.prod(extent) / len(p)))
    if not resolution > 0:
        raise CmdrError(f"the {len(p)} finite points are all on one line or point of the plane: nothing to rasterize")
    cells = extent / resolution  # float: a tiny resolution must not overflow int() before the check
    if not (np.isfinite(cells).all() and cells.max() <= MAX_RASTER_SIDE):
        raise CmdrError(f"the points span {extent[0]:.3g} x {extent[1]:.3g} m (rows x columns) on the plane: at "
                        f"resolution {resolution:.3g} m the raster would have {cells[0]:.3g} x {cells[1]:.3g} "
                        f"cells, more than {MAX_RASTER_SIDE} along a side (give a coarser resolution; without one "
                        "the mean point spacing is used, which a cloud almost on a line makes tiny)")
    rows, cols = (max(1, int(np.ceil(e / resolution - 1e-9))) for e in extent)
    c = np.clip(np.floor((cu - u0) / resolution), 0, cols - 1).astype(np.int64)
    r = np.clip(np.floor((v1 - cv) / resolution), 0, rows - 1).astype(np.int64)
    cell = r * cols + c
    order = np.lexsort((-height, cell))
    first = np.r_[True, np.diff(cell[order]) != 0]
    xyz = np.zeros((rows * cols, 3), dtype=np.float32)
    xyz[cell[order][first]] = p[order][first]
    cell_of_point = np.full(len(pts), -1, dtype=np.int64)
    cell_of_point[finite] = cell
    origin = u0 * u + v1 * v - model[3] * n
    return Raster(xyz.reshape(rows, cols, 3), cell_of_point, (rows, cols), PlaneFrame(origin, u, v, n),
                  float(resolution), int(first.sum()) / (rows * cols))


def scores_to_points(score_map: np.ndarray, cell_of_point: np.ndarray, missing: float = np.nan) -> np.ndarray:
    """N float32: each point's score, read from its cell (or pixel) of ``score_map``; ``missing`` where the index
    is -1 (NaN by default; the node's anomaly cloud uses 0, an intensity RViz can colour).

    Works with ``Raster.cell_of_point`` and ``Projection.pixel_of_point`` alike (flat row-major indices).
    """
    scores = np.asarray(score_map, dtype=np.float32).ravel()
    cells = np.asarray(cell_of_point, dtype=np.int64)
    if cells.size and (cells.max() >= scores.size or cells.min() < -1):
        raise CmdrError(f"cell indices range {cells.min()}..{cells.max()} does not fit a score map of "
                        f"{np.shape(score_map)} ({scores.size} cells)")
    out = np.full(cells.shape, missing, dtype=np.float32)
    out[cells >= 0] = scores[cells[cells >= 0]]
    return out
