"""The inspection node end to end on the simulated cell: a real `cmdr_inspection` process, real DDS, frames the
test generates (no ../shared needed, so every newcomer's `make test` starts the node).

Covers the ~/result schema (pinned), sequence numbers, part ids, run-time parameters (accepted and refused) and the
outputs of a judged part. Faults and load: test_node_faults.py; node vs `cmdr bag eval`: test_parity.py; real
MVTec 3D-AD frames: test_node_real.py.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from cmdr_ros.judge import is_reject
from cmdr_ros.ros.conversions import image_to_array, pointcloud2_fields, xyz_to_pointcloud2
from cmdr_ros.ros.node.outputs import RESULT_KEYS, RESULT_SCHEMA_VERSION
from node_harness import cell_camera_info, cell_frame, start_node, stamp_str, train_cell_model

pytestmark = pytest.mark.slow

# the ~/result keys a cell controller correlates on: changing them is a schema change (bump RESULT_SCHEMA_VERSION)
SCHEMA_V5 = ["schema", "seq", "stamp", "decision", "class_id", "judged", "score", "threshold", "error", "reason",
             "inputs", "part_id", "latency_ms", "inference_ms", "valid_ratio", "coverage", "chunks", "alignment", "transform",
             "mode", "model_id", "frame_id.image", "sample"]


def test_result_schema_is_pinned():
    assert RESULT_SCHEMA_VERSION == "5" and list(RESULT_KEYS) == SCHEMA_V5



@pytest.fixture(scope="module")
def rgbd_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("cell_rgbd")
    return train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")


@pytest.fixture(scope="module")
def rgbd_node(ros, rgbd_model, tmp_path_factory):
    # max_range 10 and time_budget 5 given as integers: rclpy alone refuses an int for a double and ends the node
    yield from start_node(ros, tmp_path_factory.mktemp("node"), {"checkpoint": rgbd_model["checkpoint"],
                                                                 "max_range": 10, "time_budget": 5},
                          (ros.image_pub, ros.points_pub))


def _keys_allowed(v: dict[str, str]) -> None:
    unknown = [k for k in v if k not in RESULT_KEYS and not k.startswith("frame_id.")]
    assert not unknown, unknown


def test_every_part_is_judged_with_the_documented_result(ros, rgbd_node, rgbd_model):
    seqs = []
    for i, defect in enumerate((None, "tear", "bump")):
        part = cell_frame(100 + i, defect)
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")),
                        part_id=f"P-{i:04d}")
        v = ros.result(stamp)
        _keys_allowed(v)
        assert v["schema"] == RESULT_SCHEMA_VERSION and v["stamp"] == stamp_str(stamp)
        assert v["judged"] == "true" and v["inputs"] == "image+points" and v["part_id"] == f"P-{i:04d}"
        assert v["alignment"] == "aligned" and v["transform"] == "identical_frames"
        assert v["mode"] == "rgbd" and v["model_id"] == rgbd_model["model_id"]
        assert v["frame_id.image"] == v["frame_id.points"] == "camera"
        score, thr = float(v["score"]), float(v["threshold"])
        assert thr == pytest.approx(rgbd_model["threshold"], abs=1e-6) and math.isfinite(score)
        assert v["decision"] == ("reject" if is_reject(score, thr) else "pass")
        assert float(v["coverage"]) == pytest.approx(float((part.xyz[..., 2] > 0).mean()), abs=1e-4)
        seqs.append(int(v["seq"]))
        # the outputs of a judged part, all stamped with its input stamp
        ros.wait_for("maps", lambda: all(ros.by_stamp(k, stamp) is not None
                                         for k in ("heatmap", "anomaly_map", "anomaly_cloud")))
        amap = image_to_array(ros.by_stamp("anomaly_map", stamp))
        heat = ros.by_stamp("heatmap", stamp)
        assert amap.shape == (64, 64) and amap.dtype == np.float32 and np.isfinite(amap).all()
        assert (heat.encoding, heat.height, heat.width) == ("bgr8", 64, 64)
        cloud = ros.by_stamp("anomaly_cloud", stamp)
        f = pointcloud2_fields(cloud, ("x", "y", "z", "intensity"))
        assert cloud.width == int((part.xyz[..., 2] > 0).sum()) and np.isfinite(f["intensity"]).all()
    assert seqs == list(range(seqs[0], seqs[0] + 3)), seqs
    with ros.cond:  # exactly one ~/reject per decision, in order
        rejects = [m.data for _, m in ros.received["reject"]]
        levels = [(m.status[0].level, m.status[0].message) for _, m in ros.received["result"]]
    assert len(rejects) == len(levels) >= 3
    # a reject is a value, not a fault: every judged part is OK, its message says the decision
    assert all(lvl == DiagnosticStatus.OK and (msg == "REJECT") == r for (lvl, msg), r in zip(levels, rejects))


def test_a_cloud_in_another_frame_without_transform_is_not_judged(ros, rgbd_node):
    """No tf, no extrinsics: the organized cloud of frame sensor_3d beside the camera image is not taken as aligned
    (it used to pass as 'aligned' with an identity transform); with cloud_registered it is, and says why."""
    part = cell_frame(150)
    stamp = ros.next_stamp()
    ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="sensor_3d")),
                    info=cell_camera_info())
    v = ros.result(stamp)
    assert v["judged"] == "false" and v["error"] == "no_transform" and v["decision"] == "reject", v
    assert "sensor_3d" in v["reason"] and "extrinsics" in v["reason"], v
    assert ros.set_parameter("cloud_registered", True) == (True, "")
    try:
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="sensor_3d")))
        v = ros.result(stamp)
        assert v["judged"] == "true" and v["alignment"] == "aligned" and v["transform"] == "registered", v
    finally:
        assert ros.set_parameter("cloud_registered", False) == (True, "")


def test_threshold_changes_at_run_time(ros, rgbd_node, rgbd_model):
    part = cell_frame(7, "bump")

    def send() -> dict[str, str]:
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")))
        return ros.result(stamp)

    score = float(send()["score"])
    for value, expect in ((score + 0.05, "pass"), (score - 0.05, "reject")):
        assert ros.set_parameter("threshold", value) == (True, "")
        v = send()
        assert float(v["score"]) == pytest.approx(score, abs=1e-5) and v["decision"] == expect
        assert float(v["threshold"]) == pytest.approx(value, abs=1e-6)
    assert ros.set_parameter("threshold", 1000) == (True, "")  # a whole number for a float parameter is accepted
    ros.diagnostics(lambda v: v.get("threshold") == "1000.000000", "threshold 1000 given as an integer")
    assert ros.set_parameter("threshold", -1.0)[0]  # back to the checkpoint's calibrated threshold
    want = f"{rgbd_model['threshold']:.6f}"
    ros.diagnostics(lambda v: v.get("threshold") == want, f"threshold {want}")


@pytest.mark.parametrize("name, value, why", [
    ("threshold", float("nan"), "finite|out of range"),  # ROS's own range check or ours: refused either way
    ("threshold", float("inf"), "finite|out of range"),
    ("on_error", "foo", "one of"),
    ("extrinsics", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "unit norm"),
    ("extrinsics", [0.0, 0.0, 0.0], "7"),
    ("time_budget", 0.0, "within|out of range"),
    ("overload", "drop", "one of"),
    ("max_range", -1.0, "within|out of range"),
    ("threshold", "abc", r"^parameter 'threshold' expects type double \(a number\), got type string: 'abc'$"),
    ("input.depth", 2.5, r"^parameter 'input.depth' expects type integer"),
])
def test_bad_run_time_parameter_is_refused_and_the_node_keeps_serving(ros, rgbd_node, name, value, why):
    ok, reason = ros.set_parameter(name, value)
    assert not ok and re.search(why, reason), reason
    assert rgbd_node.proc.poll() is None, rgbd_node.logs()
    part = cell_frame(3)
    stamp = ros.next_stamp()
    ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")))
    assert ros.result(stamp)["judged"] == "true"


def test_diagnostics_report_the_counters(ros, rgbd_node):
    d = ros.diagnostics(lambda v: int(v.get("decisions", 0)) >= 1, "decisions counted")
    for key in ("state", "decisions", "seq", "judged", "rejects", "not_judged", "late_results", "stuck", "waiting",
                "pending_sync", "latency_p50_ms", "threshold", "model_id"):
        assert key in d, key
    assert d["state"] == "active" and d["stuck"] == "0"
    with ros.cond:  # diagnostic_updater's conventions: '<node>: <task>' names, the cell as hardware_id
        statuses = {st.name: st for _, arr in ros.received["diagnostics"] for st in arr.status}
    assert {"cmdr_inspection: node", "cmdr_inspection: audit"} <= set(statuses)
    assert statuses["cmdr_inspection: node"].hardware_id == "/cmdr_inspection"  # hardware_id unset: the node


def test_stale_inputs_are_reported(ros, rgbd_node):
    def stale():
        for _, arr in ros.received["diagnostics"]:
            for st in arr.status:
                if st.name == "cmdr_inspection: node" and st.message.startswith("stale inputs"):
                    return st
        return None

    assert ros.set_parameter("diagnostics.stale_after", 0.5) == (True, "")
    try:
        st = ros.wait_for("a stale-input warning", stale, timeout=30)
        assert st.level == DiagnosticStatus.WARN, st
    finally:
        assert ros.set_parameter("diagnostics.stale_after", 0.0) == (True, "")


def test_an_incompatible_input_publisher_is_a_diagnostics_error_while_it_is_there(ros, rgbd_node):
    """A best-effort publisher on the reliable /image: ERROR while it exists; once it is gone the error clears (the
    count of events stays as a value)."""
    def node_status(pred):
        def find():
            for t, arr in ros.received["diagnostics"]:
                for st in arr.status:
                    if st.name == "cmdr_inspection: node" and pred(t, st, {kv.key: kv.value for kv in st.values}):
                        return t, st
            return None
        return find

    best_effort = ros.node.create_publisher(Image, "/image",
                                            QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    try:
        t_error, st = ros.wait_for("an incompatible-QoS error", node_status(
            lambda t, st, v: "incompatible QoS" in st.message), timeout=30)
        assert st.level == DiagnosticStatus.ERROR, st
        assert "input.reliability" in st.message and "/image (1)" in st.message, st.message
    finally:
        ros.node.destroy_publisher(best_effort)
    t_clear, st = ros.wait_for("the QoS error cleared", node_status(
        lambda t, st, v: t > t_error and v.get("qos_incompatible_now") == "0"), timeout=30)
    values = {kv.key: kv.value for kv in st.values}
    assert "incompatible QoS" not in st.message and st.level != DiagnosticStatus.ERROR, st
    assert int(values["qos_incompatible"]) >= 1, values  # the record stays
    print(f"\nQoS error cleared {t_clear - t_error:.2f} s after the first ERROR seen (publisher destroyed between)")
