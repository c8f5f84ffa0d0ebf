"""Geometry for the inspection node: bring a point cloud onto the image grid the model consumes.

Two ways from an unordered cloud to an organized HxWx3 ``xyz_map`` (0 = no point):

* ``project_to_image``: a calibrated camera sees the part; the cloud (any frame, with the extrinsics
  ``T_cam_from_cloud``) is projected with the ROS ``sensor_msgs/CameraInfo`` model and z-buffered, so the
  map is pixel-aligned with that camera's RGB image (the 2D+3D mode).
* ``rasterize_on_plane``: no camera, e.g. a laser profilometer over a cutting cell; the cloud is gridded
  in the frame of its dominant plane, seen from above (the 3D-only mode).

Both return, for EVERY input point, the flat index of its pixel/cell, so ``scores_to_points`` can hand the
per-pixel anomaly map back to the points. ``organized_from_depth`` covers depth-image sensors.
Pixel convention (OpenCV/ROS): pixel (row r, column c) has its centre at image coordinates (u=c, v=r).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from cmdr_ros import CmdrError

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant", "none")
_CV_DIST_LENGTHS = (4, 5, 8, 12, 14)  # coefficient counts cv2.projectPoints accepts
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
_FOV_MARGIN = 1.02  # points up to 2 % beyond the image's largest normalized radius still count as "in view"


# --------------------------------------------------------------------------------------------- camera model
@dataclass(frozen=True, eq=False)
class CameraIntrinsics:
    """A ROS ``sensor_msgs/CameraInfo`` camera model (lengths in pixels, matrices as NumPy float64 arrays).

    ``D`` holds 0..14 coefficients in OpenCV order (plumb_bob: k1 k2 p1 p2 k3; rational_polynomial: 8;
    equidistant: k1..k4). ``R`` defaults to identity and ``P`` to ``[K | 0]``; an all-zero ``P`` (as some
    drivers publish) is replaced by ``[K | 0]`` too.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray | None = None
    R: np.ndarray | None = None
    P: np.ndarray | None = None
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if int(self.width) < 1 or int(self.height) < 1:
            raise CmdrError(f"camera image size must be positive, got {self.width}x{self.height}")
        put("width", int(self.width))
        put("height", int(self.height))
        K = _matrix(self.K, (3, 3), "K")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise CmdrError(f"camera K has no positive focal lengths (fx={K[0, 0]}, fy={K[1, 1]}): uncalibrated camera")
        put("K", K)
        D = np.zeros(0) if self.D is None else np.asarray(self.D, dtype=np.float64).ravel()
        if D.size > 14 or not np.isfinite(D).all():
            raise CmdrError(f"camera D must hold at most 14 finite coefficients, got {D.size}: {D.tolist()}")
        put("D", D)
        put("R", np.eye(3) if self.R is None else _matrix(self.R, (3, 3), "R"))
        P = None if self.P is None else _matrix(self.P, (3, 4), "P")
        put("P", np.hstack([K, np.zeros((3, 1))]) if P is None or not P.any() else P)
        model = self.distortion_model or "none"  # CameraInfo of an uncalibrated driver has an empty string
        if model not in DISTORTION_MODELS:
            raise CmdrError(f"unsupported distortion_model {model!r}; supported: {', '.join(DISTORTION_MODELS)}")
        if model == "equidistant" and np.count_nonzero(D[4:]):
            raise CmdrError(f"equidistant distortion takes 4 coefficients k1..k4, got {D.tolist()}")
        if model == "none" and D.any():
            raise CmdrError(f"distortion_model 'none' with non-zero D {D.tolist()}")
        put("distortion_model", model)

    @property
    def rectified(self) -> bool:
        """True when D is all zero: the image is distortion-free and ``P`` projects it (ROS convention)."""
        return not self.D.any()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CameraIntrinsics:
        """From CameraInfo fields: width, height, distortion_model, d, k, r, p (ROS 1 upper-case D K R P too)."""
        def get(name: str) -> Any:
            return d.get(name, d.get(name.upper()))

        missing = [k for k in ("width", "height", "k") if get(k) is None]
        if missing:
            raise CmdrError(f"camera info lacks field(s) {', '.join(missing)}; has {', '.join(sorted(d))}")
        return cls(width=get("width"), height=get("height"), K=get("k"), D=get("d"), R=get("r"), P=get("p"),
                   distortion_model=d.get("distortion_model", "plumb_bob"))

    def to_dict(self) -> dict[str, Any]:
        """The CameraInfo fields (ROS 2 lower-case names) as plain Python lists, JSON/YAML ready."""
        return {"width": self.width, "height": self.height, "distortion_model": self.distortion_model,
                "d": self.D.tolist(), "k": self.K.ravel().tolist(), "r": self.R.ravel().tolist(),
                "p": self.P.ravel().tolist()}

    @classmethod
    def from_mvtec_json(cls, d: Mapping[str, Any] | str | Path) -> CameraIntrinsics:
        """From MVTec 3D-AD ``calibration/camera_parameters.json`` (a dict or the file's path).

        ``camera_type`` 'area_scan_division' (HALCON: focus, kappa, sx, sy, cx, cy, image_width/height):
        K = [[focus/sx, 0, cx], [0, focus/sy, cy], [0, 0, 1]] and the division-model kappa is replaced by the
        plumb_bob k1, k2 fitted to it over the image (``fit_plumb_bob_to_division``). For the real MVTec
        cable_gland camera the fit is off by < 0.001 px everywhere in the image, far below the ~1 px with
        which the dataset's own xyz maps agree with the calibration, so plumb_bob loses nothing and the cloud
        goes through the standard ROS/OpenCV path. 'pinhole' (fx, fy, cx, cy, image_width/height; what the
        synthetic generator writes) gives D = 0.
        """
        source = "camera parameters"
        if not isinstance(d, Mapping):
            source = str(d)
            try:
                d = json.loads(Path(d).read_text())
            except (OSError, ValueError) as err:
                raise CmdrError(f"{source}: cannot read camera parameters JSON ({err})") from err
        kind = d.get("camera_type")
        needs = {"area_scan_division": ("focus", "kappa", "sx", "sy", "cx", "cy", "image_width", "image_height"),
                 "pinhole": ("fx", "fy", "cx", "cy", "image_width", "image_height")}
        if kind not in needs:
            raise CmdrError(f"{source}: camera_type {kind!r} is not supported (use one of {', '.join(needs)})")
        missing = [k for k in needs[kind] if k not in d]
        if missing:
            raise CmdrError(f"{source}: {kind} camera lacks key(s) {', '.join(missing)}")
        w, h, cx, cy = int(d["image_width"]), int(d["image_height"]), float(d["cx"]), float(d["cy"])
        if kind == "pinhole":
            fx, fy, D = float(d["fx"]), float(d["fy"]), np.zeros(5)
        else:
            fx, fy = d["focus"] / d["sx"], d["focus"] / d["sy"]
            D, _ = fit_plumb_bob_to_division(d["kappa"], d["focus"], d["sx"], d["sy"], cx, cy, w, h)
        return cls(width=w, height=h, K=np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), D=D,
                   distortion_model="plumb_bob")

    @cached_property
    def max_view_radius(self) -> float:
        """Largest normalized image radius sqrt(x^2+y^2) (x = X/Z) that the image shows, with a 2 % margin.

        Distortion polynomials fold back beyond the calibrated field of view, so a point far off-axis (a
        lidar point behind the camera's field of view) could land inside the image; projection rejects
        points beyond this radius. Computed by undistorting the image's outer border.
        """
        w, h = self.width, self.height
        t = np.linspace(0.0, 1.0, 64)
        border = np.concatenate([np.c_[t * w, 0 * t], np.c_[t * w, 0 * t + h], np.c_[0 * t, t * h],
                                 np.c_[0 * t + w, t * h]]) - 0.5
        return float(np.nanmax(np.linalg.norm(_undistort_normalized(border, self), axis=1)) * _FOV_MARGIN)


