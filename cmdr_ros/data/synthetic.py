"""A simulated cutting cell: cut polyurethane foam blocks seen from above, with exact defect masks.

Why: the tests, the lite-model demo and the bag demo need 2D+3D samples with pixel-exact ground truth
and no download. A part is a foam block on a conveyor table, seen by a top-down RGB camera and a
pixel-aligned structured-light sensor (``render_part``), or scanned by a laser line profilometer
(``render_profilometer_cloud``). ``generate_dataset`` writes samples in the MVTec 3D-AD layout,
``generate_profilometer_dataset`` rasterized profilometer scans as a 3D-only class.

Model. All lengths are metres. The camera looks straight down at a slightly tilted table. The block is
a heightfield over the table in block-local coordinates (s along its length, t across): a flat top
with foam-pore micro-texture, cut edges rounded by a small fillet, vertical walls. A pixel's depth is
its ray's table depth minus the block height at the ray's table point (the top-down approximation:
walls are never seen), so ``xyz`` reprojects exactly onto the pixel grid. Colour is albedo times
Lambertian shading from the heightfield normals.

Defects change the heightfield and/or the albedo on the block: ``tear`` (narrow deep crack, dark in
RGB), ``burr`` (rough raised ridge along a cut edge), ``gouge`` (elongated scooped depression),
``missing_chunk`` (a corner or edge piece cut away down toward the table), ``bump`` (smooth raised
blob) and ``stain`` (colour only: a brown blotch with NO geometry change, so a 3D-only detector cannot
see it; ``GEOMETRIC_DEFECTS`` lists the others). Every defect profile has compact support, and the
mask is exactly the valid block pixels whose height or shaded colour differs from the defect-free
twin by more than a tiny epsilon.

Randomness. ``rng`` is split into three independent streams: the part (block, pose, textures, table,
lighting), the defect, and the sensor (noise, dropout). The same seed with and without a defect
therefore renders the same part under the same noise: its defect-free twin.
"""
from __future__ import annotations

import colorsys
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np
import tifffile
from scipy import ndimage

from cmdr_ros import CmdrError

DEFECT_TYPES = ("tear", "burr", "gouge", "missing_chunk", "bump", "stain")
GEOMETRIC_DEFECTS = tuple(d for d in DEFECT_TYPES if d != "stain")
"""Defects that change the geometry (all but ``stain``, which only a colour sensor can see)."""

_HEIGHT_EPS = 1e-6  # m: a height change above this is a changed pixel
_COLOUR_EPS = 1e-4  # linear colour in [0, 1]: a shaded-colour change above this is a changed pixel
_BORDER = 0.045  # image border strip (fraction of the width, 12 px at 256) that shows only the table


