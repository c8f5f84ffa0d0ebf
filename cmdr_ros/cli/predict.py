"""``cmdr predict`` (one sample) and ``cmdr calibrate`` (re-derive the reject threshold)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_rgb, load_xyz
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.visualization import save_overlay, scan_maps


def run_predict(args: argparse.Namespace) -> int:
    """Judge one sample as the node would (``cmdr_ros.judge``): exit 0 with a decision, 3 when the sample could
    not be judged (the fail-safe decision is still written)."""
    from cmdr_ros.judge import Judge, JudgeSettings

    if not args.rgb and not args.xyz and not getattr(args, "scan", None):
        raise CmdrError("give --rgb and/or --xyz (or --scan for a paper3d/lite3d model)")
    params: dict = {}
    if args.params_file:
        from cmdr_ros.ros.node.parameters import read_params_file  # the node's parameter file: its judging settings

        params = read_params_file(args.params_file)
    threshold = args.threshold if args.threshold is not None else params.get("threshold", -1.0)
    # a checkpoint without a finite calibrated threshold is refused unless a threshold is given
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d,
                               require_threshold=threshold < 0)
    cfg = detector.config
    judge = Judge(detector, JudgeSettings.from_params(params), threshold)
    if cfg.judges_scans or getattr(args, "scan", None):
        return _predict_scan(args, judge)
    if cfg.uses_2d and not args.rgb:
        raise CmdrError(f"the model's mode '{cfg.mode}' needs --rgb")
    if cfg.uses_3d and not args.xyz:
        raise CmdrError(f"the model's mode '{cfg.mode}' needs --xyz")
    rgb = load_rgb(args.rgb) if args.rgb else None
    xyz = load_xyz(args.xyz) if args.xyz else None
    verdict = judge.judge(rgb, xyz)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"decision": verdict.decision, "judged": verdict.judged, "score": verdict.score,
              "threshold": verdict.threshold, "reject": verdict.reject, "mode": cfg.mode,
              "model_id": detector.model_id, "coverage": verdict.coverage, "rgb": args.rgb, "xyz": args.xyz}
    if not verdict.judged:
        return _not_judged(out, result, verdict)
    pred = verdict.prediction
    result.update({"latency_ms": pred.latency_ms, "valid_ratio": pred.valid_ratio})
    tifffile.imwrite(out / "anomaly_map.tiff", pred.anomaly_map.astype(np.float32))
    label = "REJECT" if verdict.reject else "pass"
    save_overlay(out / "overlay.png", rgb, xyz, pred.anomaly_map, pred.valid_mask,
                 f"score {pred.score:.3f} {label}", vmax=float(pred.anomaly_map.max()) or None)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"score {pred.score:.4f} threshold {verdict.threshold:.4f} -> {label} ({pred.latency_ms:.0f} ms); "
          f"heatmap: {out / 'overlay.png'}")
    return 0


def _not_judged(out: Path, result: dict, verdict: Any) -> int:
    """Write the fail-safe result of a part that could not be judged; exit status 3."""
    result.update({"error": verdict.kind, "reason": verdict.reason})
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"cmdr: not judged ({verdict.kind}): {verdict.reason} -> fail-safe decision "
          f"{verdict.decision.upper()} ({out / 'result.json'})", file=sys.stderr)
    return 3


def _predict_scan(args: argparse.Namespace, judge: Any) -> int:
    """``cmdr predict --scan`` with a "chunks" model: result.json, point_scores.npy (in the scan's order) and a
    top view of the scan coloured by score."""
    from cmdr_ros.data.scans import read_scan

    detector = judge.detector
    if not detector.config.judges_scans:
        raise CmdrError("--scan needs a paper3d/lite3d model (pipeline 'chunks'); this one judges frames: "
                        "give --rgb / --xyz")
    if not args.scan:
        raise CmdrError("this model judges unorganized scans: give --scan FILE (.npy/.ply/.pcd, Nx3)")
    points = read_scan(args.scan)
    verdict = judge.judge_scan(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"decision": verdict.decision, "judged": verdict.judged, "score": verdict.score,
              "threshold": verdict.threshold, "reject": verdict.reject, "mode": detector.config.mode,
              "model_id": detector.model_id, "coverage": verdict.coverage, "scan": args.scan, "points": len(points)}
    if not verdict.judged:
        return _not_judged(out, result, verdict)
    pred = verdict.prediction
    result.update({"latency_ms": pred.latency_ms, "chunks": len(pred.chunks),
                   "chunk_scores": pred.chunk_scores.tolist()})
    np.save(out / "point_scores.npy", pred.point_scores)
    label = "REJECT" if verdict.reject else "pass"
    m = pred.measured
    xyz, amap, filled, _ = scan_maps(points[m], pred.point_scores[m])
    save_overlay(out / "overlay.png", None, xyz, amap, filled, f"score {pred.score:.3f} {label}",
                 vmax=float(amap.max()) or None)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"score {pred.score:.4f} threshold {verdict.threshold:.4f} -> {label} ({len(pred.chunks)} chunks, "
          f"{pred.latency_ms:.0f} ms); point scores: {out / 'point_scores.npy'}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    # the only loader that accepts a checkpoint without a threshold: it derives one
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d,
                               require_threshold=False)
    if args.sigma is not None:
        if args.sigma < 0:
            raise CmdrError(f"--sigma must be >= 0, got {args.sigma}")
        detector.config.calibration_sigma = args.sigma
    old = detector.threshold
    if detector.config.judges_scans:
        from cmdr_ros.data.scans import ScanDataset

        scans = ScanDataset(args.data).good_scans("validation")
        if not scans:
            raise CmdrError(f"{args.data}/validation: no good scans found")
        thr = detector.calibrate_scans([s.load()[0] for s in scans], progress=not args.quiet)
    else:
        data = MVTec3DClass(args.data)
        cache = make_cache(detector.config, args.cache_dir, args.no_cache)
        inputs = [ls.inp for ls in iter_split(data, "validation", detector.config, cache, not args.quiet)]
        thr = detector.calibrate(inputs, progress=not args.quiet)
    out = save_checkpoint(detector, args.out or args.checkpoint)
    st = detector.score_stats
    print(f"threshold {thr:.4f} (was {old if old is None else f'{old:.4f}'}) from {st['n']} good samples: "
          f"mean {st['mean']:.4f}, std {st['std']:.4f}, max {st['max']:.4f}, sigma {st['sigma']}; saved {out}")
    return 0
