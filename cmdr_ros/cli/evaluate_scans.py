"""``cmdr eval`` of a "chunks" model (the paper's 3D-only cutting-cell pipeline) on a class of unorganized scans.

Report folder: ``metrics.json`` (part-level I-AUROC, chunk-level I-AUROC with the reference's 0.25 % chunk label,
P-AUROC over every point with ground truth, per defect the part-level I-AUROC), ``scores.csv`` (one row per part),
``point_scores/<class>/test/<defect>/<id>.npy`` (float32 per point, in the scan's order) and
``overlays/<class>/<defect>_<id>.png`` (the scan seen from above, coloured by the highest point score per cell,
ground truth outlined), ``roc.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.data.scans import ScanDataset
from cmdr_ros.judge import reject_flag
from cmdr_ros.metrics import roc_curve_points, scan_metrics_by_defect
from cmdr_ros.visualization import plot_curves, save_overlay, scan_maps

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector


def evaluate_scans(data_dir: str | Path, detector: CMDRDetector, out: Path, progress: bool = True,
                   write_files: bool = True) -> dict[str, Any]:
    """Metrics of a scan class folder's test split; writes point scores, overlays and the ROC under ``out``."""
    data = ScanDataset(data_dir)
    scans = data.scans("test")
    if not scans:
        raise CmdrError(f"{data.root / 'test'}: no scans found (expected <defect>/points/NNN.npy|ply|pcd)")
    rows, latencies, kept = [], [], []
    chunk_y, chunk_s, point_y, point_s = [], [], [], []
    for scan in tqdm(scans, desc="test", disable=not progress, unit="scan", leave=False):
        points, labels = scan.load()
        pred = detector.predict_scan(points)
        latencies.append(pred.latency_ms)
        if labels is not None:
            cy, cs, py, ps = pred.scored_truth(labels)
            chunk_y += cy.tolist()
            chunk_s += cs.tolist()
            point_y.append(py)
            point_s.append(ps)
        rows.append({"class": data.root.name, "defect": scan.defect, "id": scan.sample_id, "label": scan.label,
                     "score": pred.score, "reject": reject_flag(pred.score, detector.threshold),
                     "points": len(points), "chunks": len(pred.chunks)})
        if write_files:
            f = out / "point_scores" / data.root.name / "test" / scan.defect / f"{scan.sample_id}.npy"
            f.parent.mkdir(parents=True, exist_ok=True)
            np.save(f, pred.point_scores)
            kept.append((scan, points, labels, pred.point_scores))
    labels_ = [r["label"] for r in rows]
    scores_ = [r["score"] for r in rows]
    metrics = scan_metrics_by_defect(labels_, scores_, [r["defect"] for r in rows], chunk_y, chunk_s, point_y,
                                     point_s)
    metrics["latency_ms_mean"] = float(np.mean(latencies))
    out.mkdir(parents=True, exist_ok=True)
    if write_files:
        vmax = float(np.percentile(np.concatenate([k[3] for k in kept]), 99.9)) or None
        for (scan, points, labels, scores), r in zip(kept, rows):
            m = np.isfinite(scores)
            xyz, amap, filled, gt = scan_maps(points[m], scores[m], None if labels is None else labels[m])
            verdict = "REJECT" if r["reject"] else "pass"
            save_overlay(out / "overlays" / data.root.name / f"{scan.defect}_{scan.sample_id}.png", None, xyz, amap,
                         filled, f"{scan.defect} {scan.sample_id} score {r['score']:.2f} {verdict}", vmax, gt)
    fpr, tpr = roc_curve_points(labels_, scores_)
    plot_curves(out / "roc.png", {f"{data.root.name} (I-AUROC {metrics['i_auroc']:.3f})": (fpr, tpr)},
                "false positive rate", "true positive rate", "Part-level ROC")
    return {"metrics": metrics, "rows": rows, "name": data.root.name}
