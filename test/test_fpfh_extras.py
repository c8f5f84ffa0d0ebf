"""``fpfh`` backbone ``extras``: the oriented normal and the surface variation appended to the FPFH histograms
(what FPFH, invariant to a surface's turn, does not describe)."""
from __future__ import annotations

import numpy as np
import pytest

from cmdr_ros import CmdrError
from cmdr_ros.config import preset
from cmdr_ros.model.backbones import build_backbone
from cmdr_ros.model.handcrafted import fpfh_features


def _surface(bump: float, n: int = 40, tilt: float = 0.0) -> np.ndarray:
    """An n x n grid of points 1 unit apart at z = 50 (a plane tilted about x by ``tilt``), a bump in its middle."""
    u, v = np.meshgrid(np.arange(n, dtype=np.float64) - n / 2, np.arange(n, dtype=np.float64) - n / 2)
    z = bump * np.exp(-(u**2 + v**2) / 20.0)
    c, s = np.cos(tilt), np.sin(tilt)
    y, z = c * v - s * z, s * v + c * z
    return np.stack([u, y, z + 50.0], axis=-1).reshape(-1, 3)


def test_extras_append_the_normal_and_curvature_and_leave_the_histograms():
    pts = _surface(bump=4.0)
    plain = fpfh_features(pts)
    both = fpfh_features(pts, extras=("normal", "curvature"))
    assert plain.shape == (len(pts), 66) and both.shape == (len(pts), 70)
    np.testing.assert_array_equal(both[:, :66], plain)
    normal, curv = both[:, 66:69], both[:, 69]
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-5)
    assert (np.einsum("ij,ij->i", normal, -pts) > 0).all()  # oriented towards the sensor at the origin
    assert curv.min() >= 0.0 and curv.max() <= 1 / 3 + 1e-6
    flat = np.linalg.norm(pts[:, :2], axis=1) > 15  # far from the bump: a plane
    assert curv[flat].max() < 1e-6 and curv[~flat].max() > 0.01
    only_curv = fpfh_features(pts, extras=("curvature",))
    np.testing.assert_array_equal(only_curv[:, 66], curv)


def test_a_turned_surface_changes_the_normal_not_the_histograms():
    flat, turned = fpfh_features(_surface(0.0), extras=("normal",)), fpfh_features(_surface(0.0, tilt=0.5),
                                                                                  extras=("normal",))
    inner = np.ones((40, 40), bool)
    inner[:8], inner[-8:], inner[:, :8], inner[:, -8:] = False, False, False, False
    inner = inner.reshape(-1)
    np.testing.assert_allclose(turned[inner, :66], flat[inner, :66], atol=1e-4)
    np.testing.assert_allclose(flat[inner, 66:], [[0.0, 0.0, -1.0]] * int(inner.sum()), atol=1e-6)
    np.testing.assert_allclose(turned[inner, 66:], [[0.0, np.sin(0.5), -np.cos(0.5)]] * int(inner.sum()), atol=1e-6)


def test_extras_are_checked_and_counted():
    assert build_backbone("fpfh", "3d", options={"extras": ["normal", "curvature"]}).out_dim == 70
    assert build_backbone("fpfh", "3d", options={"radii": [4.0], "extras": ["curvature"]}).out_dim == 34
    with pytest.raises(CmdrError, match=r"unknown FPFH extra\(s\) colour; known: normal, curvature"):
        build_backbone("fpfh", "3d", options={"extras": ["colour"]})
    with pytest.raises(CmdrError, match="unknown FPFH extra"):
        fpfh_features(_surface(0.0), extras=("colour",))


def test_lite_adds_them_in_rgbd_only():
    # measured on real parts: better decisions and maps in rgbd, worse decisions in 3d (README, "What lite can see")
    assert preset("lite", "rgbd").backbone_3d.options == {"extras": ("normal", "curvature")}
    assert preset("lite", "3d").backbone_3d.options == {}
    assert build_backbone("fpfh", "3d", options=preset("lite", "rgbd").backbone_3d.options).out_dim == 70
