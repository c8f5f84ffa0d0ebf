"""The inspection node's core without DDS, from inputs built by hand: parameter sets, /diagnostics, the messages of a
decision, and how decisions leave (numbered under the decision lock, recorded and published in order outside it)."""
from __future__ import annotations

import array
import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Bool, Float32, Header

from cmdr_ros import CmdrError
from cmdr_ros.judge import Judge, Verdict
from cmdr_ros.ros.node.queues import DecisionOutbox, Part, PartIds, WorkQueue
from cmdr_ros.ros.node.engine import DecisionEngine, Outlet
from cmdr_ros.ros.node.frame_judge import FrameJudge
from cmdr_ros.ros.conversions.frames import Frame
from cmdr_ros.ros.node.status import (DecisionStats, InputIdle, ThrottledLog, audit_status, faults, hardware_id,
                                      incompatible_publishers, late_input_text, node_status, rate_and_latency,
                                      recent_faults, status_name)
from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values, wanted_outputs
from cmdr_ros.ros.node.typed_decision import AVAILABLE as TYPED_AVAILABLE
from cmdr_ros.ros.node.parameters import check_set, coerce_overrides, coerce_parameters, descriptor, refusal
from cmdr_ros.ros.node.tf_source import NO_FALLBACK, tf_fallback, tf_lookup

UNIT = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------------------------ parameter sets
def test_a_good_set_is_accepted_and_read_only_ones_are_noted_while_configured():
    assert check_set([Parameter("threshold", value=2.5), Parameter("on_error", value="pass")],
                     configured=True).notes == []
    answer = check_set([Parameter("device", value="cpu"), Parameter("sync.slop", value=0.1)], configured=True)
    assert answer.ok and answer.problem is None
    assert answer.notes == ["parameter 'device' takes effect at the next configure",
                            "parameter 'sync.slop' takes effect at the next configure"]
    assert check_set([Parameter("device", value="cpu")], configured=False).notes == []  # read at the coming configure


@pytest.mark.parametrize("name, value, why", [
    ("time_budget", 0.0, "time_budget must be within [0.01, 3600], got 0.0"),
    ("max_range", -1.0, "max_range must be within [0.001, 1e+06], got -1.0"),
    ("input.depth", 0, "input.depth must be within [1, 1000], got 0"),
    ("input.depth", 2.5, "input.depth must be an integer, got 2.5"),
    ("overload", "drop", "overload must be one of judge_all, newest, got 'drop'"),
    ("warmup", 1, "warmup must be true or false, got 1"),
    ("device", "gpu", "device must be auto, cpu, cuda, cuda:N or onnx, got 'gpu'"),
    ("threshold", float("nan"), "threshold must be a finite number, got nan"),
    ("audit.database", "mysql://db", "audit.database must be a file path or a postgresql:// URL, got 'mysql://db'"),
])
def test_a_bad_value_refuses_the_set_with_its_reason(name, value, why):
    answer = check_set([Parameter(name, value=value)], configured=True)
    assert not answer.ok and answer.problem == why and answer.notes == []


def test_the_first_bad_value_refuses_the_whole_set_and_foreign_names_are_left_alone():
    answer = check_set([Parameter("threshold", value=2.0), Parameter("overload", value="drop"),
                        Parameter("time_budget", value=0.0)], configured=True)
    assert answer.problem == "overload must be one of judge_all, newest, got 'drop'"
    assert check_set([Parameter("use_sim_time", value=True)], configured=True).ok  # rclpy's own


def test_a_threshold_the_model_cannot_use_is_refused_with_the_judges_reason():
    resolve = Judge(SimpleNamespace(threshold=None), threshold=2.0).resolve_threshold  # a model not calibrated
    problem = check_set([Parameter("threshold", value=-1.0)], configured=True, resolve_threshold=resolve).problem
    assert problem.startswith("no usable reject threshold (None): the model has no calibrated threshold")
    assert check_set([Parameter("threshold", value=3.0)], configured=True, resolve_threshold=resolve).ok
    assert check_set([Parameter("threshold", value="x")], configured=True, resolve_threshold=resolve).problem == \
        "threshold must be a number, got 'x'"  # checked before the judge sees it


def test_optional_extrinsics_unset_or_seven_numbers_of_a_unit_quaternion():
    assert check_set([Parameter("extrinsics", Parameter.Type.NOT_SET)], configured=True).ok  # unset is fine
    assert check_set([Parameter("extrinsics", value=array.array("d", UNIT))], configured=True).ok  # as a set sends it
    assert check_set([Parameter("extrinsics", value=[0.0, 0.0, 0.0])], configured=True).problem == \
        "extrinsics must be 7 finite numbers x y z qx qy qz qw, got [0.0, 0.0, 0.0]"
    assert check_set([Parameter("extrinsics", value=[0.0] * 7)], configured=True).problem == \
        "extrinsics quaternion (qx qy qz qw) must have unit norm, has 0"


