"""Evidence of a decision: the inputs and outputs of one part kept on disk beside its audit row, so that a person
can see why it was rejected (the review station) and the part can be judged again later.

Layout, relative to an evidence root (the node's ``evidence.dir``), one folder per part (``part_folder``)::

    <node name without the leading '/', '/' -> '__'>/<UTC date YYYY-MM-DD>/<run_id>-<seq, 8 digits>/
        image.png          the input image as judged, 8-bit RGB (absent in 3d mode)
        heatmap.png        the heatmap overlay as ~/heatmap publishes it (absent without a map, e.g. not judged)
        anomaly_map.npz    np.savez_compressed's format, key "anomaly_map": the float32 anomaly map, exact (judged
                           parts); folders written before it hold anomaly_map.npy (np.save), read alike
        cloud.npz          the same format, key "xyz": float32, organized HxWx3 at full resolution as received, or
                           Nx3 for a scan (absent in 2d mode)

Both .npz are written at deflate level 1: on sensor clouds and anomaly maps as small as numpy's level 6 (within 2 %),
in a third to half the time.
        meta.json          node, run_id, seq, stamp, part_id, decision, judged, score, threshold, model_id, mode,
                           error, reason, written_at

A part folder is written under a hidden temporary name and renamed when complete: a reader never sees half a part.
``Retention`` keeps a root (or one node's part of it) under a size limit, deleting the oldest parts first.
No ROS import here: the node's writer thread is ``cmdr_ros.ros.node.evidence_writer``.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from cmdr_ros import CmdrError

IMAGE, HEATMAP, ANOMALY_MAP, CLOUD, META = "image.png", "heatmap.png", "anomaly_map.npz", "cloud.npz", "meta.json"
ANOMALY_MAP_NPY = "anomaly_map.npy"  # the uncompressed map of folders written before anomaly_map.npz: read only
FILES = (IMAGE, HEATMAP, ANOMALY_MAP, CLOUD, META)
# the audit row's columns a meta.json carries (besides written_at)
META_KEYS = ("node", "run_id", "seq", "stamp", "part_id", "decision", "judged", "score", "threshold", "model_id",
             "mode", "error", "reason")
_PART = re.compile(r"^[^/\\.][^/\\]*-\d{8,}$")  # <run_id>-<seq>: the last level of a part folder
_TMP = ".tmp-"


class EvidenceError(CmdrError):
    """Evidence that could not be written or read (an unwritable root, a full disk, a bad array, a bad path)."""


def node_folder(node: str) -> str:
    """The first level of a part folder: the node's name without its leading '/', each '/' -> '__'."""
    name = node.lstrip("/").replace("/", "__")
    if not name or name in (".", ".."):
        raise EvidenceError(f"evidence: no folder name for the node {node!r}")
    return name


def part_folder(node: str, decided_at: float, run_id: str, seq: int) -> str:
    """The folder of one decided part, relative to the evidence root (``decided_at``: Unix seconds, its UTC date)."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise EvidenceError(f"evidence: run_id {run_id!r} cannot name a folder")
    day = datetime.datetime.fromtimestamp(float(decided_at), datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"{node_folder(node)}/{day}/{run_id}-{int(seq):08d}"


def meta_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The meta.json values of an audit row (``cmdr_ros.audit.schema.row_from_result``): ``META_KEYS``."""
    return {k: row.get(k) for k in META_KEYS}


def _safe_folder(root: str | os.PathLike, rel: str) -> Path:
    """``root``/``rel`` where ``rel`` is a relative path that stays inside ``root`` (a row's column is not trusted)."""
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
        raise EvidenceError(f"evidence: {rel!r} is not a part folder relative to the evidence root")
    return Path(root) / rel


