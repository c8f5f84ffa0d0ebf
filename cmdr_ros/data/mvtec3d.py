"""Reader and writer for the MVTec 3D-AD folder layout (one class folder).

Layout: ``<class>/<split>/<defect>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}`` with split in train,
validation, test; ``good`` is the defect-free folder; ``calibration/camera_parameters.json`` is optional.
Files are paired by stem. Every user-facing problem raises ``CmdrError`` naming the file and the reason.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.geometry.transforms import finite_rows

SPLITS = ("train", "validation", "test")
GOOD = "good"
RGB_EXTS = (".png", ".jpg", ".jpeg")
XYZ_EXTS = (".tiff", ".tif")
MASK_EXTS = (".png",)


@dataclass
class Sample:
    """One capture: paths of its files (None where the dataset has none) and its labels."""

    rgb_path: Path | None
    xyz_path: Path | None
    gt_path: Path | None
    label: int  # 0 good, 1 defect
    defect: str  # 'good', 'cut', ...
    sample_id: str  # file stem, e.g. '000'
    split: str
    class_name: str


def _files_by_stem(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> file for the files of ``folder`` with one of ``exts`` (case-insensitive); {} if no folder."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in exts:
            if f.stem in found:
                raise CmdrError(f"{f}: two files share the sample id '{f.stem}' (also {found[f.stem].name})")
            found[f.stem] = f
    return found


class MVTec3DClass:
    """One MVTec 3D-AD class folder (e.g. ``.../cable_gland``) with train/, validation/ and test/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CmdrError(f"{self.root}: MVTec 3D-AD class folder not found; expected a folder with "
                            "train/, validation/ and test/ sub-folders")
        if not any((self.root / s).is_dir() for s in SPLITS):
            raise CmdrError(f"{self.root}: not an MVTec 3D-AD class folder; expected train/, validation/ "
                            "or test/ sub-folders holding <defect>/rgb and <defect>/xyz")

    @property
    def name(self) -> str:
        return self.root.name

    def defects(self, split: str) -> list[str]:
        """Defect folders of a split, ``good`` first, the others sorted."""
        folder = self._split_dir(split)
        names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        return sorted(names, key=lambda n: n != GOOD)

    def samples(self, split: str) -> list[Sample]:
        """Every sample of the split, grouped by defect folder (good first), sorted by id within it.

        A sample has an xyz map and/or an RGB image (the caller checks what its mode needs); where a
        defect folder has both rgb/ and xyz/ (or gt/), each file needs its partner.
        """
        out: list[Sample] = []
        for defect in self.defects(split):
            out.extend(self._defect_samples(split, defect))
        return out

    def camera_parameters(self) -> dict[str, Any] | None:
        """The contents of calibration/camera_parameters.json, or None if the file is absent."""
        path = self.root / "calibration" / "camera_parameters.json"
        if not path.is_file():
            return None
        try:
            params = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CmdrError(f"{path}: unreadable camera parameters ({err})") from err
        if not isinstance(params, dict):
            raise CmdrError(f"{path}: camera parameters must be a JSON object, got {type(params).__name__}")
        return params

    def _split_dir(self, split: str) -> Path:
        if split not in SPLITS:
            raise CmdrError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
        folder = self.root / split
        if not folder.is_dir():
            raise CmdrError(f"{folder}: split folder not found; expected <defect>/rgb and <defect>/xyz inside")
        return folder

    def _defect_samples(self, split: str, defect: str) -> list[Sample]:
        folder = self.root / split / defect
        kinds = {"rgb": RGB_EXTS, "xyz": XYZ_EXTS, "gt": MASK_EXTS}
        files = {k: _files_by_stem(folder / k, exts) for k, exts in kinds.items()}
        present = [k for k in kinds if (folder / k).is_dir()]
        if "rgb" not in present and "xyz" not in present:
            raise CmdrError(f"{folder}: no rgb/ or xyz/ folder; expected rgb/NNN.png and/or xyz/NNN.tiff")
        stems = sorted(set(files["rgb"]) | set(files["xyz"]))
        for kind in present:
            for stem in stems:
                if stem not in files[kind]:
                    raise CmdrError(f"{folder / kind / (stem + kinds[kind][0])}: missing {kind} file for sample "
                                    f"'{stem}' (its partner files exist)")
        label = 0 if defect == GOOD else 1
        return [Sample(rgb_path=files["rgb"].get(s), xyz_path=files["xyz"].get(s), gt_path=files["gt"].get(s),
                       label=label, defect=defect, sample_id=s, split=split, class_name=self.name)
                for s in stems]


