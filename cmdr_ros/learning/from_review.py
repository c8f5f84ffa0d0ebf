"""``cmdr dataset from-review``: a training class folder from the parts the reviewers labelled.

Each labelled part's latest label (``labels``) is joined with its decision's evidence folder (``decisions.evidence``,
docs/evidence.md). Confirmed good parts go to ``train/good``, ``validation/good`` (the threshold is calibrated on
it) and, a held-out share, ``test/good`` (so that ``cmdr promote`` has good parts to judge); confirmed defective
parts go to ``test/confirmed`` (a label carries no defect type); ``unsure`` parts are skipped. The layout is the one
the readers expect: frames as MVTec 3D-AD (``rgb/<id>.png``, ``xyz/<id>.tiff`` float32 HxWx3, what the evidence
holds), scans (Nx3 evidence clouds, a "chunks" model's parts) as ``points/<id>.npy`` (``cmdr_ros.data.scans``).
A sample's id is ``<run_id>-<seq, 8 digits>``, as its evidence folder. Reviewers draw no masks: a defective part
has no ``gt/`` file and counts at the image level only (``cmdr eval`` leaves it out of the pixel metrics).

``from_review.json`` in the class folder says which part went where, and which parts were skipped and why. The
folder is written under a temporary name and put in place when complete; a second run replaces a folder that it
wrote (same inputs, the same samples), never one that it did not.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.audit.backends import printable
from cmdr_ros.audit.schema import TABLE
from cmdr_ros.data.mvtec3d import GOOD, MVTec3DClass, write_sample
from cmdr_ros.data.scans import ScanDataset
from cmdr_ros.evidence import EvidenceError, read_evidence
from cmdr_ros.review.db import ReviewDB

MANIFEST = "from_review.json"
CONFIRMED = "confirmed"  # the test folder of confirmed defective parts


@dataclass
class LabelledPart:
    """A decided part and its latest label."""

    node: str
    run_id: str
    seq: int
    label: str
    user: str
    evidence: str | None
    evidence_root: str | None

    @property
    def sample_id(self) -> str:
        return f"{self.run_id}-{self.seq:08d}"


def labelled_parts(db: ReviewDB, node: str | None = None) -> list[LabelledPart]:
    """Every decision that has a label, with its latest label and evidence columns, in (run_id, seq) order."""
    if not db.has_review_tables():
        raise CmdrError(f"{printable(db.target)}: no labels table: nothing was labelled on the review station yet")
    if "evidence" not in db.decision_columns:
        raise CmdrError(f"{printable(db.target)}: the audit store has no evidence column (written before schema 3): "
                        "its parts have no evidence to learn from")
    where = f"AND d.node = {db.p('node')}" if node else ""
    rows = db.rows(
        f"SELECT d.node, d.run_id, d.seq, l.label, l.\"user\", d.evidence, d.evidence_root FROM {TABLE} d "
        "JOIN labels l ON l.run_id = d.run_id AND l.seq = d.seq "
        "WHERE l.id = (SELECT MAX(m.id) FROM labels m WHERE m.run_id = d.run_id AND m.seq = d.seq) "
        f"{where} ORDER BY d.run_id, d.seq", {"node": node} if node else {})
    return [LabelledPart(r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def split_goods(parts: Sequence[LabelledPart], holdout: float, validation: float, seed: int
                ) -> dict[str, list[LabelledPart]]:
    """The good parts shuffled with ``seed``, then: ``holdout`` of them to test, of the rest ``validation`` to
    validation (at least one of each share that is asked for, while train keeps one), the others to train."""
    if not 0 <= holdout < 1 or not 0 <= validation < 1:
        raise CmdrError(f"--holdout {holdout} and --validation {validation}: fractions in [0, 1)")
    order = [parts[i] for i in np.random.default_rng(seed).permutation(len(parts))]

    def share(n: int, fraction: float) -> int:
        return 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))

    n_test = share(len(order), holdout)
    n_val = share(len(order) - n_test, validation)
    return {"test": order[:n_test], "validation": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def _arrays(part: LabelledPart, evidence_dir: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rgb, xyz) of a part's evidence; EvidenceError says why there is none."""
    if not part.evidence:
        raise EvidenceError("no evidence was kept for this part")
    root = evidence_dir or part.evidence_root
    if not root or not Path(root).is_dir():
        raise EvidenceError(f"the evidence root {root!r} is not here (give --evidence DIR, where it is mounted)")
    ev = read_evidence(root, part.evidence)
    rgb, xyz = ev.image_rgb(), ev.xyz()
    if rgb is None and xyz is None:
        raise EvidenceError(f"{ev.folder}: neither image nor cloud kept")
    if rgb is not None and xyz is not None and (xyz.ndim != 3 or xyz.shape[:2] != rgb.shape[:2]):
        raise EvidenceError(f"{ev.folder}: the image {rgb.shape[1]}x{rgb.shape[0]} and the cloud {xyz.shape} are not "
                            "pixel-aligned (a separate sensor): no MVTec 3D-AD sample can pair them")
    return rgb, xyz


def _kind(rgb: np.ndarray | None, xyz: np.ndarray | None) -> str:
    """What a sample holds: 'scan', or the frame's files: 'rgb', 'xyz', 'rgb+xyz'."""
    if xyz is not None and xyz.ndim == 2:
        return "scan"
    return "+".join(k for k, a in (("rgb", rgb), ("xyz", xyz)) if a is not None)


def _merged_kind(folder: Path) -> str | None:
    """The kind of sample in an existing class folder (None: it holds none)."""
    if ScanDataset.is_scan_folder(folder):
        return "scan"
    data = MVTec3DClass(folder)
    samples = [s for split in ("train", "validation", "test") if (folder / split).is_dir()
               for s in data.samples(split)]
    if not samples:
        return None
    s = samples[0]
    return "+".join(k for k, p in (("rgb", s.rgb_path), ("xyz", s.xyz_path)) if p is not None)


