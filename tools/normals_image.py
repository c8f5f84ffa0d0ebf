"""A copy of an MVTec 3D-AD class whose RGB images are renderings of its organized clouds' surface normals.

An experiment of issue #27 (docs/quality.md, "3D-only: other image scores, and the cloud's normals as the image"): a
3D-only cell whose 2D branch sees the surface's orientation at the sensor's resolution. Each xyz map is smoothed by a
Gaussian of ``--sigma`` pixels (weighted by the valid points), its normals taken from the derivatives along rows and
columns, oriented towards the sensor at the origin, and drawn as colours (``normals``: (n + 1) / 2) or as Lambertian
shading under three lights, one per channel (``shade``); unmeasured pixels black. xyz, gt masks, calibration and
class ids are linked, not copied.

    PYTHONPATH=$PWD python tools/normals_image.py --data CLASS_DIR --out OUT_DIR [--kind normals|shade] [--sigma 1.5]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import tifffile

#: one light per channel, 30 degrees off the camera's axis, 120 degrees apart
LIGHTS = np.array([[0.5, 0.0, -0.87], [-0.25, 0.43, -0.87], [-0.25, -0.43, -0.87]], np.float32)


def surface_normals(xyz: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals ``[H, W, 3]`` of an organized cloud (invalid points 0) facing the origin, and where they hold."""
    valid = np.isfinite(xyz).all(-1) & (np.abs(xyz).sum(-1) > 0)
    weight = cv2.GaussianBlur(valid.astype(np.float32), (0, 0), sigma)
    pts = np.where(valid[..., None], xyz, 0).astype(np.float32)
    smooth = np.stack([cv2.GaussianBlur(pts[..., i], (0, 0), sigma) for i in range(3)], -1)
    smooth /= np.maximum(weight, 1e-6)[..., None]
    n = np.cross(np.gradient(smooth, axis=1), np.gradient(smooth, axis=0))
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    n[(n * smooth).sum(-1) > 0] *= -1
    return n, valid & (weight > 0.5)


def render(xyz: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """The RGB uint8 image of ``xyz``'s normals."""
    n, ok = surface_normals(xyz, sigma)
    img = (n + 1) / 2 if kind == "normals" else np.clip(n @ LIGHTS.T, 0, 1)
    img[~ok] = 0
    return (img * 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--kind", choices=("normals", "shade"), default="normals")
    ap.add_argument("--sigma", type=float, default=1.5)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for extra in ("class_ids.json", "calibration"):
        if (args.data / extra).exists() and not (args.out / extra).exists():
            os.symlink((args.data / extra).resolve(), args.out / extra)
    for xyz_dir in sorted(args.data.glob("*/*/xyz")):
        folder = args.out / xyz_dir.parent.relative_to(args.data)
        (folder / "rgb").mkdir(parents=True, exist_ok=True)
        for sub in ("xyz", "gt"):
            if (xyz_dir.parent / sub).is_dir() and not (folder / sub).exists():
                os.symlink((xyz_dir.parent / sub).resolve(), folder / sub)
        for f in sorted(xyz_dir.glob("*.tiff")):
            img = render(tifffile.imread(f).astype(np.float32), args.kind, args.sigma)
            cv2.imwrite(str(folder / "rgb" / (f.stem + ".png")), img[..., ::-1])
    print(f"rendered {args.kind} (sigma {args.sigma}) of {args.data} in {args.out}")


if __name__ == "__main__":
    main()
