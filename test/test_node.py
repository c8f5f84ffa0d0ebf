"""The inspection node end to end: a real `cmdr_inspection` process, real DDS, real MVTec 3D-AD frames.

Checkpoints are trained here (lite preset, 2 epochs) on a subset of the real cable_gland training samples.
Three node processes run one after the other (one per test class, so their topics never overlap): an rgbd node
fed pixel-aligned organized clouds (results, run-time threshold, malformed / unsynchronized input, QoS mismatch,
clean exit), an rgbd node fed an unorganized cloud in another frame (projection with CameraInfo + extrinsics) and
a 3D-only node fed an unorganized cloud (rasterization). The test side is a plain rclpy node in a private context
on a random ROS domain, spun in a thread. Run with ``-s`` to see the measured latencies.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Bool, Header  # noqa: E402

from cmdr_ros.config import preset  # noqa: E402
from cmdr_ros.data.mvtec3d import load_rgb, load_xyz  # noqa: E402
from cmdr_ros.geometry import CameraIntrinsics, make_transform, transform_points  # noqa: E402
from cmdr_ros.ros.conversions import (array_to_image, dict_to_camera_info, image_to_array,  # noqa: E402
                                      pointcloud2_fields, xyz_to_pointcloud2)

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ID = random.SystemRandom().randint(1, 101)  # this module's own DDS domain (0..101 avoids ephemeral ports)
TRAIN_SAMPLES = 8  # of the 15 real training samples: enough for a lite model, half the training time
FRAMES = ("good/000", "cut/000", "hole/000", "bent/000")
NODE_START_S = 120.0
RESULT_S = 60.0
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def train_subset(cable_gland_dir, tmp_path_factory) -> Path:
    """An MVTec class folder of symlinks: the first TRAIN_SAMPLES train/good samples and all of validation/good
    (symlinks resolve to the real files, so the shared preprocessing cache is hit)."""
    root = tmp_path_factory.mktemp("cable_gland_subset") / "cable_gland"
    for split, n in (("train", TRAIN_SAMPLES), ("validation", None)):
        for kind, ext in (("rgb", ".png"), ("xyz", ".tiff")):
            src = sorted((cable_gland_dir / split / "good" / kind).glob(f"*{ext}"))[:n]
            dst = root / split / "good" / kind
            dst.mkdir(parents=True)
            for f in src:
                (dst / f.name).symlink_to(f)
    return root


def _train(data: Path, mode: str, out: Path, cache: Path) -> dict[str, Any]:
    from cmdr_ros.cli.train import train_model

    config = preset("lite", mode)
    config.train.epochs = 2
    return train_model(data, config, out, device="cpu", cache_dir=str(cache), progress=False)


@pytest.fixture(scope="module")
def rgbd_model(train_subset, tmp_path_factory, preprocess_cache) -> dict[str, Any]:
    return _train(train_subset, "rgbd", tmp_path_factory.mktemp("rgbd") / "rgbd.ckpt", preprocess_cache)


@pytest.fixture(scope="module")
def model_3d(train_subset, tmp_path_factory, preprocess_cache) -> dict[str, Any]:
    return _train(train_subset, "3d", tmp_path_factory.mktemp("m3d") / "3d.ckpt", preprocess_cache)


# ------------------------------------------------------------------------------------------------ frames
def load_frame(cable_gland_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    defect, sid = name.split("/")
    d = cable_gland_dir / "test" / defect
    return load_rgb(d / "rgb" / f"{sid}.png"), load_xyz(d / "xyz" / f"{sid}.tiff")


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """The measured points of an organized MVTec map (invalid = 0), in row-major pixel order."""
    flat = xyz.reshape(-1, 3)
    return flat[np.abs(flat).sum(1) > 0]


def stamp_str(stamp: Any) -> str:
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def values_of(arr: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for kv in arr.status[0].values}


# ------------------------------------------------------------------------------------------------ test side
# Fast DDS's default UDP transport drops datagrams of multi-MB bursts (an image + a cloud) on loopback and repairs
# them at the next heartbeat, seconds later; LARGE_DATA (shared memory + TCP) delivers them in milliseconds.
# Set FASTDDS_BUILTIN_TRANSPORTS=DEFAULT to measure the default transport.
FASTDDS_TRANSPORTS = os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")


class RosSide:
    """An rclpy node in its own context, spun in a thread, recording what the inspection node publishes."""

    OUTPUTS = {"result": (DiagnosticArray, "/cmdr_inspection/result"), "reject": (Bool, "/cmdr_inspection/reject"),
               "heatmap": (Image, "/cmdr_inspection/heatmap"), "anomaly_map": (Image, "/cmdr_inspection/anomaly_map"),
               "anomaly_cloud": (PointCloud2, "/cmdr_inspection/anomaly_cloud"),
               "diagnostics": (DiagnosticArray, "/diagnostics")}

    def __init__(self) -> None:
        self.context = rclpy.Context()
        with pytest.MonkeyPatch.context() as env:  # read once, when the DDS participant is created
            env.setenv("FASTDDS_BUILTIN_TRANSPORTS", FASTDDS_TRANSPORTS)
            rclpy.init(context=self.context, domain_id=DOMAIN_ID, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("cmdr_node_test", context=self.context)
        self.cond = threading.Condition()
        self.received: dict[str, list[tuple[float, Any]]] = {k: [] for k in self.OUTPUTS}
        for key, (msg_type, topic) in self.OUTPUTS.items():
            self.node.create_subscription(msg_type, topic, lambda m, k=key: self._record(k, m), RELIABLE)
        self.image_pub = self.node.create_publisher(Image, "/image", RELIABLE)
        self.points_pub = self.node.create_publisher(PointCloud2, "/points", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", RELIABLE)
        self.param_client = self.node.create_client(SetParameters, "/cmdr_inspection/set_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _record(self, key: str, msg: Any) -> None:
        with self.cond:
            self.received[key].append((time.monotonic(), msg))
            self.cond.notify_all()

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def clear(self) -> None:
        with self.cond:
            for v in self.received.values():
                v.clear()

    def wait_for(self, what: str, pred: Callable[[], Any], timeout: float = RESULT_S) -> Any:
        """Block until ``pred()`` (called under the lock) is truthy; return its value."""
        with self.cond:
            value = self.cond.wait_for(pred, timeout)
        assert value, f"timed out after {timeout} s waiting for {what}"
        return value

    def by_stamp(self, key: str, stamp: Any) -> tuple[float, Any] | None:
        return next(((t, m) for t, m in self.received[key] if m.header.stamp == stamp), None)

    def now(self) -> Any:
        return self.node.get_clock().now().to_msg()

    def publish_frame(self, rgb: np.ndarray | None, cloud: PointCloud2, stamp: Any, info: CameraInfo | None = None,
                      image_frame: str = "camera") -> float:
        """Publish one synchronized set (CameraInfo first, so the node holds it when the set matches)."""
        if info is not None:
            info.header = Header(stamp=stamp, frame_id=image_frame)
            self.info_pub.publish(info)
            time.sleep(0.1)
        cloud.header.stamp = stamp
        t0 = time.monotonic()
        if rgb is not None:
            self.image_pub.publish(array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id=image_frame)))
        self.points_pub.publish(cloud)
        return t0

    def frame_outputs(self, stamp: Any, n_rejects_before: int, maps: bool = True) -> dict[str, Any]:
        """Wait for the result (and reject, maps, cloud) of the frame stamped ``stamp``."""
        keys = ("result", "heatmap", "anomaly_map", "anomaly_cloud") if maps else ("result",)
        self.wait_for(f"outputs {keys} stamped {stamp_str(stamp)}",
                      lambda: all(self.by_stamp(k, stamp) for k in keys)
                      and len(self.received["reject"]) > n_rejects_before)
        with self.cond:
            out = {k: self.by_stamp(k, stamp) for k in keys}
            assert len(self.received["reject"]) == n_rejects_before + 1, "one ~/reject per frame"
            out["reject"] = self.received["reject"][-1]
        return out

    def node_diagnostics(self, pred: Callable[[dict[str, str]], bool], what: str, since: float = 0.0) -> dict[str, str]:
        """The first /diagnostics report of the node, received after ``since`` (monotonic), satisfying ``pred``."""
        def find() -> dict[str, str] | None:
            for t, arr in self.received["diagnostics"]:
                for st in arr.status:
                    v = {kv.key: kv.value for kv in st.values}
                    if t > since and st.name == "cmdr_inspection: node" and pred(v):
                        return v
            return None
        return self.wait_for(f"/diagnostics with {what}", find, timeout=20)

    def set_threshold(self, value: float) -> None:
        assert self.param_client.wait_for_service(timeout_sec=10), "no /cmdr_inspection/set_parameters service"
        req = SetParameters.Request(parameters=[ParameterMsg(
            name="threshold", value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value)))])
        future = self.param_client.call_async(req)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(10), "set_parameters timed out"
        assert future.result().results[0].successful, future.result().results[0].reason


@pytest.fixture(scope="module")
def ros():
    tester = RosSide()
    try:
        yield tester
    finally:
        tester.close()


class NodeProcess:
    """``python -m cmdr_ros.ros.inspection_node`` with parameters, its stdout/stderr captured to files."""

    def __init__(self, tmp: Path, params: dict[str, Any]) -> None:
        args = [sys.executable, "-m", "cmdr_ros.ros.inspection_node", "--ros-args"]
        for k, v in params.items():
            args += ["-p", f"{k}:={v}"]
        env = {**os.environ, "ROS_DOMAIN_ID": str(DOMAIN_ID), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
               "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONUNBUFFERED": "1",
               "FASTDDS_BUILTIN_TRANSPORTS": FASTDDS_TRANSPORTS}
        self.err_path, self.out_path = tmp / "node.stderr", tmp / "node.stdout"
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=REPO_ROOT)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def logs(self) -> str:
        return f"--- node stdout\n{self.out_path.read_text(errors='replace')}\n--- node stderr\n{self.stderr()}"

    def wait_active(self, ros: RosSide, inputs: tuple[Any, ...]) -> float:
        """Wait until the node logged 'active' and every input publisher matched its subscription."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < NODE_START_S:
            assert self.proc.poll() is None, f"node exited with {self.proc.returncode}\n{self.logs()}"
            if "active: subscribed" in self.stderr() and all(p.get_subscription_count() == 1 for p in inputs):
                time.sleep(0.3)  # let the output topics' discovery settle too
                return time.monotonic() - t0
            time.sleep(0.2)
        pytest.fail(f"node not active after {NODE_START_S} s\n{self.logs()}")

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Signal the node, wait for it; kill it if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_node(ros: RosSide, tmp: Path, params: dict[str, Any], inputs: tuple[Any, ...]):
    """Generator body of a node fixture: start, wait until active, yield, always stop (and wait until gone)."""
    ros.clear()
    node = NodeProcess(tmp, {"device": "cpu", "diagnostics_period": 0.5, **params})
    try:
        node.startup_s = node.wait_active(ros, inputs)
        print(f"\n[node] active {node.startup_s:.1f} s after start ({params.get('checkpoint')})")
        yield node
    finally:
        node.stop()
        t0 = time.monotonic()  # the next node of the module must not meet this one's subscriptions
        while any(p.get_subscription_count() for p in inputs) and time.monotonic() - t0 < 10:
            time.sleep(0.1)


