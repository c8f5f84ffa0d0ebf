"""Camera rendering: a part as the top-down RGB camera and the pixel-aligned structured-light sensor see it.

Model. All lengths are metres. The camera looks straight down at a slightly tilted table. The block is
a heightfield over the table in block-local coordinates (s along its length, t across): a flat top
with foam-pore micro-texture, cut edges rounded by a small fillet, vertical walls. A pixel's depth is
its ray's table depth minus the block height at the ray's table point (the top-down approximation:
walls are never seen), so ``xyz`` reprojects exactly onto the pixel grid. Colour is albedo times
Lambertian shading from the heightfield normals.

Randomness. ``rng`` is split into three independent streams: the part (block, pose, textures, table,
lighting), the defect, and the sensor (noise, dropout). The same seed with and without a defect
therefore renders the same part under the same noise: its defect-free twin.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from cmdr_ros.data.synthetic.cell import CellConfig, PartFrame
from cmdr_ros.data.synthetic.defects import COLOUR_EPS, HEIGHT_EPS, check_defect, draw_defect, surfaces
from cmdr_ros.data.synthetic.part import draw_part


def render_part(rng: np.random.Generator, cfg: CellConfig, defect: str | None = None) -> PartFrame:
    """Render one part (``defect`` None = good) as the top-down RGB + organized xyz sensor sees it."""
    check_defect(defect)
    part_rng, defect_rng, sensor_rng = rng.spawn(3)
    cam = cfg.camera()
    fx, fy, cx, cy = cam.K[0, 0], cam.K[1, 1], cam.K[0, 2], cam.K[1, 2]
    n = cfg.image_size
    part = draw_part(part_rng, cfg)

    # the table plane Z = d + a X + b Y in the camera frame, and each pixel ray's table point
    tilt, tilt_dir = np.deg2rad(part_rng.uniform(0, cfg.max_table_tilt_deg)), part_rng.uniform(0, 2 * np.pi)
    slope_x, slope_y = np.tan(tilt) * np.cos(tilt_dir), np.tan(tilt) * np.sin(tilt_dir)
    v, u = np.mgrid[0:n, 0:n].astype(np.float64)
    xn, yn = (u - cx) / fx, (v - cy) / fy
    z_table = cfg.camera_distance / (1 - slope_x * xn - slope_y * yn)
    table_x, table_y = xn * z_table, yn * z_table

    table_albedo = _table_albedo(part_rng, table_x, table_y)
    light = _draw_light(part_rng, cfg)
    flaw = draw_defect(defect, defect_rng, part) if defect else None

    s, t = part.local(table_x.ravel(), table_y.ravel())
    clean_h, clean_a, h, a = (x.reshape(n, n, *x.shape[1:]) for x in surfaces(part, flaw, s, t))
    pitch = z_table / fx  # metres per pixel on the table
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

    changed = (np.abs(h - clean_h) > HEIGHT_EPS) | (np.abs(colour - clean_colour).max(-1) > COLOUR_EPS)
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

