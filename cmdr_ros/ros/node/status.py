"""What the inspection node says about itself: its ``/diagnostics`` statuses (node and audit store), the counters
behind them and the throttled log of repeated problems.

Levels describe now, counters the record: a transient fault (a part not judged, a result after its fail-safe) keeps
the node at WARN for ``diagnostics.window`` seconds after it happened (``recent_faults``); an incompatible QoS is an
ERROR while an input publisher whose QoS cannot reach the node's subscription is still there
(``incompatible_publishers``); the cumulative counters stay as values.

Everything here takes plain values (counters, parameter values, the audit store's ``health()``), so the levels and
texts are tested without a node; the node (``InspectionNode``) gathers the values and publishes.
Conventions of diagnostic_updater: statuses named ``'<node>: <task>'``, the cell or sensor as ``hardware_id``.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from cmdr_ros.ros.node import typed_decision

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


LATE_RESULT = "late_result"  # a transient fault: an inference that returned after its part had the fail-safe
RECENT_KEEP = 10000  # transient faults remembered (time, kind) for the window; more in it still WARN


class DecisionStats:
    """The decision counters since configure (the caller guards them with its decision lock), and when each
    transient fault happened (``recent``: (time.monotonic(), kind), for the diagnostics window)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter({k: 0 for k in COUNTERS})
        self.not_judged: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=200)
        self.stamps: collections.deque[float] = collections.deque(maxlen=200)
        self.recent: collections.deque[tuple[float, str]] = collections.deque(maxlen=RECENT_KEEP)

    def decided(self, verdict: Verdict, latency_ms: float, now: float) -> None:
        """Count one decision (``now``: time.monotonic(), for the rate)."""
        self.counts["decisions"] += 1
        if verdict.judged:
            self.counts["judged"] += 1
            self.latencies.append(latency_ms)
            self.stamps.append(now)
        else:
            self.not_judged[verdict.kind] += 1
            self.recent.append((now, verdict.kind))
        self.counts["rejects"] += int(verdict.reject)

    def late_result(self, now: float) -> None:
        """Count an inference that returned after its part was decided (fail-safe by the watchdog)."""
        self.counts["late"] += 1
        self.recent.append((now, LATE_RESULT))

    def copy(self) -> tuple[dict[str, Any], list[float], list[float]]:
        """The counters (with ``not_judged`` by kind and the ``recent`` transient faults), the recent latencies and
        the stamps of recent judgements."""
        out: dict[str, Any] = {k: self.counts[k] for k in COUNTERS}
        out["not_judged"] = dict(self.not_judged)
        out["recent"] = list(self.recent)
        return out, list(self.latencies), list(self.stamps)


def recent_faults(events: list[tuple[float, str]], now: float, window: float) -> dict[str, int]:
    """How many transient faults of each kind happened in the last ``window`` seconds (``events``: (time, kind))."""
    return dict(collections.Counter(kind for t, kind in events if now - t <= window))


def incompatible_publishers(publishers: list[Any], subscriptions: list[Any]) -> int:
    """How many of a topic's ``publishers`` (rclpy ``TopicEndpointInfo``) cannot reach one of the node's
    ``subscriptions`` of it (their ``QoSProfile``), by rclpy's own compatibility check (a publisher whose QoS cannot
    be told, 'system default' or unknown, is not counted)."""
    from rclpy.qos import QoSCompatibility, qos_check_compatible

    return sum(1 for p in publishers
               if any(qos_check_compatible(p.qos_profile, q)[0] == QoSCompatibility.ERROR for q in subscriptions))


