"""Shared by the node tests: a real ``cmdr_inspection`` process on a private ROS domain, a test-side rclpy node that
publishes inputs and records every output, and small models trained on the simulated cell (no ../shared needed).

No assertion here depends on timing between processes: the helpers wait for events (a result with a stamp, a
diagnostics report with a value), with generous time-outs that only bound a failing test.
"""
from __future__ import annotations

import os
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
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.signals import SignalHandlerOptions  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from cmdr_ros.ros.conversions import array_to_image  # noqa: E402
from domains import new_domain  # noqa: E402,F401 - the tests import it from here
from cmdr_ros.ros.topics import DIAGNOSTICS, OUTPUT_TYPES, STATE_TYPES, output_topic  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_START_S = 120.0
RESULT_S = 60.0
DEEP = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)  # nothing a test sends or records is overwritten
LATCHED = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)  # ~/ready: the value in force when matched, then each
NS = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


def stamp_str(stamp: Any) -> str:
    return f"{stamp.sec}.{stamp.nanosec:09d}"


def values_of(arr: DiagnosticArray) -> dict[str, str]:
    return {kv.key: kv.value for kv in arr.status[0].values}


def call_service(client: Any, request: Any, timeout: float = 180) -> Any:
    """The response, or None when none came within ``timeout`` (Fast DDS can answer a fresh client before it has
    matched the client's response reader: the node logs 'failed to send response (timeout)' and the answer is lost;
    callers ask again or look at the state). Another thread spins the client's node (``RosSide``)."""
    assert client.wait_for_service(timeout_sec=60), f"no {client.srv_name} service"
    future = client.call_async(request)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        client.remove_pending_request(future)
        return None
    return future.result()


def lifecycle_state(get_state_client: Any) -> int:
    """A lifecycle node's state id from its ``get_state`` service (idempotent: a lost answer is asked for again)."""
    from lifecycle_msgs.srv import GetState  # noqa: PLC0415

    for _ in range(6):
        response = call_service(get_state_client, GetState.Request(), timeout=20)
        if response is not None:
            return response.current_state.id
    pytest.fail(f"{get_state_client.srv_name}: no answer in 6 tries")


