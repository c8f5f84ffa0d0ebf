"""Train, calibrate and save a model on an MVTec 3D-AD style folder (``cmdr train``, the demo, benchmarks, tests)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig
from cmdr_ros.data.model_input import ModelInput
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.scans import ScanDataset
from cmdr_ros.data.samples import iter_split, make_cache
from cmdr_ros.model.checkpoint import save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.model.scan import scan_inputs

log = logging.getLogger("cmdr")


def train_model(data_dir: str | Path, config: ModelConfig, out: str | Path, device: str = "auto",
                cache_dir: str | None = None, no_cache: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, calibrate and save; returns a summary (also used by the demo). A class folder of MVTec 3D-AD frames,
    or of unorganized scans for the "chunks" pipeline (``cmdr_ros.data.scans``)."""
    torch.manual_seed(config.train.seed)
    t0 = time.perf_counter()
    detector = CMDRDetector(config, device=device)
    calibrate = detector.calibrate
    if config.judges_scans:
        train_inputs, train_scans, val_inputs = _scan_inputs(data_dir, detector, progress)
        n_train, n_val = len(train_scans), len(val_inputs)
        calibrate = detector.calibrate_scans  # on part scores: val_inputs are the validation scans
    else:
        data = MVTec3DClass(data_dir)
        cache = make_cache(config, cache_dir, no_cache)
        train_inputs = [ls.inp for ls in iter_split(data, "train", config, cache, progress)]
        has_val = (data.root / "validation").is_dir() and data.samples("validation")
        val_inputs = [ls.inp for ls in iter_split(data, "validation", config, cache, progress)] if has_val else []
        n_train, n_val = len(train_inputs), len(val_inputs)
    t_load = time.perf_counter()
    history = fit_detector(detector, train_inputs, progress=progress)
    t_fit = time.perf_counter()
    if val_inputs:
        calibrate(val_inputs, progress=progress, source="validation")
    else:
        log.warning("no validation/good samples: calibrating the threshold on the training samples (optimistic)")
        calibrate(train_scans if config.judges_scans else train_inputs, progress=progress, source="train")
    path = save_checkpoint(detector, out)
    summary = {
        "checkpoint": str(path), "model_id": detector.model_id, "mode": config.mode, "device": str(detector.device),
        "train_samples": n_train, "validation_samples": n_val, "epochs": len(history),
        "final_losses": history[-1] if history else {}, "threshold": detector.threshold,
        "score_stats": detector.score_stats, "load_s": t_load - t0, "fit_s": t_fit - t_load,
        "total_s": time.perf_counter() - t0,
    }
    if config.judges_scans:
        summary["train_chunks"] = len(train_inputs)
    return summary


def _scan_inputs(data_dir: str | Path, detector: CMDRDetector, progress: bool
                 ) -> tuple[list[ModelInput], list[np.ndarray], list[np.ndarray]]:
    """The chunk inputs of the train scans, the train scans and the good validation scans (Nx3 points each)."""
    data = ScanDataset(data_dir)
    train = data.scans("train")
    if not train:
        raise CmdrError(f"{data.root / 'train'}: no scans found (expected <defect>/points/NNN.npy|ply|pcd)")
    train_scans, val_scans = (
        [s.load()[0] for s in tqdm(scans, desc=split, disable=not progress, unit="scan", leave=False)]
        for split, scans in (("train", train), ("validation", data.good_scans("validation"))))
    return scan_inputs(train_scans, detector), train_scans, val_scans
