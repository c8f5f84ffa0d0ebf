"""The part: a foam block on the table (pose, size, fillet, colour, pore textures) and its defect-free surface."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cmdr_ros.data.synthetic.cell import CellConfig


@dataclass(frozen=True)
class Texture:
    """A smooth unit-variance random field on a grid in block-local coordinates, sampled bilinearly."""

    values: np.ndarray
    origin: tuple[float, float]  # (s, t) of values[0, 0]
    step: float

    @classmethod
    def random(cls, rng: np.random.Generator, half: tuple[float, float], step: float, sigma: float) -> Texture:
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
class Part:
    """A foam block: pose on the table, size, fillet, colour and pore textures."""

    centre: tuple[float, float]
    angle: float
    half_length: float
    half_width: float
    height: float
    radius: float
    colour: np.ndarray  # linear RGB albedo of the foam
    pores: Texture
    tone: Texture

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


def draw_part(rng: np.random.Generator, cfg: CellConfig) -> Part:
    half = (rng.uniform(*cfg.block_length) / 2, rng.uniform(*cfg.block_width) / 2)
    hue = rng.uniform(*cfg.material_hue)
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*cfg.material_saturation), rng.uniform(*cfg.material_value)))
    return Part(
        centre=tuple(rng.uniform(-cfg.max_translation, cfg.max_translation, 2)),
        angle=np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
        half_length=half[0],
        half_width=half[1],
        height=rng.uniform(*cfg.block_height),
        radius=rng.uniform(*cfg.edge_radius),
        colour=colour,
        pores=Texture.random(rng, half, 0.0005, 0.8),
        tone=Texture.random(rng, half, 0.002, 4.0),
    )

