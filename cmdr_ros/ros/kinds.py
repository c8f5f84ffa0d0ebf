"""The ROS side of each pipeline kind (``cmdr_ros.pipelines``), chosen once: ``ros_kind(detector)``, or a part's own
(``kind_of(frame)``: ``assemble`` marks every ``Frame`` with its kind).

Per kind: how a synchronized set of messages becomes its part (``assemble``) and what the judge takes of it
(``sample``); the messages of a judged part beyond its result (``maps``, ``heatmap``, ``result_values``); the topics
its recordings use (``points_topic``, ``truth``). The node (``FrameJudge``, ``outputs``), ``cmdr bag eval`` and
``cmdr bench`` reach them through here and never ask which kind a part is.

* Frames (``FrameKind``): ``frames.assemble_frame`` (pixel-aligned, projected or rasterized); the anomaly map on the
  image grid, the heatmap over the image (or a depth rendering), the anomaly cloud of the cloud's points with their
  pixel's score.
* Scans of a "chunks" model (``ScanKind``): ``frames.assemble_scan`` (the message's points in order); no image grid:
  the anomaly cloud is the message's own points (same height and width) with their per-point scores, the heatmap
  and anomaly map show the scan from above (``visualization.scan_maps``: the highest point score per cell).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Mapping

import numpy as np

from cmdr_ros.config import cross_modal
from cmdr_ros.geometry import scores_to_points
from cmdr_ros.judge import Verdict
from cmdr_ros.pipelines import pipeline_for
from cmdr_ros.ros.conversions import array_to_image, xyz_to_pointcloud2
from cmdr_ros.ros.conversions.frames import Frame, assemble_frame, assemble_scan
from cmdr_ros.ros.topics import PROFILER, RECORDED
from cmdr_ros.visualization import depth_rendering, overlay, scan_maps

if TYPE_CHECKING:
    from cmdr_ros.model.detector import Prediction
    from cmdr_ros.model.scan import ScanPrediction
    from cmdr_ros.ros.node.frame_judge import FrameJudge


def auto_heatmap_max(pred: Any, threshold: float) -> float:
    """One colour scale across parts: 1.5x the pixel score a part at the threshold would peak at."""
    peak = float(pred.anomaly_map.max())
    scale = peak / pred.score if pred.score > 0 else 1.0  # pixel-score units per image-score unit
    return max(threshold * scale * 1.5, 1e-6)


class RosKind(ABC):
    """The messages of one pipeline kind (module docstring)."""

    name: ClassVar[str] = ""  # the pipeline kind's name (ModelConfig.pipeline)
    points_topic: ClassVar[str] = ""  # the recorded cloud topic ``cmdr bag eval`` reads by default
    truth: ClassVar[tuple[str, str]] = ("", "")  # the recorded ground truth: (its kind for read_aux, default topic)

    @abstractmethod
    def assemble(self, judge: FrameJudge, msgs: Mapping[str, Any], info: Any = None) -> Frame:
        """Decode and align one synchronized set with ``judge``'s settings (CmdrError when it cannot be)."""

    @abstractmethod
    def sample(self, frame: Frame) -> tuple[Any, ...]:
        """What ``Judge.judge`` takes of an assembled part."""

    @abstractmethod
    def maps(self, verdict: Verdict, frame: Frame, wanted: Collection[str], alpha: float = 0.5,
             vmax: float = 0.0) -> dict[str, Any]:
        """The ``wanted`` maps of a judged part (``outputs.map_messages``), by output name in publishing order."""

    @abstractmethod
    def heatmap(self, frame: Frame, pred: Any, threshold: float, alpha: float = 0.5, vmax: float = 0.0) -> np.ndarray:
        """The BGR heatmap of a judged part (colour-scale top ``vmax``, 0: ``auto_heatmap_max``)."""

    def map_arrays(self, frame: Frame, pred: Any, threshold: float, alpha: float = 0.5, vmax: float = 0.0,
                   heatmap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The anomaly map and the BGR heatmap of a judged part as arrays (the evidence kept of it); ``heatmap``:
        the one already drawn for ``~/heatmap``, else it is drawn now."""
        return pred.anomaly_map, self.heatmap(frame, pred, threshold, alpha, vmax) if heatmap is None else heatmap

    def result_values(self, pred: Any) -> dict[str, str]:
        """The kind's own ``~/result`` values of a judged part (``outputs.RESULT_KEYS``); none by default."""
        return {}


class FrameKind(RosKind):
    """Organized frames: an image and/or a cloud on the image grid."""

    name = "frame"
    points_topic = RECORDED["points"]
    truth = ("gt", RECORDED["gt"])

    def assemble(self, judge: FrameJudge, msgs: Mapping[str, Any], info: Any = None) -> Frame:
        cloud = msgs.get("points", msgs.get("depth"))  # a PointCloud2, or a depth image
        return assemble_frame(judge.mode, msgs.get("image"), cloud,
                              info if cross_modal(judge.mode) or "depth" in msgs else None, judge.tf_lookup,
                              judge.extrinsics, judge.raster_resolution, judge.registered, judge.projection)

    def sample(self, frame: Frame) -> tuple[Any, ...]:
        return frame.rgb, frame.xyz, frame.coverage

    def maps(self, verdict: Verdict, frame: Frame, wanted: Collection[str], alpha: float = 0.5,
             vmax: float = 0.0) -> dict[str, Any]:
        """``anomaly_map`` (32FC1), ``heatmap`` (bgr8 overlay) and ``anomaly_cloud`` (the input cloud's points with
        their pixel's score, when it had points)."""
        pred, out = verdict.prediction, {}
        if "anomaly_map" in wanted:
            out["anomaly_map"] = array_to_image(pred.anomaly_map.astype(np.float32), "32FC1", frame.header)
        if "heatmap" in wanted:
            out["heatmap"] = array_to_image(self.heatmap(frame, pred, verdict.threshold, alpha, vmax), "bgr8",
                                            frame.header)
        if "anomaly_cloud" in wanted and frame.points is not None and len(frame.points):
            out["anomaly_cloud"] = xyz_to_pointcloud2(
                frame.points.astype(np.float32), frame.cloud_header,
                intensity=scores_to_points(pred.anomaly_map, frame.point_pixel, 0.0))
        return out

    def heatmap(self, frame: Frame, pred: Prediction, threshold: float, alpha: float = 0.5,
                vmax: float = 0.0) -> np.ndarray:
        """The anomaly map over the image (over a depth rendering when there is no image of that size)."""
        amap = pred.anomaly_map
        base = (frame.rgb[..., ::-1].copy() if frame.rgb is not None and frame.rgb.shape[:2] == amap.shape
                else depth_rendering(frame.xyz))
        top = vmax or auto_heatmap_max(pred, threshold)
        return overlay(base, amap, pred.valid_mask, alpha=alpha, vmin=0.0, vmax=top)


ScanView = tuple[np.ndarray, np.ndarray, np.ndarray]  # xyz map, per-cell maximum score, filled cells


class ScanKind(RosKind):
    """Unorganized scans of a "chunks" model: each cloud one scanned part, its points in message order."""

    name = "chunks"
    points_topic = PROFILER["points"]
    truth = ("gt_points", RECORDED["gt_points"])

    def assemble(self, judge: FrameJudge, msgs: Mapping[str, Any], info: Any = None) -> Frame:
        return assemble_scan(msgs.get("points", msgs.get("depth")), info if "depth" in msgs else None,
                             judge.projection)

    def sample(self, frame: Frame) -> tuple[Any, ...]:
        return (frame.points,)

    def maps(self, verdict: Verdict, frame: Frame, wanted: Collection[str], alpha: float = 0.5,
             vmax: float = 0.0) -> dict[str, Any]:
        """``anomaly_map`` (32FC1, the top view's highest point score per cell, 0 where no point fell), ``heatmap``
        (its overlay on the top view's depth rendering) and ``anomaly_cloud`` (``cloud``)."""
        pred, out = verdict.prediction, {}
        view = self.view(frame, pred) if {"anomaly_map", "heatmap"} & set(wanted) else None
        if "anomaly_map" in wanted:
            out["anomaly_map"] = array_to_image(view[1].astype(np.float32), "32FC1", frame.header)
        if "heatmap" in wanted:
            out["heatmap"] = array_to_image(self.heatmap(frame, pred, verdict.threshold, alpha, vmax, view), "bgr8",
                                            frame.header)
        if "anomaly_cloud" in wanted:
            out["anomaly_cloud"] = self.cloud(frame, pred)
        return out

    def heatmap(self, frame: Frame, pred: ScanPrediction, threshold: float, alpha: float = 0.5, vmax: float = 0.0,
                view: ScanView | None = None) -> np.ndarray:
        """The top view's scores over its depth rendering (``view`` when already made)."""
        xyz, amap, filled = view if view is not None else self.view(frame, pred)
        return overlay(depth_rendering(xyz), amap, filled, alpha=alpha, vmin=0.0,
                       vmax=vmax or auto_heatmap_max(pred, threshold))

    def map_arrays(self, frame: Frame, pred: ScanPrediction, threshold: float, alpha: float = 0.5,
                   vmax: float = 0.0, heatmap: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top view's per-cell maximum score and its heatmap (``heatmap``: the one already drawn)."""
        view = self.view(frame, pred)
        return view[1], self.heatmap(frame, pred, threshold, alpha, vmax, view) if heatmap is None else heatmap

    def result_values(self, pred: ScanPrediction) -> dict[str, str]:
        return {"chunks": str(len(pred.chunks))}

    @staticmethod
    def view(frame: Frame, pred: ScanPrediction) -> ScanView:
        """A judged scan seen from above (``visualization.scan_maps`` of its measured points)."""
        m = pred.measured
        xyz, amap, filled, _ = scan_maps(frame.points[m], pred.point_scores[m])
        return xyz, amap, filled

    @staticmethod
    def cloud(frame: Frame, pred: ScanPrediction) -> Any:
        """The anomaly cloud of a scan: the message's points in its order and layout (height x width), intensity the
        point's score (0 for an unmeasured point, as for points without a pixel)."""
        scores = np.nan_to_num(pred.point_scores, nan=0.0).astype(np.float32)
        shape = frame.cloud_shape if len(frame.cloud_shape) == 2 and frame.cloud_shape[0] > 1 else (len(scores),)
        return xyz_to_pointcloud2(frame.points.reshape(*shape, 3), frame.cloud_header,
                                  intensity=scores.reshape(shape))


#: the ROS side of every pipeline kind, by name (``pipelines.KINDS``)
ROS_KINDS: dict[str, RosKind] = {kind.name: kind for kind in (FrameKind(), ScanKind())}


def ros_kind(model: Any) -> RosKind:
    """The ROS side of a model's pipeline kind (``pipelines.pipeline_for``: a detector, a config, or None: frames)."""
    return ROS_KINDS[pipeline_for(model).name]


def kind_of(frame: Frame) -> RosKind:
    """The ROS side of an assembled part's kind (``Frame.kind``)."""
    return ROS_KINDS[frame.kind]
