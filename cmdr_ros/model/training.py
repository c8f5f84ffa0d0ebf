"""Train, calibrate and save a model on an MVTec 3D-AD style folder (``cmdr train``, the demo, benchmarks, tests)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from cmdr_ros.config import ModelConfig
from cmdr_ros.model.calibration import calibrate
from cmdr_ros.model.checkpoint import save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.pipelines import pipeline_for

log = logging.getLogger("cmdr")


def train_model(data_dir: str | Path, config: ModelConfig, out: str | Path, device: str = "auto",
                cache_dir: str | None = None, no_cache: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, calibrate and save; returns a summary (also used by the demo). A class folder of the model's pipeline
    kind (``cmdr_ros.pipelines``): MVTec 3D-AD frames, or unorganized scans for the "chunks" pipeline."""
    torch.manual_seed(config.train.seed)
    t0 = time.perf_counter()
    detector = CMDRDetector(config, device=device)
    data = pipeline_for(config).training_data(data_dir, detector, cache_dir, no_cache, progress)
    t_load = time.perf_counter()
    history = fit_detector(detector, data.inputs, progress=progress)
    t_fit = time.perf_counter()
    if data.validation:
        calibrate(detector, data.validation, progress=progress, source="validation")
    else:
        log.warning("no validation/good samples: calibrating the threshold on the training samples (optimistic)")
        calibrate(detector, data.train, progress=progress, source="train")
    path = save_checkpoint(detector, out)
    counts = dict(data.summary)
    summary = {
        "checkpoint": str(path), "model_id": detector.model_id, "mode": config.mode, "device": str(detector.device),
        "train_samples": counts.pop("train_samples"), "validation_samples": counts.pop("validation_samples"),
        "epochs": len(history), "final_losses": history[-1] if history else {}, "threshold": detector.threshold,
        "score_stats": detector.score_stats, "load_s": t_load - t0, "fit_s": t_fit - t_load,
        "total_s": time.perf_counter() - t0,
    }
    return {**summary, **counts}  # a kind's own counts last (scans: train_chunks)
