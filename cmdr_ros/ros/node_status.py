"""What the inspection node says about itself: its ``/diagnostics`` statuses (node and audit store), the counters
behind them and the throttled log of repeated problems.

Everything here takes plain values (counters, parameter values, the audit store's ``health()``), so the levels and
texts are tested without a node; ``InspectionNode._publish_diagnostics`` gathers the values and publishes.
Conventions of diagnostic_updater: statuses named ``'<node>: <task>'``, the cell or sensor as ``hardware_id``.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

if TYPE_CHECKING:
    from cmdr_ros.judge import Verdict
    from cmdr_ros.model.detector import CMDRDetector

PRETRAINED = {"dino_vitb8", "pointmae"}  # backbones that need a GPU on a line
COUNTERS = ("decisions", "judged", "rejects", "late", "stuck", "qos_incompatible", "no_part_id", "part_id_unmatched")


class ThrottledLog:
    """Log each kind of problem once per ``period`` seconds, with a count of the repeats in between."""

    def __init__(self, logger: Any, period: float = 10.0):
        self.logger, self.period = logger, period
        self.last: dict[str, float] = {}
        self.suppressed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()  # called from the worker, the watchdog and input callbacks

    def __call__(self, kind: str, msg: str, level: str = "warning") -> None:
        with self._lock:
            now = time.monotonic()
            if now - self.last.get(kind, -1e9) < self.period:
                self.suppressed[kind] += 1
                return
            extra = f" ({self.suppressed[kind]} more since last report)" if self.suppressed[kind] else ""
            self.last[kind] = now
            self.suppressed[kind] = 0
        # rclpy binds one severity to each logging call site (a change raises ValueError): one call per level
        if level == "error":
            self.logger.error(f"[{kind}] {msg}{extra}")
        else:
            self.logger.warning(f"[{kind}] {msg}{extra}")


class DecisionStats:
    """The decision counters since configure (the caller guards them with its decision lock)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter({k: 0 for k in COUNTERS})
        self.not_judged: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=200)
        self.stamps: collections.deque[float] = collections.deque(maxlen=200)

    def decided(self, verdict: Verdict, latency_ms: float, now: float) -> None:
        """Count one decision (``now``: time.monotonic(), for the rate)."""
        self.counts["decisions"] += 1
        if verdict.judged:
            self.counts["judged"] += 1
            self.latencies.append(latency_ms)
            self.stamps.append(now)
        else:
            self.not_judged[verdict.kind] += 1
        self.counts["rejects"] += int(verdict.reject)

    def copy(self) -> tuple[dict[str, Any], list[float], list[float]]:
        """The counters (with ``not_judged`` by kind), the recent latencies and the stamps of recent judgements."""
        out: dict[str, Any] = {k: self.counts[k] for k in COUNTERS}
        out["not_judged"] = dict(self.not_judged)
        return out, list(self.latencies), list(self.stamps)


def rate_and_latency(latencies_ms: list[float], stamps: list[float], now: float) -> dict[str, float]:
    """Judged parts per second over the last 10 s and the latency median and 95th percentile."""
    window = [t for t in stamps if t > now - 10.0]
    lat = np.array(latencies_ms) if latencies_ms else np.zeros(0)
    return {"rate_hz": (len(window) - 1) / (window[-1] - window[0])
            if len(window) > 1 and window[-1] > window[0] else 0.0,
            "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
            "latency_p95_ms": float(np.percentile(lat, 95)) if lat.size else 0.0}


class InputIdle:
    """Seconds since the count of received inputs last changed."""

    def __init__(self, now: float | None = None) -> None:
        self.reset(now)

    def reset(self, now: float | None = None) -> None:
        self.count, self.since = 0, time.monotonic() if now is None else now

    def idle_s(self, count: int, now: float) -> float:
        if count != self.count:
            self.count, self.since = count, now
        return now - self.since


def status_name(node_name: str, task: str) -> str:
    """diagnostic_updater's convention: '<node>: <task>', the node by its name with namespace."""
    return f"{node_name.lstrip('/')}: {task}"


def hardware_id(param: str | None, node_name: str) -> str:
    """The ``hardware_id`` parameter, else the node's fully qualified name."""
    return str(param or node_name)


def pretrained_on_cpu(det: CMDRDetector | None) -> bool:
    """A model with pretrained (paper preset) backbones running on the CPU: seconds per part."""
    return det is not None and det.device.type == "cpu" and bool(
        PRETRAINED & {det.config.backbone_2d.name, det.config.backbone_3d.name})


