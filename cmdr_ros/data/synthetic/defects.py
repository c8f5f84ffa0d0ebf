"""The six defect types, drawn at random on a part, and the surfaces with and without a defect.

Defects change the heightfield and/or the albedo on the block: ``tear`` (narrow deep crack, dark in
RGB), ``burr`` (rough raised ridge along a cut edge), ``gouge`` (elongated scooped depression),
``missing_chunk`` (a corner or edge piece cut away down toward the table), ``bump`` (smooth raised
blob) and ``stain`` (colour only: a brown blotch with NO geometry change, so a 3D-only detector cannot
see it; ``GEOMETRIC_DEFECTS`` lists the others). Every defect profile has compact support, and the
mask is exactly the valid block pixels whose height or shaded colour differs from the defect-free
twin by more than a tiny epsilon (``HEIGHT_EPS``, ``COLOUR_EPS``).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.data.synthetic.part import Part, Texture

DEFECT_TYPES = ("tear", "burr", "gouge", "missing_chunk", "bump", "stain")
GEOMETRIC_DEFECTS = tuple(d for d in DEFECT_TYPES if d != "stain")
"""Defects that change the geometry (all but ``stain``, which only a colour sensor can see)."""

HEIGHT_EPS = 1e-6  # m: a height change above this is a changed pixel
COLOUR_EPS = 1e-4  # linear colour in [0, 1]: a shaded-colour change above this is a changed pixel


class Defect(Protocol):
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


def _edge_half_length(part: Part, edge: int) -> float:
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


def _top_point(rng: np.random.Generator, part: Part, margin: float) -> tuple[float, float]:
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
    rough: Texture

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


def draw_defect(kind: str, rng: np.random.Generator, part: Part) -> Defect:
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
                     rng.uniform(0.0025, 0.005), Texture.random(rng, (hl, hw), 0.0007, 0.8))
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
    rough: Texture
    roughness: float

    def apply(self, s, t, height, albedo):
        progress, inside = self.frame(s, t)
        on = inside & (progress < 1) & (height > 0)
        cut = self.floor + 0.8 * (self.top - self.floor) * progress[on] + self.roughness * self.rough(s[on], t[on])
        height[on] = np.clip(np.minimum(height[on], cut), 0, None)


def _draw_missing_chunk(rng: np.random.Generator, part: Part) -> _MissingChunk:
    # The floor stays well above the table and ramps up to a low step at the cut line: a chunk torn down to the
    # table would leave no points (the background removal clears the table plane and keeps the largest cluster).
    floor = rng.uniform(0.3, 0.6) * part.height
    rough = Texture.random(rng, (part.half_length, part.half_width), 0.0008, 1.0)
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


def check_defect(defect: str | None) -> None:
    if defect is not None and defect not in DEFECT_TYPES:
        raise CmdrError(f"unknown defect type {defect!r}; expected None or one of {DEFECT_TYPES}")


def surfaces(part: Part, defect: Defect | None, s: np.ndarray, t: np.ndarray):
    """(height, albedo) without and with the defect at flat arrays of block-local points."""
    clean_h, clean_a = part.surface(s, t)
    h, a = clean_h.copy(), clean_a.copy()
    if defect is not None:
        defect.apply(s, t, h, a)
    return clean_h, clean_a, h, a