def _read_image(path: Path) -> np.ndarray:
    """Decode an image file as stored (any depth, any channel count) via OpenCV."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # imdecode also handles non-ASCII paths, unlike imread
    except OSError as err:
        raise CmdrError(f"{path}: cannot read image ({err.strerror or err})") from err
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise CmdrError(f"{path}: not a readable image file (PNG or JPEG expected)")
    return img


def load_rgb(path: str | Path) -> np.ndarray:
    """RGB image -> uint8 HxWx3 (grayscale replicated, alpha dropped, 16-bit scaled to 8-bit)."""
    img = _read_image(Path(path))
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise CmdrError(f"{path}: unsupported image depth {img.dtype}; expected 8- or 16-bit")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise CmdrError(f"{path}: unsupported image shape {img.shape}; expected grayscale, RGB or RGBA")


def load_xyz(path: str | Path) -> np.ndarray:
    """Organized point cloud TIFF -> float32 HxWx3 in metres; non-finite points become 0 (invalid)."""
    path = Path(path)
    if not path.is_file():
        raise CmdrError(f"{path}: xyz file not found")
    try:
        xyz = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for a corrupt or non-TIFF file
        raise CmdrError(f"{path}: not a readable TIFF file ({err})") from err
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise CmdrError(f"{path}: xyz map must be HxWx3, found shape {xyz.shape}")
    xyz = np.asarray(xyz, dtype=np.float32)
    bad = ~finite_rows(xyz)
    if bad.any():
        xyz = xyz.copy()
        xyz[bad] = 0
    return xyz


def load_mask(path: str | Path) -> np.ndarray:
    """Ground-truth mask -> bool HxW (any non-zero value is a defect pixel)."""
    img = _read_image(Path(path))
    return img.any(axis=2) if img.ndim == 3 else img != 0


def load_sample(sample: Sample, need_rgb: bool = True, need_xyz: bool = True
                ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(rgb, xyz, mask) of a sample; rgb/xyz None when not needed, mask None when it has no gt file.

    All loaded arrays must be pixel-aligned (same HxW).
    """
    where = f"{sample.class_name}/{sample.split}/{sample.defect}/{sample.sample_id}"
    if need_rgb and sample.rgb_path is None:
        raise CmdrError(f"sample {where}: no RGB image, but this mode needs one")
    if need_xyz and sample.xyz_path is None:
        raise CmdrError(f"sample {where}: no xyz map, but this mode needs one")
    rgb = load_rgb(sample.rgb_path) if need_rgb else None
    xyz = load_xyz(sample.xyz_path) if need_xyz else None
    mask = load_mask(sample.gt_path) if sample.gt_path is not None else None
    loaded = [(p, a.shape[:2]) for p, a in ((sample.rgb_path, rgb), (sample.xyz_path, xyz), (sample.gt_path, mask))
              if a is not None]
    if len({shape for _, shape in loaded}) > 1:
        raise CmdrError(f"sample {where}: files are not pixel-aligned, sizes differ: "
                        + ", ".join(f"{p} {shape[0]}x{shape[1]}" for p, shape in loaded))
    return rgb, xyz, mask


def write_sample(root: str | Path, split: str, defect: str, sample_id: str, rgb: np.ndarray | None,
                 xyz: np.ndarray | None, mask: np.ndarray | None = None) -> Sample:
    """Write one sample in the MVTec 3D-AD layout under the class folder ``root`` and return it.

    rgb: uint8 HxWx3 -> rgb/<id>.png; xyz: HxWx3 -> xyz/<id>.tiff (float32); mask: HxW -> gt/<id>.png (0/255).
    """
    if split not in SPLITS:
        raise CmdrError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    if rgb is None and xyz is None:
        raise CmdrError(f"sample {split}/{defect}/{sample_id}: nothing to write (no rgb and no xyz)")
    shapes = {a.shape[:2] for a in (rgb, xyz, mask) if a is not None}
    if len(shapes) > 1:
        raise CmdrError(f"sample {split}/{defect}/{sample_id}: rgb, xyz and mask sizes differ: {sorted(shapes)}")
    if rgb is not None and (rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3):
        raise CmdrError(f"sample {split}/{defect}/{sample_id}: rgb must be uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if xyz is not None and (xyz.ndim != 3 or xyz.shape[2] != 3):
        raise CmdrError(f"sample {split}/{defect}/{sample_id}: xyz must be HxWx3, got {xyz.shape}")
    folder = Path(root) / split / defect
    paths: dict[str, Path | None] = {"rgb": None, "xyz": None, "gt": None}
    if rgb is not None:
        paths["rgb"] = _write_png(folder / "rgb" / f"{sample_id}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if xyz is not None:
        paths["xyz"] = folder / "xyz" / f"{sample_id}.tiff"
        paths["xyz"].parent.mkdir(parents=True, exist_ok=True)
        # photometric RGB, contiguous samples: exactly how the MVTec 3D-AD files are stored
        tifffile.imwrite(paths["xyz"], np.asarray(xyz, dtype=np.float32), photometric="rgb")
    if mask is not None:
        gt = np.where(np.asarray(mask) != 0, 255, 0).astype(np.uint8)
        paths["gt"] = _write_png(folder / "gt" / f"{sample_id}.png", gt)
    return Sample(rgb_path=paths["rgb"], xyz_path=paths["xyz"], gt_path=paths["gt"],
                  label=0 if defect == GOOD else 1, defect=defect, sample_id=sample_id, split=split,
                  class_name=Path(root).name)


def _write_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise CmdrError(f"{path}: PNG encoding failed")
    buf.tofile(path)
    return path