def faults(s: Mapping[str, Any], *, stale_after: float, inputs_watched: bool,
           pretrained_cpu: bool, unsent_after: float = float("inf")) -> list[tuple[bytes, str]]:
    """What is wrong now besides a stuck inference, each with its level (``s``: ``InspectionNode.snapshot()``;
    ``inputs_watched``: subscribed, so idle inputs mean something; ``unsent_after``: how long a decision may wait
    to be recorded and published, the node's ``time_budget``)."""
    found = []
    if s["unsent_s"] > unsent_after:
        found.append((DiagnosticStatus.WARN, f"{s['unsent']} decision(s) made but not published, the oldest for "
                                             f"{s['unsent_s']:.1f} s: the audit store or the publisher is behind"))
    if s["qos_incompatible"]:
        found.append((DiagnosticStatus.ERROR, f"incompatible QoS with an input publisher ({s['qos_incompatible']} "
                                              "times): no message of it arrives; see input.reliability"))
    if stale_after > 0 and inputs_watched and s["input_idle_s"] > stale_after:
        found.append((DiagnosticStatus.WARN, f"stale inputs: nothing arrived for {s['input_idle_s']:.0f} s"))
    if pretrained_cpu:
        found.append((DiagnosticStatus.WARN, "a model with pretrained backbones (paper preset) runs on CPU: "
                                             "seconds per part; give the node a GPU (device cuda)"))
    if sum(s["not_judged"].values()):
        found.append((DiagnosticStatus.WARN, ""))
    return found


def _key_values(values: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=str(v)) for k, v in values.items()]


def node_status(s: Mapping[str, Any], *, state: str, judging: bool, time_budget: float,
                found: list[tuple[bytes, str]], mode: str, name: str, hw_id: str, threshold: float | None = None,
                model_id: str = "", device: str = "") -> DiagnosticStatus:
    """The node's status: ERROR for a failed transition (``state`` 'cannot ...') or an inference running past
    ``time_budget``; WARN while there is no judge; else the worst of ``found`` (``faults``) with the counters.
    ``threshold`` (with ``model_id`` and ``device``): the model in use, when there is one."""
    n_bad = sum(s["not_judged"].values())
    stuck = s["inflight_s"] > time_budget
    if state.startswith("cannot"):  # a failed configure or activate says why
        level, message = DiagnosticStatus.ERROR, state
    elif not judging:
        level, message = DiagnosticStatus.WARN, state
    elif stuck:
        level, message = DiagnosticStatus.ERROR, f"stuck: inference running for {s['inflight_s']:.1f} s"
    else:
        level, message = max(found, key=lambda f: f[0], default=(DiagnosticStatus.OK, ""))
        message = (f"{message}; " if message else "") + \
            f"{state}: {s['decisions']} decisions, {s['judged']} judged, {n_bad} not judged"
    values = {"state": state, "decisions": s["decisions"], "seq": s["seq"], "judged": s["judged"],
              "rejects": s["rejects"], "not_judged": n_bad, "late_results": s["late"], "stuck": int(stuck),
              "stuck_events": s["stuck"], "waiting": s["waiting"], "pending_sync": s["pending_sync"],
              "unsent": s["unsent"], "unsent_s": f"{s['unsent_s']:.1f}",
              "rate_hz": f"{s['rate_hz']:.2f}", "latency_p50_ms": f"{s['latency_p50_ms']:.1f}",
              "latency_p95_ms": f"{s['latency_p95_ms']:.1f}", "qos_incompatible": s["qos_incompatible"],
              "input_idle_s": f"{s['input_idle_s']:.1f}", "no_part_id": s["no_part_id"],
              "part_id_unmatched": s["part_id_unmatched"], "part_id_unmatched_last": s["part_id_unmatched_last"],
              "mode": mode}
    values.update({f"not_judged.{k}": v for k, v in sorted(s["not_judged"].items())})
    if threshold is not None:
        values.update({"threshold": f"{threshold:.6f}", "model_id": model_id, "device": device})
    return DiagnosticStatus(level=level, name=name, hardware_id=hw_id, message=message[:300],
                            values=_key_values(values))


def audit_status(health: Mapping[str, Any] | None, *, enabled: bool, name: str, hw_id: str) -> DiagnosticStatus:
    """The audit store's own status from its ``health()`` (None: no store open): WARN while writes fail (rows
    queued), ERROR once a decision was lost."""
    if health is None:
        text = "disabled (audit.enabled false)" if not enabled else "not open (node not configured)"
        return DiagnosticStatus(level=DiagnosticStatus.OK, name=name, message=text, hardware_id=hw_id)
    h = health
    if h["dropped"]:
        level, text = DiagnosticStatus.ERROR, f"{h['dropped']} decision(s) not recorded (backlog full or closed)"
    elif not h["healthy"]:
        level, text = DiagnosticStatus.WARN, f"failing, {h['backlog']} row(s) queued: {h['last_error']}"
    else:
        level, text = DiagnosticStatus.OK, f"{h['written']} decision(s) recorded"
    values = {"database": h["target"], "written": h["written"], "backlog": h["backlog"],
              "failures": h["failures"], "dropped": h["dropped"], "late": h["late"], "deferred": h["deferred"],
              "reopened": h["reopened"], "healthy": str(h["healthy"]).lower(),
              "last_write_ms": f"{h['last_write_ms']:.2f}", "last_error": h["last_error"][:200]}
    return DiagnosticStatus(level=level, name=name, message=text[:300], hardware_id=hw_id, values=_key_values(values))
