"""``cmdr demo``: a simulated cutting cell end to end, with no hardware and no downloads.

Generates foam-block parts (good and with cut defects, exact masks), trains a ``lite`` model on the good
ones, calibrates the threshold, evaluates on the test parts and prints where every artefact is.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from cmdr_ros.cli.evaluate import run_eval
from cmdr_ros.cli.train import train_model
from cmdr_ros.config import preset
from cmdr_ros.data.synthetic import generate_dataset
from cmdr_ros.model.checkpoint import load_checkpoint


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    progress = not args.quiet
    print(f"[1/3] generating the simulated cutting cell in {out / 'data'}")
    data = generate_dataset(out / "data", n_train=30, n_val=6, n_test_good=12, n_test_per_defect=4, seed=args.seed,
                            overwrite=True)
    config = preset("lite", args.mode)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    print(f"[2/3] training a lite {args.mode} model")
    s = train_model(data, config, out / "model.ckpt", args.device, args.cache_dir, args.no_cache, progress)
    print(f"      {s['train_samples']} good parts, {s['epochs']} epochs, {s['fit_s']:.1f} s; "
          f"threshold {s['threshold']:.4f}")
    print("[3/3] evaluating on the test parts")
    detector = load_checkpoint(s["checkpoint"], args.device)
    rep = run_eval(data, detector, out / "report", s["checkpoint"], args.cache_dir, args.no_cache, progress)
    print(rep["table"])
    print(f"done in {time.perf_counter() - t0:.0f} s. Artefacts:")
    print(f"  data:       {data}")
    print(f"  checkpoint: {s['checkpoint']}")
    print(f"  metrics:    {out / 'report' / 'metrics.json'} (per-part scores: {out / 'report' / 'scores.csv'})")
    print(f"  heatmaps:   {out / 'report' / 'overlays'}")
    print(f"  curves:     {out / 'report' / 'roc.png'}, {out / 'report' / 'pro_curve.png'}")
    return 0
