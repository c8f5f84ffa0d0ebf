"""``cmdr eval``: run a checkpoint on DIR/test/* and write the report, for a model of either pipeline kind
(``cmdr_ros.pipelines``: frames, or the scans of a "chunks" model).

Report folder:
* ``metrics.json``: the kind's metrics (its metric sink) per class, with per-defect I-AUROC, and the mean over
  classes. Frames: I-AUROC, P-AUROC, AUPRO@{0.3,0.1,0.05,0.01} (the exact PRO curve of MVTec's evaluator) and
  ``aupro_paper@0.3`` (the paper's 99-threshold curve, the one comparable with its table), computed on the square
  anomaly maps (the model grid: 224x224 for the paper preset, as the paper evaluates) with ground truth resized by
  nearest neighbour and thresholded at 0.5, pixel scores normalised by the model's ``pixel_norm``; a defective
  sample without a ``gt/`` mask (``cmdr dataset from-review``) counts in the image-level metrics only. Scans:
  part-level I-AUROC, chunk-level I-AUROC with the reference's 0.25 % chunk label, P-AUROC over every point with
  ground truth;
* ``scores.csv``: one row per test part (score, decision at the calibrated threshold, truth; scans: points, chunks);
* the part's scores: frames ``anomaly_maps/<class>/test/<defect>/<id>.tiff``, float32 maps at the original
  resolution in the layout of the official MVTec 3D-AD evaluator; scans ``point_scores/<class>/test/<defect>/
  <id>.npy``, float32 per point in the scan's order;
* ``overlays/<class>/<defect>_<id>.png``: heatmaps over the image (or a depth rendering in 3D-only mode; a scan
  seen from above, coloured by the highest point score per cell), ground truth outlined;
* ``roc.png``; frames also ``pro_curve.png``.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cmdr_ros.judge import reject_flag
from cmdr_ros.metrics import format_table, roc_curve_points
from cmdr_ros.model.checkpoint import load_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.pipelines import pipeline_for
from cmdr_ros.visualization import plot_curves, save_overlay


def evaluate(data_dir: str | Path, detector: CMDRDetector, out: Path, cache_dir: str | None = None,
             no_cache: bool = False, progress: bool = True, write_images: bool = True,
             resolution: str = "model") -> dict[str, Any]:
    """Metrics of one class folder's test split; writes scores, overlays and curves under ``out``. Returns the
    metrics, the rows of scores.csv, the class name and the metric keys of the table.

    ``resolution`` (frames): "model" computes the pixel metrics on the model's square map grid (the masks padded
    and resized to it); "full" at each image's own resolution against its original mask, the normalised maps
    brought back to the input (``SquareFrame.to_input``, bilinear; unmasked, as ``Prediction.anomaly_map``), as the
    official MVTec 3D-AD evaluator scores full-size TIFFs (``aupro@0.3`` then is its number)."""
    kind = pipeline_for(detector)
    sink = kind.metrics(resolution)
    name, parts = kind.test_parts(data_dir, detector, cache_dir, no_cache, progress)
    rows, latencies, scale = [], [], []
    for part in parts:
        pred = kind.predict(detector, part.sample)
        latencies.append(pred.latency_ms)
        sink.add(pred, part.label, part.defect, part.truth)
        rows.append({"class": name, "defect": part.defect, "id": part.sample_id, "label": part.label,
                     "score": pred.score, "reject": reject_flag(pred.score, detector.threshold),
                     **kind.row(pred, part.raw[-1])})
        if write_images:
            kind.save_scores(_scores_path(out, kind.score_files, name, part.defect, part.sample_id), pred)
            scale.append(kind.scale_of(pred, resolution))
    metrics = sink.summary()
    metrics["latency_ms_mean"] = float(np.mean(latencies))

    out.mkdir(parents=True, exist_ok=True)
    if write_images:
        vmax = float(np.percentile(np.concatenate([s.ravel() for s in scale]), 99.9)) or None
        _, again = kind.test_parts(data_dir, detector, cache_dir, no_cache, False)
        for part, r in zip(again, rows):  # second pass: one colour scale for every overlay
            scores = kind.load_scores(_scores_path(out, kind.score_files, name, part.defect, part.sample_id))
            rgb, xyz, amap, valid, gt = kind.view(part.raw, scores, part.valid, part.truth)
            verdict = "REJECT" if r["reject"] else "pass"
            save_overlay(out / "overlays" / name / f"{part.defect}_{part.sample_id}.png", rgb, xyz, amap, valid,
                         f"{part.defect} {part.sample_id} score {r['score']:.2f} {verdict}", vmax, gt)
    labels, scores = [r["label"] for r in rows], [r["score"] for r in rows]
    fpr, tpr = roc_curve_points(labels, scores)
    plot_curves(out / "roc.png", {f"{name} (I-AUROC {metrics['i_auroc']:.3f})": (fpr, tpr)},
                "false positive rate", "true positive rate", kind.roc_title)
    kind.plot(out, name, metrics, sink)
    return {"metrics": metrics, "rows": rows, "name": name, "keys": sink.keys}


def _scores_path(out: Path, folder: str, name: str, defect: str, sample_id: str) -> Path:
    return out / folder / name / "test" / defect / sample_id


def run_eval(data_dir: str | Path, detector: CMDRDetector, out: str | Path, checkpoint: str = "",
             cache_dir: str | None = None, no_cache: bool = False, progress: bool = True,
             write_images: bool = True, resolution: str = "model") -> dict[str, Any]:
    out = Path(out)
    t0 = time.perf_counter()
    res = evaluate(data_dir, detector, out, cache_dir, no_cache, progress, write_images, resolution)
    classes, keys = {res["name"]: res["metrics"]}, res["keys"]
    with warnings.catch_warnings():  # a metric NaN in every class (e.g. no masks at all) stays NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {k: float(np.nanmean([m[k] for m in classes.values()])) for k in keys}
    report = {"checkpoint": str(checkpoint), "model_id": detector.model_id, "mode": detector.config.mode,
              "grid": detector.config.grid, "map_size": detector.config.map_size, "threshold": detector.threshold,
              "device": detector.runtime, "resolution": pipeline_for(detector).resolution or resolution,
              "seconds": time.perf_counter() - t0, "classes": classes, "mean": mean}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=True))
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(res["rows"][0]))
        w.writeheader()
        w.writerows(res["rows"])
    report["table"] = format_table(classes, mean, keys)
    return report


def run(args: argparse.Namespace) -> int:
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d)
    rep = run_eval(args.data, detector, args.out, args.checkpoint, args.cache_dir, args.no_cache,
                   not args.quiet, not args.no_images, args.resolution)
    print(rep["table"])
    print(f"evaluated in {rep['seconds']:.1f} s on {rep['device']}; report: {Path(args.out) / 'metrics.json'}")
    return 0
