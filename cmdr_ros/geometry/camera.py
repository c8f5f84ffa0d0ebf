"""The ROS CameraInfo camera model, and projecting a cloud into a camera image (z-buffered)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry.transforms import _points, finite_rows, transform_points

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
    ok = finite_rows(pts)
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


def project_to_image(points: np.ndarray, cam: CameraIntrinsics,
                     T_cam_from_cloud: np.ndarray | None = None) -> Projection:
    """Project an Nx3 cloud into ``cam`` and z-buffer it onto the HxW pixel grid.

    ``T_cam_from_cloud`` maps cloud coordinates into the camera optical frame (z forward, x right, y down);
    None means the cloud already is in it. Each point goes to the pixel whose centre is nearest to its
    projection (``project_points``); per pixel the point with the smallest Z wins. Holes stay holes, so every
    map pixel is a real measurement.
    Raises CmdrError for a cloud without finite points or with no point inside the image.
    """
    pts = _points(points)
    if not finite_rows(pts).any():
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
    order = np.lexsort((pts[idx, 2], pixel[idx]))  # per pixel, the nearest point first
    first = np.r_[True, np.diff(pixel[idx][order]) != 0]
    won_pixel, won_point = pixel[idx][order][first], idx[order][first]
    xyz = np.zeros((h * w, 3), dtype=np.float32)
    xyz[won_pixel] = pts[won_point]
    return Projection(xyz.reshape(h, w, 3), pixel, won_pixel.size / (h * w))