def check_frame_outputs(out: dict[str, Any], stamp: Any, size: tuple[int, int] | None) -> dict[str, str]:
    """Checks common to every judged frame; returns the result values."""
    _, arr = out["result"]
    v = values_of(arr)
    assert len(arr.status) == 1 and arr.status[0].name == "cmdr_inspection: part"
    assert arr.header.stamp == stamp and v["stamp"] == stamp_str(stamp)
    score, threshold = float(v["score"]), float(v["threshold"])
    reject = out["reject"][1].data
    assert reject == (score >= threshold) and v["decision"] == ("reject" if reject else "pass")
    assert arr.status[0].level == (DiagnosticStatus.ERROR if reject else DiagnosticStatus.OK), arr.status[0]
    heat, amap = out["heatmap"][1], out["anomaly_map"][1]
    assert (heat.encoding, amap.encoding) == ("bgr8", "32FC1")
    assert (heat.height, heat.width) == (amap.height, amap.width)
    if size is not None:
        assert (amap.height, amap.width) == size
    assert heat.header.stamp == stamp and amap.header.stamp == stamp
    return v


# ============================================================================ rgbd, pixel-aligned clouds
@pytest.fixture(scope="class")
def rgbd_node(ros, rgbd_model, tmp_path_factory):
    yield from start_node(ros, tmp_path_factory.mktemp("node_rgbd"), {"checkpoint": rgbd_model["checkpoint"]},
                          (ros.image_pub, ros.points_pub, ros.info_pub))


