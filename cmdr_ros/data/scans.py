"""Unorganized scans (a laser profilometer's part) and the paper's cutting-cell chunking of them.

Dataset layout, beside MVTec 3D-AD's: ``<class>/<split>/<defect>/points/NNN.{npy,ply,pcd}`` (one part per file,
Nx3 metres, in the order the sensor delivered the points) and, optionally, ``gt/NNN.npy`` (N per-point labels,
non-zero = defective point), split in train, validation, test, ``good`` the defect-free folder.

The reference's 3D-only pipeline (README, "Presets": ``paper3d``): the scan is cut into sequential chunks of
``CHUNK_POINTS`` = 9216 points; each chunk is min-max scaled per axis to [-1, 1]; its points in sequence order,
reshaped, form a 96x96 "grid" (not a spatial raster). A chunk is anomalous when at least 0.25 % of its points
are. The reference drops the points after the last full chunk; here the last chunk is the scan's last 9216
points (it overlaps its predecessor), so every point is scored: a point in two chunks keeps the higher score.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.data.mvtec3d import GOOD, SPLITS

CHUNK_POINTS = 9216  # 96 x 96
ANOMALOUS_CHUNK_FRACTION = 0.0025  # a chunk is anomalous when at least this fraction of its points is
SCAN_EXTS = (".npy", ".ply", ".pcd")


@dataclass
class Chunks:
    """A scan cut into chunks: ``points`` [K, size, 3] float32 scaled per chunk and axis to [-1, 1], ``index``
    [K, size] the scan index of each chunk point (sequence order), ``n_points`` the scan's point count."""

    points: np.ndarray
    index: np.ndarray
    n_points: int

    def __len__(self) -> int:
        return len(self.points)