def _matrix(value: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """``value`` (nested or flat, e.g. CameraInfo's row-major list) as a finite float64 matrix of ``shape``."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != shape[0] * shape[1] or not np.isfinite(arr).all():
        raise CmdrError(f"camera {name} must hold {shape[0]}x{shape[1]} finite numbers, got shape {arr.shape}")
    return arr.reshape(shape)


def fit_plumb_bob_to_division(kappa: float, focus: float, sx: float, sy: float, cx: float, cy: float,
                              width: int, height: int) -> tuple[np.ndarray, float]:
    """Plumb_bob D = [k1, k2, 0, 0, 0] approximating HALCON's division model; and its max error in pixels.

    HALCON 'area_scan_division' maps a distorted image-plane point (metres) p~ to the undistorted one as
    p = p~ / (1 + kappa |p~|^2). In normalized coordinates (divide by ``focus``) that is the radial law
    x_d = x_n * g(r_n^2) with g = 1 + k' s + 2 k'^2 s^2 + 5 k'^3 s^3 + ..., k' = kappa focus^2, which
    plumb_bob's 1 + k1 r^2 + k2 r^4 matches to third order. k1, k2 are fitted by linear least squares
    (pixel-weighted) on a 41x41 grid of distorted pixels covering the image; the error returned is the
    largest pixel distance between the plumb_bob projection and the exact division-model pixel on that grid.
    Raises CmdrError if the division model is not invertible over the image.
    """
    fx, fy = focus / sx, focus / sy
    col, row = np.meshgrid(np.linspace(-0.5, width - 0.5, 41), np.linspace(-0.5, height - 0.5, 41))
    xd, yd = ((col - cx) * sx / focus).ravel(), ((row - cy) * sy / focus).ravel()
    scale = 1.0 + kappa * focus**2 * (xd**2 + yd**2)
    if not (scale > 0).all():
        raise CmdrError(f"division-model kappa {kappa} is not invertible over the {width}x{height} image")
    xn, yn = xd / scale, yd / scale
    r2 = xn**2 + yn**2
    A = np.concatenate([np.c_[xn * r2, xn * r2**2] * fx, np.c_[yn * r2, yn * r2**2] * fy])
    b = np.concatenate([(xd - xn) * fx, (yd - yn) * fy])
    (k1, k2), *_ = np.linalg.lstsq(A, b, rcond=None)
    g = 1.0 + k1 * r2 + k2 * r2**2
    error = np.hypot((xn * g - xd) * fx, (yn * g - yd) * fy).max()
    return np.array([k1, k2, 0.0, 0.0, 0.0]), float(error)


# ------------------------------------------------------------------------------------------ rigid transforms
def valid_mask(xyz: np.ndarray) -> np.ndarray:
    """HxW bool of an organized cloud: the point is finite and not the all-zero 'no measurement' marker."""
    return np.isfinite(xyz).all(axis=-1) & (xyz != 0).any(axis=-1)


def make_transform(translation: Sequence[float], rotation: Sequence[float] | None = None) -> np.ndarray:
    """4x4 homogeneous transform from a translation (x, y, z) and a rotation.

    ``rotation``: quaternion (x, y, z, w) as in geometry_msgs (normalised here), or roll, pitch, yaw in
    radians as in ROS/tf (fixed axes x, y, z: R = Rz(yaw) Ry(pitch) Rx(roll)), or None for identity.
    """
    t = np.asarray(translation, dtype=np.float64).ravel()
    if t.size != 3 or not np.isfinite(t).all():
        raise CmdrError(f"translation must be 3 finite numbers, got {np.asarray(translation).tolist()}")
    T = np.eye(4)
    T[:3, 3] = t
    if rotation is None:
        return T
    r = np.asarray(rotation, dtype=np.float64).ravel()
    try:
        if r.size == 4:
            T[:3, :3] = Rotation.from_quat(r).as_matrix()  # scalar-last (x, y, z, w), scipy's default
        elif r.size == 3:
            T[:3, :3] = Rotation.from_euler("xyz", r).as_matrix()
        else:
            raise ValueError("need 4 (quaternion x y z w) or 3 (roll pitch yaw) numbers")
    except ValueError as err:
        raise CmdrError(f"invalid rotation {r.tolist()}: {err}") from err
    if not np.isfinite(T).all():
        raise CmdrError(f"invalid rotation {r.tolist()}: not finite")
    return T


def transform_points(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Nx3 float64 points mapped by the 4x4 rigid transform T (p' = R p + t); NaN points stay NaN."""
    T = _transform(T)
    return _points(points) @ T[:3, :3].T + T[:3, 3]


def _points(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CmdrError(f"points must be an Nx3 array, got shape {pts.shape}")
    return pts


def _transform(T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all() or not np.allclose(T[3], [0, 0, 0, 1]):
        raise CmdrError(f"transform must be a finite 4x4 homogeneous matrix with last row 0 0 0 1, got {T.tolist()}")
    return T


# --------------------------------------------------------------------------------------- camera projection
def _cv_distortion(cam: CameraIntrinsics) -> np.ndarray:
    """D zero-padded to the next length OpenCV accepts (4 for equidistant)."""
    n = 4 if cam.distortion_model == "equidistant" else next(k for k in _CV_DIST_LENGTHS if k >= cam.D.size)
    return np.pad(cam.D, (0, n - cam.D.size))


def _undistort_normalized(pixels: np.ndarray, cam: CameraIntrinsics) -> np.ndarray:
    """Mx2 raw-image pixel coordinates -> Mx2 normalized coordinates (X/Z, Y/Z), iterated to 1e-12."""
    src = np.ascontiguousarray(pixels, dtype=np.float64).reshape(-1, 1, 2)
    D, eye = _cv_distortion(cam), np.eye(3)
    if cam.distortion_model == "equidistant":
        out = cv2.fisheye.undistortPoints(src, cam.K, D, None, eye, eye, _UNDISTORT_CRITERIA)
    elif hasattr(cv2, "undistortPointsIter"):  # OpenCV 4.x; 5.x folded the criteria into undistortPoints
        out = cv2.undistortPointsIter(src, cam.K, D, eye, eye, _UNDISTORT_CRITERIA)
    else:
        out = cv2.undistortPoints(src, cam.K, D, None, eye, eye, _UNDISTORT_CRITERIA)
    return out.reshape(-1, 2)


def project_points(points_cam: np.ndarray, cam: CameraIntrinsics) -> np.ndarray:
    """Nx2 float64 image coordinates (u = column, v = row) of camera-optical-frame points; NaN if unprojectable.

    ROS convention: with distortion, K and D give the raw image (cv2.projectPoints, or
    cv2.fisheye.projectPoints for 'equidistant'); with D all zero the image is rectified and P projects
    (u, v, w) = P (X, Y, Z, 1), as image_geometry's project3dToPixel. NaN for non-finite points, points at
    or behind the camera (Z <= 0) and, with distortion, points beyond the image's field of view
    (``CameraIntrinsics.max_view_radius``). Image bounds are NOT checked here.
    """
    pts = _points(points_cam)
    uv = np.full((len(pts), 2), np.nan)
    ok = np.isfinite(pts).all(axis=1)
    ok[ok] = pts[ok, 2] > 0
    if cam.rectified:
        hom = pts[ok] @ cam.P[:, :3].T + cam.P[:, 3]
        uv[ok] = hom[:, :2] / hom[:, 2:]
        return uv
    ok[ok] = np.hypot(pts[ok, 0], pts[ok, 1]) / pts[ok, 2] <= cam.max_view_radius
    if ok.any():
        obj = np.ascontiguousarray(pts[ok]).reshape(-1, 1, 3)
        zero = np.zeros(3)
        if cam.distortion_model == "equidistant":
            img, _ = cv2.fisheye.projectPoints(obj, zero, zero, cam.K, _cv_distortion(cam))
        else:
            img, _ = cv2.projectPoints(obj, zero, zero, cam.K, _cv_distortion(cam))
        uv[ok] = img.reshape(-1, 2)
    return uv


@dataclass
class Projection:
    """A cloud projected into a camera image.

    xyz_map: HxWx3 float32, camera-frame coordinates of the nearest point per pixel (0 = no point).
    pixel_of_point: N int64 flat pixel index (row * W + col) of every input point, also of points hidden
        behind a nearer one; -1 outside the image, behind the camera or non-finite.
    coverage: fraction of the image's pixels that hold a point.
    """

    xyz_map: np.ndarray
    pixel_of_point: np.ndarray
    coverage: float


def _disc_offsets(radius: int) -> np.ndarray:
    """Kx3 (drow, dcol, squared distance) of the pixel offsets within ``radius``, nearest first, (0, 0) first."""
    d = np.arange(-radius, radius + 1)
    dr, dc = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    d2 = dr**2 + dc**2
    keep = d2 <= radius**2
    off = np.c_[dr[keep], dc[keep], d2[keep]]
    return off[np.lexsort((off[:, 1], off[:, 0], off[:, 2]))]


def project_to_image(points: np.ndarray, cam: CameraIntrinsics, T_cam_from_cloud: np.ndarray | None = None,
                     splat: int = 0) -> Projection:
    """Project an Nx3 cloud into ``cam`` and z-buffer it onto the HxW pixel grid.

    ``T_cam_from_cloud`` maps cloud coordinates into the camera optical frame (z forward, x right, y down);
    None means the cloud already is in it. Each point goes to the pixel whose centre is nearest to its
    projection (``project_points``); per pixel the point with the smallest Z wins. ``splat`` > 0 fills
    holes: a point also offers itself to the empty pixels within ``splat`` pixels (exact hits always win
    over splats, then the nearer offset, then the smaller Z); splatted pixels hold the point's own
    coordinates. The default 0 leaves holes as holes, so every map pixel is a real measurement there.
    Raises CmdrError for a cloud without finite points or with no point inside the image.
    """
    pts = _points(points)
    if splat < 0 or int(splat) != splat:
        raise CmdrError(f"splat radius must be a non-negative integer number of pixels, got {splat!r}")
    if not np.isfinite(pts).all(axis=1).any():
        raise CmdrError(f"point cloud of {len(pts)} points has no finite point")
    if T_cam_from_cloud is not None:
        pts = transform_points(pts, T_cam_from_cloud)
    h, w = cam.height, cam.width
    uv = project_points(pts, cam)
    col, row = np.floor(uv + 0.5).T  # NaN stays NaN and fails the bounds test below
    with np.errstate(invalid="ignore"):
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    pixel = np.full(len(pts), -1, dtype=np.int64)
    pixel[inside] = row[inside].astype(np.int64) * w + col[inside].astype(np.int64)
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        raise CmdrError(f"none of the {len(pts)} points projects into the {w}x{h} image "
                        "(check T_cam_from_cloud and the cloud's frame)")
    offsets = _disc_offsets(int(splat))
    r = row[idx].astype(np.int64)[:, None] + offsets[:, 0]
    c = col[idx].astype(np.int64)[:, None] + offsets[:, 1]
    ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    cand_pixel = (r * w + c)[ok]
    cand_point = np.broadcast_to(idx[:, None], ok.shape)[ok]
    cand_rank = np.broadcast_to(offsets[:, 2], ok.shape)[ok]
    order = np.lexsort((pts[cand_point, 2], cand_rank, cand_pixel))
    first = np.r_[True, np.diff(cand_pixel[order]) != 0]
    won_pixel, won_point = cand_pixel[order][first], cand_point[order][first]
    xyz = np.zeros((h * w, 3), dtype=np.float32)
    xyz[won_pixel] = pts[won_point]
    return Projection(xyz.reshape(h, w, 3), pixel, won_pixel.size / (h * w))


def organized_from_depth(depth: np.ndarray, cam: CameraIntrinsics) -> np.ndarray:
    """HxWx3 float32 camera-frame points of an HxW depth image (metres along Z); invalid (<= 0, NaN) -> 0.

    The inverse of ``project_points`` at the pixel centres: with D all zero the pinhole of P
    (X = ((u - cx) Z - Tx) / fx, Y = ((v - cy) Z - Ty) / fy), otherwise the pixels are undistorted with K, D
    first (iterative OpenCV undistortion), so the map projects back onto its own pixels.
    """
    z = np.asarray(depth, dtype=np.float64)
    if z.shape != (cam.height, cam.width):
        raise CmdrError(f"depth image is {z.shape}, the camera is {cam.height}x{cam.width}")
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(z) & (z > 0)
    zv = z[valid]
    if cam.rectified:
        P = cam.P
        x = ((u[valid] - P[0, 2]) * zv - P[0, 3]) / P[0, 0]
        y = ((v[valid] - P[1, 2]) * zv - P[1, 3]) / P[1, 1]
    else:
        n = _undistort_normalized(np.c_[u[valid], v[valid]], cam)
        x, y = n[:, 0] * zv, n[:, 1] * zv
    out = np.zeros((*z.shape, 3), dtype=np.float32)
    out[valid] = np.c_[x, y, zv]
    return out


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
    finite = np.isfinite(pts).all(axis=1)
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