def test_whole_numbers_given_for_doubles_are_coerced_before_the_set():
    depth, other = Parameter("input.depth", value=3), Parameter("use_sim_time", value=True)
    threshold, extr, flag, depth_out, other_out = coerce_parameters(
        [Parameter("threshold", value=3), Parameter("extrinsics", value=[0, 0, 0, 0, 0, 0, 1]),
         Parameter("max_range", value=True), depth, other])
    assert threshold.value == 3.0 and isinstance(threshold.value, float)
    assert threshold.type_ == Parameter.Type.DOUBLE
    assert extr.value == UNIT and extr.type_ == Parameter.Type.DOUBLE_ARRAY
    assert flag.value is True  # a bool is not a number: left for check to refuse
    assert depth_out is depth and other_out is other  # integers for integers, foreign names: untouched
    overrides = {"threshold": Parameter("threshold", value=2), "qos_overrides./image": Parameter("x", value=1)}
    coerce_overrides(overrides)
    assert overrides["threshold"].value == 2.0 and overrides["qos_overrides./image"].value == 1


def test_descriptors_carry_ranges_and_choices():
    threshold, depth, warmup = descriptor("threshold"), descriptor("input.depth"), descriptor("warmup")
    assert [(r.from_value, r.to_value) for r in threshold.floating_point_range] == [(-1.0, 1e12)]
    assert [(r.from_value, r.to_value) for r in depth.integer_range] == [(1, 1000)] and not depth.floating_point_range
    assert descriptor("overload").additional_constraints == "one of: judge_all, newest"
    assert not warmup.integer_range and not warmup.floating_point_range and warmup.additional_constraints == ""