class RosSide:
    """An rclpy node in its own context, spun in a thread, publishing inputs and recording what the node sends."""

    OUTPUTS = {**{name: (kind, output_topic(name)) for name, kind in {**OUTPUT_TYPES, **STATE_TYPES}.items()},
               "diagnostics": (DiagnosticArray, DIAGNOSTICS)}

    def __init__(self, domain_id: int) -> None:
        self.domain_id = domain_id
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("cmdr_node_test", context=self.context)
        self.cond = threading.Condition()
        self.hooks: dict[str, Callable[[Any], None]] = {}  # key -> called with each message as it arrives
        self.received: dict[str, list[tuple[float, Any]]] = {k: [] for k in self.OUTPUTS}
        for key, (msg_type, topic) in self.OUTPUTS.items():
            self.node.create_subscription(msg_type, topic, lambda m, k=key: self._record(k, m),
                                          LATCHED if key in STATE_TYPES else DEEP)
        self.image_pub = self.node.create_publisher(Image, "/image", DEEP)
        self.points_pub = self.node.create_publisher(PointCloud2, "/points", DEEP)
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera_info", DEEP)
        self.part_pub = self.node.create_publisher(Header, "/part_id", DEEP)
        self.param_client = self.node.create_client(SetParameters, "/cmdr_inspection/set_parameters")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self._clock = time.time_ns() // NS * NS

    def _record(self, key: str, msg: Any) -> None:
        hook = self.hooks.get(key)
        if hook is not None:
            hook(msg)
        with self.cond:
            self.received[key].append((time.monotonic(), msg))
            self.cond.notify_all()

    def _spin(self) -> None:
        """Spin until ``close``. A test that destroys a publisher or subscription of this node from its own thread can
        meet the executor adding that entity's QoS event handler to its wait set: rclpy raises InvalidHandle there
        (seen once), which would end this thread and every later wait of the module; the next wait no longer holds
        the destroyed entity, so spinning goes on."""
        while True:
            try:
                self.executor.spin()
                return
            except Exception as e:  # noqa: BLE001 - the class lives in rclpy's C extension, named per distribution
                if type(e).__name__ != "InvalidHandle":
                    raise

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def clear(self) -> None:
        with self.cond:
            for v in self.received.values():
                v.clear()

    def next_stamp(self) -> Any:
        """A fresh stamp, 1 s after the previous one: never within any slop of another part's."""
        self._clock += NS
        h = Header()
        h.stamp.sec, h.stamp.nanosec = self._clock // NS, self._clock % NS
        return h.stamp

    def wait_for(self, what: str, pred: Callable[[], Any], timeout: float = RESULT_S) -> Any:
        """Block until ``pred()`` (called under the lock) is truthy; return its value."""
        with self.cond:
            value = self.cond.wait_for(pred, timeout)
        assert value, f"timed out after {timeout} s waiting for {what}"
        return value

    def results_for(self, stamp: Any) -> list[dict[str, str]]:
        """Values of every ~/result stamped ``stamp``."""
        key = stamp_ns(stamp)
        with self.cond:
            return [values_of(m) for _, m in self.received["result"] if stamp_ns(m.header.stamp) == key]

    def result(self, stamp: Any, n: int = 1, timeout: float = RESULT_S) -> dict[str, str]:
        """Wait for the ``n``-th result stamped ``stamp``; return the first one's values."""
        self.wait_for(f"{n} result(s) stamped {stamp_str(stamp)}", lambda: len(self.results_for(stamp)) >= n,
                      timeout)
        return self.results_for(stamp)[0]

    def by_stamp(self, key: str, stamp: Any) -> Any:
        with self.cond:
            return next((m for _, m in self.received[key] if m.header.stamp == stamp), None)

    def publish_set(self, stamp: Any, rgb: np.ndarray | None = None, cloud: PointCloud2 | None = None,
                    info: CameraInfo | None = None, part_id: str | None = None, frame: str = "camera") -> None:
        """Publish one part's inputs at ``stamp`` (CameraInfo and part id first, so the node holds them)."""
        if part_id is not None:
            self.part_pub.publish(Header(stamp=stamp, frame_id=part_id))
        if info is not None:
            info.header = Header(stamp=stamp, frame_id=frame)
            self.info_pub.publish(info)
            self.info_pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5))
        if part_id is not None:
            self.part_pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5))
        if rgb is not None:
            self.image_pub.publish(array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id=frame)))
        if cloud is not None:
            cloud.header.stamp = stamp
            self.points_pub.publish(cloud)

    def diagnostics(self, pred: Callable[[dict[str, str]], bool], what: str, timeout: float = 30,
                    name: str = "cmdr_inspection: node") -> dict[str, str]:
        """The first /diagnostics status ``name`` of the node satisfying ``pred`` (waits for it)."""
        def find() -> dict[str, str] | None:
            for _, arr in self.received["diagnostics"]:
                for st in arr.status:
                    v = {kv.key: kv.value for kv in st.values}
                    if st.name == name and pred(v):
                        return {**v, "_level": st.level, "_message": st.message}
            return None
        return self.wait_for(f"/diagnostics with {what}", find, timeout=timeout)

    def change_state(self, transition: str, goal: str, timeout: float = 60.0) -> None:
        """Ask the node for a lifecycle transition (``deactivate``, ``activate`` ...) and wait until it is in the
        state labelled ``goal`` (a lost answer is made up for by asking for the state)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState, GetState

        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
        change = self.node.create_client(ChangeState, "/cmdr_inspection/change_state")
        get = self.node.create_client(GetState, "/cmdr_inspection/get_state")
        try:
            assert change.wait_for_service(timeout_sec=20) and get.wait_for_service(timeout_sec=20)
            future = change.call_async(ChangeState.Request(transition=Transition(id=ids[transition])))
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if done.wait(timeout) and future.result() is not None:
                assert future.result().success, f"{transition} refused"
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout:
                future = get.call_async(GetState.Request())
                done = threading.Event()
                future.add_done_callback(lambda _: done.set())
                if done.wait(10) and future.result() is not None and future.result().current_state.label == goal:
                    return
                time.sleep(0.1)
            pytest.fail(f"the node not {goal} {timeout} s after {transition}")
        finally:
            self.node.destroy_client(change)
            self.node.destroy_client(get)

    def set_parameter(self, name: str, value: Any) -> tuple[bool, str]:
        """Set one node parameter over the service; (successful, reason)."""
        assert self.param_client.wait_for_service(timeout_sec=20), "no /cmdr_inspection/set_parameters service"
        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        elif isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        elif isinstance(value, list):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=[float(v) for v in value])
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)])
        for _ in range(3):  # setting is idempotent: an answer Fast DDS lost (a client not matched yet) is asked again
            future = self.param_client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if done.wait(20):
                r = future.result().results[0]
                return r.successful, r.reason
            self.param_client.remove_pending_request(future)
        pytest.fail("set_parameters: no answer in 3 tries")


class NodeProcess:
    """``python -m cmdr_ros.ros.node.inspection_node`` with parameters, its stdout/stderr captured to files."""

    def __init__(self, tmp: Path, domain_id: int, params: dict[str, Any], params_file: Path | None = None,
                 ros_args: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", "cmdr_ros.ros.node.inspection_node", "--ros-args", *ros_args]
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        for k, v in params.items():
            args += ["-p", f"{k}:={v}"]
        env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
               "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONUNBUFFERED": "1",
               "ROS_LOG_DIR": str(tmp / "ros_log")}  # the default audit store: ROS_LOG_DIR/cmdr_audit.db
        self.audit_db = str(params.get("audit.database") or tmp / "ros_log" / "cmdr_audit.db")
        self.err_path, self.out_path = tmp / "node.stderr", tmp / "node.stdout"
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=REPO_ROOT)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def logs(self) -> str:
        return f"--- node stdout\n{self.out_path.read_text(errors='replace')}\n--- node stderr\n{self.stderr()}"

    def wait_active(self, inputs: tuple[Any, ...], ros: RosSide | None = None) -> float:
        """Wait until the node logged 'active' and every input publisher matched its subscription; with ``ros``, also
        until ``ros`` received the node's /diagnostics. Matching is seen from one side at a time: the node's writers
        may not have matched ``ros``'s readers yet when ``ros``'s publishers matched the node's, and what a volatile
        writer publishes before it matched a reader never reaches it (seen once in a full run: every result of a
        module lost). A diagnostics message shows the node's writers have matched ``ros``'s readers, which ``ros``
        announced in order, its outputs' before /diagnostics."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < NODE_START_S:
            assert self.proc.poll() is None, f"node exited with {self.proc.returncode}\n{self.logs()}"
            if ("active: subscribed" in self.stderr() and all(p.get_subscription_count() >= 1 for p in inputs)
                    and (ros is None or ros.received["diagnostics"])):
                return time.monotonic() - t0
            time.sleep(0.1)
        pytest.fail(f"node not active after {NODE_START_S} s\n{self.logs()}")

    def rss_mb(self) -> float:
        """Resident memory of the node process (MB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Signal the node, wait for it; kill it if it does not exit (and fail the caller's exit-code check)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                return -999
        return self.proc.returncode


def start_node(ros: RosSide, tmp: Path, params: dict[str, Any], inputs: tuple[Any, ...],
               params_file: Path | None = None, ros_args: tuple[str, ...] = ()):
    """Generator body of a node fixture: start, wait until active, yield, always stop (and wait until gone)."""
    ros.clear()
    node = NodeProcess(tmp, ros.domain_id, {"device": "cpu", "diagnostics_period": 0.5, **params}, params_file,
                       ros_args)
    try:
        node.startup_s = node.wait_active(inputs, ros)
        yield node
    finally:
        node.stop()
        t0 = time.monotonic()  # the next node of the module must not meet this one's subscriptions
        while any(p.get_subscription_count() for p in inputs) and time.monotonic() - t0 < 10:
            time.sleep(0.1)


# ------------------------------------------------------------------------------------------------ simulated cell
CELL_SIZE = 64  # pixels: small frames keep every node test fast on 2 cores


def cell_config() -> Any:
    from cmdr_ros.data.synthetic import CellConfig

    return CellConfig(image_size=CELL_SIZE)


def cell_frame(seed: int, defect: str | None = None) -> Any:
    """One simulated part (rgb uint8, xyz float32 organized, invalid = 0)."""
    from cmdr_ros.data.synthetic import render_part

    return render_part(np.random.default_rng(seed), cell_config(), defect)


def cell_camera_info() -> CameraInfo:
    from cmdr_ros.ros.conversions import dict_to_camera_info

    return dict_to_camera_info(cell_config().camera().to_dict())


def profile_cloud(seed: int, defect: str | None = None) -> np.ndarray:
    """One simulated laser-profilometer scan: unorganized Nx3 float32 (rasterize at PROFILE_RESOLUTION)."""
    from cmdr_ros.data.synthetic import render_profilometer_cloud

    return render_profilometer_cloud(np.random.default_rng(seed), cell_config(), defect)[0]


PROFILE_RESOLUTION = 0.002  # m: raster cell of the profile clouds, in training and in the node alike


def train_cell_model(root: Path, mode: str, out: Path, profilometer: bool = False) -> dict[str, Any]:
    """A lite model (2 epochs) trained on a few simulated parts: what every node test loads."""
    from cmdr_ros.model.training import train_model
    from cmdr_ros.config import preset
    from cmdr_ros.data.synthetic import generate_dataset, generate_profilometer_dataset

    common = dict(n_train=4, n_val=3, n_test_good=0, n_test_per_defect=0, cfg=cell_config())
    data = (generate_profilometer_dataset(root, "profiles", resolution=PROFILE_RESOLUTION, **common) if profilometer
            else generate_dataset(root, "block", **common))
    config = preset("lite", mode)
    config.train.epochs = 2
    return train_model(data, config, out, device="cpu", no_cache=True, progress=False)


# ------------------------------------------------------------------------------------------------ scans (chunks)
def scan_cell_config() -> Any:
    """The simulated cell with a coarse profilometer: about 2000 points a scan (8 chunks of 256 points)."""
    from cmdr_ros.data.synthetic import CellConfig

    return CellConfig(image_size=CELL_SIZE, profile_point_spacing=0.004, profile_line_spacing=0.006)


def scan_model_config(epochs: int = 2) -> Any:
    """A "chunks" model (the paper's 3D-only cutting-cell pipeline) on 16 x 16 = 256-point chunks."""
    from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig

    return ModelConfig(mode="3d", pipeline="chunks", grid=16, pixel_norm="sqrt_nonzero",
                       backbone_3d=BackboneConfig("random_pointmae", options={"num_group": 16, "group_size": 8}),
                       train=TrainConfig(epochs=epochs, batch_size=4, optimizer="adamw", seed=1))


def scan_points(seed: int, defect: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One simulated profilometer scan in the sensor's order (Nx3 float32) and its per-point labels."""
    from cmdr_ros.data.synthetic import render_profilometer_cloud

    return render_profilometer_cloud(np.random.default_rng(seed), scan_cell_config(), defect, shuffle=False)


def scan_dataset(root: Path, n_train: int = 3, n_val: int = 1, n_test_good: int = 1, n_test_per_defect: int = 1,
                 defects: tuple[str, ...] = ("bump",)) -> Path:
    """A tiny class of unorganized scans (``cmdr_ros.data.scans`` layout) of the coarse profilometer."""
    from cmdr_ros.data.synthetic import generate_scan_dataset

    return generate_scan_dataset(root, "scans", n_train=n_train, n_val=n_val, n_test_good=n_test_good,
                                 n_test_per_defect=n_test_per_defect, cfg=scan_cell_config(), defects=defects)


def train_scan_model(root: Path, out: Path) -> dict[str, Any]:
    """A small "chunks" model (2 epochs on 3 scans, calibrated on 1) and its checkpoint: what the scan tests load."""
    from cmdr_ros.model.training import train_model

    return train_model(scan_dataset(root, n_test_good=0, n_test_per_defect=0), scan_model_config(), out,
                       device="cpu", no_cache=True, progress=False)


# ------------------------------------------------------------------------------------------------ audit store
AUDIT_KEYS = ("seq", "stamp", "decision", "judged", "error", "inputs", "part_id")


def audit_rows(target: str) -> list[dict[str, Any]]:
    """Every row of an audit store, as ``~/result``-style strings for the keys both carry."""
    from cmdr_ros.audit.backends import open_backend
    from cmdr_ros.audit.schema import COLUMNS

    backend = open_backend(target, readonly=True)
    try:
        rows = [dict(zip(COLUMNS, r)) for r in backend.select()]
    finally:
        backend.close()
    for r in rows:
        r["judged"] = "true" if r["judged"] else "false"
        r["seq"] = str(r["seq"])
    return rows


def check_audit_has(target: str, results: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Every published result has its row in the store with the same seq, stamp, decision, judged, error, inputs and
    part id; returns the rows."""
    rows = audit_rows(target)
    by_seq = {(r["run_id"], r["seq"]): r for r in rows}
    assert len(by_seq) == len(rows), "a decision is stored twice"
    runs = {r["run_id"] for r in rows}
    assert len(runs) == 1, f"one node process, one run id: {runs}"
    run = runs.pop()
    for v in results:
        r = by_seq.get((run, v["seq"]))
        assert r is not None, f"published decision seq {v['seq']} ({v['stamp']}) is not in the audit store"
        assert {k: r.get(k) for k in AUDIT_KEYS} == {k: v.get(k) for k in AUDIT_KEYS}, (r, v)
    return rows


class CommitBeforePublish:
    """A ``RosSide`` hook on ~/result: at the moment a decision arrives, its row must already be in the store (read by
    a connection of its own, as a quality engineer's query would): an SQLite file or a postgresql:// URL."""

    def __init__(self, target: str) -> None:
        self.target, self.checked, self.missing = target, 0, []
        self.pg = None
        if target.startswith("postgresql://"):
            import psycopg

            self.pg = psycopg.connect(target, autocommit=True)

    def _lookup(self, seq: int, stamp: str | None) -> Any:
        if self.pg is not None:
            return self.pg.execute("SELECT decision FROM decisions WHERE seq = %s AND stamp = %s",
                                   (seq, stamp)).fetchone()
        import sqlite3

        con = sqlite3.connect(f"file:{self.target}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT decision FROM decisions WHERE seq = ? AND stamp = ?", (seq, stamp)).fetchone()
        finally:
            con.close()

    def __call__(self, msg: Any) -> None:
        v = values_of(msg)
        found = self._lookup(int(v["seq"]), v.get("stamp"))
        self.checked += 1
        if found is None or found[0] != v["decision"]:
            self.missing.append((v["seq"], v.get("stamp"), v["decision"], found))

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()