def scale_per_axis(points: np.ndarray) -> np.ndarray:
    """Nx3 -> float32 Nx3 min-max scaled to [-1, 1] on each axis (an axis without extent becomes 0)."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    extent = hi - lo
    scaled = np.where(extent > 0, 2 * (p - lo) / np.where(extent > 0, extent, 1) - 1, 0.0)
    return scaled.astype(np.float32)


def scale_isotropic(points: np.ndarray) -> np.ndarray:
    """Nx3 -> float32 Nx3 centred on the bounding box and divided by its largest half-extent: the shape kept."""
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    half = float((hi - lo).max()) / 2
    return ((p - (lo + hi) / 2) / (half if half > 0 else 1.0)).astype(np.float32)


SCALINGS = {"per_axis": scale_per_axis, "isotropic": scale_isotropic}


def chunk_scan(points: np.ndarray, size: int = CHUNK_POINTS, scaling: str = "per_axis") -> Chunks:
    """Cut an Nx3 scan (sensor order) into sequential chunks of ``size`` points, each scaled (``SCALINGS``:
    per axis to [-1, 1], the reference's; or isotropically, which keeps the shape).

    Raises CmdrError for a scan that is not Nx3, holds a non-finite coordinate, or has fewer than ``size`` points.
    """
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise CmdrError(f"a scan must be Nx3 points, got shape {p.shape}")
    n = len(p)
    if n < size:
        raise CmdrError(f"the scan has {n} points, a chunk needs {size}: too few points to judge")
    if not np.isfinite(p).all():
        raise CmdrError("the scan holds non-finite coordinates (NaN or inf): a sensor's invalid-point marker?")
    starts = list(range(0, n - size + 1, size))
    if starts[-1] + size < n:
        starts.append(n - size)  # the tail: the last ``size`` points, overlapping the previous chunk
    index = np.stack([np.arange(s, s + size) for s in starts])
    if scaling not in SCALINGS:
        raise CmdrError(f"unknown chunk scaling {scaling!r}: one of {', '.join(SCALINGS)}")
    return Chunks(np.stack([SCALINGS[scaling](p[i]) for i in index]), index, n)


def stitch(chunk_scores: np.ndarray, chunks: Chunks) -> np.ndarray:
    """[K, size] per-chunk point scores -> N per-point scores of the scan (the higher where chunks overlap)."""
    scores = np.asarray(chunk_scores, dtype=np.float32)
    if scores.shape != chunks.index.shape:
        raise ValueError(f"chunk scores of shape {scores.shape}, the chunks are {chunks.index.shape}")
    out = np.full(chunks.n_points, -np.inf, dtype=np.float32)
    np.maximum.at(out, chunks.index.ravel(), scores.ravel())
    return out


def chunk_labels(point_labels: np.ndarray, chunks: Chunks,
                 fraction: float = ANOMALOUS_CHUNK_FRACTION) -> np.ndarray:
    """Bool per chunk: at least ``fraction`` of its points are defective (the reference's chunk label)."""
    labels = np.asarray(point_labels).astype(bool)
    if labels.shape != (chunks.n_points,):
        raise CmdrError(f"{labels.shape[0] if labels.ndim else 0} point labels for a scan of {chunks.n_points} points")
    return labels[chunks.index].mean(axis=1) >= fraction


def read_scan(path: str | Path) -> np.ndarray:
    """Nx3 float32 points of a scan file (.npy; .ply/.pcd through Open3D, file order kept)."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            pts = np.load(path, allow_pickle=False)
        elif ext in (".ply", ".pcd"):
            import open3d as o3d

            cloud = o3d.t.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
            if "positions" not in cloud.point:
                raise CmdrError(f"{path}: no points in the file")
            pts = cloud.point.positions.numpy()
        else:
            raise CmdrError(f"{path}: unknown scan format '{ext}' (one of {', '.join(SCAN_EXTS)})")
    except (OSError, ValueError) as e:
        raise CmdrError(f"{path}: cannot read the scan: {e}") from None
    pts = np.asarray(pts)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CmdrError(f"{path}: a scan holds Nx3 points, got shape {pts.shape}")
    return pts.astype(np.float32, copy=False)


def write_scan(root: str | Path, split: str, defect: str, sample_id: str, points: np.ndarray,
               point_labels: np.ndarray | None = None) -> Path:
    """Write one scan under the class folder ``root`` (the layout in the module docstring):
    ``<split>/<defect>/points/<sample_id>.npy`` (``points`` Nx3 as given, their order kept) and, with
    ``point_labels`` (N, non-zero = defective), ``gt/<sample_id>.npy``; the points' file."""
    if split not in SPLITS:
        raise CmdrError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CmdrError(f"scan {split}/{defect}/{sample_id}: points must be Nx3, got shape {pts.shape}")
    if point_labels is not None and np.shape(point_labels) != (len(pts),):
        raise CmdrError(f"scan {split}/{defect}/{sample_id}: {np.shape(point_labels)} labels for {len(pts)} points")
    folder = Path(root) / split / defect
    path = folder / "points" / f"{sample_id}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, pts)
    if point_labels is not None:
        (folder / "gt").mkdir(exist_ok=True)
        np.save(folder / "gt" / f"{sample_id}.npy", point_labels)
    return path


def read_point_labels(path: str | Path, n_points: int) -> np.ndarray:
    """The per-point ground truth of a scan (``gt/NNN.npy``): bool N, non-zero = defective."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CmdrError(f"{path}: cannot read the point labels: {e}") from None
    if labels.shape != (n_points,):
        raise CmdrError(f"{path}: {labels.shape} labels for a scan of {n_points} points")
    return labels != 0


@dataclass
class Scan:
    """One scanned part: its file, ground-truth file (or None) and labels."""

    path: Path
    gt_path: Path | None
    label: int  # 0 good, 1 defect
    defect: str
    sample_id: str
    split: str

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(points Nx3, per-point labels or None). A defective part without gt/ has no point labels."""
        points = read_scan(self.path)
        if self.gt_path is not None:
            return points, read_point_labels(self.gt_path, len(points))
        return points, (np.zeros(len(points), bool) if self.label == 0 else None)


class ScanDataset:
    """A class folder of unorganized scans (layout in the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir() or not any((self.root / s).is_dir() for s in SPLITS):
            raise CmdrError(f"{self.root}: not a scan class folder; expected train/, validation/ or test/ holding "
                            "<defect>/points/NNN.npy|ply|pcd")

    @staticmethod
    def is_scan_folder(root: str | Path) -> bool:
        """Whether ``root`` holds scans (points/ folders) rather than MVTec 3D-AD frames."""
        return any(Path(root).glob("*/*/points"))

    def good_scans(self, split: str) -> list[Scan]:
        """The defect-free scans of the split (what a threshold is calibrated on)."""
        return [s for s in self.scans(split) if s.label == 0]

    def scans(self, split: str) -> list[Scan]:
        """Every scan of the split, good first, then defects sorted, ids sorted within each."""
        folder = self.root / split
        if not folder.is_dir():
            return []
        kinds = sorted((d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                       key=lambda n: (n != GOOD, n))
        out = []
        for kind in kinds:
            files = sorted(f for f in (folder / kind / "points").glob("*") if f.suffix.lower() in SCAN_EXTS)
            stems = [f.stem for f in files]
            if len(set(stems)) != len(stems):
                raise CmdrError(f"{folder / kind / 'points'}: two scan files share a sample id")
            for f in files:
                gt = folder / kind / "gt" / f"{f.stem}.npy"
                out.append(Scan(f, gt if gt.is_file() else None, int(kind != GOOD), kind, f.stem, split))
        return out
