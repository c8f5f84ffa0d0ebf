"""The paper's 3D-only cutting-cell pipeline on a whole scan (``ModelConfig.pipeline == "chunks"``).

A scan (Nx3, the sensor's order) is cut into chunks (``cmdr_ros.data.scans.chunk_scan``); every chunk goes through
the detector as one 96x96 "grid" input; a chunk point's score is its pixel of the chunk's normalised map
(``Prediction.pixel_map``: F / (sqrt(mean of non-zero F) + 1e-6) with the presets' ``pixel_norm``), read in
sequence order; the chunk score is the maximum of those (the reference's rule; ``chunk_score: mean``: the chunk's
mean distance F instead, for weights-free features); the scan's per-point scores are
stitched back in input order (the higher where the tail chunk overlaps its predecessor) and the part score is the
maximum chunk score, so a part is rejected when any of its chunks is.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmdr_ros import CmdrError
from cmdr_ros.data.model_input import ModelInput, prepare_chunk
from cmdr_ros.data.scans import Chunks, chunk_labels, chunk_scan, stitch
from cmdr_ros.geometry.transforms import finite_rows

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector


@dataclass
class ScanPrediction:
    """The verdict material of one scan."""

    score: float  # part score: the maximum chunk score
    point_scores: np.ndarray  # N float32, in the scan's order; NaN for a non-finite (unmeasured) point
    chunk_scores: np.ndarray  # K float32
    chunks: Chunks  # of the measured points: chunks.index counts in ``measured``
    measured: np.ndarray  # indices of the scan's finite points, the ones chunked
    latency_ms: float = 0.0

    def chunk_labels(self, point_labels: np.ndarray) -> np.ndarray:
        """The reference's chunk labels (``data.scans.chunk_labels``) from the scan's per-point labels."""
        return chunk_labels(np.asarray(point_labels)[self.measured], self.chunks)

    def scored_truth(self, point_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the chunk and point metrics pair up (``metrics.scan_metrics``): the chunks' labels and scores, and
        the measured points' labels and scores."""
        labels = np.asarray(point_labels).astype(bool)
        return self.chunk_labels(labels), self.chunk_scores, labels[self.measured], self.point_scores[self.measured]

    @property
    def anomaly_map(self) -> np.ndarray:
        """The scores of the measured points (the scan's 'map'), so checks written for frames read scans alike."""
        return self.point_scores[self.measured]

    @property
    def valid_ratio(self) -> float:
        return 1.0  # every point of a chunk is a measurement

    @property
    def valid_mask(self) -> np.ndarray:
        """The scan's measured points (N bool), the ones with a score."""
        mask = np.zeros(len(self.point_scores), bool)
        mask[self.measured] = True
        return mask


def chunk_inputs(points: np.ndarray, detector: CMDRDetector) -> tuple[Chunks, list[ModelInput]]:
    """The chunks of a scan and their model inputs."""
    cfg = detector.config
    if not cfg.judges_scans:
        raise CmdrError(f"this model judges organized frames (pipeline '{cfg.pipeline}'), not unorganized scans")
    chunks = chunk_scan(points, cfg.chunk_points, cfg.chunk_scaling)
    return chunks, [prepare_chunk(c, cfg) for c in chunks.points]


@torch.inference_mode()
def predict_scan(detector: CMDRDetector, points: np.ndarray) -> ScanPrediction:
    """Score every point and the whole part (module docstring). Non-finite points (a sensor's 'no return') are left
    out of the chunks and get a NaN score; CmdrError for a scan that is not Nx3 or has too few measured points."""
    t0 = time.perf_counter()
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise CmdrError(f"a scan must be Nx3 points, got shape {pts.shape}")
    measured = np.flatnonzero(finite_rows(pts))
    chunks, inputs = chunk_inputs(pts[measured], detector)
    preds = detector.predict_inputs(inputs)  # on CUDA the chunks go batched through the heads
    per_chunk = [pred.pixel_map().reshape(-1) for pred in preds]  # row-major: the chunk's sequence order
    # the chunk scores (``CMDRDetector.predict_inputs``, ``config.chunk_score``)
    chunk_scores = np.asarray([pred.score for pred in preds], dtype=np.float32)
    point_scores = np.full(len(pts), np.nan, dtype=np.float32)
    point_scores[measured] = stitch(np.stack(per_chunk), chunks)
    return ScanPrediction(float(chunk_scores.max()), point_scores, chunk_scores, chunks, measured,
                          latency_ms=(time.perf_counter() - t0) * 1e3)


def scan_inputs(scans: list[np.ndarray], detector: CMDRDetector) -> list[ModelInput]:
    """The chunk inputs of several scans, for ``fitting.fit_detector`` (thresholds are calibrated on whole scans:
    ``model.calibration.calibrate``)."""
    return [inp for pts in scans for inp in chunk_inputs(pts, detector)[1]]