@pytest.mark.usefixtures("rgbd_node")
class TestRgbdAligned:
    def _send(self, ros: RosSide, rgb: np.ndarray, xyz: np.ndarray, info: CameraInfo | None = None):
        stamp, n = ros.now(), len(ros.received["reject"])
        t0 = ros.publish_frame(rgb, xyz_to_pointcloud2(xyz, Header(frame_id="camera")), stamp, info)
        out = ros.frame_outputs(stamp, n)
        return stamp, out, out["result"][0] - t0

    def test_every_frame_gets_a_result(self, ros, cable_gland_dir, rgbd_model):
        cam = CameraIntrinsics.from_mvtec_json(cable_gland_dir / "calibration" / "camera_parameters.json")
        lat = []
        for name in FRAMES:
            rgb, xyz = load_frame(cable_gland_dir, name)
            stamp, out, e2e = self._send(ros, rgb, xyz, dict_to_camera_info(cam.to_dict()))
            v = check_frame_outputs(out, stamp, (400, 400))
            assert v["alignment"] == "aligned" and v["mode"] == "rgbd" and v["model_id"] == rgbd_model["model_id"]
            assert v["frame_id.image"] == v["frame_id.points"] == "camera"
            assert float(v["threshold"]) == pytest.approx(rgbd_model["threshold"], abs=1e-6)
            measured = np.abs(xyz).sum(-1) > 0
            assert float(v["coverage"]) == pytest.approx(measured.mean(), abs=1e-4)
            # anomaly cloud: the measured points themselves, each with its pixel's anomaly
            amap = image_to_array(out["anomaly_map"][1])
            assert amap.dtype == np.float32 and np.isfinite(amap).all() and amap.max() > 0
            cloud = out["anomaly_cloud"][1]
            f = pointcloud2_fields(cloud, ("x", "y", "z", "intensity"))
            assert cloud.header.frame_id == "camera" and cloud.width == measured.sum()
            np.testing.assert_array_equal(np.stack([f["x"], f["y"], f["z"]], -1)[0], valid_points(xyz))
            np.testing.assert_array_equal(f["intensity"][0], amap[measured])
            lat.append((name, e2e * 1e3, float(v["latency_ms"]), float(v["score"]), v["decision"]))
        print("\n[latency rgbd lite, cpu] frame: publish->result ms, node latency_ms, score, decision")
        for row in lat:
            print("  %-9s %7.0f %7.0f  %.4f %s" % row)

    def test_threshold_changes_at_run_time(self, ros, cable_gland_dir, rgbd_model):
        rgb, xyz = load_frame(cable_gland_dir, "bent/000")
        stamp, out, _ = self._send(ros, rgb, xyz)
        score = float(check_frame_outputs(out, stamp, (400, 400))["score"])
        for value, expect in ((score + 0.05, False), (score - 0.05, True)):
            ros.set_threshold(value)
            stamp, out, _ = self._send(ros, rgb, xyz)
            v = check_frame_outputs(out, stamp, (400, 400))
            assert float(v["score"]) == pytest.approx(score, abs=1e-4)  # same frame, same score
            assert float(v["threshold"]) == pytest.approx(value, abs=1e-6) and out["reject"][1].data is expect
        t_set = time.monotonic()
        ros.set_threshold(-1.0)  # back to the checkpoint's calibrated threshold
        d = ros.node_diagnostics(lambda v: True, "a report after threshold -1", since=t_set)
        assert float(d["threshold"]) == pytest.approx(rgbd_model["threshold"], abs=1e-6)

    def test_bad_and_unmatched_inputs_are_counted(self, ros, cable_gland_dir):
        rgb, xyz = load_frame(cable_gland_dir, "good/000")
        # a truncated cloud with a valid image at the same stamp: judged as not judgeable, rejected
        stamp, n = ros.now(), len(ros.received["reject"])
        bad = xyz_to_pointcloud2(xyz)
        bad.data = bad.data[: len(bad.data) // 2]
        ros.publish_frame(rgb, bad, stamp)
        out = ros.frame_outputs(stamp, n, maps=False)
        arr = out["result"][1]
        v = values_of(arr)
        assert arr.status[0].level == DiagnosticStatus.WARN and arr.status[0].message.startswith("not judged")
        assert v["decision"] == "reject" and v["error"] == "ConversionError" and "bytes" in v["reason"]
        assert v["stamp"] == stamp_str(stamp) and out["reject"][1].data is True
        assert not ros.by_stamp("anomaly_map", stamp)
        # an image whose stamp matches no cloud
        lone = ros.now()
        lone.sec -= 100
        ros.image_pub.publish(array_to_image(rgb, "rgb8", Header(stamp=lone, frame_id="camera")))
        d = ros.node_diagnostics(lambda v: int(v["unmatched_sync"]) >= 1 and int(v["errors"]) >= 1,
                                 "errors and unmatched_sync counted")
        assert int(d["errors.ConversionError"]) == 1 and int(d["errors"]) == 1
        assert not ros.by_stamp("result", lone)
        # the node keeps serving; afterwards exactly the lone image is unmatched (it waits for a partner in vain)
        stamp, out, _ = self._send(ros, rgb, xyz)
        v = check_frame_outputs(out, stamp, (400, 400))
        assert v["alignment"] == "aligned" and "error" not in v
        d = ros.node_diagnostics(lambda v: True, "a report after the frame", since=out["result"][0])
        assert (d["unmatched_sync"], d["errors"]) == ("1", "1"), d

    def test_qos_mismatch_is_reported(self, ros, rgbd_node):
        best_effort = ros.node.create_publisher(
            PointCloud2, "/points", QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT),
            event_callbacks=PublisherEventCallbacks(incompatible_qos=lambda _: None))  # this side is expected
        try:
            ros.node_diagnostics(lambda v: int(v["qos_incompatible"]) > 0, "qos_incompatible > 0")
            t0 = time.monotonic()
            while "input.reliability" not in rgbd_node.stderr() and time.monotonic() - t0 < 10:
                time.sleep(0.1)
            line = next(ln for ln in rgbd_node.stderr().splitlines() if "input.reliability" in ln)
            assert "[ERROR]" in line and "[qos]" in line and "incompatible QoS" in line, line
        finally:
            ros.node.destroy_publisher(best_effort)

    def test_bag_play_into_the_node(self, ros, cable_gland_dir, tmp_path):
        """`cmdr bag from-dataset` -> `cmdr bag play` (play_bag) -> the running node: a result per recorded part."""
        from cmdr_ros.ros.bags import TOPICS, bag_from_dataset, play_bag, read_messages

        data = tmp_path / "cable_gland"
        (data / "calibration").mkdir(parents=True)
        (data / "calibration" / "camera_parameters.json").symlink_to(
            cable_gland_dir / "calibration" / "camera_parameters.json")
        for name in ("good/000", "cut/000"):
            defect, sid = name.split("/")
            for sub, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
                (data / "test" / defect / sub).mkdir(parents=True, exist_ok=True)
                (data / "test" / defect / sub / f"{sid}.{ext}").symlink_to(
                    cable_gland_dir / "test" / defect / sub / f"{sid}.{ext}")
        bag = tmp_path / "bag"
        bag_from_dataset(data, bag, rate=2.0)
        parts = {stamp: msg.data for _, stamp, msg in read_messages(bag, [TOPICS["sample"]])}
        assert sorted(parts.values()) == ["cut/000", "good/000"]
        remap = {TOPICS["image"]: "/image", TOPICS["points"]: "/points", TOPICS["info"]: "/camera_info"}
        # 1/8 speed: one part every 4 s, slower than a frame's inference, so the newest-wins queue drops none
        sent = play_bag(bag, rate=0.125, node=ros.node, remap=remap, wait=5.0,
                        topics=[TOPICS["image"], TOPICS["points"], TOPICS["info"]])
        assert sent == 6

        def judged():
            got = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for _, m in ros.received["result"]}
            return set(parts) <= got

        ros.wait_for("a result for every played part", judged)
        for _, arr in ros.received["result"]:
            key = arr.header.stamp.sec * 1_000_000_000 + arr.header.stamp.nanosec
            if key in parts:
                v = values_of(arr)
                assert v["alignment"] == "aligned" and "score" in v, (parts[key], v)

    def test_sigint_during_inference_exits_cleanly(self, ros, rgbd_node, cable_gland_dir):
        rgb, xyz = load_frame(cable_gland_dir, "good/000")
        ros.publish_frame(rgb, xyz_to_pointcloud2(xyz, Header(frame_id="camera")), ros.now())
        time.sleep(1.0)  # the set is matched within milliseconds; inference takes seconds
        assert rgbd_node.stop(signal.SIGINT) == 0, rgbd_node.logs()
        assert "Traceback" not in rgbd_node.stderr() and "terminate called" not in rgbd_node.stderr()