@dataclass(frozen=True)
class CameraModel:
    """A distortion-free pinhole camera: pixel (u, v) = (fx X/Z + cx, fy Y/Z + cy), pixel centres at integers."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_camera_info_dict(self) -> dict:
        """The fields of a ROS ``sensor_msgs/CameraInfo`` (lower-case ROS 2 names, plumb_bob, no distortion)."""
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": "plumb_bob",
            "d": [0.0] * 5,
            "k": self.K.ravel().tolist(),
            "r": np.eye(3).ravel().tolist(),
            "p": [self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        }

    def to_calibration_dict(self) -> dict:
        """The content of an MVTec 3D-AD style ``calibration/camera_parameters.json`` for a pinhole camera."""
        return {
            "camera_type": "pinhole",
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "image_width": self.width,
            "image_height": self.height,
        }


@dataclass(frozen=True)
class CellConfig:
    """Geometry, sensor and randomisation parameters of the simulated cell (lengths in metres)."""

    image_size: int = 256  # square images
    camera_distance: float = 0.45  # optical centre to table along the optical axis
    field_of_view: float = 0.26  # table width seen across the image
    block_length: tuple[float, float] = (0.10, 0.14)
    block_width: tuple[float, float] = (0.06, 0.09)
    block_height: tuple[float, float] = (0.03, 0.05)
    edge_radius: tuple[float, float] = (0.0015, 0.003)  # fillet of the cut edges
    max_rotation_deg: float = 20.0  # in-plane pose jitter
    max_translation: float = 0.015  # per axis
    max_table_tilt_deg: float = 1.5
    depth_noise: float = 0.0003  # sigma along the ray
    dropout_blobs: float = 2.0  # mean number of invalid blobs per frame
    pixel_dropout: float = 0.002  # fraction of isolated invalid pixels / lost profile points
    steep_slope: float = 2.5  # |grad h| above which a pixel is a steep side ...
    steep_dropout: float = 0.6  # ... and is invalid with this probability
    lighting_jitter: float = 0.05  # relative jitter of intensity, ambient and colour
    rgb_noise: float = 1.5  # sigma of RGB sensor noise, 8-bit levels
    profile_width: float = 0.22  # square area a profilometer scan covers
    profile_point_spacing: float = 0.0005  # along the laser line
    profile_line_spacing: float = 0.0018  # between lines (conveyor travel per profile)
    profile_view_angle_deg: float = 25.0  # triangulation angle: occlusion behind tall walls
    profile_noise: float = 0.0001
    profile_outliers: float = 0.002  # fraction of spurious points
    seed: int = 0  # default seed of ``generate_dataset``

    def __post_init__(self) -> None:
        for name in ("block_length", "block_width", "block_height", "edge_radius"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise CmdrError(f"CellConfig.{name}={getattr(self, name)} must be a range 0 < low <= high")
        if self.image_size < 64:
            raise CmdrError(f"CellConfig.image_size={self.image_size} is too small; use at least 64 pixels")
        if self.edge_radius[1] >= self.block_height[0] / 2:
            raise CmdrError("CellConfig.edge_radius must stay below half the lowest block height")
        reach = np.hypot(self.block_length[1], self.block_width[1]) / 2 + np.sqrt(2) * self.max_translation
        room = self.field_of_view / 2 * (1 - 2 * _BORDER)
        if reach >= room:
            raise CmdrError(
                f"CellConfig: a block can reach {reach:.3f} m from the centre but the view leaves only "
                f"{room:.3f} m inside the table border strip; widen field_of_view"
            )
        if self.profile_width <= 2 * reach:
            raise CmdrError(f"CellConfig.profile_width={self.profile_width} does not cover a block ({2 * reach:.3f} m)")

    def camera(self) -> CameraModel:
        """The camera: the field of view spans ``field_of_view`` metres of table across the image."""
        f = self.image_size * self.camera_distance / self.field_of_view
        c = (self.image_size - 1) / 2
        return CameraModel(f, f, c, c, self.image_size, self.image_size)


@dataclass
class PartFrame:
    """One rendered part: pixel-aligned RGB and organized xyz (camera frame, metres, invalid = 0)."""

    rgb: np.ndarray  # HxWx3 uint8
    xyz: np.ndarray  # HxWx3 float32
    mask: np.ndarray  # HxW bool: the defect's pixels (empty for a good part)
    defect: str  # "good" or one of DEFECT_TYPES
    camera: CameraModel

    @property
    def valid(self) -> np.ndarray:
        """HxW bool: pixels with a 3D measurement."""
        return self.xyz[..., 2] > 0


# --------------------------------------------------------------------------------------------- the part


@dataclass(frozen=True)
class _Texture:
    """A smooth unit-variance random field on a grid in block-local coordinates, sampled bilinearly."""

    values: np.ndarray
    origin: tuple[float, float]  # (s, t) of values[0, 0]
    step: float

    @classmethod
    def random(cls, rng: np.random.Generator, half: tuple[float, float], step: float, sigma: float) -> _Texture:
        """A field covering [-half, half] (plus a margin) with Gaussian correlation ``sigma`` grid cells."""
        margin = 4 * step
        shape = (int(2 * (half[1] + margin) / step) + 2, int(2 * (half[0] + margin) / step) + 2)
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        field = (field - field.mean()) / field.std()
        return cls(field, (-half[0] - margin, -half[1] - margin), step)

    def __call__(self, s: np.ndarray, t: np.ndarray) -> np.ndarray:
        coords = np.stack([(t - self.origin[1]) / self.step, (s - self.origin[0]) / self.step])
        return ndimage.map_coordinates(self.values, coords, order=1, mode="nearest")


@dataclass(frozen=True)
class _Part:
    """A foam block: pose on the table, size, fillet, colour and pore textures."""

    centre: tuple[float, float]
    angle: float
    half_length: float
    half_width: float
    height: float
    radius: float
    colour: np.ndarray  # linear RGB albedo of the foam
    pores: _Texture
    tone: _Texture

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table coordinates -> block-local (s, t)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x - self.centre[0], y - self.centre[1]
        return c * dx + s * dy, -s * dx + c * dy

    def surface(self, s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Defect-free height above the table (0 off the block) and foam albedo (Nx3) at (s, t)."""
        inside = np.minimum(self.half_length - np.abs(s), self.half_width - np.abs(t))
        r = self.radius
        fillet = self.height - r + np.sqrt(np.clip(r**2 - (r - np.minimum(inside, r)) ** 2, 0, None))
        pores = self.pores(s, t)
        dip = np.clip(pores - 1.0, 0, 1.5)  # open pore cells: small pits, a little darker
        height = fillet - 0.0001 * dip + 0.00002 * pores
        height = np.where(inside >= 0, height, 0.0)
        shade = (1 - 0.1 * dip + 0.02 * pores) * (1 + 0.03 * self.tone(s, t))
        return height, shade[:, None] * self.colour


