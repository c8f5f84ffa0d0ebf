"""A laser line profilometer's scan of a part: an unorganized cloud with per-point defect labels."""
from __future__ import annotations

import numpy as np

from cmdr_ros.data.synthetic.cell import CellConfig
from cmdr_ros.data.synthetic.defects import COLOUR_EPS, HEIGHT_EPS, check_defect, draw_defect, surfaces
from cmdr_ros.data.synthetic.part import draw_part


def render_profilometer_cloud(
    rng: np.random.Generator, cfg: CellConfig, defect: str | None = None, shuffle: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """An unorganized cloud of one part as a laser line profilometer scans it, with per-point defect labels.

    Frame: x across the conveyor (along the laser line), y along the travel, z up from the belt (metres).
    Lines every ``profile_line_spacing`` across a ``profile_width`` square, points every
    ``profile_point_spacing`` on a line (about 50k points with the defaults); points hidden from the
    tilted camera behind tall walls are missing, a few are lost at random, a few are spurious outliers
    (label False). ``shuffle``: the points in random order (an unorganized cloud, as any driver may send it);
    else in the sensor's order, profile after profile along the travel, each along the laser line (what the
    cutting-cell chunk pipeline needs). The same rng seed gives the same part as ``render_part``, and the same
    points in both orders.
    ``stain`` points are labelled but carry no geometric signal.
    """
    check_defect(defect)
    part_rng, defect_rng, sensor_rng = rng.spawn(3)
    part = draw_part(part_rng, cfg)
    flaw = draw_defect(defect, defect_rng, part) if defect else None

    half = cfg.profile_width / 2
    y, x = np.mgrid[-half:half:cfg.profile_line_spacing, -half:half:cfg.profile_point_spacing]
    s, t = part.local(x.ravel(), y.ravel())
    clean_h, clean_a, h, a = surfaces(part, flaw, s, t)
    changed = (np.abs(h - clean_h) > HEIGHT_EPS) | (np.abs(a - clean_a).max(-1) > COLOUR_EPS)
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
    if not shuffle:
        return points.astype(np.float32), label
    order = sensor_rng.permutation(len(points))
    return points[order].astype(np.float32), label[order]