# ============================================================================ rgbd, cloud in another frame
# camera -> sensor: the cloud is published in the frame of a sensor mounted beside the camera
T_SENSOR_FROM_CAMERA = make_transform([0.12, -0.05, 0.30], Rotation.from_euler("xyz", [8, -12, 25], degrees=True)
                                      .as_quat())


def _pose(T: np.ndarray) -> str:
    """A 4x4 transform as the node's ``extrinsics`` parameter value [x, y, z, qx, qy, qz, qw]."""
    vals = [*T[:3, 3], *Rotation.from_matrix(T[:3, :3]).as_quat()]
    return "[" + ",".join(f"{x:.12f}" for x in vals) + "]"


@pytest.fixture(scope="class")
def projected_node(ros, rgbd_model, tmp_path_factory):
    yield from start_node(ros, tmp_path_factory.mktemp("node_proj"),
                          {"checkpoint": rgbd_model["checkpoint"], "use_tf": "false",
                           "extrinsics": _pose(np.linalg.inv(T_SENSOR_FROM_CAMERA))},
                          (ros.image_pub, ros.points_pub, ros.info_pub))


@pytest.mark.usefixtures("projected_node")
class TestRgbdProjected:
    def test_unorganized_cloud_in_another_frame_is_projected(self, ros, cable_gland_dir):
        cam = CameraIntrinsics.from_mvtec_json(cable_gland_dir / "calibration" / "camera_parameters.json")
        for name in FRAMES[:2]:
            rgb, xyz = load_frame(cable_gland_dir, name)
            pts = transform_points(valid_points(xyz), T_SENSOR_FROM_CAMERA).astype(np.float32)
            cloud = xyz_to_pointcloud2(pts, Header(frame_id="sensor"))
            stamp, n = ros.now(), len(ros.received["reject"])
            t0 = ros.publish_frame(rgb, cloud, stamp, dict_to_camera_info(cam.to_dict()))
            out = ros.frame_outputs(stamp, n)
            v = check_frame_outputs(out, stamp, (400, 400))
            assert v["alignment"] == "projected"
            assert (v["frame_id.image"], v["frame_id.points"], v["frame_id.camera_info"]) == ("camera", "sensor",
                                                                                              "camera")
            aligned = float((np.abs(xyz).sum(-1) > 0).mean())
            print(f"\n[projected] {name}: coverage {float(v['coverage']):.4f} (aligned {aligned:.4f}), "
                  f"score {float(v['score']):.4f}, publish->result {1e3 * (out['result'][0] - t0):.0f} ms, "
                  f"node {v['latency_ms']} ms")
            assert float(v["coverage"]) == pytest.approx(aligned, abs=0.03)
            cloud_out = out["anomaly_cloud"][1]
            f = pointcloud2_fields(cloud_out, ("x", "y", "z", "intensity"))
            assert cloud_out.header.frame_id == "sensor" and cloud_out.width == len(pts)
            np.testing.assert_array_equal(np.stack([f["x"], f["y"], f["z"]], -1)[0], pts)
            # every point's anomaly is read at (about) the pixel it came from: the MVTec maps agree with the
            # calibration to ~1 px, so the value must be in the 5x5 neighbourhood of its original pixel
            intensity = f["intensity"][0]
            on_part = intensity > 0
            assert np.isfinite(intensity).all() and on_part.mean() > 0.1
            amap = np.pad(image_to_array(out["anomaly_map"][1]), 2, constant_values=np.nan)
            rows, cols = np.nonzero(np.abs(xyz).sum(-1) > 0)
            near = np.stack([amap[rows + 2 + dr, cols + 2 + dc] for dr in range(-2, 3) for dc in range(-2, 3)], 1)
            found = (near == intensity[:, None]).any(1)
            assert found[on_part].mean() > 0.99 and found.mean() > 0.99, (found[on_part].mean(), found.mean())


