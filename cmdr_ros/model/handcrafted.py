"""Weights-free descriptors for air-gapped cells and tests.

``color_texture`` (2D): opponent colour, local colour means, local contrast, gradient, Laplacian-of-
Gaussian and Gabor-energy responses: 20 channels per pixel, in pure PyTorch (runs on CPU and CUDA).
It sees colour and fine texture changes (stains, tears, scratches) but has no semantic notion of a
part; it is not a substitute for DINO on classes where defects are subtle shape-in-context changes.

``fpfh`` (3D): Open3D Fast Point Feature Histograms of every valid point at several radii given in
units of the cloud's median point spacing (so it works in metres or millimetres alike). It describes
local surface shape (dents, bumps, cuts, missing material) but not colour, and it is noisier than
Point-MAE on sparse or very noisy clouds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cmdr_ros import CmdrError


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _log_kernel(sigma: float) -> torch.Tensor:
    r = max(2, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    rr = (xx**2 + yy**2) / (2 * sigma**2)
    k = (rr - 1) * torch.exp(-rr)
    return k - k.mean()  # zero DC response


def _gabor_kernels(wavelength: float, sigma: float, n_orient: int) -> torch.Tensor:
    r = int(math.ceil(2.5 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    out = []
    for i in range(n_orient):
        th = math.pi * i / n_orient
        xr = xx * math.cos(th) + yy * math.sin(th)
        env = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for phase in (0.0, math.pi / 2):  # quadrature pair -> energy
            k = env * torch.cos(2 * math.pi * xr / wavelength + phase)
            out.append(k - env * (k.sum() / env.sum()))
    return torch.stack(out)[:, None]


class ColorTextureFeatures(torch.nn.Module):
    """20-channel colour and texture statistics per pixel of an RGB image in [0, 1]."""

    out_dim = 20

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("opp", torch.tensor([
            [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0],
            [1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)],
            [1 / math.sqrt(3), 1 / math.sqrt(3), 1 / math.sqrt(3)],
        ]), persistent=False)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel, sobel.T])[:, None], persistent=False)
        self.register_buffer("log1", _log_kernel(1.0)[None, None], persistent=False)
        self.register_buffer("log2", _log_kernel(2.0)[None, None], persistent=False)
        self.register_buffer("gabor", _gabor_kernels(4.0, 2.0, 4), persistent=False)

    @staticmethod
    def _mean(x: torch.Tensor, k: int) -> torch.Tensor:
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    @staticmethod
    def _conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, [w.shape[-1] // 2] * 4, mode="reflect"), w)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 20, H, W]``."""
        opp = torch.einsum("ij,bjhw->bihw", self.opp, rgb)
        inten = opp[:, 2:3]
        local_std = [
            (self._mean(c**2, k) - self._mean(c, k) ** 2).clamp_min(0).sqrt()
            for c, k in ((inten, 5), (inten, 11), (opp[:, 0:1], 5), (opp[:, 1:2], 5))
        ]
        grad = self._conv(inten, self.sobel)
        gab = self._conv(inten, self.gabor)
        gab_energy = (gab[:, 0::2] ** 2 + gab[:, 1::2] ** 2).sqrt()
        feats = [
            opp, self._mean(opp, 5), self._mean(opp, 11), *local_std,
            grad.norm(dim=1, keepdim=True),
            self._conv(inten, self.log1).abs(), self._conv(inten, self.log2).abs(), gab_energy,
        ]
        return torch.cat(feats, dim=1)


#: per-point surface descriptors ``fpfh_features`` can append to the histograms (see its ``extras``)
FPFH_EXTRAS = {"normal": 3, "curvature": 1}


def fpfh_extras_width(extras: tuple[str, ...]) -> int:
    """Channels ``extras`` append; an unknown name is an error."""
    unknown = sorted(set(extras) - set(FPFH_EXTRAS))
    if unknown:
        raise CmdrError(f"unknown FPFH extra(s) {', '.join(unknown)}; known: {', '.join(FPFH_EXTRAS)}")
    return sum(FPFH_EXTRAS[e] for e in extras)


def fpfh_features(points: np.ndarray, radii: tuple[float, ...] = (4.0, 8.0), normal_radius: float = 3.0,
                  max_nn: int = 100, viewpoint: tuple[float, float, float] = (0.0, 0.0, 0.0),
                  extras: tuple[str, ...] = ()) -> np.ndarray:
    """FPFH of ``points`` (N x 3) at each radius (in median point spacings) -> N x (33*len(radii) + extras).

    Normals are oriented towards the sensor at ``viewpoint`` (the camera frame's origin by default; a scan
    normalised around its centre needs a point above it) so the histograms do not flip sign between frames;
    each 33-bin histogram (three 11-bin sub-histograms summing to 100 each) is scaled by 1/100. FPFH does not
    change when a surface turns; ``extras`` appends what does: ``normal`` (the oriented unit normal in the cloud's
    frame, 3 channels) and ``curvature`` (surface variation l0 / (l0 + l1 + l2) of the normal's neighbourhood).
    """
    import open3d as o3d  # deferred: a heavy import, only needed by this backbone

    fpfh_extras_width(extras)
    if len(points) < 8:
        raise CmdrError(f"FPFH needs at least 8 valid points, got {len(points)}")
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    spacing = float(np.median(np.asarray(pcd.compute_nearest_neighbor_distance())))
    if not np.isfinite(spacing) or spacing <= 0:
        spacing = float(np.ptp(points, axis=0).max()) / math.sqrt(len(points)) or 1.0
    normal_search = o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius * spacing, max_nn=30)
    pcd.estimate_normals(normal_search)
    pcd.orient_normals_towards_camera_location(np.asarray(viewpoint, dtype=np.float64))
    out = []
    for r in radii:
        f = o3d.pipelines.registration.compute_fpfh_feature(
            pcd, o3d.geometry.KDTreeSearchParamHybrid(radius=r * spacing, max_nn=max_nn))
        out.append(np.asarray(f.data, dtype=np.float32).T / 100.0)
    if "normal" in extras:
        out.append(np.asarray(pcd.normals, dtype=np.float32))
    if "curvature" in extras:
        pcd.estimate_covariances(normal_search)
        eig = np.linalg.eigvalsh(np.asarray(pcd.covariances)).clip(min=0.0)  # ascending
        total = eig.sum(axis=1)
        out.append(np.divide(eig[:, 0], total, out=np.zeros_like(total), where=total > 0)[:, None].astype(np.float32))
    return np.concatenate(out, axis=1)
