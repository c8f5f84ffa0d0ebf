"""The learning loop's first step: a class folder from the parts reviewers labelled (``cmdr dataset from-review``).

Each part's latest label counts: confirmed good parts go to ``train/good`` and, a ``validation`` share of them spread
evenly in time, to ``validation/good`` (what the threshold is calibrated on); confirmed defects go to
``test/<defect>``, good parts held out (``holdout``) to ``test/good``; parts labelled unsure are left out. A sample
is the part's evidence (``cmdr_ros/evidence.py``):

* a frame (an image and/or an organized cloud): an MVTec 3D-AD style sample (``mvtec3d.write_sample``), its image
  as judged and its organized cloud each brought to the size the node judges at (``fit_frame``);
* a scan (an unorganized Nx3 cloud without an image, as a "chunks" model judges it): a scan sample
  (``scans.write_scan``, ``<split>/<defect>/points/<id>.npy``) of its measured points in the sensor's order, the
  unmeasured (NaN) ones left out, which are the points the node chunked and scored (``model.scan.predict_scan``).

One folder holds one kind, ``merge``'s, else the first usable part's; parts of the other kind are left out. A
confirmed defect has no ground truth beyond its label (reviewers draw no masks and mark no points): ``cmdr eval``
counts it in the image- (part-) level metrics only. A held-out good part has no defect pixel or point: it gets an
all-zero mask or point labels, as MVTec 3D-AD's good test parts do (a merged ``test/good`` with masks stays
readable). A sample's id is ``review_<run_id>_<seq>``, so every sample names its decision; ``review_manifest.json``
lists them with who labelled them and when. ``merge`` starts from a copy of an existing class folder. The folder is
written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import collections
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.audit.schema import TABLE
from cmdr_ros.evidence import EvidenceError, read_evidence
from cmdr_ros.review.db import ReviewDB
from cmdr_ros.review.files import evidence_root
from cmdr_ros.review.labels import LATEST_ONLY
from cmdr_ros.review.queries import Filters

MANIFEST = "review_manifest.json"
_PART = ("node", "run_id", "seq", "decided_at", "decision", "score", "threshold", "model_id", "evidence",
         "evidence_root", "label", "user", "labelled_at")


def labelled_parts(db: ReviewDB, f: Filters) -> list[dict[str, Any]]:
    """The parts with a label, their latest label, in time order (within the cell and window of ``f``)."""
    where, args = Filters(node=f.node, since=f.since, until=f.until).where(db)
    decided = [c if c in db.decision_columns else None for c in _PART[:10]]
    cols = ", ".join(f"d.{c}" if c else "NULL" for c in decided)
    rows = db.rows(f"SELECT {cols}, l.label, l.\"user\", l.labelled_at FROM labels l JOIN {TABLE} d ON "
                   f"d.run_id = l.run_id AND d.seq = l.seq WHERE {LATEST_ONLY}"
                   f"{where.replace(' WHERE ', ' AND ', 1)} ORDER BY d.decided_at, d.id", args)
    return [dict(zip(_PART, r)) for r in rows]


def _validation_picks(n: int, share: float) -> set[int]:
    """Indices of ``n`` items, ``share`` of them spread evenly (item i when floor((i+1)*share) > floor(i*share))."""
    return {i for i in range(n) if math.floor((i + 1) * share) > math.floor(i * share)}


FRAMES, SCANS = "frames", "scans"  # the kinds of class folder


def _sample(ev) -> tuple[str, tuple[Any, ...], str | None]:
    """(kind, arrays, None) of a part's evidence: (FRAMES, (rgb, xyz)) or (SCANS, (points,)) (module docstring);
    or (kind, (), why it cannot be a sample)."""
    from cmdr_ros.data.frame_size import fit_frame  # noqa: PLC0415 - torch, only when a dataset is written
    from cmdr_ros.geometry import finite_rows  # noqa: PLC0415

    rgb, xyz = ev.image_rgb(), ev.xyz()
    if rgb is None and xyz is None:
        return FRAMES, (), "no image and no cloud kept"
    if xyz is not None and xyz.ndim == 2:
        if rgb is not None:
            return FRAMES, (), "an image with an unorganized cloud (Nx3): a cloud projected onto the image is not " \
                               "stored aligned"
        points = xyz[finite_rows(xyz)]
        return (SCANS, (points,), None) if len(points) else (SCANS, (), "a scan without a measured point")
    if rgb is not None and xyz is not None and rgb.shape[:2] != xyz.shape[:2]:
        return FRAMES, (), f"image {rgb.shape[1]}x{rgb.shape[0]} and cloud {xyz.shape[1]}x{xyz.shape[0]} differ " \
                           "(a cloud projected onto the image is not stored aligned)"
    return FRAMES, fit_frame(rgb, xyz), None


def _truth_shape(kind: str, arrays: tuple[Any, ...]) -> tuple[int, ...]:
    """The shape of a sample's ground truth: a mask over the frame's pixels, a label per point of a scan."""
    if kind == SCANS:
        return (len(arrays[0]),)
    return next(a for a in arrays if a is not None).shape[:2]


def _good_splits(n: int, holdout: float, validation: float) -> list[str]:
    """The split of each of ``n`` good parts in time order: a ``holdout`` share to test (spread evenly in time), then
    of the others a ``validation`` share to validation, the rest to train."""
    held = _validation_picks(n, holdout)
    rest = [i for i in range(n) if i not in held]
    val = {rest[j] for j in _validation_picks(len(rest), validation)}
    return ["test" if i in held else "validation" if i in val else "train" for i in range(n)]


def from_review(db: ReviewDB, out: str | Path, *, evidence: str | None = None, f: Filters = Filters(),
                validation: float = 0.2, defect: str = "review", merge: str | Path | None = None,
                holdout: float = 0.0) -> dict[str, Any]:
    """Write the class folder ``out`` from the labelled parts of ``db`` (``evidence``: the evidence root as mounted
    here; default each row's recorded root); the summary: samples per split, parts left out and why, the folder's
    ``kind`` (``FRAMES`` or ``SCANS``). ``holdout``: a share of the good parts to ``test/good`` (``cmdr promote``
    judges good parts there)."""
    from cmdr_ros.data.mvtec3d import GOOD, write_sample  # noqa: PLC0415 - tifffile, cv2
    from cmdr_ros.data.scans import ScanDataset, write_scan  # noqa: PLC0415

    out = Path(out)
    if out.exists():
        raise CmdrError(f"--out {out}: exists already (give a new folder)")
    for name, share in (("validation", validation), ("holdout", holdout)):
        if not 0.0 <= share < 1.0:
            raise CmdrError(f"--{name} {share}: a share from 0 up to (not including) 1")
    if not defect or defect == GOOD or "/" in defect or defect.startswith("."):
        raise CmdrError(f"--defect {defect!r}: a folder name other than {GOOD!r}")
    if merge is not None and not (Path(merge) / "train" / GOOD).is_dir():
        raise CmdrError(f"--merge {merge}: not a class folder (no train/{GOOD})")
    if merge is not None and (Path(merge) / "test" / defect / "gt").is_dir():
        raise CmdrError(f"--defect {defect!r}: {merge}/test/{defect} holds masks and reviewed defects have none (a "
                        "folder's parts all have masks or none do); name another folder")
    kind = None if merge is None else SCANS if ScanDataset.is_scan_folder(merge) else FRAMES
    parts = labelled_parts(db, f)
    goods = [p for p in parts if p["label"] == "good"]
    good_splits = _good_splits(len(goods), holdout, validation)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if merge is not None:
        shutil.copytree(merge, partial)
    partial.mkdir(parents=True, exist_ok=True)
    written: collections.Counter = collections.Counter()
    left_out: list[dict[str, Any]] = []
    manifest: list[dict[str, Any]] = []
    good_index = 0
    try:
        for part in parts:
            key = {k: part[k] for k in ("node", "run_id", "seq")}
            if part["label"] == "unsure":
                left_out.append({**key, "why": "labelled unsure"})
                continue
            if part["label"] == "good":
                split, folder = good_splits[good_index], GOOD
                good_index += 1
            else:
                split, folder = "test", defect
            root = evidence_root(evidence, part)
            if not part["evidence"] or root is None:
                left_out.append({**key, "why": "no evidence kept" if not part["evidence"] else "no evidence root"})
                continue
            try:
                this, arrays, why = _sample(read_evidence(root, part["evidence"]))
            except EvidenceError as e:
                this, arrays, why = None, (), str(e)
            if why is None and kind not in (None, this):
                why = f"a part of {this} in a class folder of {kind}"
            if why is not None:
                left_out.append({**key, "why": why})
                continue
            kind = this
            sample_id = f"review_{part['run_id']}_{int(part['seq']):08d}"
            if split == "test" and folder == GOOD:  # a confirmed good part has no defect pixel or point
                arrays = (*arrays, np.zeros(_truth_shape(kind, arrays), np.uint8))
            (write_scan if kind == SCANS else write_sample)(partial, split, folder, sample_id, *arrays)
            written[f"{split}/{folder}"] += 1
            manifest.append({"sample": f"{split}/{folder}/{sample_id}", **{k: part[k] for k in _PART}})
        if not manifest:
            raise CmdrError(f"no labelled part with usable evidence ({len(parts)} labelled, {len(left_out)} left out"
                            + (f": {left_out[0]['why']}" if left_out else "") + ")")
        summary = {"out": str(out), "kind": kind, "labelled": len(parts), "samples": dict(sorted(written.items())),
                   "left_out": left_out, "merged": None if merge is None else str(merge)}
        (partial / MANIFEST).write_text(json.dumps({**summary, "parts": manifest}, indent=1, default=str))
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary
