"""The typed decision (``~/decision``: vision_msgs/Classification, ``~/vision_info``: VisionInfo): the class mapping,
the message definitions against a real vision_msgs install (RIHS01 hashes), the node on DDS, and the node without
vision_msgs (typed outputs off, everything else on).

The node tests need vision_msgs (a ROS install, or ``make setup`` / tools/build_vision_msgs.py in a pip-only venv)
and skip with that reason without it; the definitions and the fallback are checked everywhere."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from std_msgs.msg import Header

from cmdr_ros.judge import Verdict
from cmdr_ros.ros.node import typed_decision as td

REPO = Path(__file__).resolve().parents[1]
MSG_DIR = REPO / "tools" / "vision_msgs" / "msg"
# RIHS01 hashes of vision_msgs (4.x, jazzy/kilted) as a real install's generated code carries them: a controller
# built against the distribution's package matches the node only when these are equal
UPSTREAM_HASHES = {
    "vision_msgs/msg/ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "vision_msgs/msg/Classification": "RIHS01_f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "vision_msgs/msg/VisionInfo": "RIHS01_95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
}
needs_vision_msgs = pytest.mark.skipif(not td.AVAILABLE, reason=td.UNAVAILABLE)


# ------------------------------------------------------------------------------ the class a controller acts on
@pytest.mark.parametrize("verdict, cls", [
    (Verdict(True, "reject", 1.0, score=1.5), "reject"),
    (Verdict(True, "pass", 1.0, score=0.5), "pass"),
    (Verdict(False, "reject", 1.0, kind="timeout"), "reject"),  # not judged: the fail-safe is the action
    (Verdict(False, "pass", 1.0, kind="timeout"), "pass"),
    (Verdict(False, "skip", 1.0, kind="unmatched"), "not_judged"),  # no action from the node
])
def test_class_is_the_action(verdict, cls):
    assert td.class_of(verdict) == cls


def test_model_version_fits_int32():
    assert td.model_version("0123abcdef99") == 0x0123abc
    assert td.model_version("fffffffffff") == 0xfffffff < 2 ** 31
    assert td.model_version("untrained") == 0


@needs_vision_msgs
def test_classification_carries_the_header_class_and_score():
    h = Header(frame_id="camera")
    h.stamp.sec, h.stamp.nanosec = 12, 345
    msg = td.classification(h, Verdict(True, "reject", 1.0, score=1.25))
    assert msg.header == h and len(msg.results) == 1
    assert (msg.results[0].class_id, msg.results[0].score) == ("reject", 1.25)
    msg = td.classification(h, Verdict(False, "skip", 1.0, kind="degraded"))
    assert msg.results[0].class_id == "not_judged" and math.isnan(msg.results[0].score)
    assert td.classification(None, Verdict(False, "reject", 1.0, kind="unmatched")).header == Header()


@needs_vision_msgs
def test_vision_info_names_the_model():
    h = Header()
    h.stamp.sec = 7
    msg = td.vision_info(h.stamp, "rgbd", "0123abcdef99", "/models/a.ckpt", "rgb_stats+fpfh")
    assert msg.method == "cmdr-iad rgbd rgb_stats+fpfh model 0123abcdef99"
    assert (msg.database_location, msg.database_version, msg.header.stamp.sec) == ("/models/a.ckpt", 0x0123abc, 7)


@needs_vision_msgs
def test_decision_messages_and_result_agree():
    from cmdr_ros.ros.node.outputs import decision_messages, result_values

    verdict = Verdict(False, "pass", 1.0, kind="timeout", reason="late")
    values = result_values(None, verdict, None, seq=3, mode="rgbd", model_id="m", inputs="image")
    out = decision_messages(None, verdict, values)
    assert list(out) == ["result", "decision", "reject"]
    assert values["class_id"] == out["decision"].results[0].class_id == "pass"


# ------------------------------------------------------------------------------ definitions = upstream
def _fields(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_bag_definitions_hash_as_upstream():
    """What bags record the typed decision with (rosbags, no vision_msgs needed) hashes as a real install."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)  # as record.BagWriter: std_msgs, builtin_interfaces, no vision_msgs
    td.register_types(store)
    assert {name: store.hash_rihs01(name) for name in UPSTREAM_HASHES} == UPSTREAM_HASHES


def test_built_msg_files_have_the_bag_definitions():
    """tools/vision_msgs/msg (what a pip-only venv builds) declares exactly the fields the bags record."""
    for name, text in td.MSG_DEFINITIONS.items():
        msg_file = MSG_DIR / f"{name.rsplit('/', 1)[1]}.msg"
        expected = [re.sub(r"^vision_msgs/", "", f) for f in _fields(text)]
        assert _fields(msg_file.read_text()) == expected, msg_file


def test_built_package_is_ignored_by_colcon():
    """A workspace holding this repository must not build the subset over the distribution's vision_msgs."""
    assert (MSG_DIR.parent / "COLCON_IGNORE").is_file()


@needs_vision_msgs
def test_installed_vision_msgs_has_the_upstream_type_hashes():
    """The vision_msgs rclpy loads (the distribution's or the one built here) offers upstream's types on DDS."""
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=_domain())
    try:
        node = rclpy.create_node("typed_hash_probe", context=ctx)
        got = {}
        for name, msg_type in (("Classification", td.Classification), ("VisionInfo", td.VisionInfo)):
            node.create_publisher(msg_type, f"/typed_probe_{name}", 1)
            (info,) = node.get_publishers_info_by_topic(f"/typed_probe_{name}")
            got[info.topic_type] = str(info.topic_type_hash)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert got == {k: v for k, v in UPSTREAM_HASHES.items() if "ObjectHypothesis" not in k}


def _domain() -> int:
    from domains import new_domain

    return new_domain()


# ------------------------------------------------------------------------------ without vision_msgs
@pytest.fixture
def no_vision_msgs(tmp_path) -> dict[str, str]:
    """An environment in which ``import vision_msgs`` fails (a package of that name that raises first on the path)."""
    blocker = tmp_path / "blocker" / "vision_msgs"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('vision_msgs hidden by the test')\n")
    path = os.pathsep.join([str(blocker.parent), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_without_vision_msgs_the_typed_outputs_are_off(no_vision_msgs):
    code = """
from cmdr_ros.judge import Verdict
from cmdr_ros.ros import topics
from cmdr_ros.ros.node import typed_decision as td, wiring as node_io
from cmdr_ros.ros.node.outputs import decision_messages, result_values
assert not td.AVAILABLE and "vision_msgs is not installed" in td.UNAVAILABLE and td.STATUS.startswith("off")
assert "decision" not in topics.OUTPUT_TYPES and "vision_info" not in topics.OUTPUT_TYPES
v = Verdict(True, "reject", 1.0, score=2.0)
values = result_values(None, v, None, seq=1, mode="rgbd", model_id="m", inputs="image")
assert list(decision_messages(None, v, values)) == ["result", "reject", "score"] and values["class_id"] == "reject"
class Log:
    said = []
    def warning(self, text): self.said.append(text)
class Node:
    log = Log()
    def get_logger(self): return self.log
assert node_io.typed_outputs(Node()) == {} and Node.log.said == [td.UNAVAILABLE]
node_io.announce_model({}, None, None, "x")  # nothing to announce
print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], env=no_vision_msgs, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


# ------------------------------------------------------------------------------ the node on DDS
@pytest.fixture(scope="module")
def cell_model(tmp_path_factory):
    from node_harness import train_cell_model

    d = tmp_path_factory.mktemp("typed_cell")
    return train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")


def _decision(ros, stamp):
    from node_harness import stamp_ns

    def find():
        with_stamp = [m for _, m in ros.received["decision"] if stamp_ns(m.header.stamp) == stamp_ns(stamp)]
        return with_stamp or None
    return ros.wait_for("a ~/decision with the part's stamp", find)


@pytest.mark.slow
@needs_vision_msgs
def test_node_publishes_one_stamped_decision_per_part_and_latched_vision_info(ros, cell_model, tmp_path):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from cmdr_ros.ros.conversions import xyz_to_pointcloud2
    from cmdr_ros.ros.topics import output_topic
    from node_harness import cell_frame, start_node

    node = start_node(ros, tmp_path, {"checkpoint": cell_model["checkpoint"], "time_budget": 30.0},
                      (ros.image_pub, ros.points_pub))
    next(node)
    try:
        # a judged part: class and score as the ~/result says
        part = cell_frame(200)
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")), frame="camera")
        v = ros.result(stamp)
        (msg,) = _decision(ros, stamp)
        assert msg.header.frame_id == "camera" and len(msg.results) == 1
        assert v["judged"] == "true" and msg.results[0].class_id == v["decision"] == v["class_id"]
        assert msg.results[0].score == pytest.approx(float(v["score"]), abs=1e-6)

        # not judged (no measured point): the fail-safe on_error is the class, the score NaN; skip -> not_judged
        for on_error, cls in (("reject", "reject"), ("pass", "pass"), ("skip", "not_judged")):
            assert ros.set_parameter("on_error", on_error) == (True, "")
            stamp = ros.next_stamp()
            ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(np.full_like(part.xyz, np.nan),
                                                                 Header(frame_id="camera")), frame="camera")
            v = ros.result(stamp)
            (msg,) = _decision(ros, stamp)
            assert v["judged"] == "false" and v["decision"] == on_error, v
            assert msg.results[0].class_id == v["class_id"] == cls and math.isnan(msg.results[0].score)

        # a subscriber joining late still gets the model in use
        got = []
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        ros.received.setdefault("late", [])
        ros.node.create_subscription(td.VisionInfo, output_topic("vision_info"), lambda m: ros._record("late", m), qos)
        infos = ros.wait_for("the latched ~/vision_info", lambda: ros.received["late"])
        info = infos[0][1]
        model_id = cell_model["model_id"]
        assert info.method.startswith("cmdr-iad rgbd ") and info.method.endswith(f"model {model_id}")
        assert info.database_location == str(cell_model["checkpoint"])
        assert info.database_version == td.model_version(model_id)
        diag = ros.diagnostics(lambda d: "decision_topic" in d, "decision_topic")
        assert diag["decision_topic"] == "vision_msgs/Classification"
    finally:
        next(node, None)


@pytest.mark.slow
def test_node_without_vision_msgs_runs_and_says_so(ros, cell_model, tmp_path, no_vision_msgs, monkeypatch):
    from cmdr_ros.ros.conversions import xyz_to_pointcloud2
    from node_harness import cell_frame, start_node

    monkeypatch.setenv("PYTHONPATH", no_vision_msgs["PYTHONPATH"])  # the node process imports with this path
    node = start_node(ros, tmp_path, {"checkpoint": cell_model["checkpoint"], "time_budget": 30.0},
                      (ros.image_pub, ros.points_pub))
    proc = next(node)
    try:
        part = cell_frame(300)
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")), frame="camera")
        v = ros.result(stamp)
        assert v["judged"] == "true" and v["class_id"] == v["decision"]
        diag = ros.diagnostics(lambda d: "decision_topic" in d, "decision_topic")
        assert diag["decision_topic"] == "off: vision_msgs is not installed"
        assert "vision_msgs is not installed" in proc.stderr()
    finally:
        next(node, None)


@needs_vision_msgs
def test_the_controller_example_of_the_docs_acts_on_each_class(capsys):
    """docs/controller_decisions.md's subscriber callback, run on the three classes (the spinning part left out)."""
    page = (REPO / "docs" / "controller_decisions.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    namespace: dict = {}
    exec(compile(code.split("\nrclpy.init()")[0], "controller_decisions.md", "exec"), namespace)
    h = Header()
    h.stamp.sec, h.stamp.nanosec = 5, 7
    for verdict in (Verdict(True, "reject", 1.0, score=2.0), Verdict(False, "pass", 1.0, kind="timeout"),
                    Verdict(False, "skip", 1.0, kind="unmatched")):
        namespace["on_decision"](td.classification(h, verdict))
    assert capsys.readouterr().out.splitlines() == [
        "part 5.000000007: reject (score 2.000)", "part 5.000000007: pass",
        "part 5.000000007: no decision, divert to manual inspection"]