def _write(root: Path, split: str, defect: str, sample_id: str, rgb: np.ndarray | None,
           xyz: np.ndarray | None) -> None:
    if xyz is not None and xyz.ndim == 2:
        f = root / split / defect / "points" / f"{sample_id}.npy"
        f.parent.mkdir(parents=True, exist_ok=True)
        np.save(f, xyz.astype(np.float32, copy=False))
    else:
        write_sample(root, split, defect, sample_id, rgb, xyz)


def _replace(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out`` (a folder this command wrote before is replaced)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def build_dataset(db: ReviewDB, out: str | Path, *, evidence_dir: str | None = None, merge: str | Path | None = None,
                  holdout: float = 0.2, validation: float = 0.2, seed: int = 0, node: str | None = None
                  ) -> dict[str, Any]:
    """Write the class folder ``out`` from the labelled parts of ``db`` (module docstring); its manifest."""
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file():
        raise CmdrError(f"{out} exists and was not written by `cmdr dataset from-review` (no {MANIFEST}): "
                        "choose another --out")
    if evidence_dir is not None and not Path(evidence_dir).is_dir():
        raise CmdrError(f"--evidence {evidence_dir}: no such directory")
    parts = labelled_parts(db, node)
    if not parts:
        raise CmdrError(f"{printable(db.target)}: no labelled parts{f' of node {node}' if node else ''}: label parts "
                        "on the review station (`cmdr review serve`) first")
    skipped: dict[str, list[dict[str, Any]]] = {"unsure": [], "no_evidence": [], "in_merged": []}
    usable: dict[str, list[LabelledPart]] = {"good": [], "defective": []}
    kinds: Counter = Counter()
    for p in parts:
        key = {"node": p.node, "run_id": p.run_id, "seq": p.seq}
        if p.label == "unsure":
            skipped["unsure"].append(key)
            continue
        try:  # read once to check it (the arrays are read again to be written: one part in memory at a time)
            kinds[_kind(*_arrays(p, evidence_dir))] += 1
        except EvidenceError as e:
            skipped["no_evidence"].append({**key, "label": p.label, "reason": str(e)})
            continue
        usable[p.label].append(p)
    merged_kind = _merged_kind(Path(merge)) if merge is not None else None
    if len(kinds) > 1:
        raise CmdrError("the labelled parts hold different kinds of sample ("
                        + ", ".join(f"{k}: {n} parts" for k, n in sorted(kinds.items())) + "): choose one cell with "
                        "--node")
    if merged_kind is not None and kinds and merged_kind not in kinds:
        raise CmdrError(f"--merge {merge} holds {merged_kind} samples, the labelled parts {next(iter(kinds))}")

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a run that was stopped half-way
    try:
        if merge is not None:
            shutil.copytree(merge, tmp)
            (tmp / MANIFEST).unlink(missing_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        present = {f.stem for f in tmp.glob("*/*/*/*") if f.is_file()}
        placed: list[dict[str, Any]] = []
        goods = split_goods(usable["good"], holdout, validation, seed)
        where = {p.sample_id: (split, GOOD) for split, ps in goods.items() for p in ps}
        for p in usable["good"] + usable["defective"]:
            split, defect = where.get(p.sample_id, ("test", CONFIRMED))
            entry = {"node": p.node, "run_id": p.run_id, "seq": p.seq, "label": p.label, "labelled_by": p.user,
                     "evidence": p.evidence}
            if p.sample_id in present:
                skipped["in_merged"].append(entry)
                continue
            _write(tmp, split, defect, p.sample_id, *_arrays(p, evidence_dir))
            placed.append({**entry, "split": split, "defect": defect, "sample_id": p.sample_id})
        counts = _counts(tmp)
        if not counts.get(f"train/{GOOD}"):
            raise CmdrError("no good part to train on: " + _summary(placed, skipped)
                            + " (label good parts, or --merge a class folder that has train/good)")
        manifest = {"source": printable(db.target), "evidence": evidence_dir, "node": node, "merged": None if merge is None
                    else str(merge), "holdout": holdout, "validation": validation, "seed": seed,
                    "kind": next(iter(kinds), merged_kind), "written_at": time.time(), "counts": dict(sorted(
                        counts.items())), "parts": placed, "skipped": skipped}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _replace(tmp, out)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _counts(root: Path) -> Counter:
    """'<split>/<defect>' -> the number of samples there."""
    counts: Counter = Counter()
    for folder in root.glob("*/*"):
        stems = {f.stem for sub in ("rgb", "xyz", "points") for f in (folder / sub).glob("*") if f.is_file()}
        if stems:
            counts[f"{folder.parent.name}/{folder.name}"] = len(stems)
    return counts


def _summary(placed: list[dict[str, Any]], skipped: dict[str, list[dict[str, Any]]]) -> str:
    kept = Counter(p["label"] for p in placed)
    return (f"{kept['good']} good and {kept['defective']} defective parts written, skipped: "
            + ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in skipped.items()))


def describe(manifest: dict[str, Any]) -> str:
    """What ``build_dataset`` did, in lines for a person: where the parts went, what was skipped and why."""
    lines = [f"{k}: {n}" for k, n in manifest["counts"].items()]
    lines.append(_summary(manifest["parts"], manifest["skipped"]))
    lines += [f"  no evidence: {s['node']} {s['run_id']}-{s['seq']} ({s['label']}): {s['reason']}"
              for s in manifest["skipped"]["no_evidence"]]
    return "\n".join(lines)