def _draw_part(rng: np.random.Generator, cfg: CellConfig) -> _Part:
    half = (rng.uniform(*cfg.block_length) / 2, rng.uniform(*cfg.block_width) / 2)
    hue = rng.uniform(0.115, 0.145)  # pale yellow / cream
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.25, 0.4), rng.uniform(0.88, 0.95)))
    return _Part(
        centre=tuple(rng.uniform(-cfg.max_translation, cfg.max_translation, 2)),
        angle=np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        half_length=half[0],
        half_width=half[1],
        height=rng.uniform(*cfg.block_height),
        radius=rng.uniform(*cfg.edge_radius),
        colour=colour,
        pores=_Texture.random(rng, half, 0.0005, 0.8),
        tone=_Texture.random(rng, half, 0.002, 4.0),
    )


# ------------------------------------------------------------------------------------------ the defects


class _Defect(Protocol):
    def apply(self, s: np.ndarray, t: np.ndarray, height: np.ndarray, albedo: np.ndarray) -> None:
        """Change ``height`` and/or ``albedo`` in place at block-local (s, t)."""


def _rotate(s: np.ndarray, t: np.ndarray, centre: tuple[float, float], angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, sn = np.cos(angle), np.sin(angle)
    ds, dt = s - centre[0], t - centre[1]
    return c * ds + sn * dt, -sn * ds + c * dt


def _edge_frame(s: np.ndarray, t: np.ndarray, half: tuple[float, float], edge: int) -> tuple[np.ndarray, np.ndarray]:
    """(along, inward) coordinates of edge 0: +s, 1: -s, 2: +t, 3: -t (inward = distance into the block)."""
    if edge == 0:
        return t, half[0] - s
    if edge == 1:
        return t, half[0] + s
    if edge == 2:
        return s, half[1] - t
    return s, half[1] + t


def _edge_half_length(part: _Part, edge: int) -> float:
    return part.half_width if edge < 2 else part.half_length


def _polyline_distance(p: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points p (Nx2) to a polyline (Mx2) and the arc-length fraction of the nearest point."""
    a, ab = pts[:-1], np.diff(pts, axis=0)
    seg2 = (ab**2).sum(1)
    ap = p[:, None, :] - a[None]
    w = np.clip((ap * ab).sum(-1) / seg2, 0, 1)
    d2 = ((ap - w[..., None] * ab) ** 2).sum(-1)
    k = d2.argmin(1)
    rows = np.arange(len(p))
    seg = np.sqrt(seg2)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.sqrt(d2[rows, k]), (cum[k] + w[rows, k] * seg[k]) / cum[-1]


def _top_point(rng: np.random.Generator, part: _Part, margin: float) -> tuple[float, float]:
    """A random point on the top at least ``margin`` inside every edge."""
    return (
        rng.uniform(-1, 1) * max(part.half_length - margin, 0.0),
        rng.uniform(-1, 1) * max(part.half_width - margin, 0.0),
    )


@dataclass(frozen=True)
class _Tear:
    """A narrow deep crack along a slightly curved line; dark inside (shadowed cells)."""

    curve: np.ndarray  # Mx2 polyline in (s, t)
    width: float
    depth: float

    def apply(self, s, t, height, albedo):
        lo, hi = self.curve.min(0) - self.width, self.curve.max(0) + self.width
        near = np.flatnonzero((s > lo[0]) & (s < hi[0]) & (t > lo[1]) & (t < hi[1]) & (height > 0))
        dist, tau = _polyline_distance(np.stack([s[near], t[near]], 1), self.curve)
        u = dist / (self.width / 2)
        profile = np.sqrt(np.clip(1 - u**2, 0, None)) * np.sin(np.pi * tau) ** 0.3
        height[near] -= self.depth * profile
        albedo[near] *= (1 - 0.6 * profile)[:, None]


@dataclass(frozen=True)
class _Burr:
    """A rough raised ridge of torn-out material along part of a cut edge."""

    half: tuple[float, float]  # the block's half length and half width
    edge: int
    centre: float  # along the edge
    length: float
    width: float
    height: float
    rough: _Texture

    def apply(self, s, t, height, albedo):
        along, inward = _edge_frame(s, t, self.half, self.edge)
        tau = (along - self.centre) / self.length + 0.5
        on = (tau > 0) & (tau < 1) & (inward >= 0) & (inward < self.width) & (height > 0)
        u = 2 * inward[on] / self.width - 1
        rough = np.maximum(1 + 0.6 * self.rough(s[on], t[on]), 0.1)
        height[on] += self.height * np.sin(np.pi * tau[on]) ** 0.5 * (1 - u**2) * rough


@dataclass(frozen=True)
class _Gouge:
    """An elongated scooped depression (a tool dragged into the top)."""

    centre: tuple[float, float]
    angle: float
    semi_axes: tuple[float, float]
    depth: float

    def apply(self, s, t, height, albedo):
        a, b = _rotate(s, t, self.centre, self.angle)
        r2 = (a / self.semi_axes[0]) ** 2 + (b / self.semi_axes[1]) ** 2
        on = (r2 < 1) & (height > 0)
        # a spoon-shaped scoop with a sharp rim, deeper where the tool came out
        height[on] -= self.depth * np.sqrt(1 - r2[on]) * (0.75 + 0.25 * a[on] / self.semi_axes[0])


@dataclass(frozen=True)
class _Bump:
    """A smooth raised blob (foam expanded under the skin)."""

    centre: tuple[float, float]
    radius: float
    height: float

    def apply(self, s, t, height, albedo):
        r2 = ((s - self.centre[0]) ** 2 + (t - self.centre[1]) ** 2) / self.radius**2
        on = (r2 < 1) & (height > 0)
        height[on] += self.height * (1 - r2[on]) ** 2


@dataclass(frozen=True)
class _Stain:
    """An irregular brown blotch: albedo only, the geometry is untouched."""

    centre: tuple[float, float]
    radius: float
    harmonics: np.ndarray  # Kx3 rows (order, amplitude, phase) of the outline
    strength: float
    colour: np.ndarray

    def apply(self, s, t, height, albedo):
        ds, dt = s - self.centre[0], t - self.centre[1]
        phi = np.arctan2(dt, ds)
        outline = self.radius * (1 + sum(a * np.cos(k * phi + p) for k, a, p in self.harmonics))
        q2 = (ds**2 + dt**2) / outline**2
        on = (q2 < 1) & (height > 0)
        w = (self.strength * (1 - q2[on]) ** 0.4)[:, None]
        albedo[on] = (1 - w) * albedo[on] + w * self.colour


def _draw_defect(kind: str, rng: np.random.Generator, part: _Part) -> _Defect:
    hl, hw, h = part.half_length, part.half_width, part.height
    if kind == "tear":
        length, width = rng.uniform(0.030, 0.050), rng.uniform(0.003, 0.0045)
        centre = np.array(_top_point(rng, part, length / 2 + 0.006))
        direction = rng.uniform(0, np.pi)
        axis = np.array([np.cos(direction), np.sin(direction)])
        normal = np.array([-axis[1], axis[0]])
        tau = np.linspace(-0.5, 0.5, 25)[:, None]
        bend = rng.uniform(-0.15, 0.15) * length * (1 - 4 * tau**2)  # a gently curved crack
        curve = centre + tau * length * axis + bend * normal
        return _Tear(curve, width, rng.uniform(0.004, min(0.012, 0.4 * h)))
    if kind == "burr":
        edge = int(rng.integers(4))
        length = rng.uniform(0.020, min(0.040, 2 * _edge_half_length(part, edge) - 0.02))
        free = _edge_half_length(part, edge) - length / 2 - 0.008
        return _Burr((hl, hw), edge, rng.uniform(-free, free), length, rng.uniform(0.004, 0.007),
                     rng.uniform(0.0025, 0.005), _Texture.random(rng, (hl, hw), 0.0007, 0.8))
    if kind == "gouge":
        semi = (rng.uniform(0.009, 0.016), rng.uniform(0.003, 0.005))
        return _Gouge(_top_point(rng, part, semi[0] + 0.005), rng.uniform(0, np.pi), semi, rng.uniform(0.003, 0.006))
    if kind == "missing_chunk":
        return _draw_missing_chunk(rng, part)
    if kind == "bump":
        radius = rng.uniform(0.006, 0.010)
        return _Bump(_top_point(rng, part, radius + 0.005), radius, rng.uniform(0.0035, 0.006))
    if kind == "stain":
        radius = rng.uniform(0.007, 0.014)
        harmonics = np.stack([np.arange(2, 5), rng.uniform(0, 0.1, 3), rng.uniform(0, 2 * np.pi, 3)], 1)
        brown = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.09), rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.5)))
        return _Stain(_top_point(rng, part, 1.3 * radius + 0.005), radius, harmonics, rng.uniform(0.55, 0.85), brown)
    raise CmdrError(f"unknown defect type {kind!r}; expected one of {DEFECT_TYPES}")


@dataclass(frozen=True)
class _MissingChunk:
    """A piece torn away at a corner (triangle) or from an edge (half ellipse), part-way down toward the table.

    Inside, the surface drops to a rough fracture floor that ramps up toward the cut line, leaving a low
    step there. The roughness matters: a smooth tilted floor and a straight step look locally like
    an intact top and edge to rotation-invariant descriptors such as FPFH.
    """

    frame: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    """(s, t) -> (progress, inside the block): progress 0 at the deepest point, 1 on the cut line."""
    floor: float
    top: float
    rough: _Texture
    roughness: float

    def apply(self, s, t, height, albedo):
        progress, inside = self.frame(s, t)
        on = inside & (progress < 1) & (height > 0)
        cut = self.floor + 0.8 * (self.top - self.floor) * progress[on] + self.roughness * self.rough(s[on], t[on])
        height[on] = np.clip(np.minimum(height[on], cut), 0, None)


def _draw_missing_chunk(rng: np.random.Generator, part: _Part) -> _MissingChunk:
    # The floor stays well above the table and ramps up to a low step at the cut line: a chunk torn down to the
    # table would leave no points (the background removal clears the table plane and keeps the largest cluster).
    floor = rng.uniform(0.3, 0.6) * part.height
    rough = _Texture.random(rng, (part.half_length, part.half_width), 0.0008, 1.0)
    roughness = rng.uniform(0.0008, 0.0015)
    if rng.random() < 0.5:  # corner
        sign_s, sign_t = rng.choice([-1.0, 1.0], 2)
        legs = (rng.uniform(0.016, 0.032), rng.uniform(0.014, 0.028))

        def corner(s, t):
            into_s, into_t = part.half_length - sign_s * s, part.half_width - sign_t * t
            return into_s / legs[0] + into_t / legs[1], (into_s >= 0) & (into_t >= 0)

        return _MissingChunk(corner, floor, part.height, rough, roughness)
    edge = int(rng.integers(4))
    axes = (rng.uniform(0.010, 0.020), rng.uniform(0.007, 0.014))
    free = _edge_half_length(part, edge) - axes[0] - 0.005
    centre = rng.uniform(-free, free)

    def bite(s, t):
        along, inward = _edge_frame(s, t, (part.half_length, part.half_width), edge)
        return np.hypot((along - centre) / axes[0], inward / axes[1]), inward >= 0

    return _MissingChunk(bite, floor, part.height, rough, roughness)


def _check_defect(defect: str | None) -> None:
    if defect is not None and defect not in DEFECT_TYPES:
        raise CmdrError(f"unknown defect type {defect!r}; expected None or one of {DEFECT_TYPES}")


def _surfaces(part: _Part, defect: _Defect | None, s: np.ndarray, t: np.ndarray):
    """(height, albedo) without and with the defect at flat arrays of block-local points."""
    clean_h, clean_a = part.surface(s, t)
    h, a = clean_h.copy(), clean_a.copy()
    if defect is not None:
        defect.apply(s, t, h, a)
    return clean_h, clean_a, h, a


# ------------------------------------------------------------------------------------- camera rendering


def render_part(rng: np.random.Generator, cfg: CellConfig, defect: str | None = None) -> PartFrame:
    """Render one part (``defect`` None = good) as the top-down RGB + organized xyz sensor sees it."""
    _check_defect(defect)
    part_rng, defect_rng, sensor_rng = rng.spawn(3)
    cam = cfg.camera()
    n = cfg.image_size
    part = _draw_part(part_rng, cfg)

    # the table plane Z = d + a X + b Y in the camera frame, and each pixel ray's table point
    tilt, tilt_dir = np.deg2rad(part_rng.uniform(0, cfg.max_table_tilt_deg)), part_rng.uniform(0, 2 * np.pi)
    slope_x, slope_y = np.tan(tilt) * np.cos(tilt_dir), np.tan(tilt) * np.sin(tilt_dir)
    v, u = np.mgrid[0:n, 0:n].astype(np.float64)
    xn, yn = (u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy
    z_table = cfg.camera_distance / (1 - slope_x * xn - slope_y * yn)
    table_x, table_y = xn * z_table, yn * z_table

    table_albedo = _table_albedo(part_rng, table_x, table_y)
    light = _draw_light(part_rng, cfg)
    flaw = _draw_defect(defect, defect_rng, part) if defect else None

    s, t = part.local(table_x.ravel(), table_y.ravel())
    clean_h, clean_a, h, a = (x.reshape(n, n, *x.shape[1:]) for x in _surfaces(part, flaw, s, t))
    pitch = z_table / cam.fx  # metres per pixel on the table
    clean_colour = _shade(clean_h, clean_a, table_albedo, pitch, light)
    colour = _shade(h, a, table_albedo, pitch, light)

    # sensor: dropout at steep sides, random blobs and pixels; noise along the ray
    steep = np.hypot(*np.gradient(h)) / pitch > cfg.steep_slope
    valid = ~(steep & (sensor_rng.random((n, n)) < cfg.steep_dropout))
    valid &= sensor_rng.random((n, n)) >= cfg.pixel_dropout
    valid &= ~_blobs(sensor_rng, n, cfg.dropout_blobs)
    z = z_table - h + cfg.depth_noise * sensor_rng.standard_normal((n, n))
    xyz = np.where(valid[..., None], np.stack([xn * z, yn * z, z], -1), 0.0).astype(np.float32)
    noisy = colour * 255 + cfg.rgb_noise * sensor_rng.standard_normal((n, n, 3))
    rgb = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

    changed = (np.abs(h - clean_h) > _HEIGHT_EPS) | (np.abs(colour - clean_colour).max(-1) > _COLOUR_EPS)
    mask = changed & ((h > 0) | (clean_h > 0)) & valid
    return PartFrame(rgb, xyz, mask, defect or "good", cam)


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # unit vector, (x, y, up)
    ambient: float
    diffuse: float
    tint: np.ndarray  # RGB gain


def _draw_light(rng: np.random.Generator, cfg: CellConfig) -> _Light:
    elevation, azimuth = np.deg2rad(rng.uniform(55, 80)), rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    j = cfg.lighting_jitter
    gain = rng.uniform(1 - j, 1 + j)
    return _Light(direction, 0.3 * rng.uniform(1 - j, 1 + j), 0.72 * gain,
                  gain * rng.uniform(1 - j / 3, 1 + j / 3, 3))


def _table_albedo(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A dark grey conveyor belt: fine grain and faint weave stripes across the travel direction."""
    base = rng.uniform(0.14, 0.26) * rng.uniform(0.9, 1.1, 3)
    grain = ndimage.gaussian_filter(rng.standard_normal(x.shape), 0.7)
    grain /= grain.std()
    stripes = np.sin(2 * np.pi * y / rng.uniform(0.002, 0.004) + rng.uniform(0, 2 * np.pi))
    return base * (1 + 0.07 * grain + 0.03 * stripes)[..., None]


def _shade(height: np.ndarray, albedo: np.ndarray, table: np.ndarray, pitch: np.ndarray, light: _Light) -> np.ndarray:
    """Lambertian colour in [0, 1]: foam albedo and heightfield normals on the block, a flat table elsewhere."""
    on_block = height > 0
    gy, gx = np.gradient(height)
    normal = np.stack([-gx / pitch, -gy / pitch, np.ones_like(height)], -1)
    normal[~on_block] = (0.0, 0.0, 1.0)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    shading = light.ambient + light.diffuse * np.clip(normal @ light.direction, 0, None)
    colour = np.where(on_block[..., None], albedo, table) * shading[..., None] * light.tint
    return np.clip(colour, 0, 1)


def _blobs(rng: np.random.Generator, n: int, mean_count: float) -> np.ndarray:
    """Random elliptical invalid regions (specular spots, absorbing dirt) as an HxW bool map."""
    out = np.zeros((n, n), np.uint8)
    for _ in range(rng.poisson(mean_count)):
        centre = tuple(int(c) for c in rng.integers(0, n, 2))
        axes = tuple(int(a) for a in rng.integers(1, 5, 2))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


# --------------------------------------------------------------------------------------- profilometer


def render_profilometer_cloud(
    rng: np.random.Generator, cfg: CellConfig, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """An unorganized cloud of one part as a laser line profilometer scans it, with per-point defect labels.

    Frame: x across the conveyor (along the laser line), y along the travel, z up from the belt (metres).
    Lines every ``profile_line_spacing`` across a ``profile_width`` square, points every
    ``profile_point_spacing`` on a line (about 50k points with the defaults); points hidden from the
    tilted camera behind tall walls are missing, a few are lost at random, a few are spurious outliers
    (label False); the order is shuffled. The same rng seed gives the same part as ``render_part``.
    ``stain`` points are labelled but carry no geometric signal.
    """
    _check_defect(defect)
    part_rng, defect_rng, sensor_rng = rng.spawn(3)
    part = _draw_part(part_rng, cfg)
    flaw = _draw_defect(defect, defect_rng, part) if defect else None

    half = cfg.profile_width / 2
    y, x = np.mgrid[-half:half:cfg.profile_line_spacing, -half:half:cfg.profile_point_spacing]
    s, t = part.local(x.ravel(), y.ravel())
    clean_h, clean_a, h, a = _surfaces(part, flaw, s, t)
    changed = (np.abs(h - clean_h) > _HEIGHT_EPS) | (np.abs(a - clean_a).max(-1) > _COLOUR_EPS)
    label = changed & ((h > 0) | (clean_h > 0))
    h = h.reshape(x.shape)

    # the camera views the laser line from +y at the triangulation angle: higher ground behind hides a point
    rise = cfg.profile_line_spacing / np.tan(np.deg2rad(cfg.profile_view_angle_deg))
    hidden = np.zeros(x.shape, bool)
    for k in range(1, int(np.ceil(h.max() / rise)) + 1):
        hidden[:-k] |= h[k:] > h[:-k] + k * rise
    keep = (~hidden).ravel() & (sensor_rng.random(x.size) >= cfg.pixel_dropout)

    z = h.ravel() + cfg.profile_noise * sensor_rng.standard_normal(x.size)
    points = np.stack([x.ravel(), y.ravel(), z], 1)[keep]
    label = label[keep]
    outlier = sensor_rng.random(len(points)) < cfg.profile_outliers
    points[outlier, 2] += sensor_rng.choice([-1.0, 1.0], outlier.sum()) * sensor_rng.uniform(0.002, 0.02, outlier.sum())
    label[outlier] = False
    order = sensor_rng.permutation(len(points))
    return points[order].astype(np.float32), label[order]


# -------------------------------------------------------------------------------------------- dataset


def class_ids(defects: tuple[str, ...] = DEFECT_TYPES) -> dict[str, str]:
    """The gt pixel value of each class, as in MVTec 3D-AD's ``class_ids.json``: good 0, defects 255, 254, ..."""
    ids = {"0": "good"}
    for d in defects:
        ids[str(255 - DEFECT_TYPES.index(d))] = d
    return ids


def generate_dataset(
    root: str | Path,
    class_name: str = "foam_block",
    n_train: int = 20,
    n_val: int = 5,
    n_test_good: int = 10,
    n_test_per_defect: int = 5,
    cfg: CellConfig | None = None,
    seed: int | None = None,
    defects: tuple[str, ...] = DEFECT_TYPES,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic class in the MVTec 3D-AD layout under ``root/class_name`` and return that folder.

    ``train``/``validation`` hold good parts (rgb, xyz); ``test/good`` and ``test/<defect>`` also hold
    ``gt`` masks whose defect pixels carry the class id of ``class_ids.json`` (0 elsewhere). Each sample
    is seeded from (seed, split, class, index) alone, so a sample does not depend on the other counts.
    ``seed`` None uses ``cfg.seed``. An existing non-empty class folder is an error unless ``overwrite``.
    """
    cfg = cfg or CellConfig()
    seed = cfg.seed if seed is None else seed
    folder, jobs = _dataset_jobs(Path(root) / class_name, (n_train, n_val, n_test_good, n_test_per_defect), defects,
                                 overwrite)
    for split, kind, count in jobs:
        out = folder / split / kind
        subdirs = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
        for sub in subdirs:
            (out / sub).mkdir(parents=True, exist_ok=True)
        gt_value = _gt_value(kind)
        for i in range(count):
            frame = render_part(_sample_rng(seed, split, kind, i), cfg, None if kind == "good" else kind)
            _imwrite(out / "rgb" / f"{i:03d}.png", cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
            tifffile.imwrite(out / "xyz" / f"{i:03d}.tiff", frame.xyz, photometric="rgb")  # as MVTec's files
            if split == "test":
                _imwrite(out / "gt" / f"{i:03d}.png", frame.mask.astype(np.uint8) * np.uint8(gt_value))
    calibration = folder / "calibration"
    calibration.mkdir(parents=True, exist_ok=True)
    (calibration / "camera_parameters.json").write_text(json.dumps(cfg.camera().to_calibration_dict(), indent=2))
    (folder / "class_ids.json").write_text(json.dumps(class_ids(tuple(defects)), indent=2))
    return folder


def generate_profilometer_dataset(
    root: str | Path,
    class_name: str = "foam_block_profiles",
    n_train: int = 20,
    n_val: int = 4,
    n_test_good: int = 6,
    n_test_per_defect: int = 2,
    resolution: float = 0.001,
    cfg: CellConfig | None = None,
    seed: int | None = None,
    defects: tuple[str, ...] = GEOMETRIC_DEFECTS,
    overwrite: bool = False,
) -> Path:
    """Write profilometer scans as a 3D-only class in the MVTec 3D-AD layout under ``root/class_name``.

    Each part is a ``render_profilometer_cloud`` rasterized with ``rasterize_on_plane(points, resolution=
    resolution)``, exactly as the inspection node in mode 3d grids an unorganized cloud (its
    ``raster_resolution`` parameter must be the same), so the model trains on the maps it will see.
    ``xyz/NNN.tiff`` is the raster's xyz map (0 = empty cell); test parts also get ``gt/NNN.png`` (a cell is
    defective when any defect point falls in it, value as in ``class_ids.json``) and their raw unorganized
    cloud ``points/NNN.npy`` (Nx3 float32) for writing a bag. No rgb. Seeds, counts and ``overwrite`` as in
    ``generate_dataset``.
    """
    from cmdr_ros.geometry import rasterize_on_plane

    cfg = cfg or CellConfig()
    seed = cfg.seed if seed is None else seed
    folder, jobs = _dataset_jobs(Path(root) / class_name, (n_train, n_val, n_test_good, n_test_per_defect), defects,
                                 overwrite)
    for split, kind, count in jobs:
        out = folder / split / kind
        for sub in ("xyz", "gt", "points") if split == "test" else ("xyz",):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            points, labels = render_profilometer_cloud(_sample_rng(seed, split, kind, i), cfg,
                                                       None if kind == "good" else kind)
            raster = rasterize_on_plane(points, resolution=resolution)
            tifffile.imwrite(out / "xyz" / f"{i:03d}.tiff", raster.xyz_map, photometric="rgb")
            if split == "test":
                cells = raster.cell_of_point[labels & (raster.cell_of_point >= 0)]
                mask = np.bincount(cells, minlength=raster.shape[0] * raster.shape[1]).reshape(raster.shape) > 0
                _imwrite(out / "gt" / f"{i:03d}.png", mask.astype(np.uint8) * np.uint8(_gt_value(kind)))
                np.save(out / "points" / f"{i:03d}.npy", points)
    (folder / "class_ids.json").write_text(json.dumps(class_ids(tuple(defects)), indent=2))
    return folder


def _dataset_jobs(folder: Path, counts: tuple[int, int, int, int], defects: tuple[str, ...],
                  overwrite: bool) -> tuple[Path, list[tuple[str, str, int]]]:
    """Check the arguments, clear ``folder`` (only with ``overwrite``) and list (split, kind, count) to render."""
    for d in defects:
        _check_defect(d)
    if min(counts) < 0:
        raise CmdrError("generate_dataset: sample counts must be non-negative")
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise CmdrError(f"{folder}: already exists and is not empty; pass overwrite=True to replace it")
        shutil.rmtree(folder)
    n_train, n_val, n_test_good, n_test_per_defect = counts
    jobs = [("train", "good", n_train), ("validation", "good", n_val), ("test", "good", n_test_good)]
    return folder, jobs + [("test", d, n_test_per_defect) for d in defects]


def _sample_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """A sample's generator, from (seed, split, kind, index) alone."""
    return np.random.default_rng([seed, ("train", "validation", "test").index(split),
                                  (("good",) + DEFECT_TYPES).index(kind), index])


def _gt_value(kind: str) -> int:
    """The gt pixel value of a class (see ``class_ids``)."""
    return 255 - DEFECT_TYPES.index(kind) if kind != "good" else 0


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise CmdrError(f"{path}: OpenCV could not write the image")
