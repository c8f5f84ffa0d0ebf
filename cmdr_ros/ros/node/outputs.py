"""What a decision turns into: the ``~/result`` message (a documented, versioned schema), the heatmap and the other
messages of a decision (``decision_messages``, ``map_messages``), shared by the node, ``cmdr bench`` and
``cmdr bag eval`` so all write exactly the same messages.

A scanned part of a "chunks" model (``Frame.is_scan``) has no image grid: its anomaly cloud is the message's own
points (same height and width) with their per-point scores, and its heatmap and anomaly map show the scan from
above (``visualization.scan_maps``: the highest point score per cell)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Collection, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Bool, Float32

from cmdr_ros.judge import Verdict
from cmdr_ros.geometry import scores_to_points
from cmdr_ros.ros.conversions import array_to_image, xyz_to_pointcloud2
from cmdr_ros.ros.conversions.frames import Frame
from cmdr_ros.ros.topics import MAPS
from cmdr_ros.ros.node.typed_decision import class_of, classification
from cmdr_ros.ros.stamps import stamp_text
from cmdr_ros.visualization import depth_rendering, overlay, scan_maps

if TYPE_CHECKING:
    from cmdr_ros.model.detector import Prediction
    from cmdr_ros.model.scan import ScanPrediction

PART_STATUS_NAME = "cmdr_inspection: part"
RESULT_SCHEMA_VERSION = "5"  # 5: class_id (the ~/decision class)
# Every key a ~/result may carry (values are strings), in the order they are written: the README table is this.
RESULT_KEYS: dict[str, str] = {
    "schema": f"version of this key set (now {RESULT_SCHEMA_VERSION})",
    "seq": "per-node decision number, +1 per result since the node started (a gap proves a lost result)",
    "stamp": "header stamp of the input judged, sec.nanosec (also the DiagnosticArray header)",
    "decision": "reject | pass | skip (skip: not judged and on_error is skip; no ~/reject is sent)",
    "class_id": "reject | pass | not_judged: the class of this part's ~/decision, the action a controller takes "
                "(not_judged: not judged and on_error is skip)",
    "judged": "true when the model judged the part, false when the decision is the on_error fail-safe",
    "score": "image anomaly score (judged parts only)",
    "threshold": "reject threshold in force",
    "error": "why the part was not judged: bad_input, ConversionError, no_transform, degraded, implausible, "
             "non_finite, unmatched, overload, superseded, timeout, internal, shutdown, no_frame (trigger mode: no frame "
             "for a trigger) (not-judged parts only)",
    "reason": "the cause in words (not-judged parts only)",
    "inputs": "the inputs this result answers: image+points, points, image (an orphan: one input), trigger (a trigger "
              "without its frame)",
    "part_id": "the part id published on the part_id topic with the same stamp (when there is one)",
    "latency_ms": "node: arrival of the set to the decision; bag eval: judging time",
    "inference_ms": "preprocessing + model time (judged parts)",
    "valid_ratio": "fraction of valid pixels after preprocessing (judged parts)",
    "coverage": "fraction of the map that holds a measured point (when known; a scan: of its points)",
    "chunks": "scans (a \"chunks\" model): the number of chunks the part was cut into (judged parts)",
    "alignment": "aligned | projected | rasterized | scan | none: how the cloud met the image grid (scan: a "
                 "\"chunks\" model judged the message's points in their order)",
    "transform": "rgbd: identical_frames | registered (cloud_registered) | tf | parameter (extrinsics): where the "
                 "cloud -> camera transform came from; none otherwise",
    "mode": "rgbd | 3d | 2d",
    "model_id": "content checksum prefix of the checkpoint that judged this part (changes once at a model swap)",
    "frame_id.image": "frame_id of the image (likewise frame_id.points, frame_id.camera_info)",
    "sample": "bag eval only: the sample name recorded in the bag",
}


def result_schema_markdown() -> str:
    """The README's ~/result table, generated from ``RESULT_KEYS`` (a test keeps the README in step)."""
    return "\n".join(["| key | value |", "|---|---|"] + [f"| `{k}` | {v.replace('|', '/')} |"
                                                        for k, v in RESULT_KEYS.items()])


def verdict_values(verdict: Verdict) -> dict[str, str]:
    """The decision part of the result values."""
    v: dict[str, str] = {"decision": verdict.decision, "class_id": class_of(verdict),
                         "judged": "true" if verdict.judged else "false"}
    if verdict.judged:
        v["score"] = f"{verdict.score:.6f}"
    if verdict.threshold is not None:
        v["threshold"] = f"{verdict.threshold:.6f}"
    if not verdict.judged:
        v["error"] = verdict.kind
        v["reason"] = verdict.reason[:300]
    return v


