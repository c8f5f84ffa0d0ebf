"""Heatmap overlays, depth renderings and evaluation plots (OpenCV / matplotlib, no ROS)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cmdr_ros.geometry.transforms import valid_mask


def colorize(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None,
             valid: np.ndarray | None = None) -> np.ndarray:
    """Anomaly map -> BGR uint8 (JET colour map); invalid pixels black. Default range: the map's valid values."""
    a = np.nan_to_num(np.asarray(amap, dtype=np.float32))
    if vmin is None or vmax is None:
        vals = a[valid] if valid is not None and valid.any() else a
        lo = float(vals.min()) if vmin is None else vmin
        hi = float(vals.max()) if vmax is None else vmax
    else:
        lo, hi = vmin, vmax
    norm = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    if valid is not None:
        np.copyto(bgr, 0, where=~valid[..., None])  # whole pixels at once: boolean row indexing is ~3x slower
    return bgr


def depth_rendering(xyz: np.ndarray) -> np.ndarray:
    """A grey-shaded rendering of an organized xyz map (for 3D-only overlays): BGR uint8, invalid black."""
    z = xyz[..., 2].astype(np.float32)
    valid = valid_mask(xyz)
    out = np.zeros(z.shape, np.uint8)
    if valid.any():
        seen = z[valid]
        lo, hi = np.percentile(seen, [1, 99])
        out[valid] = (255 * (1 - np.clip((seen - lo) / max(hi - lo, 1e-9), 0, 1)) * 0.8 + 40).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def overlay(base_bgr: np.ndarray, amap: np.ndarray, valid: np.ndarray | None = None, alpha: float = 0.5,
            vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend a colourised anomaly map over a BGR image (only where valid)."""
    heat = colorize(amap, vmin, vmax, valid)
    out = cv2.addWeighted(base_bgr, 1 - alpha, heat, alpha, 0)
    if valid is not None:
        np.copyto(out, base_bgr, where=~valid[..., None])
    return out


def save_overlay(path: str | Path, rgb: np.ndarray | None, xyz: np.ndarray | None, amap: np.ndarray,
                 valid: np.ndarray | None, caption: str = "", vmax: float | None = None,
                 gt: np.ndarray | None = None) -> Path:
    """Write a PNG: the image (or a depth rendering) with the heatmap, the ground-truth outline and a caption."""
    base = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb is not None else depth_rendering(xyz)
    img = overlay(base, amap, valid, vmin=0.0, vmax=vmax)
    if gt is not None and gt.any():
        contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, (255, 255, 255), 1)
    if caption:
        cv2.putText(img, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def plot_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str,
                title: str, xlim: float | None = None) -> Path:
    """Line plot of named (x, y) curves, e.g. ROC or PRO-vs-FPR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name)
    if xlim is not None:
        ax.axvline(xlim, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(0, min(1.0, xlim * 1.5))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def scan_maps(points: np.ndarray, point_scores: np.ndarray, labels: np.ndarray | None = None, side: int = 256
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """An unorganized scan seen from above, for heatmaps: (xyz map, per-cell maximum point score, filled cells,
    cells holding a defective point or None), on ``side`` cells along the scan's longer side
    (``geometry.rasterize_on_plane``)."""
    from cmdr_ros.geometry import rasterize_on_plane

    raster = rasterize_on_plane(points, grid=side)
    rows, cols = raster.shape
    cell = raster.cell_of_point
    hit = cell >= 0
    score = np.full(rows * cols, -np.inf, np.float32)
    np.maximum.at(score, cell[hit], np.asarray(point_scores, np.float32)[hit])
    filled = np.isfinite(score)
    score[~filled] = 0
    gt = None
    if labels is not None:
        gt = np.zeros(rows * cols, bool)
        gt[cell[hit & np.asarray(labels, bool)]] = True
        gt = gt.reshape(rows, cols)
    return raster.xyz_map, score.reshape(rows, cols), filled.reshape(rows, cols), gt