# ============================================================================ 3D only, unorganized cloud
@pytest.fixture(scope="class")
def node_3d(ros, model_3d, tmp_path_factory):
    yield from start_node(ros, tmp_path_factory.mktemp("node_3d"), {"checkpoint": model_3d["checkpoint"]},
                          (ros.points_pub,))


class Test3dUnorganized:
    def test_unorganized_cloud_is_rasterized(self, ros, node_3d, cable_gland_dir, model_3d):
        for name in FRAMES[:2]:
            _, xyz = load_frame(cable_gland_dir, name)
            pts = valid_points(xyz)
            stamp, n = ros.now(), len(ros.received["reject"])
            t0 = ros.publish_frame(None, xyz_to_pointcloud2(pts, Header(frame_id="profiler")), stamp)
            out = ros.frame_outputs(stamp, n)
            v = check_frame_outputs(out, stamp, None)
            assert v["alignment"] == "rasterized" and v["mode"] == "3d" and v["model_id"] == model_3d["model_id"]
            assert float(v["threshold"]) == pytest.approx(model_3d["threshold"], abs=1e-6)
            cloud = out["anomaly_cloud"][1]
            f = pointcloud2_fields(cloud, ("x", "y", "z", "intensity"))
            assert cloud.header.frame_id == "profiler" and cloud.width == len(pts) and cloud.height == 1
            np.testing.assert_array_equal(np.stack([f["x"], f["y"], f["z"]], -1)[0], pts)
            assert np.isfinite(f["intensity"]).all() and f["intensity"].max() > 0
            print(f"\n[3d] {name}: raster {out['anomaly_map'][1].width}x{out['anomaly_map'][1].height}, "
                  f"{len(pts)} points, score {float(v['score']):.4f}, "
                  f"publish->result {1e3 * (out['result'][0] - t0):.0f} ms, node {v['latency_ms']} ms")

    def test_sigterm_exits_cleanly(self, node_3d):
        assert node_3d.stop(signal.SIGTERM) == 0, node_3d.logs()
        assert "Traceback" not in node_3d.stderr()