def status_of(verdict: Verdict) -> tuple[int, str]:
    """Level and message. The level reflects faults, not the decision (a reject is a normal outcome): OK for a
    judged part (message REJECT or pass), WARN for a part not judged (with its fail-safe decision)."""
    if not verdict.judged:
        return DiagnosticStatus.WARN, f"not judged ({verdict.kind}) -> {verdict.decision}: {verdict.reason}"[:300]
    return DiagnosticStatus.OK, "REJECT" if verdict.reject else "pass"


def result_values(header: Any, verdict: Verdict, frame: Frame | None, *, seq: int | None, mode: str, model_id: str,
                  inputs: str, latency_ms: float | None = None, frame_ids: dict[str, str] | None = None,
                  extra: dict[str, str] | None = None) -> dict[str, str]:
    """The key/values of one decision's ``~/result`` (the audit store's row is made from these same values)."""
    kv: dict[str, str] = {"schema": RESULT_SCHEMA_VERSION}
    if seq is not None:
        kv["seq"] = str(seq)
    if header is not None:
        kv["stamp"] = stamp_text(header)
    kv.update(verdict_values(verdict))
    kv["inputs"] = inputs
    kv.update(extra or {})
    if latency_ms is not None:
        kv["latency_ms"] = f"{latency_ms:.1f}"
    pred = verdict.prediction
    if pred is not None:
        kv["inference_ms"] = f"{pred.latency_ms:.1f}"
        kv["valid_ratio"] = f"{pred.valid_ratio:.4f}"
    if verdict.coverage is not None:
        kv["coverage"] = f"{verdict.coverage:.4f}"
    if pred is not None and frame is not None and frame.is_scan:
        kv["chunks"] = str(len(pred.chunks))
    kv["alignment"] = frame.alignment if frame is not None else "none"
    kv["transform"] = frame.transform if frame is not None else "none"
    kv["mode"], kv["model_id"] = mode, str(model_id)
    ids = frame.frame_ids if frame is not None else (frame_ids or {})
    kv.update({f"frame_id.{k}": v for k, v in ids.items()})
    return kv


