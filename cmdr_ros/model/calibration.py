"""The reject threshold of a model from good samples of its kind (``cmdr calibrate``, ``cmdr train``).

A frame model is calibrated on prepared frames (``ModelInput``), a "chunks" model on whole scans (Nx3 points each):
a part is decided on its maximum chunk score, so the parts are the sample (the chunks of one part at different
places along it score differently even when good, and their spread would set the margin far above any part). The
model's pipeline kind (``cmdr_ros.pipelines``) scores each sample; the rule is the same for both kinds.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
from tqdm import tqdm

from cmdr_ros import CmdrError

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector


def calibrate(detector: CMDRDetector, samples: Iterable[Any], progress: bool = True,
              source: str = "validation") -> float:
    """Set ``detector.threshold`` (and its ``score_stats``) from good ``samples`` of the model's kind, by
    :func:`threshold_from`; returns the threshold."""
    from cmdr_ros.pipelines import pipeline_for

    kind = pipeline_for(detector)
    scores = [kind.predict(detector, s).score
              for s in tqdm(list(samples), desc="calibrate", disable=not progress, unit=kind.unit)]
    return threshold_from(detector, np.array(scores), source)


def threshold_from(detector: CMDRDetector, scores: np.ndarray, source: str) -> float:
    """Reject threshold from the scores of good samples: ``max(max score, mean + sigma * std)`` (sigma:
    ``config.calibration_sigma``). Every good calibration sample passes, and the margin grows with the spread of
    good scores. The statistics are kept with the threshold in the checkpoint (``detector.score_stats``)."""
    if scores.size == 0:
        raise CmdrError("no good samples to calibrate the threshold on")
    mean, std = float(scores.mean()), float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    sigma = detector.config.calibration_sigma
    detector.threshold = float(max(scores.max(), mean + sigma * std))
    detector.score_stats = {"n": int(scores.size), "mean": mean, "std": std, "min": float(scores.min()),
                            "max": float(scores.max()), "sigma": float(sigma), "source": source}
    if not math.isfinite(detector.threshold):
        raise CmdrError(f"calibration gave a non-finite threshold from scores {scores.tolist()}")
    return detector.threshold
