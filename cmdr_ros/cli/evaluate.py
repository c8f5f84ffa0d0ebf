"""``cmdr eval``: run a checkpoint on DIR/test/* and write the report (a "chunks" model: ``evaluate_scans.py``).

Report folder:
* ``metrics.json``: I-AUROC, P-AUROC, AUPRO@{0.3,0.1,0.05,0.01} (the exact PRO curve of MVTec's evaluator) and
  ``aupro_paper@0.3`` (the paper's 99-threshold curve, the one comparable with its table) per class (with per-defect
  I-AUROC) and the mean over classes; computed on the square anomaly maps (the model grid: 224x224 for the paper
  preset, as the paper evaluates) with ground truth resized by nearest neighbour and thresholded at 0.5; pixel
  scores normalised by the model's ``pixel_norm``; a defective sample without a ``gt/`` mask (``cmdr dataset
  from-review``) counts in the image-level metrics only;
* ``scores.csv``: one row per test sample (score, decision at the calibrated threshold, truth);
* ``anomaly_maps/<class>/test/<defect>/<id>.tiff``: float32 maps at the original resolution, in the layout of
  the official MVTec 3D-AD evaluator;
* ``overlays/<class>/<defect>_<id>.png``: heatmaps over the image (or a depth rendering in 3D-only mode);
* ``roc.png``, ``pro_curve.png``.
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
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.preprocess import PreprocessCache, resize_mask
from cmdr_ros.data.samples import iter_split, load_one, make_cache
from cmdr_ros.judge import reject_flag
from cmdr_ros.metrics import METRIC_KEYS, format_table, metrics_by_defect, pro_curve, roc_curve_points
from cmdr_ros.model.checkpoint import load_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.visualization import plot_curves, save_overlay

def evaluate_class(data: MVTec3DClass, detector: CMDRDetector, out: Path, cache: PreprocessCache | None,
                   progress: bool = True, write_images: bool = True, resolution: str = "model") -> dict[str, Any]:
    """Metrics of one class folder's test split; writes maps, overlays, scores and curves under ``out``.

    ``resolution``: "model" computes the pixel metrics on the model's square map grid (the masks padded and
    resized to it); "full" at each image's own resolution against its original mask, the normalised maps brought
    back to the input (``SquareFrame.to_input``, bilinear; unmasked, as ``Prediction.anomaly_map``), as the
    official MVTec 3D-AD evaluator scores full-size TIFFs (``aupro@0.3`` then is its number)."""
    if resolution not in ("model", "full"):
        raise CmdrError(f"unknown resolution {resolution!r}: model or full")
    cfg, size = detector.config, detector.config.map_size
    labels, scores, gts, pix_maps, pro_maps, rows, samples = [], [], [], [], [], [], []
    latencies = []
    for ls in iter_split(data, "test", cfg, cache, progress):
        pred = detector.predict_input(ls.inp)
        latencies.append(pred.latency_ms)
        s = ls.sample
        samples.append(s)
        labels.append(s.label)
        scores.append(pred.score)
        if ls.mask is None:  # a defect without ground truth: in the image-level metrics only
            gts.append(None)
            pix_maps.append(None)
            pro_maps.append(None)
        elif resolution == "full":
            gts.append(ls.mask)
            pix_maps.append(pred.anomaly_map)
            pro_maps.append(ls.inp.frame.to_input(pred.pro_map()).astype(np.float32))
        else:
            gts.append(resize_mask(ls.inp.frame.pad(ls.mask), size))
            pix_maps.append(pred.pixel_map())
            pro_maps.append(pred.pro_map())
        rows.append({"class": data.name, "defect": s.defect, "id": s.sample_id, "label": s.label,
                     "score": pred.score,
                     "reject": reject_flag(pred.score, detector.threshold)})
        if write_images:
            tif = out / "anomaly_maps" / data.name / "test" / s.defect / f"{s.sample_id}.tiff"
            tif.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tif, pred.anomaly_map.astype(np.float32))

    metrics = metrics_by_defect(gts, pix_maps, pro_maps, labels, scores, [r["defect"] for r in rows])
    metrics["latency_ms_mean"] = float(np.mean(latencies))

    out.mkdir(parents=True, exist_ok=True)
    if write_images:
        vmax = float(np.percentile(np.concatenate([p.ravel() for p in pix_maps if p is not None]), 99.9)) or None
        for r, s in zip(rows, samples):  # second pass: one colour scale for every overlay
            ls = load_one(s, cfg, cache)
            amap = tifffile.imread(out / "anomaly_maps" / data.name / "test" / r["defect"] / f"{r['id']}.tiff")
            verdict = "REJECT" if r["reject"] else "pass"
            save_overlay(out / "overlays" / data.name / f"{r['defect']}_{r['id']}.png", ls.rgb, ls.xyz, amap,
                         ls.inp.valid_input, f"{r['defect']} {r['id']} score {r['score']:.2f} {verdict}", vmax, ls.mask)
    fpr, tpr = roc_curve_points(labels, scores)
    plot_curves(out / "roc.png", {f"{data.name} (I-AUROC {metrics['i_auroc']:.3f})": (fpr, tpr)},
                "false positive rate", "true positive rate", "Image-level ROC")
    known = [i for i, g in enumerate(gts) if g is not None]
    if known:
        fprs, pros = pro_curve([gts[i] for i in known], [pro_maps[i] for i in known])
        plot_curves(out / "pro_curve.png", {f"{data.name} (AUPRO@0.3 {metrics['aupro@0.3']:.3f})": (fprs, pros)},
                    "false positive rate", "per-region overlap", "PRO curve", xlim=0.3)
    return {"metrics": metrics, "rows": rows}


def run_eval(data_dir: str | Path, detector: CMDRDetector, out: str | Path, checkpoint: str = "",
             cache_dir: str | None = None, no_cache: bool = False, progress: bool = True,
             write_images: bool = True, resolution: str = "model") -> dict[str, Any]:
    out = Path(out)
    t0 = time.perf_counter()
    keys = METRIC_KEYS
    if detector.config.judges_scans:
        from cmdr_ros.cli.evaluate_scans import evaluate_scans
        from cmdr_ros.metrics import SCAN_METRIC_KEYS

        res, keys = evaluate_scans(data_dir, detector, out, progress, write_images), SCAN_METRIC_KEYS
        classes = {res["name"]: res["metrics"]}
    else:
        data = MVTec3DClass(data_dir)
        res = evaluate_class(data, detector, out, make_cache(detector.config, cache_dir, no_cache), progress,
                             write_images, resolution)
        classes = {data.name: res["metrics"]}
    with warnings.catch_warnings():  # a metric NaN in every class (e.g. no masks at all) stays NaN, without a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = {k: float(np.nanmean([m[k] for m in classes.values()])) for k in keys}
    report = {"checkpoint": str(checkpoint), "model_id": detector.model_id, "mode": detector.config.mode,
              "grid": detector.config.grid, "map_size": detector.config.map_size, "threshold": detector.threshold,
              "device": detector.runtime, "resolution": "points" if detector.config.judges_scans else resolution,
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