def result_message(header: Any, verdict: Verdict, values: dict[str, str]) -> DiagnosticArray:
    """The ``~/result`` message carrying ``values``, stamped with the input's header."""
    level, message = status_of(verdict)
    status = DiagnosticStatus(level=level, name=PART_STATUS_NAME, message=message,
                              hardware_id=values.get("model_id", ""),
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    arr = DiagnosticArray(status=[status])
    if header is not None:
        arr.header = header
    return arr


def result_array(header: Any, verdict: Verdict, frame: Frame | None, **kwargs: Any) -> DiagnosticArray:
    """The ``~/result`` message of one decision (``result_values`` -> ``result_message``)."""
    return result_message(header, verdict, result_values(header, verdict, frame, **kwargs))


def auto_heatmap_max(pred: Prediction, threshold: float) -> float:
    """One colour scale across frames: 1.5x the pixel score a part at the threshold would peak at."""
    peak = float(pred.anomaly_map.max())
    scale = peak / pred.score if pred.score > 0 else 1.0  # pixel-score units per image-score unit
    return max(threshold * scale * 1.5, 1e-6)


ScanView = tuple[np.ndarray, np.ndarray, np.ndarray]  # xyz map, per-cell maximum score, filled cells


def scan_view(frame: Frame, pred: ScanPrediction) -> ScanView:
    """A judged scan seen from above (``visualization.scan_maps`` of its measured points)."""
    m = pred.measured
    xyz, amap, filled, _ = scan_maps(frame.points[m], pred.point_scores[m])
    return xyz, amap, filled


def heatmap_image(frame: Frame, pred: Prediction | ScanPrediction, threshold: float, alpha: float = 0.5,
                  vmax: float = 0.0, view: ScanView | None = None) -> np.ndarray:
    """BGR overlay of the anomaly map on the image (on a depth rendering when there is no image of that size; a
    scan: on the depth rendering of its top view, ``view`` when already made)."""
    top = vmax or auto_heatmap_max(pred, threshold)
    if frame.is_scan:
        xyz, amap, filled = view if view is not None else scan_view(frame, pred)
        return overlay(depth_rendering(xyz), amap, filled, alpha=alpha, vmin=0.0, vmax=top)
    amap = pred.anomaly_map
    base = (frame.rgb[..., ::-1].copy() if frame.rgb is not None and frame.rgb.shape[:2] == amap.shape
            else depth_rendering(frame.xyz))
    return overlay(base, amap, pred.valid_mask, alpha=alpha, vmin=0.0, vmax=top)


def wanted_outputs(pubs: Mapping[str, Any]) -> set[str]:
    """The optional outputs (maps) worth building: enabled (``pubs`` holds a publisher) and subscribed."""
    return {key for key in MAPS if (pub := pubs.get(key)) is not None and pub.get_subscription_count() > 0}


def map_messages(verdict: Verdict, frame: Frame | None, wanted: Collection[str], alpha: float = 0.5,
                 vmax: float = 0.0) -> dict[str, Any]:
    """The maps of a judged part that are ``wanted`` (``wanted_outputs``), by output name in publishing order:
    ``anomaly_map`` (32FC1), ``heatmap`` (bgr8 overlay, ``alpha``, colour-scale top ``vmax``, 0: automatic) and
    ``anomaly_cloud`` (the input cloud's points with their scores, when it had points). Nothing for a part not
    judged. A scan: ``scan_messages``."""
    if not verdict.judged or frame is None:
        return {}
    if frame.is_scan:
        return scan_messages(verdict, frame, wanted, alpha, vmax)
    pred, out = verdict.prediction, {}
    if "anomaly_map" in wanted:
        out["anomaly_map"] = array_to_image(pred.anomaly_map.astype(np.float32), "32FC1", frame.header)
    if "heatmap" in wanted:
        out["heatmap"] = array_to_image(heatmap_image(frame, pred, verdict.threshold, alpha, vmax), "bgr8",
                                        frame.header)
    if "anomaly_cloud" in wanted and frame.points is not None and len(frame.points):
        out["anomaly_cloud"] = xyz_to_pointcloud2(frame.points.astype(np.float32), frame.cloud_header,
                                                  intensity=scores_to_points(pred.anomaly_map, frame.point_pixel, 0.0))
    return out


def scan_cloud(frame: Frame, pred: ScanPrediction) -> Any:
    """The anomaly cloud of a scan: the message's points in its order and layout (height x width), intensity the
    point's score (0 for an unmeasured point, as for points without a pixel)."""
    scores = np.nan_to_num(pred.point_scores, nan=0.0).astype(np.float32)
    shape = frame.cloud_shape if len(frame.cloud_shape) == 2 and frame.cloud_shape[0] > 1 else (len(scores),)
    return xyz_to_pointcloud2(frame.points.reshape(*shape, 3), frame.cloud_header, intensity=scores.reshape(shape))


def scan_messages(verdict: Verdict, frame: Frame, wanted: Collection[str], alpha: float = 0.5,
                  vmax: float = 0.0) -> dict[str, Any]:
    """``map_messages`` of a judged scan: ``anomaly_map`` (32FC1, the top view's highest point score per cell, 0
    where no point fell), ``heatmap`` (its overlay on the top view's depth rendering) and ``anomaly_cloud``
    (``scan_cloud``)."""
    pred, out = verdict.prediction, {}
    view = scan_view(frame, pred) if {"anomaly_map", "heatmap"} & set(wanted) else None
    if "anomaly_map" in wanted:
        out["anomaly_map"] = array_to_image(view[1].astype(np.float32), "32FC1", frame.header)
    if "heatmap" in wanted:
        out["heatmap"] = array_to_image(heatmap_image(frame, pred, verdict.threshold, alpha, vmax, view), "bgr8",
                                        frame.header)
    if "anomaly_cloud" in wanted:
        out["anomaly_cloud"] = scan_cloud(frame, pred)
    return out


def decision_messages(header: Any, verdict: Verdict, values: dict[str, str],
                      maps: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every message of one decision, by output name in publishing order: ``result`` (carrying ``values``, see
    ``result_values``); ``decision`` (vision_msgs/Classification, ``typed_decision.classification``; only where
    vision_msgs is installed); ``reject`` unless the decision is skip; for a judged part ``score`` and its ``maps``
    (``map_messages``)."""
    out: dict[str, Any] = {"result": result_message(header, verdict, values)}
    if (typed := classification(header, verdict)) is not None:
        out["decision"] = typed
    if verdict.decision != "skip":
        out["reject"] = Bool(data=verdict.reject)
    if verdict.judged:
        out["score"] = Float32(data=float(verdict.score))
        out.update(maps or {})
    return out
