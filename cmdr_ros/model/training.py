"""Train, calibrate and save a model on an MVTec 3D-AD style folder (``cmdr train``, the demo, benchmarks, tests)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from cmdr_ros.config import ModelConfig
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.model.checkpoint import save_checkpoint
from cmdr_ros.model.detector import CMDRDetector

log = logging.getLogger("cmdr")


def train_model(data_dir: str | Path, config: ModelConfig, out: str | Path, device: str = "auto",
                cache_dir: str | None = None, no_cache: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, calibrate and save; returns a summary (also used by the demo)."""
    data = MVTec3DClass(data_dir)
    torch.manual_seed(config.train.seed)
    cache = make_cache(config, cache_dir, no_cache)
    t0 = time.perf_counter()
    detector = CMDRDetector(config, device=device)
    train_inputs = [ls.inp for ls in iter_split(data, "train", config, cache, progress)]
    t_load = time.perf_counter()
    history = detector.fit(train_inputs, progress=progress)
    t_fit = time.perf_counter()
    val = data.samples("validation") if (data.root / "validation").is_dir() else []
    if val:
        detector.calibrate([ls.inp for ls in iter_split(data, "validation", config, cache, progress)],
                           progress=progress, source="validation")
    else:
        log.warning("no validation/good samples: calibrating the threshold on the training samples (optimistic)")
        detector.calibrate(train_inputs, progress=progress, source="train")
    path = save_checkpoint(detector, out)
    summary = {
        "checkpoint": str(path), "model_id": detector.model_id, "mode": config.mode, "device": str(detector.device),
        "train_samples": len(train_inputs), "validation_samples": len(val), "epochs": len(history),
        "final_losses": history[-1] if history else {}, "threshold": detector.threshold,
        "score_stats": detector.score_stats, "load_s": t_load - t0, "fit_s": t_fit - t_load,
        "total_s": time.perf_counter() - t0,
    }
    return summary
