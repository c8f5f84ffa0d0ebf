"""What an inspected frame turns into: the ``~/result`` status and the heatmap, shared by the node and ``cmdr bag eval``
so both write exactly the same messages."""
from __future__ import annotations

from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from cmdr_ros.ros.frames import Frame
from cmdr_ros.visualization import depth_rendering, overlay

PART_STATUS_NAME = "cmdr_inspection: part"


def judged_status(frame: Frame, pred: Any, reject: bool, threshold: float, latency_ms: float,
                  min_valid_ratio: float) -> tuple[int, str, dict[str, str]]:
    """Level (OK / ERROR = reject / WARN = degraded input), message and values of a judged frame."""
    degraded = pred.valid_ratio < min_valid_ratio
    level = DiagnosticStatus.WARN if degraded else (DiagnosticStatus.ERROR if reject else DiagnosticStatus.OK)
    message = ("REJECT" if reject else "pass") + (" (degraded input)" if degraded else "")
    values = {"score": f"{pred.score:.6f}", "threshold": f"{threshold:.6f}",
              "decision": "reject" if reject else "pass", "latency_ms": f"{latency_ms:.1f}",
              "inference_ms": f"{pred.latency_ms:.1f}", "valid_ratio": f"{pred.valid_ratio:.4f}",
              "alignment": frame.alignment}
    if frame.coverage is not None:
        values["coverage"] = f"{frame.coverage:.4f}"
    return level, message, values


def not_judged_status(kind: str, reason: str, decision: str) -> tuple[int, str, dict[str, str]]:
    """WARN status of a frame that could not be judged, with the fail-safe ``decision`` (reject | pass | skip)."""
    return (DiagnosticStatus.WARN, f"not judged ({kind}): {reason}"[:300],
            {"decision": decision, "error": kind, "reason": reason[:300]})


def result_array(header: Any, level: int, message: str, values: dict[str, str], mode: str, model_id: str,
                 frame_ids: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> DiagnosticArray:
    """The ``~/result`` message: one status per frame, stamped with the input's header."""
    kv = {**values, "mode": mode, "model_id": str(model_id)}
    if header is not None:
        kv["stamp"] = f"{header.stamp.sec}.{header.stamp.nanosec:09d}"
    kv.update({f"frame_id.{k}": v for k, v in (frame_ids or {}).items()})
    kv.update(extra or {})
    status = DiagnosticStatus(level=level, name=PART_STATUS_NAME, message=message, hardware_id=str(model_id),
                              values=[KeyValue(key=k, value=str(v)) for k, v in kv.items()])
    arr = DiagnosticArray(status=[status])
    if header is not None:
        arr.header = header
    return arr


def auto_heatmap_max(pred: Any, threshold: float) -> float:
    """One colour scale across frames: 1.5x the pixel score a part at the threshold would peak at."""
    peak = float(pred.anomaly_map.max())
    scale = peak / pred.score if pred.score > 0 else 1.0  # pixel-score units per image-score unit
    return max(threshold * scale * 1.5, 1e-6)


def heatmap_image(frame: Frame, pred: Any, threshold: float, alpha: float = 0.5, vmax: float = 0.0) -> np.ndarray:
    """BGR overlay of the anomaly map on the image (on a depth rendering when there is no image of that size)."""
    amap = pred.anomaly_map
    base = (frame.rgb[..., ::-1].copy() if frame.rgb is not None and frame.rgb.shape[:2] == amap.shape
            else depth_rendering(frame.xyz))
    return overlay(base, amap, pred.valid_mask, alpha=alpha, vmin=0.0, vmax=vmax or auto_heatmap_max(pred, threshold))
