"""``cmdr predict`` (one sample) and ``cmdr calibrate`` (re-derive the reject threshold), for a model of either
pipeline kind (``cmdr_ros.pipelines``: a frame, or a scan of a "chunks" model)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cmdr_ros import CmdrError
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.visualization import save_overlay


def run_predict(args: argparse.Namespace) -> int:
    """Judge one sample as the node would (``cmdr_ros.judge``): exit 0 with a decision, 3 when the sample could
    not be judged (the fail-safe decision is still written). A frame writes its anomaly map (anomaly_map.tiff), a
    scan its point scores in the scan's order (point_scores.npy); both an overlay (a scan: seen from above)."""
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
    judge = Judge(detector, JudgeSettings.from_params(params), threshold)
    kind = judge.pipeline
    sample, inputs = kind.read_sample(args, detector)
    verdict = judge.judge(*sample)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"decision": verdict.decision, "judged": verdict.judged, "score": verdict.score,
              "threshold": verdict.threshold, "reject": verdict.reject, "mode": detector.config.mode,
              "model_id": detector.model_id, "coverage": verdict.coverage, **inputs}
    if not verdict.judged:
        return _not_judged(out, result, verdict)
    pred = verdict.prediction
    result.update(kind.result(pred))
    scores = kind.save_scores(out / kind.score_name, pred)
    label = "REJECT" if verdict.reject else "pass"
    rgb, xyz, amap, valid, _ = kind.view(sample, kind.scores(pred), pred.valid_mask, None)
    save_overlay(out / "overlay.png", rgb, xyz, amap, valid, f"score {pred.score:.3f} {label}",
                 vmax=float(amap.max()) or None)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"score {pred.score:.4f} threshold {verdict.threshold:.4f} -> {label} "
          f"{kind.describe(pred, out / 'overlay.png', scores)}")
    return 0


def _not_judged(out: Path, result: dict, verdict: Any) -> int:
    """Write the fail-safe result of a part that could not be judged; exit status 3."""
    result.update({"error": verdict.kind, "reason": verdict.reason})
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"cmdr: not judged ({verdict.kind}): {verdict.reason} -> fail-safe decision "
          f"{verdict.decision.upper()} ({out / 'result.json'})", file=sys.stderr)
    return 3


def run_calibrate(args: argparse.Namespace) -> int:
    """Calibrate on the good validation samples of the model's kind (``model.calibration.calibrate``)."""
    from cmdr_ros.model.calibration import calibrate
    from cmdr_ros.pipelines import pipeline_for

    # the only loader that accepts a checkpoint without a threshold: it derives one
    detector = load_checkpoint(args.checkpoint, args.device, args.weights_2d, args.weights_3d,
                               require_threshold=False)
    if args.sigma is not None:
        if args.sigma < 0:
            raise CmdrError(f"--sigma must be >= 0, got {args.sigma}")
        detector.config.calibration_sigma = args.sigma
    old = detector.threshold
    samples = pipeline_for(detector).validation(args.data, detector, args.cache_dir, args.no_cache, not args.quiet)
    thr = calibrate(detector, samples, progress=not args.quiet)
    out = save_checkpoint(detector, args.out or args.checkpoint)
    st = detector.score_stats
    print(f"threshold {thr:.4f} (was {old if old is None else f'{old:.4f}'}) from {st['n']} good samples: "
          f"mean {st['mean']:.4f}, std {st['std']:.4f}, max {st['max']:.4f}, sigma {st['sigma']}; saved {out}")
    return 0