def _rgb8(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or not a.size:
        raise EvidenceError(f"evidence: {name} must be uint8 HxWx3 RGB, got {a.dtype} {a.shape}")
    return a


def _xyz(a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.float32 or a.shape[-1:] != (3,) or a.ndim not in (2, 3):
        raise EvidenceError(f"evidence: xyz must be float32 HxWx3 or Nx3, got {a.dtype} {a.shape}")
    return a


def _png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise EvidenceError(f"evidence: {path.name} could not be encoded")
    path.write_bytes(buf.tobytes())


def _npz(path: Path, key: str, a: np.ndarray) -> None:
    """``np.savez_compressed(path, key=a)`` at deflate level 1 (numpy's own writes level 6: two to three times the
    time for a file within 2 % of the size)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(f"{key}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, a, allow_pickle=False)


def _load_npz(path: Path, key: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z[key]


def write_evidence(root: str | os.PathLike, rel: str, *, image: np.ndarray | None = None,
                   heatmap: np.ndarray | None = None, anomaly_map: np.ndarray | None = None,
                   xyz: np.ndarray | None = None, meta: Mapping[str, Any]) -> int:
    """Write one part's folder ``root``/``rel`` (``part_folder``) with what is given (``image`` and ``heatmap``:
    uint8 HxWx3 RGB; ``anomaly_map``: stored as float32, compressed, exact; ``xyz``: float32 HxWx3 or Nx3, stored bit
    for bit) and meta.json (``meta`` plus ``written_at``, Unix seconds, unless given); the bytes written. Written
    under a temporary name and renamed when complete; on any failure nothing is left and ``EvidenceError`` says why."""
    final = _safe_folder(root, rel)
    arrays = {IMAGE: None if image is None else _rgb8("image", image),
              HEATMAP: None if heatmap is None else _rgb8("heatmap", heatmap),
              CLOUD: None if xyz is None else _xyz(xyz)}
    tmp = final.with_name(f".{final.name}{_TMP}{os.getpid()}")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise EvidenceError(f"evidence: {final} already exists")
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder a killed writer of the same pid left
        tmp.mkdir()
        for name in (IMAGE, HEATMAP):
            if arrays[name] is not None:
                _png(tmp / name, arrays[name])
        if anomaly_map is not None:
            _npz(tmp / ANOMALY_MAP, "anomaly_map", np.asarray(anomaly_map, dtype=np.float32))
        if arrays[CLOUD] is not None:
            _npz(tmp / CLOUD, "xyz", arrays[CLOUD])
        doc = {**meta, "written_at": meta.get("written_at", time.time())}
        (tmp / META).write_text(json.dumps(doc, indent=1, default=str))
        nbytes = sum(f.stat().st_size for f in tmp.iterdir())
        os.rename(tmp, final)
        return nbytes
    except (OSError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EvidenceError(f"evidence {final} not written: {type(e).__name__}: {e}") from None
    except EvidenceError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class Evidence:
    """One part's evidence as found on disk: the path of each file present (None: absent) and its meta
    (``anomaly_map_path``: anomaly_map.npz, or an older folder's anomaly_map.npy)."""

    folder: Path
    meta: dict[str, Any]
    image: Path | None
    heatmap: Path | None
    anomaly_map_path: Path | None
    cloud: Path | None

    def image_rgb(self) -> np.ndarray | None:
        return None if self.image is None else read_png(self.image)

    def heatmap_rgb(self) -> np.ndarray | None:
        return None if self.heatmap is None else read_png(self.heatmap)

    def anomaly_map(self) -> np.ndarray | None:
        if self.anomaly_map_path is None:
            return None
        if self.anomaly_map_path.name == ANOMALY_MAP_NPY:
            return np.load(self.anomaly_map_path, allow_pickle=False)
        return _load_npz(self.anomaly_map_path, "anomaly_map")

    def xyz(self) -> np.ndarray | None:
        return None if self.cloud is None else _load_npz(self.cloud, "xyz")

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.iterdir() if f.is_file())


def read_png(path: str | os.PathLike) -> np.ndarray:
    """uint8 HxWx3 RGB of an evidence PNG."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvidenceError(f"evidence: {path} is not a readable PNG")
    return bgr[..., ::-1].copy()


def read_evidence(root: str | os.PathLike, rel: str) -> Evidence:
    """The evidence of the part folder ``rel`` under ``root`` (arrays are loaded on request); ``EvidenceError``
    when ``rel`` leaves the root, or the folder or its meta.json is missing or unreadable."""
    folder = _safe_folder(root, rel)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as e:
        raise EvidenceError(f"evidence {folder}: {type(e).__name__}: {e}") from None

    def present(name: str) -> Path | None:
        return folder / name if (folder / name).is_file() else None

    return Evidence(folder, meta, present(IMAGE), present(HEATMAP), present(ANOMALY_MAP) or present(ANOMALY_MAP_NPY),
                    present(CLOUD))


class Retention:
    """Keeps the parts under ``root`` (only those of ``node`` when given: nodes sharing a root keep their own
    budgets) at most ``max_bytes`` in all (0: no limit), deleting the oldest parts first (age: when their meta.json
    was written). The newest part is never deleted, so a limit below one part keeps exactly one. Parts already on
    disk are found at construction (a walk of the root); ``add`` tells of each part written since. Counts
    ``deleted_parts``, ``deleted_bytes`` and ``failures`` (a part that could not be deleted: no longer tracked,
    ``last_error``). One writer: not thread-safe."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, node: str | None = None):
        self.root, self.max_bytes = Path(root), int(max_bytes)
        if self.max_bytes < 0:
            raise EvidenceError(f"evidence: max_bytes {max_bytes} < 0")
        self.deleted_parts = self.deleted_bytes = self.failures = 0
        self.last_error = ""
        self._parts: collections.deque[tuple[str, int]] = collections.deque()  # oldest first
        self.total = 0
        found = []
        for folder in self._part_folders(node):
            files = [f for f in folder.iterdir() if f.is_file()]
            stamp = max((f.stat().st_mtime for f in files if f.name == META), default=folder.stat().st_mtime)
            found.append((stamp, folder.relative_to(self.root).as_posix(), sum(f.stat().st_size for f in files)))
        for _, rel, nbytes in sorted(found):
            self._parts.append((rel, nbytes))
            self.total += nbytes

    def _part_folders(self, node: str | None) -> list[Path]:
        nodes = [self.root / node_folder(node)] if node is not None else self._dirs(self.root)
        return [p for n in nodes for day in self._dirs(n) for p in self._dirs(day) if _PART.match(p.name)]

    @staticmethod
    def _dirs(path: Path) -> list[Path]:
        try:
            return [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:  # absent (nothing written yet) or unreadable: nothing to keep track of
            return []

    @property
    def parts(self) -> int:
        return len(self._parts)

    def add(self, rel: str, nbytes: int) -> tuple[int, int]:
        """Track the part ``rel`` just written (``nbytes``) as the newest, then delete the oldest while the total
        is over the limit; (parts, bytes) deleted now."""
        self._parts.append((rel, int(nbytes)))
        self.total += int(nbytes)
        return self.enforce()

    def enforce(self) -> tuple[int, int]:
        """Delete the oldest parts (never the newest) while the total is over ``max_bytes``; (parts, bytes)."""
        parts = nbytes = 0
        while self.max_bytes and self.total > self.max_bytes and len(self._parts) > 1:
            rel, size = self._parts.popleft()
            self.total -= size
            folder = self.root / rel
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:  # deleted by someone else meanwhile: gone either way
                pass
            except OSError as e:
                self.failures += 1
                self.last_error = f"evidence {folder} not deleted: {type(e).__name__}: {e}"
                continue
            parts, nbytes = parts + 1, nbytes + size
            for empty in (folder.parent, folder.parent.parent):  # the day's and the node's folder, once empty
                try:
                    empty.rmdir()
                except OSError:
                    break
        self.deleted_parts += parts
        self.deleted_bytes += nbytes
        return parts, nbytes
