"""What a decision turns into: the ``~/result`` message (a documented, versioned schema), the heatmap and the other
messages of a decision (``decision_messages``, ``map_messages``), shared by the node, ``cmdr bench`` and
``cmdr bag eval`` so all write exactly the same messages.

The maps of a part are its kind's (``cmdr_ros.ros.kinds``: a frame's on the image grid; a scanned part of a "chunks"
model has no image grid: its anomaly cloud is the message's own points with their per-point scores, and its heatmap and
anomaly map show the scan from above)."""
from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Bool, Float32

from cmdr_ros.judge import Verdict
from cmdr_ros.ros.conversions.frames import Frame
from cmdr_ros.ros.kinds import kind_of
from cmdr_ros.ros.topics import MAPS
from cmdr_ros.ros.node.typed_decision import class_of, classification
from cmdr_ros.ros.stamps import stamp_text

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
    if pred is not None and frame is not None:
        kv.update(kind_of(frame).result_values(pred))  # a scan: its chunks
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


def heatmap_image(frame: Frame, pred: Any, threshold: float, alpha: float = 0.5, vmax: float = 0.0) -> np.ndarray:
    """BGR overlay of a judged part's scores (colour-scale top ``vmax``, 0: automatic), as its kind draws it
    (``kinds.RosKind.heatmap``: a frame over its image or a depth rendering, a scan over its top view)."""
    return kind_of(frame).heatmap(frame, pred, threshold, alpha, vmax)


def wanted_outputs(pubs: Mapping[str, Any]) -> set[str]:
    """The optional outputs (maps) worth building: enabled (``pubs`` holds a publisher) and subscribed."""
    return {key for key in MAPS if (pub := pubs.get(key)) is not None and pub.get_subscription_count() > 0}


def map_messages(verdict: Verdict, frame: Frame | None, wanted: Collection[str], alpha: float = 0.5,
                 vmax: float = 0.0) -> dict[str, Any]:
    """The maps of a judged part that are ``wanted`` (``wanted_outputs``), by output name in publishing order:
    ``anomaly_map`` (32FC1), ``heatmap`` (bgr8 overlay, ``alpha``, colour-scale top ``vmax``, 0: automatic) and
    ``anomaly_cloud`` (the input cloud's points with their scores), as the part's kind makes them
    (``kinds.RosKind.maps``). Nothing for a part not judged."""
    if not verdict.judged or frame is None:
        return {}
    return kind_of(frame).maps(verdict, frame, wanted, alpha, vmax)


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
