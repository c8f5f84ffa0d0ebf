"""Write simulated parts as a class in the MVTec 3D-AD layout: camera frames or rasterized profilometer scans."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.data.scans import write_scan
from cmdr_ros.data.synthetic.cell import CellConfig, calibration_dict
from cmdr_ros.data.synthetic.defects import DEFECT_TYPES, GEOMETRIC_DEFECTS, check_defect
from cmdr_ros.data.synthetic.profilometer import render_profilometer_cloud
from cmdr_ros.data.synthetic.render import render_part
from cmdr_ros.geometry import rasterize_on_plane


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
    (calibration / "camera_parameters.json").write_text(json.dumps(calibration_dict(cfg.camera()), indent=2))
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
    def write(out: Path, split: str, kind: str, name: str, points: np.ndarray, labels: np.ndarray) -> None:
        raster = rasterize_on_plane(points, resolution=resolution)
        tifffile.imwrite(out / "xyz" / f"{name}.tiff", raster.xyz_map, photometric="rgb")
        if split == "test":
            cells = raster.cell_of_point[labels & (raster.cell_of_point >= 0)]
            mask = np.bincount(cells, minlength=raster.shape[0] * raster.shape[1]).reshape(raster.shape) > 0
            _imwrite(out / "gt" / f"{name}.png", mask.astype(np.uint8) * np.uint8(_gt_value(kind)))
            np.save(out / "points" / f"{name}.npy", points)

    return _profile_dataset(Path(root) / class_name, (n_train, n_val, n_test_good, n_test_per_defect), cfg, seed,
                            defects, overwrite, ("xyz",), ("xyz", "gt", "points"), True, write)


def generate_scan_dataset(
    root: str | Path,
    class_name: str = "foam_block_scans",
    n_train: int = 20,
    n_val: int = 4,
    n_test_good: int = 6,
    n_test_per_defect: int = 2,
    cfg: CellConfig | None = None,
    seed: int | None = None,
    defects: tuple[str, ...] = GEOMETRIC_DEFECTS,
    overwrite: bool = False,
) -> Path:
    """Write profilometer scans as a class of unorganized scans (``cmdr_ros.data.scans`` layout) under
    ``root/class_name``: ``points/NNN.npy`` (Nx3 float32, in the sensor's order) for every part and
    ``gt/NNN.npy`` (per-point bool) for test parts. The same parts as ``generate_profilometer_dataset`` with the
    same seed and counts. Seeds, counts and ``overwrite`` as in ``generate_dataset``.
    """
    def write(out: Path, split: str, kind: str, name: str, points: np.ndarray, labels: np.ndarray) -> None:
        write_scan(out.parent.parent, split, kind, name, points, labels if split == "test" else None)

    return _profile_dataset(Path(root) / class_name, (n_train, n_val, n_test_good, n_test_per_defect), cfg, seed,
                            defects, overwrite, ("points",), ("points", "gt"), False, write)


def _profile_dataset(folder: Path, counts: tuple[int, int, int, int], cfg: CellConfig | None, seed: int | None,
                     defects: tuple[str, ...], overwrite: bool, subdirs: tuple[str, ...],
                     test_subdirs: tuple[str, ...], shuffle: bool,
                     write: Callable[[Path, str, str, str, np.ndarray, np.ndarray], None]) -> Path:
    """Render every profilometer part of a class and hand it to ``write(out, split, kind, name, points, labels)``
    in its folder (``subdirs``, ``test_subdirs`` for test parts, made first); then ``class_ids.json``."""
    cfg = cfg or CellConfig()
    seed = cfg.seed if seed is None else seed
    folder, jobs = _dataset_jobs(folder, counts, defects, overwrite)
    for split, kind, count in jobs:
        out = folder / split / kind
        for sub in test_subdirs if split == "test" else subdirs:
            (out / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            points, labels = render_profilometer_cloud(_sample_rng(seed, split, kind, i), cfg,
                                                       None if kind == "good" else kind, shuffle=shuffle)
            write(out, split, kind, f"{i:03d}", points, labels)
    (folder / "class_ids.json").write_text(json.dumps(class_ids(tuple(defects)), indent=2))
    return folder


def _dataset_jobs(folder: Path, counts: tuple[int, int, int, int], defects: tuple[str, ...],
                  overwrite: bool) -> tuple[Path, list[tuple[str, str, int]]]:
    """Check the arguments, clear ``folder`` (only with ``overwrite``) and list (split, kind, count) to render."""
    for d in defects:
        check_defect(d)
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
