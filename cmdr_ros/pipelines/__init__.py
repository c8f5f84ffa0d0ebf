"""The kinds of input a model judges, one object per kind chosen once from the config (``pipeline_for``), as
backbones are chosen from the backbone registry (``cmdr_ros.model.backbones``).

* ``frame`` (``FramePipeline``): organized frames, an RGB image and/or an organized xyz map (MVTec 3D-AD style);
* ``chunks`` (``ScanPipeline``): unorganized scans, the paper's 3D-only cutting-cell pipeline (a whole point
  cloud cut in chunks).

Each kind gives the same interface (``base.Pipeline``): its training data from a class folder, its prediction of a
sample (``base.Prediction``, one interface for both), the judge's checks of a raw part, the ground truth and the
metric sink of ``cmdr eval`` / ``cmdr bag eval``, and how its scores are saved and drawn. Calibration is one
function for both (``model.calibration.calibrate``); the ROS side of each kind is ``cmdr_ros.ros.kinds``.
"""
from __future__ import annotations

from typing import Any

from cmdr_ros import CmdrError
from cmdr_ros.pipelines.base import MetricSink, Pipeline, Prediction, TestPart, TrainingData
from cmdr_ros.pipelines.frames import FrameMetrics, FramePipeline
from cmdr_ros.pipelines.scans import ScanMetrics, ScanPipeline

#: the kinds by ``ModelConfig.pipeline`` (``config.PIPELINES``)
KINDS: dict[str, Pipeline] = {kind.name: kind for kind in (FramePipeline(), ScanPipeline())}


def pipeline_for(model: Any) -> Pipeline:
    """The kind of a model: ``model`` is a ``ModelConfig`` or anything with one as ``config`` (a detector); without
    a ``pipeline`` setting (a test double) it judges frames."""
    config = getattr(model, "config", model)
    name = getattr(config, "pipeline", "frame")
    if name not in KINDS:
        raise CmdrError(f"unknown pipeline {name!r}: expected one of {', '.join(KINDS)}")
    return KINDS[name]


__all__ = ["KINDS", "FrameMetrics", "FramePipeline", "MetricSink", "Pipeline", "Prediction", "ScanMetrics",
           "ScanPipeline", "TestPart", "TrainingData", "pipeline_for"]