def late_input_text(late: Mapping[str, tuple[float, float, int]], sync_timeout: float) -> str:
    """Which input arrives late and by how much, from ``late`` ({input: (p50 s, p95 s, sets)}, ``sync``'s
    ``InputLateness``): the worst one by p95 against ``sync_timeout`` with the ways out, or why nothing was
    measured."""
    measured = {k: v for k, v in late.items() if v[2]}
    if len(late) < 2:
        return ""
    if not measured:
        return ("no set of the inputs arrived complete yet: check that every driver publishes, "
                "then raise sync.timeout or give the drivers the large-message profile")
    name, (p50, p95, n) = max(measured.items(), key=lambda kv: kv[1][1])
    others = "/".join(k for k in late if k != name)
    figure = f"input {name} arrives {p95:.2f} s after {others} (p95 of {n} sets, p50 {p50:.2f} s)"
    if p95 >= sync_timeout:
        return (f"{figure}, beyond sync.timeout {sync_timeout:g} s: raise sync.timeout or give the driver the "
                "large-message profile")
    return (f"{figure}, within sync.timeout {sync_timeout:g} s: an input came without partner (a driver dropped "
            "one?) or a few came later than that: raise sync.timeout or give the driver the large-message profile")


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
           pretrained_cpu: bool, unsent_after: float = float("inf"), window: float = 60.0,
           sync_timeout: float = 1.0) -> list[tuple[bytes, str]]:
    """What is wrong now besides a stuck inference, each with its level (``s``: ``InspectionNode.snapshot()``;
    ``inputs_watched``: subscribed, so idle inputs mean something; ``unsent_after``: how long a decision may wait
    to be recorded and published, the node's ``time_budget``; ``window``: ``diagnostics.window``, the seconds
    ``s['recent_faults']`` covers; ``sync_timeout``: ``sync.timeout``, what a late input is compared with)."""
    found = []
    if s["unsent_s"] > unsent_after:
        found.append((DiagnosticStatus.WARN, f"{s['unsent']} decision(s) made but not published, the oldest for "
                                             f"{s['unsent_s']:.1f} s: the audit store or the publisher is behind"))
    if s["qos_incompatible_now"]:
        where = ", ".join(f"{t} ({n})" for t, n in sorted(s["qos_incompatible_now"].items()))
        found.append((DiagnosticStatus.ERROR, f"incompatible QoS: input publisher(s) on {where} cannot reach the "
                                              "node, no message of theirs arrives; see input.reliability"))
    if stale_after > 0 and inputs_watched and s["input_idle_s"] > stale_after:
        found.append((DiagnosticStatus.WARN, f"stale inputs: nothing arrived for {s['input_idle_s']:.0f} s"))
    if pretrained_cpu:
        found.append((DiagnosticStatus.WARN, "a model with pretrained backbones (paper preset) runs on CPU: "
                                             "seconds per part; give the node a GPU (device cuda)"))
    recent = dict(s["recent_faults"])
    late = recent.pop(LATE_RESULT, 0)
    if late:
        found.append((DiagnosticStatus.WARN, f"{late} inference(s) returned after their part had the fail-safe "
                                             f"decision in the last {window:g} s: see time_budget"))
    if recent:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(recent.items()))
        text = f"{sum(recent.values())} part(s) not judged in the last {window:g} s ({kinds})"
        hint = late_input_text(s["late_inputs"], sync_timeout) if "unmatched" in recent else ""
        found.append((DiagnosticStatus.WARN, f"{text}: {hint}" if hint else text))
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
              "qos_incompatible_now": sum(s["qos_incompatible_now"].values()),
              "input_idle_s": f"{s['input_idle_s']:.1f}", "no_part_id": s["no_part_id"],
              "part_id_unmatched": s["part_id_unmatched"], "part_id_unmatched_last": s["part_id_unmatched_last"],
              "mode": mode, "recent_faults": sum(s["recent_faults"].values()),
              "parameters_refused": s["parameters_refused"]}
    values["decision_topic"] = typed_decision.STATUS  # ~/decision on, or off and why
    values.update({f"not_judged.{k}": v for k, v in sorted(s["not_judged"].items())})
    for inp, (p50, p95, n) in s["late_inputs"].items():
        values.update({f"late.{inp}_p50_ms": f"{p50 * 1e3:.1f}", f"late.{inp}_p95_ms": f"{p95 * 1e3:.1f}",
                       f"late.{inp}_sets": n})
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
        spooled = f" ({h['spool_backlog']} in the spool)" if h.get("spool_backlog") else ""
        level, text = DiagnosticStatus.WARN, f"failing, {h['backlog']} row(s) queued{spooled}: {h['last_error']}"
    else:
        level, text = DiagnosticStatus.OK, f"{h['written']} decision(s) recorded"
    values = {"database": h["target"], "written": h["written"], "backlog": h["backlog"],
              "failures": h["failures"], "dropped": h["dropped"], "late": h["late"], "deferred": h["deferred"],
              "reopened": h["reopened"], "healthy": str(h["healthy"]).lower(),
              "last_write_ms": f"{h['last_write_ms']:.2f}", "last_error": h["last_error"][:200]}
    if "spool" in h:  # the durable spool (audit.spool): rows committed there while the database could not take them
        values.update({"spool": h["spool"], "spooled": h["spooled"], "drained": h["drained"],
                       "spool_backlog": h["spool_backlog"], "spool_failures": h["spool_failures"],
                       "last_spool_ms": f"{h['last_spool_ms']:.2f}", "spool_error": h["spool_error"][:200]})
    return DiagnosticStatus(level=level, name=name, message=text[:300], hardware_id=hw_id, values=_key_values(values))
