"""``cmdr predict`` (one sample) and ``cmdr calibrate`` (re-derive the reject threshold)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from cmdr_ros import CmdrError
from cmdr_ros.cli.dataset import iter_split, make_cache
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_rgb, load_xyz
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.visualization import save_overlay


def run_predict(args: argparse.Namespace) -> int:
    if not args.rgb and not args.xyz:
        raise CmdrError("give --rgb and/or --xyz")
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d)
    cfg = detector.config
    if cfg.uses_2d and not args.rgb:
        raise CmdrError(f"the model's mode '{cfg.mode}' needs --rgb")
    if cfg.uses_3d and not args.xyz:
        raise CmdrError(f"the model's mode '{cfg.mode}' needs --xyz")
    rgb = load_rgb(args.rgb) if args.rgb else None
    xyz = load_xyz(args.xyz) if args.xyz else None
    pred = detector.predict(rgb if cfg.uses_2d else None, xyz)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    thr = detector.threshold
    reject = bool(thr is not None and pred.score >= thr)
    tifffile.imwrite(out / "anomaly_map.tiff", pred.anomaly_map.astype(np.float32))
    verdict = "REJECT" if reject else "pass"
    save_overlay(out / "overlay.png", rgb, xyz, pred.anomaly_map, pred.valid_mask,
                 f"score {pred.score:.3f} {verdict}", vmax=float(pred.anomaly_map.max()) or None)
    result = {"score": pred.score, "threshold": thr, "reject": reject, "mode": cfg.mode,
              "model_id": detector.model_id, "latency_ms": pred.latency_ms, "valid_ratio": pred.valid_ratio,
              "rgb": args.rgb, "xyz": args.xyz}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"score {pred.score:.4f} threshold {thr if thr is None else f'{thr:.4f}'} -> {verdict} "
          f"({pred.latency_ms:.0f} ms); heatmap: {out / 'overlay.png'}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d)
    if args.sigma is not None:
        if args.sigma < 0:
            raise CmdrError(f"--sigma must be >= 0, got {args.sigma}")
        detector.config.calibration_sigma = args.sigma
    data = MVTec3DClass(args.data)
    cache = make_cache(detector.config, args.cache_dir, args.no_cache)
    old = detector.threshold
    inputs = [ls.inp for ls in iter_split(data, "validation", detector.config, cache, not args.quiet)]
    thr = detector.calibrate(inputs, progress=not args.quiet)
    out = save_checkpoint(detector, args.out or args.checkpoint)
    st = detector.score_stats
    print(f"threshold {thr:.4f} (was {old if old is None else f'{old:.4f}'}) from {st['n']} good samples: "
          f"mean {st['mean']:.4f}, std {st['std']:.4f}, max {st['max']:.4f}, sigma {st['sigma']}; saved {out}")
    return 0