def test_run_time_changes_are_applied_to_the_frame_judge():
    fj = FrameJudge(Judge(SimpleNamespace(threshold=1.0)), "rgbd")
    fj.apply([Parameter("threshold", value=2.0), Parameter("on_error", value="pass"),
              Parameter("extrinsics", value=[0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
              Parameter("raster_resolution", value=0.01), Parameter("cloud_registered", value=True),
              Parameter("device", value="cuda")])
    assert fj.threshold == 2.0 and fj.settings.on_error == "pass" and fj.settings.max_range == 10.0
    assert fj.extrinsics[0, 3] == pytest.approx(0.1) and fj.raster_resolution == 0.01 and fj.registered
    fj.apply([Parameter("extrinsics", Parameter.Type.NOT_SET)])
    assert fj.extrinsics is None


# ------------------------------------------------------------------------------ status
def snap(**kw: Any) -> dict[str, Any]:
    """A node snapshot (``InspectionNode.snapshot``) with nothing wrong."""
    return {"decisions": 5, "judged": 5, "rejects": 1, "late": 0, "stuck": 0, "qos_incompatible": 0,
            "no_part_id": 0, "part_id_unmatched": 0, "part_id_unmatched_last": "", "not_judged": {}, "seq": 5,
            "waiting": 0, "inflight_s": 0.0, "rate_hz": 2.0, "latency_p50_ms": 12.0,
            "latency_p95_ms": 20.25, "pending_sync": 0, "unsent": 0, "unsent_s": 0.0, "input_idle_s": 0.5,
            "recent_faults": {}, "late_inputs": {}, "qos_incompatible_now": {}, "parameters_refused": 0, **kw}


def status(s: dict[str, Any], state: str = "active", judging: bool = True, stale_after: float = 0.0,
           **kw: Any) -> tuple[int, str, dict[str, str]]:
    found = faults(s, stale_after=stale_after, inputs_watched=True, pretrained_cpu=False, window=60.0)
    st = node_status(s, state=state, judging=judging, time_budget=5.0, found=found, mode="rgbd",
                     name=status_name("/cmdr_inspection", "node"), hw_id=hardware_id("", "/cmdr_inspection"), **kw)
    assert st.name == "cmdr_inspection: node" and st.hardware_id == "/cmdr_inspection"
    return st.level, st.message, {kv.key: kv.value for kv in st.values}


def test_status_ok_with_the_counters_and_the_model():
    level, message, v = status(snap(), threshold=1.5, model_id="abc123", device="cpu")
    assert level == DiagnosticStatus.OK and message == "active: 5 decisions, 5 judged, 0 not judged"
    assert list(v) == ["state", "decisions", "seq", "judged", "rejects", "not_judged", "late_results", "stuck",
                       "stuck_events", "waiting", "pending_sync", "unsent", "unsent_s", "rate_hz", "latency_p50_ms", "latency_p95_ms",
                       "qos_incompatible", "qos_incompatible_now", "input_idle_s", "no_part_id", "part_id_unmatched",
                       "part_id_unmatched_last", "mode", "recent_faults", "parameters_refused", "decision_topic",
                       "threshold", "model_id", "device"]
    assert v["decision_topic"] == ("vision_msgs/Classification" if TYPED_AVAILABLE
                                   else "off: vision_msgs is not installed")
    assert v["state"] == "active" and v["decisions"] == "5" and v["stuck"] == "0" and v["rate_hz"] == "2.00"
    assert v["latency_p95_ms"] == "20.2" and v["input_idle_s"] == "0.5" and v["threshold"] == "1.500000"
    assert (v["model_id"], v["device"], v["mode"]) == ("abc123", "cpu", "rgbd")
    assert hardware_id("cell_3", "/cmdr_inspection") == "cell_3"
    assert status_name("/line1/cmdr_inspection", "audit") == "line1/cmdr_inspection: audit"


def test_stale_inputs_warn_only_when_watched_and_enabled():
    s = snap(input_idle_s=3.0)
    assert faults(s, stale_after=2.0, inputs_watched=True, pretrained_cpu=False) == \
        [(DiagnosticStatus.WARN, "stale inputs: nothing arrived for 3 s")]
    assert faults(s, stale_after=2.0, inputs_watched=False, pretrained_cpu=False) == []  # not subscribed
    assert faults(s, stale_after=0.0, inputs_watched=True, pretrained_cpu=False) == []  # 0: never
    level, message, _ = status(s, stale_after=2.0)
    assert level == DiagnosticStatus.WARN
    assert message == "stale inputs: nothing arrived for 3 s; active: 5 decisions, 5 judged, 0 not judged"


def test_not_judged_parts_warn_within_the_window_and_an_incompatible_qos_is_an_error_while_it_lasts():
    level, message, v = status(snap(judged=3, not_judged={"timeout": 2}, recent_faults={"timeout": 2}))
    assert level == DiagnosticStatus.WARN
    assert message == "2 part(s) not judged in the last 60 s (timeout 2); active: 5 decisions, 3 judged, 2 not judged"
    assert v["not_judged"] == "2" and v["not_judged.timeout"] == "2" and v["recent_faults"] == "2"
    level, message, v = status(snap(judged=3, not_judged={"timeout": 2}))  # none in the window: OK, counters kept
    assert level == DiagnosticStatus.OK and v["not_judged.timeout"] == "2" and v["recent_faults"] == "0"
    level, message, _ = status(snap(late=1, recent_faults={"late_result": 1}))
    assert level == DiagnosticStatus.WARN and message.startswith("1 inference(s) returned after their part")
    level, message, v = status(snap(qos_incompatible=4, qos_incompatible_now={"/image": 1}, input_idle_s=9.0),
                               stale_after=2.0)
    assert level == DiagnosticStatus.ERROR  # the worst fault sets the level, its text leads
    assert message.startswith("incompatible QoS: input publisher(s) on /image (1) cannot reach the node")
    assert (v["qos_incompatible"], v["qos_incompatible_now"]) == ("4", "1")
    assert status(snap(qos_incompatible=4))[0] == DiagnosticStatus.OK  # the publisher is gone: the count stays


def test_recent_faults_count_only_the_window():
    stats = DecisionStats()
    stats.decided(Verdict(False, "reject", 1.0, kind="unmatched", reason="alone"), 1.0, 100.0)
    stats.decided(Verdict(False, "reject", 1.0, kind="timeout", reason="slow"), 1.0, 130.0)
    stats.late_result(131.0)
    counts, _, _ = stats.copy()
    assert counts["late"] == 1 and counts["not_judged"] == {"unmatched": 1, "timeout": 1}
    assert recent_faults(counts["recent"], 150.0, 60.0) == {"unmatched": 1, "timeout": 1, "late_result": 1}
    assert recent_faults(counts["recent"], 170.0, 60.0) == {"timeout": 1, "late_result": 1}
    assert recent_faults(counts["recent"], 200.0, 60.0) == {}


def test_unmatched_parts_say_which_input_arrives_late():
    late = {"image": (0.0, 0.0, 40), "points": (0.8, 1.2, 40)}
    level, message, v = status(snap(not_judged={"unmatched": 3}, recent_faults={"unmatched": 3}, late_inputs=late))
    assert level == DiagnosticStatus.WARN
    assert message.startswith("3 part(s) not judged in the last 60 s (unmatched 3): input points arrives 1.20 s "
                              "after image (p95 of 40 sets, p50 0.80 s), beyond sync.timeout 1 s: raise "
                              "sync.timeout or give the driver the large-message profile"), message
    assert (v["late.points_p50_ms"], v["late.points_p95_ms"], v["late.points_sets"]) == ("800.0", "1200.0", "40")
    assert v["late.image_p95_ms"] == "0.0"
    assert "within sync.timeout 2 s: an input came without partner" in late_input_text(late, 2.0)
    assert "no set of the inputs arrived complete" in late_input_text({"image": (0, 0, 0), "points": (0, 0, 0)}, 1.0)
    assert late_input_text({"points": (0.0, 0.0, 5)}, 1.0) == ""  # one input: nothing to be late against


def test_incompatible_publishers_by_rclpy_qos_check():
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    pubs = [SimpleNamespace(qos_profile=q) for q in (reliable, best_effort, best_effort)]
    assert incompatible_publishers(pubs, [reliable]) == 2  # best effort cannot feed a reliable reader
    assert incompatible_publishers(pubs, [best_effort]) == 0
    assert incompatible_publishers(pubs[:1], [latched]) == 1  # a volatile writer cannot feed a transient-local reader
    assert incompatible_publishers(pubs, []) == 0


@pytest.mark.parametrize("name, value, reason, want", [
    ("threshold", "abc", "Wrong parameter type, expected '3' got '4'",
     "parameter 'threshold' expects type double (a number), got type string: 'abc'"),
    ("threshold", "abc", "Trying to set parameter 'threshold' to 'abc' of type 'STRING', expecting type 'DOUBLE'",
     "parameter 'threshold' expects type double (a number), got type string: 'abc'"),  # rclpy at start
    ("input.depth", 2.5, "Wrong parameter type, expected '2' got '3'",
     "parameter 'input.depth' expects type integer (a whole number), got type double: 2.5"),
    ("warmup", "yes", "Wrong parameter type, expected '1' got '4'",
     "parameter 'warmup' expects type bool (true or false), got type string: 'yes'"),
    ("extrinsics", ["a"], "Wrong parameter type, expected '8' got '9'",
     "parameter 'extrinsics' expects type double array (7 numbers), got type string array: ['a']"),
    ("time_budget", 0.0, "Parameter time_budget out of range", "time_budget must be within [0.01, 3600], got 0.0"),
    ("checkpoint", "m.ckpt", "Trying to set a read-only parameter: checkpoint.",
     "Trying to set a read-only parameter: checkpoint."),
    ("use_sim_time", "x", "Wrong parameter type, expected '1' got '4'",  # rclpy's own parameter: as rclpy said
     "Wrong parameter type, expected '1' got '4'"),
    # the value unknown: the given type from rclpy's number (Jazzy, Kilted) or name (Humble, the start exception)
    ("threshold", None, "Wrong parameter type, expected '3' got '4'",
     "parameter 'threshold' expects type double (a number), got type string"),
    ("threshold", None, "Wrong parameter type, expected 'Type.DOUBLE' got 'Type.INTEGER_ARRAY'",
     "parameter 'threshold' expects type double (a number), got type integer array"),
    ("threshold", None, "Trying to set parameter 'threshold' to 'abc' of type 'STRING', expecting type 'DOUBLE'",
     "parameter 'threshold' expects type double (a number), got type string"),
])
def test_ros_refusals_name_the_parameter_and_the_types(name, value, reason, want):
    assert refusal(name, value, reason) == want


def test_a_stuck_inference_is_an_error():
    level, message, v = status(snap(inflight_s=6.0, stuck=1))
    assert level == DiagnosticStatus.ERROR and message == "stuck: inference running for 6.0 s"
    assert v["stuck"] == "1" and v["stuck_events"] == "1"
    assert status(snap(inflight_s=4.9))[0] == DiagnosticStatus.OK  # within time_budget 5 s


def test_without_a_judge_the_state_says_why():
    level, message, v = status(snap(), state="cannot configure: parameter 'checkpoint' is empty", judging=False)
    assert level == DiagnosticStatus.ERROR and message == "cannot configure: parameter 'checkpoint' is empty"
    assert "threshold" not in v
    assert status(snap(), state="unconfigured", judging=False)[:2] == (DiagnosticStatus.WARN, "unconfigured")


def health(**kw: Any) -> dict[str, Any]:
    """An ``AuditStore.health()``, written by hand."""
    return {"written": 7, "failures": 0, "dropped": 0, "late": 0, "deferred": 0, "reopened": 0, "backlog": 0,
            "healthy": True, "last_error": "", "last_write_ms": 1.25, "target": "/var/log/cmdr_audit.db", **kw}


def audit(h: dict[str, Any] | None, enabled: bool = True) -> tuple[int, str, dict[str, str]]:
    st = audit_status(h, enabled=enabled, name="cmdr_inspection: audit", hw_id="cell_3")
    assert st.name == "cmdr_inspection: audit" and st.hardware_id == "cell_3"
    return st.level, st.message, {kv.key: kv.value for kv in st.values}


def test_audit_status_ok_failing_and_dropped():
    level, message, v = audit(health())
    assert (level, message) == (DiagnosticStatus.OK, "7 decision(s) recorded")
    assert v["database"] == "/var/log/cmdr_audit.db" and v["healthy"] == "true" and v["last_write_ms"] == "1.25"
    level, message, v = audit(health(healthy=False, backlog=3, failures=2, last_error="database is locked"))
    assert (level, message) == (DiagnosticStatus.WARN, "failing, 3 row(s) queued: database is locked")
    assert v["healthy"] == "false" and v["backlog"] == "3" and v["failures"] == "2"
    level, message, v = audit(health(healthy=False, dropped=2, backlog=100000, last_error="disk full"))
    assert (level, message) == (DiagnosticStatus.ERROR, "2 decision(s) not recorded (backlog full or closed)")
    assert v["dropped"] == "2" and v["last_error"] == "disk full"
    assert audit(None) == (DiagnosticStatus.OK, "not open (node not configured)", {})
    assert audit(None, enabled=False)[1] == "disabled (audit.enabled false)"


def test_counters_rates_and_idle_time():
    stats = DecisionStats()
    judged = Verdict(True, "reject", 1.0, score=2.0)
    stats.decided(judged, 10.0, 100.0)
    stats.decided(Verdict(True, "pass", 1.0, score=0.5), 30.0, 101.0)
    stats.decided(Verdict(False, "reject", 1.0, kind="timeout", reason="late"), 5000.0, 102.0)
    counts, latencies, stamps = stats.copy()
    assert counts == {"decisions": 3, "judged": 2, "rejects": 2, "late": 0, "stuck": 0, "qos_incompatible": 0,
                      "no_part_id": 0, "part_id_unmatched": 0, "not_judged": {"timeout": 1},
                      "recent": [(102.0, "timeout")]}
    assert latencies == [10.0, 30.0] and stamps == [100.0, 101.0]  # fail-safes leave the latency alone
    assert rate_and_latency(latencies, stamps, 101.5) == {"rate_hz": 1.0, "latency_p50_ms": 20.0,
                                                          "latency_p95_ms": 29.0}
    assert rate_and_latency([], [], 0.0) == {"rate_hz": 0.0, "latency_p50_ms": 0.0, "latency_p95_ms": 0.0}
    idle = InputIdle(now=10.0)
    assert idle.idle_s(0, 12.0) == 2.0 and idle.idle_s(4, 13.0) == 0.0 and idle.idle_s(4, 15.5) == 2.5


def test_a_repeated_problem_is_logged_once_per_period_with_a_count():
    logged = []
    logger = SimpleNamespace(warning=lambda m: logged.append(("warning", m)),
                             error=lambda m: logged.append(("error", m)))
    log = ThrottledLog(logger, period=0.05)
    log("tf", "no transform")
    log("tf", "no transform")
    log("audit", "locked", "error")
    time.sleep(0.06)
    log("tf", "no transform")
    assert logged == [("warning", "[tf] no transform"), ("error", "[audit] locked"),
                      ("warning", "[tf] no transform (1 more since last report)")]


# ------------------------------------------------------------------------------ outputs
class Pub:
    """A publisher with ``n`` subscribers; what it publishes goes to ``sent``."""

    def __init__(self, key: str, n: int = 1, sent: list | None = None) -> None:
        self.key, self.n, self.sent = key, n, sent if sent is not None else []

    def get_subscription_count(self) -> int:
        return self.n

    def publish(self, msg: Any) -> None:
        self.sent.append((self.key, msg))


def judged_frame(points: bool = True) -> tuple[Frame, Verdict]:
    amap = np.zeros((4, 6), np.float32)
    amap[1, 2] = 3.0
    pred = SimpleNamespace(anomaly_map=amap, valid_mask=np.ones((4, 6), bool), score=3.0, latency_ms=5.0,
                           valid_ratio=1.0)
    frame = Frame(Header(frame_id="camera"), rgb=np.zeros((4, 6, 3), np.uint8), xyz=np.ones((4, 6, 3), np.float32),
                  points=np.ones((3, 3), np.float32) if points else None, point_pixel=np.array([8, 0, -1]),
                  cloud_header=Header(frame_id="lidar"), alignment="projected", transform="tf")
    return frame, Verdict(True, "reject", 1.0, score=3.0, prediction=pred)


def test_maps_are_built_only_when_enabled_and_subscribed():
    pubs = {"result": Pub("result"), "heatmap": Pub("heatmap", n=0), "anomaly_map": Pub("anomaly_map", n=2),
            "anomaly_cloud": Pub("anomaly_cloud")}
    assert wanted_outputs(pubs) == {"anomaly_map", "anomaly_cloud"}  # no subscriber: no heatmap
    assert wanted_outputs({"result": Pub("result")}) == set()  # maps disabled: no publisher
    frame, verdict = judged_frame()
    maps = map_messages(verdict, frame, {"heatmap", "anomaly_map", "anomaly_cloud"})
    assert list(maps) == ["anomaly_map", "heatmap", "anomaly_cloud"]
    assert isinstance(maps["anomaly_map"], Image) and maps["anomaly_map"].encoding == "32FC1"
    assert maps["heatmap"].encoding == "bgr8" and (maps["heatmap"].height, maps["heatmap"].width) == (4, 6)
    cloud = maps["anomaly_cloud"]
    assert isinstance(cloud, PointCloud2) and cloud.header.frame_id == "lidar" and cloud.width * cloud.height == 3
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity"]
    assert list(map_messages(verdict, frame, {"anomaly_map"})) == ["anomaly_map"]
    assert list(map_messages(verdict, judged_frame(points=False)[0], {"anomaly_cloud"})) == []  # no points
    assert map_messages(Verdict(False, "reject", 1.0, kind="timeout"), None, {"heatmap"}) == {}


def test_which_messages_a_decision_turns_into():
    frame, verdict = judged_frame()
    values = result_values(frame.header, verdict, frame, seq=7, mode="rgbd", model_id="m", inputs="image+points")
    maps = map_messages(verdict, frame, {"heatmap"})
    out = decision_messages(frame.header, verdict, values, maps)
    typed = ["decision"] if TYPED_AVAILABLE else []  # ~/decision where vision_msgs is installed
    assert list(out) == ["result", *typed, "reject", "score", "heatmap"]
    assert out["reject"] == Bool(data=True) and out["score"] == Float32(data=3.0)
    st = out["result"].status[0]
    assert st.level == DiagnosticStatus.OK and st.message == "REJECT" and out["result"].header.frame_id == "camera"
    assert {kv.key: kv.value for kv in st.values}["seq"] == "7"
    skip = Verdict(False, "skip", 1.0, kind="unmatched", reason="no points")
    assert list(decision_messages(None, skip, {}, maps)) == ["result", *typed]  # skip: no ~/reject, no maps
    fail = Verdict(False, "reject", 1.0, kind="timeout", reason="too late")
    out = decision_messages(None, fail, {"seq": "8"})
    assert list(out) == ["result", *typed, "reject"] and out["reject"].data is True
    assert out["result"].status[0].level == DiagnosticStatus.WARN


# ------------------------------------------------------------------------------ decisions
def header(sec: int, nanosec: int = 0, frame_id: str = "camera") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def part(stamp_s: int, t_in: float | None = None) -> Part:
    return Part({"image": Image(header=header(stamp_s))}, None, time.monotonic() if t_in is None else t_in)


PARAMS = {"on_error": "reject", "output.heatmap_alpha": 0.5, "output.heatmap_max": 0.0, "sync.slop": 0.05}


class Store:
    """An audit store whose ``record`` blocks while ``gate`` is closed (a slow or failing database)."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        self.gate.set()

    def record(self, row: dict[str, Any]) -> bool:
        self.entered.set()
        self.gate.wait(5)
        time.sleep(random.random() * 1e-3)
        self.rows.append(row["seq"])
        return True


def engine_with(store: Store, params: dict[str, Any] | None = None) -> tuple[DecisionEngine, list[int]]:
    """An engine publishing to fake publishers: the seq of every ~/result, in publishing order (each one checked to
    be on record when published)."""
    published: list[int] = []

    class ResultPub(Pub):
        def publish(self, msg: Any) -> None:
            seq = int({kv.key: kv.value for kv in msg.status[0].values}["seq"])
            assert seq in store.rows, f"result {seq} published before its audit row"
            published.append(seq)

    engine = DecisionEngine(lambda: None, {**PARAMS, **(params or {})}.get, lambda *a: None)
    engine.outlet = Outlet({"result": ResultPub("result"), "reject": Pub("reject")}, store, "2d", "m", "/n", "run")
    return engine, published


def test_a_slow_audit_store_never_holds_back_who_decides_and_order_is_kept():
    store = Store()
    engine, published = engine_with(store)
    store.gate.clear()
    try:
        t0 = time.monotonic()
        assert engine.fail(part(1), "timeout", "late") is None  # returns while decision 1 waits for its commit ...
        assert store.entered.wait(5)
        assert engine.cv.acquire(timeout=1.0)  # ... without the decision lock: watchdog and inputs go on
        engine.cv.release()
        assert engine.watch(5.0) is False and engine.counters()["seq"] == 1
        engine.fail(part(2), "overload", "full")  # an input callback deciding: numbered and back at once
        assert engine.order.last == 2 and time.monotonic() - t0 < 1.0
        assert engine.counters()["unsent"] == 2 and not engine.flush(0.05)
        assert store.rows == [] and published == []  # ... but neither recorded nor published before 1
    finally:
        store.gate.set()
    assert engine.flush(5)
    assert store.rows == [1, 2] and published == [1, 2] and engine.counters()["unsent"] == 0
    assert engine.counters()["not_judged"] == {"timeout": 1, "overload": 1}


def test_concurrent_decisions_are_recorded_and_published_in_sequence_order():
    store = Store()
    engine, published = engine_with(store)
    parts = [part(i) for i in range(60)]
    threads = [threading.Thread(target=lambda ps: [engine.fail(p, "timeout", "late") for p in ps],
                                args=(parts[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert engine.flush(10)
    assert store.rows == list(range(1, 61)) and published == list(range(1, 61))
    assert not engine.decide(parts[0], Verdict(False, "reject", None, kind="internal"))  # one decision per part


def test_a_send_that_raises_is_reported_and_the_next_decision_still_goes_out():
    failed, sent, gate = [], [], threading.Event()
    outbox = DecisionOutbox(lambda seq, e: failed.append((seq, str(e))))

    def broken(seq: int) -> None:
        gate.wait(5)
        raise RuntimeError("publisher gone")

    assert outbox.post(broken) == 1 and outbox.post(sent.append) == 2  # numbered as posted
    assert not outbox.flush(0.05) and sent == [] and outbox.backlog == 2  # 2 waits for 1
    assert outbox.oldest_unsent_s() >= 0.05  # number 1 has waited at least the flush's time-out
    gate.set()
    assert outbox.flush(1.0) and sent == [2] and failed == [(1, "publisher gone")] and outbox.backlog == 0
    assert outbox.oldest_unsent_s() == 0.0


def test_decisions_waiting_to_go_out_longer_than_the_time_budget_warn():
    s = snap(unsent=3, unsent_s=7.5)
    assert faults(s, stale_after=0.0, inputs_watched=True, pretrained_cpu=False) == []  # no limit given: never
    found = faults(s, stale_after=0.0, inputs_watched=True, pretrained_cpu=False, unsent_after=5.0)
    assert found == [(DiagnosticStatus.WARN, "3 decision(s) made but not published, the oldest for 7.5 s: the "
                                             "audit store or the publisher is behind")]
    assert faults(snap(unsent=1, unsent_s=0.2), stale_after=0.0, inputs_watched=True, pretrained_cpu=False,
                  unsent_after=5.0) == []  # one on its way out
    st = node_status(s, state="active", judging=True, time_budget=5.0, found=found, mode="3d", name="n", hw_id="h")
    assert st.level == DiagnosticStatus.WARN and {kv.key: kv.value for kv in st.values}["unsent_s"] == "7.5"


def test_queue_overload_and_time_budget():
    engine = DecisionEngine(lambda: None, PARAMS.get, lambda *a: None)
    old = part(1, t_in=time.monotonic() - 10.0)
    engine.submit(old, "judge_all", 2)
    engine.submit(part(2), "judge_all", 2)
    engine.submit(part(3), "judge_all", 2)  # full: the oldest gets the fail-safe now
    assert old.decided and engine.counters()["not_judged"] == {"overload": 1}
    engine.submit(part(4), "newest", 8)  # newest: one waits
    assert engine.counters()["not_judged"] == {"overload": 1, "superseded": 2}
    q, late, fresh = WorkQueue(), part(5, t_in=time.monotonic() - 6.0), part(6)
    assert q.push(late, 8) == [] and q.push(fresh, 8) == []
    assert q.take(threading.Event()) is late  # now in inference, past 5 s
    assert q.overdue(5.0, time.monotonic()) == ([late], False)  # started just now: not stuck yet
    q.inflight_since -= 6.0
    assert q.overdue(5.0, time.monotonic()) == ([late], True) and q.overdue(5.0, time.monotonic())[1] is False
    assert q.take_all() == [fresh, late]


def test_part_ids_are_matched_by_the_nearest_stamp_within_slop():
    ids = PartIds(keep=2)
    for sec, pid in ((1, "A"), (2, "B"), (3, "C")):
        ids.add(header(sec, frame_id=pid))
    assert ids.near(header(2, 10_000_000), 0.05) == "B" and ids.near(header(2, 10_000_000), 0.001) is None
    assert ids.near(header(1), 0.05) is None  # only the newest 2 are kept


def test_a_part_id_published_after_the_frame_is_waited_for_within_the_bound():
    ids = PartIds()
    threading.Timer(0.1, lambda: ids.add(header(5, 20_000_000, frame_id="LATE"))).start()
    t0 = time.monotonic()
    assert ids.wait_near(header(5), 0.05, 5.0) == "LATE"  # arrives after the wait began: taken
    assert time.monotonic() - t0 < 4.0  # woken by its arrival, not by the bound
    t0 = time.monotonic()
    assert ids.wait_near(header(9), 0.05, 0.2) is None and time.monotonic() - t0 >= 0.19  # never comes: the bound
    assert ids.wait_near(header(6), 0.05, 0.0) is None  # no wait: only ids already there


def test_part_ids_no_decision_took_are_reported_once_with_their_stamp():
    ids = PartIds(keep=3)
    ids.add(header(1, frame_id="TAKEN"), now=100.0)
    ids.add(header(2, frame_id="STRAY"), now=100.0)
    assert ids.near(header(1), 0.05) == "TAKEN"
    assert ids.unclaimed(5.0, now=104.0) == []  # within the window: it may still find its part
    assert ids.unclaimed(5.0, now=106.0) == [("STRAY", 2 * 10**9)]
    assert ids.unclaimed(5.0, now=107.0) == []  # reported once
    for sec in (3, 4, 5):  # pushes out TAKEN (taken: nothing to say) and STRAY (already reported)
        ids.add(header(sec, frame_id=f"X{sec}"), now=200.0)
    ids.add(header(6, frame_id="X6"), now=200.0)  # pushes out X3 before anyone took it: reported at once
    assert ids.unclaimed(5.0, now=200.0) == [("X3", 3 * 10**9)] and ids.seen == 6


def test_a_decision_waits_for_its_late_part_id_without_holding_anyone_back():
    """The decision is numbered at once; its publication (and the next one's, in order) waits for the id until
    part_id.wait; who decided goes on at once; a part whose id never comes is counted, a stray id reported."""
    store = Store()
    engine, published = engine_with(store, {"part_id.wait": 2.0, "sync.timeout": 0.0})
    sent: list[Any] = []
    engine.outlet.pubs["result"].publish = lambda msg: sent.append(
        {kv.key: kv.value for kv in msg.status[0].values})
    engine.part_ids.add(header(900, frame_id="EARLIER"))  # this cell publishes part ids
    t0 = time.monotonic()
    assert engine.decide(part(1), Verdict(True, "pass", 1.0, score=0.5))
    assert engine.decide(part(2), Verdict(True, "pass", 1.0, score=0.5))
    assert time.monotonic() - t0 < 1.0 and engine.counters()["seq"] == 2  # numbered, not held
    assert sent == []  # part 1 waits for its id, part 2 behind it
    engine.part_ids.add(header(1, frame_id="P1"))
    engine.part_ids.add(header(2, 10_000_000, frame_id="P2"))
    assert engine.flush(5)
    assert [(v["seq"], v.get("part_id")) for v in sent] == [("1", "P1"), ("2", "P2")]
    engine.param = {**PARAMS, "part_id.wait": 0.1, "sync.timeout": 0.0}.get
    assert engine.decide(part(3), Verdict(True, "pass", 1.0, score=0.5)) and engine.flush(5)
    assert "part_id" not in sent[-1] and engine.counters()["no_part_id"] == 1
    engine.part_ids.add(header(7, frame_id="STRAY"), now=time.monotonic() - 10.0)
    warned = []
    engine.warn = lambda kind, msg, level="warning": warned.append((kind, msg))
    engine.watch(5.0)  # time_budget + sync.timeout + part_id.wait = 5.1 s since it arrived: reported
    c = engine.counters()
    assert c["part_id_unmatched"] == 1 and c["part_id_unmatched_last"] == "STRAY"
    assert warned == [("part_id", "part id 'STRAY' (stamp 7.000000000) matched no part within 5.1 s of its "
                                  "arrival")]


def test_without_part_ids_nothing_is_counted_and_no_wait_with_zero():
    engine, _ = engine_with(Store(), {"part_id.wait": 0.0})
    assert engine.decide(part(1), Verdict(True, "pass", 1.0, score=0.5)) and engine.flush(5)
    assert engine.counters()["no_part_id"] == 0  # this cell publishes no part ids


def test_a_cell_that_sent_no_part_id_yet_waits_for_none():
    engine, _ = engine_with(Store(), {"part_id.wait": 5.0})
    t0 = time.monotonic()
    assert engine.decide(part(1), Verdict(True, "pass", 1.0, score=0.5)) and engine.flush(10)
    assert time.monotonic() - t0 < 4.0  # published without the 5 s wait
    engine.part_ids.add(header(900, frame_id="FIRST"))  # from its first id on, decisions wait for theirs
    engine.param = {**PARAMS, "part_id.wait": 0.3}.get
    t0 = time.monotonic()
    assert engine.decide(part(2), Verdict(True, "pass", 1.0, score=0.5)) and engine.flush(10)
    assert time.monotonic() - t0 >= 0.25 and engine.counters()["no_part_id"] == 1


def test_trigger_mode_gives_each_trigger_exactly_one_decision():
    """part_id.trigger: a trigger its frame took is that frame's decision; one no frame took within the window gets
    its own no_frame fail-safe, stamped as the trigger and carrying its id; a frame that comes after that cannot
    take it again; at a stop every trigger still open gets the stop's fail-safe."""
    engine, _ = engine_with(Store(), {"part_id.wait": 0.0, "sync.timeout": 0.0, "part_id.trigger": True})
    sent: list[Any] = []
    engine.outlet.pubs["result"].publish = lambda msg: sent.append(
        {kv.key: kv.value for kv in msg.status[0].values})
    now = time.monotonic()
    engine.part_ids.add(header(1, frame_id="T1"), now=now - 10.0)  # its frame comes
    engine.part_ids.add(header(2, frame_id="T2"), now=now - 10.0)  # its frame never comes
    engine.part_ids.add(header(3, frame_id="T3"), now=now)  # still within the window
    assert engine.decide(part(1), Verdict(True, "pass", 1.0, score=0.5))
    engine.watch(5.0)  # T2 arrived 10 s ago: past time_budget + sync.timeout + part_id.wait
    assert engine.flush(5)
    assert [(v["stamp"], v.get("part_id"), v["inputs"], v["decision"], v.get("error")) for v in sent] == [
        ("1.000000000", "T1", "image", "pass", None), ("2.000000000", "T2", "trigger", "reject", "no_frame")]
    assert engine.counters()["not_judged"] == {"no_frame": 1} and engine.counters()["part_id_unmatched"] == 0
    engine.watch(5.0)  # answered once
    assert engine.decide(part(2), Verdict(True, "pass", 1.0, score=0.5)) and engine.flush(5)  # its frame, too late
    assert sent[-1]["stamp"] == "2.000000000" and "part_id" not in sent[-1]  # the trigger had its one decision
    assert engine.settle_all("shutdown", "the node was stopped") == 1  # T3: still open at the stop
    assert (sent[-1]["part_id"], sent[-1]["error"], sent[-1]["inputs"]) == ("T3", "shutdown", "trigger")


def test_without_trigger_mode_an_id_without_frame_is_only_reported():
    engine, _ = engine_with(Store(), {"part_id.wait": 0.0, "sync.timeout": 0.0, "part_id.trigger": False})
    engine.part_ids.add(header(2, frame_id="T2"), now=time.monotonic() - 10.0)
    engine.watch(5.0)
    assert engine.flush(5) and engine.counters()["seq"] == 0 and engine.counters()["part_id_unmatched"] == 1
    assert engine.settle_all("shutdown", "stopped") == 0


# ------------------------------------------------------------------------------ tf
class Buffer:
    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

    def lookup_transform(self, target: str, source: str, stamp: Any, timeout: Any) -> Any:
        if self.transform is None:
            raise LookupError(f"{source} -> {target}")
        return SimpleNamespace(transform=self.transform)


def test_the_tf_fallback_is_said_as_it_is_when_the_lookup_fails():
    warned, params = [], {"extrinsics": None}
    lookup = tf_lookup(Buffer(), lambda kind, msg: warned.append((kind, msg)),
                       lambda: tf_fallback(params["extrinsics"]))
    assert lookup("camera", "lidar", None) is None
    assert warned[-1] == ("tf", f"no tf lidar -> camera at the cloud's stamp (LookupError): using {NO_FALLBACK}")
    params["extrinsics"] = UNIT  # set at run time
    assert lookup("camera", "lidar", None) is None
    assert warned[-1][1].endswith("using the extrinsics parameter")
    t = SimpleNamespace(translation=SimpleNamespace(x=1.0, y=2.0, z=3.0), rotation=SimpleNamespace(x=0, y=0, z=0, w=1))
    m = tf_lookup(Buffer(t), lambda *a: None, lambda: "")("camera", "lidar", None)
    assert np.allclose(m, [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])



def test_a_map_that_cannot_be_drawn_still_lets_the_decision_out(monkeypatch):
    """Output maps are drawn on the decision path (e.g. a scan's top view, whose raster refuses collinear points):
    when drawing fails the part still gets its decision, without maps, and the caller (the inference thread) goes on."""
    import cmdr_ros.ros.node.engine as engine_module

    store = Store()
    engine, published = engine_with(store)
    warned = []
    engine.warn = lambda kind, msg, level="warning": warned.append((kind, level))

    def broken(*a, **kw):
        raise CmdrError("collinear points: no plane")

    monkeypatch.setattr(engine_module, "map_messages", broken)
    assert engine.decide(part(1), Verdict(True, "reject", 1.0, score=2.0)) and engine.flush(5)
    assert published == [1] and store.rows == [1] and ("internal", "error") in warned
