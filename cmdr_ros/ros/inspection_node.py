"""``cmdr_inspection``: the managed (lifecycle) inspection node.

One frame: subscription callbacks -> approximate-time synchronizer (``sync.py``) -> ``_on_set`` puts the set in a
bounded queue (newest wins) -> worker thread ``_process`` -> ``frames.assemble_frame`` -> ``CMDRDetector.predict``
-> ``_publish`` (score, reject, result, heatmap, anomaly map, anomaly cloud). Inference never runs in a callback.

Lifecycle: configure loads the checkpoint, warms the model up and creates the publishers; activate subscribes;
deactivate unsubscribes and frees cached GPU memory; cleanup drops the model. ``autostart`` walks to active.
"""
from __future__ import annotations

import collections
import queue
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_system_default)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Bool, Float32

from cmdr_ros import CmdrError
from cmdr_ros.geometry import make_transform
from cmdr_ros.ros.conversions import array_to_image, xyz_to_pointcloud2
from cmdr_ros.ros.frames import Frame, assemble_frame, point_scores
from cmdr_ros.ros.outputs import heatmap_image, judged_status, not_judged_status, result_array
from cmdr_ros.ros.sync import make_synchronizer

MODES = ("auto", "rgbd", "3d", "2d")
ON_ERROR = ("reject", "pass", "skip")
RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}

# name: (default, description, range or choices)
PARAMETERS: dict[str, tuple[Any, str, Any]] = {
    "autostart": (True, "walk the lifecycle to active by itself", None),
    "checkpoint": ("", "trained model file (.ckpt from `cmdr train`)", None),
    "mode": ("auto", "auto (the checkpoint's) | rgbd | 3d | 2d", MODES),
    "device": ("auto", "auto (CUDA when present) | cpu | cuda | cuda:N", None),
    "weights_2d": ("", "pretrained 2D backbone file for paper-preset checkpoints", None),
    "weights_3d": ("", "pretrained 3D backbone file for paper-preset checkpoints", None),
    "threshold": (-1.0, "reject when score >= threshold; < 0 uses the checkpoint's calibrated one; changeable "
                        "at run time", (-1.0, 1e6)),
    "on_error": ("reject", "decision for a frame that cannot be judged: reject | pass | skip", ON_ERROR),
    "min_valid_ratio": (0.01, "a judged frame with fewer valid pixels is flagged degraded (WARN)", (0.0, 1.0)),
    "warmup": (True, "run one synthetic frame at configure", None),
    "input.reliability": ("reliable", "input QoS reliability: reliable | best_effort (match the publishers)",
                          tuple(RELIABILITY)),
    "input.depth": (5, "input subscription queue depth", (1, 1000)),
    "sync.queue_size": (10, "approximate-time synchronizer queue per input", (1, 1000)),
    "sync.slop": (0.05, "max stamp difference (s) within a synchronized set", (1e-6, 10.0)),
    "worker.queue_size": (1, "frames waiting for inference; the newest wins", (1, 100)),
    "extrinsics": ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                   "cloud frame -> camera frame transform x y z qx qy qz qw, used when tf2 has none", None),
    "use_tf": (True, "look the cloud->camera transform up in tf2 when tf2_ros is installed", None),
    "raster_resolution": (0.0, "3D-only unorganized clouds: grid cell (m); 0 = mean point spacing", (0.0, 1.0)),
    "output.heatmap": (True, "publish ~/heatmap (bgr8 overlay)", None),
    "output.anomaly_map": (True, "publish ~/anomaly_map (32FC1)", None),
    "output.anomaly_cloud": (True, "publish ~/anomaly_cloud (x y z intensity)", None),
    "output.heatmap_alpha": (0.5, "heatmap opacity", (0.0, 1.0)),
    "output.heatmap_max": (0.0, "heatmap colour-scale top; 0 = automatic", (0.0, 1e6)),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages", (0.05, 3600.0)),
}
READ_ONLY = {"checkpoint", "mode", "device", "weights_2d", "weights_3d", "input.reliability", "input.depth",
             "sync.queue_size", "sync.slop", "worker.queue_size", "output.heatmap", "output.anomaly_map",
             "output.anomaly_cloud", "use_tf", "warmup", "diagnostics_period"}  # take effect at the next configure


def _descriptor(name: str, default: Any, text: str, rng: Any) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=text)
    if isinstance(rng, tuple) and len(rng) == 2 and not isinstance(rng[0], str):
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
    elif isinstance(rng, tuple):
        d.additional_constraints = "one of: " + ", ".join(rng)
    return d


class ThrottledLog:
    """Log each kind of problem once per ``period`` seconds, with a count of the repeats in between."""

    def __init__(self, logger: Any, period: float = 10.0):
        self.logger, self.period = logger, period
        self.last: dict[str, float] = {}
        self.suppressed: collections.Counter[str] = collections.Counter()

    def __call__(self, kind: str, msg: str, level: str = "warning") -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -1e9) >= self.period:
            extra = f" ({self.suppressed[kind]} more since last report)" if self.suppressed[kind] else ""
            # rclpy binds one severity to each logging call site (a change raises ValueError): one call per level
            if level == "error":
                self.logger.error(f"[{kind}] {msg}{extra}")
            else:
                self.logger.warning(f"[{kind}] {msg}{extra}")
            self.last[kind] = now
            self.suppressed[kind] = 0
        else:
            self.suppressed[kind] += 1


class InspectionNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cmdr_inspection", **kwargs)
        for name, (default, text, rng) in PARAMETERS.items():
            self.declare_parameter(name, default, _descriptor(name, default, text, rng))
        ext = self._p("extrinsics")
        self._extrinsics = make_transform(ext[:3], ext[3:])  # cloud -> camera, kept current by the callback below
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.detector = None
        self.mode = ""
        self._threshold: float | None = None
        self._pubs: dict[str, Any] = {}
        self._sync = None
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warn = ThrottledLog(self.get_logger())
        self._reset_stats()
        self._diag_timer = None
        self._tf_lookup = None
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ---------------------------------------------------------------- parameters
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name == "threshold":
                if p.value is None or not np.isfinite(p.value):
                    return SetParametersResult(successful=False, reason="threshold must be a finite number")
            elif p.name == "on_error" and p.value not in ON_ERROR:
                return SetParametersResult(successful=False, reason=f"on_error must be one of {ON_ERROR}")
            elif p.name == "mode" and p.value not in MODES:
                return SetParametersResult(successful=False, reason=f"mode must be one of {MODES}")
            elif p.name == "input.reliability" and p.value not in RELIABILITY:
                return SetParametersResult(successful=False, reason=f"input.reliability must be one of {tuple(RELIABILITY)}")
            elif p.name == "extrinsics" and len(p.value) != 7:
                return SetParametersResult(successful=False, reason="extrinsics needs 7 values: x y z qx qy qz qw")
        for p in params:
            if p.name == "threshold":
                self._apply_threshold(p.value)
            if p.name == "extrinsics":
                self._extrinsics = make_transform(p.value[:3], p.value[3:])
            if p.name in READ_ONLY and self.detector is not None:
                self.get_logger().info(f"parameter '{p.name}' takes effect at the next configure")
        return SetParametersResult(successful=True)

    def _apply_threshold(self, value: float) -> None:
        ckpt_thr = self.detector.threshold if self.detector is not None else None
        self._threshold = float(value) if value >= 0 else ckpt_thr

    # ---------------------------------------------------------------- lifecycle
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from cmdr_ros.model.checkpoint import load_checkpoint  # torch import only when configuring

        ckpt = self._p("checkpoint")
        if not ckpt:
            self.get_logger().error("parameter 'checkpoint' is empty: give a model trained with `cmdr train`")
            return TransitionCallbackReturn.FAILURE
        try:
            self.detector = load_checkpoint(ckpt, self._p("device"), self._p("weights_2d") or None,
                                            self._p("weights_3d") or None, expected_mode=self._p("mode"))
        except CmdrError as e:
            self.get_logger().error(f"cannot configure: {e}")
            return TransitionCallbackReturn.FAILURE
        self.mode = self.detector.config.mode
        self._apply_threshold(self._p("threshold"))
        if self._threshold is None:
            self.get_logger().error(f"{ckpt} has no calibrated threshold and parameter 'threshold' is < 0")
            self.detector = None
            return TransitionCallbackReturn.FAILURE
        if self._p("warmup"):
            self._warm_up()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        self._pubs = {
            "score": self.create_lifecycle_publisher(Float32, "~/score", qos_profile_system_default),
            "reject": self.create_lifecycle_publisher(Bool, "~/reject", reliable),
            "result": self.create_lifecycle_publisher(DiagnosticArray, "~/result", reliable),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", qos_profile_system_default),
        }
        for key, msg_type in (("heatmap", Image), ("anomaly_map", Image), ("anomaly_cloud", PointCloud2)):
            if self._p(f"output.{key}"):
                self._pubs[key] = self.create_lifecycle_publisher(msg_type, f"~/{key}", qos_profile_system_default)
        self._setup_tf()
        self._queue = queue.Queue(maxsize=int(self._p("worker.queue_size")))
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="cmdr_inference", daemon=True)
        self._worker.start()
        self._reset_stats()
        self.get_logger().info(
            f"configured: mode {self.mode}, model {self.detector.model_id}, device {self.detector.device}, "
            f"threshold {self._threshold:.4f}")
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self) -> None:
        from cmdr_ros.data.synthetic import CellConfig, render_part

        t0 = time.perf_counter()
        part = render_part(np.random.default_rng(0), CellConfig())
        try:
            self.detector.predict(part.rgb if self.detector.config.uses_2d else None,
                                  part.xyz if self.detector.config.uses_3d else None)
            self.get_logger().info(f"warm-up frame in {1e3 * (time.perf_counter() - t0):.0f} ms")
        except CmdrError as e:  # a warm-up that does not fit the model is not fatal
            self.get_logger().warning(f"warm-up skipped: {e}")

    def _setup_tf(self) -> None:
        self._tf_lookup = None
        if not self._p("use_tf"):
            return
        try:
            import tf2_ros
            from rclpy.duration import Duration
        except ImportError:
            return
        buffer = tf2_ros.Buffer()
        self._tf_listener = tf2_ros.TransformListener(buffer, self)

        def lookup(target: str, source: str, stamp: Any) -> np.ndarray | None:
            try:
                t = buffer.lookup_transform(target, source, stamp, timeout=Duration(seconds=0.05)).transform
            except Exception as e:  # noqa: BLE001 - tf2 raises several exception types
                self._warn("tf", f"no tf {source} -> {target} ({type(e).__name__}): using the extrinsics parameter")
                return None
            return make_transform([t.translation.x, t.translation.y, t.translation.z],
                                  [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

        self._tf_lookup = lookup

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        topics = {"rgbd": [(Image, "image"), (PointCloud2, "points")], "3d": [(PointCloud2, "points")],
                  "2d": [(Image, "image")]}[self.mode]
        self._inputs = [name for _, name in topics]
        self._latest_info: CameraInfo | None = None
        qos = QoSProfile(depth=int(self._p("input.depth")), reliability=RELIABILITY[self._p("input.reliability")],
                         history=HistoryPolicy.KEEP_LAST)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        self._sync = make_synchronizer(self, topics, qos, int(self._p("sync.queue_size")), float(self._p("sync.slop")),
                                       self._on_set, event_callbacks=events)
        self._info_sub = None
        if self.mode == "rgbd":
            self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_info, qos,
                                                      event_callbacks=events)
        self._diag_timer = self.create_timer(float(self._p("diagnostics_period")), self._publish_diagnostics)
        self.get_logger().info(f"active: subscribed to {', '.join(self.resolve_topic_name(t) for t in self._inputs)}"
                               f" ({self._p('input.reliability')}, sync backend {self._sync.backend})")
        return super().on_activate(state)

    def _on_incompatible_qos(self, event: Any) -> None:
        self._warn("qos", f"incompatible QoS with a publisher (policy {event.last_policy_kind}, {event.total_count} "
                          f"in total): this node subscribes with input.reliability='{self._p('input.reliability')}';"
                          " a reliable subscription never matches a best-effort publisher: set the parameter "
                          "input.reliability to best_effort (or make the publisher reliable)", "error")
        with self._lock:
            self.stats["qos_incompatible"] += 1

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._drain()
        self._free_gpu()
        return super().on_deactivate(state)

    def _unsubscribe(self) -> None:
        if self._sync is not None:
            self._sync.destroy()
            self._sync = None
        if getattr(self, "_info_sub", None) is not None:
            self.destroy_subscription(self._info_sub)
            self._info_sub = None
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _free_gpu(self) -> None:
        if self.detector is not None and self.detector.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _teardown(self) -> None:
        self._unsubscribe()
        self._stop.set()
        self._drain()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
            self._worker = None
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._free_gpu()
        self.detector = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- inputs
    def _on_info(self, msg: CameraInfo) -> None:
        self._latest_info = msg

    def _on_set(self, *msgs: Any) -> None:
        """Synchronizer callback: hand the set to the worker; the newest frame wins."""
        item = (dict(zip(self._inputs, msgs)), self._latest_info if self.mode == "rgbd" else None, time.monotonic())
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    with self._lock:
                        self.stats["dropped_worker"] += 1
                except queue.Empty:
                    pass

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None or self._stop.is_set():
                return
            msgs, info, t_in = item
            try:
                self._process(msgs, info, t_in)
            except Exception as e:  # noqa: BLE001 - the node must keep serving whatever a frame does
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: the context is gone, there is nothing left to publish to
                self._warn("internal", f"frame failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",
                           "error")
                self._fail(msgs, "internal", f"{type(e).__name__}: {e}")

    def _process(self, msgs: dict[str, Any], info: Any, t_in: float) -> None:
        det = self.detector
        if det is None:
            return
        try:
            frame = assemble_frame(self.mode, msgs.get("image"), msgs.get("points"), info, self._tf_lookup,
                                   self._extrinsics,
                                   float(self._p("raster_resolution")))
            pred = det.predict(frame.rgb if det.config.uses_2d else None,
                               frame.xyz if det.config.uses_3d else None)
        except CmdrError as e:
            kind = type(e).__name__ if type(e) is not CmdrError else "bad_input"
            self._warn(kind, f"frame cannot be judged: {e}")
            self._fail(msgs, kind, str(e))
            return
        threshold = self._threshold
        reject = bool(pred.score >= threshold)
        latency_ms = (time.monotonic() - t_in) * 1e3
        level, message, values = judged_status(frame, pred, reject, threshold, latency_ms,
                                               float(self._p("min_valid_ratio")))
        self._publish(frame, pred, reject, threshold, level, message, values)
        with self._lock:
            s = self.stats
            s["frames"] += 1
            s["rejects"] += int(reject)
            s["degraded"] += int(level == DiagnosticStatus.WARN)
            s["latencies"].append(latency_ms)
            s["stamps"].append(time.monotonic())

    def _fail(self, msgs: dict[str, Any], kind: str, reason: str) -> None:
        """A frame that cannot be judged: count it and publish the fail-safe decision with a WARN result."""
        with self._lock:
            self.stats["errors"][kind] += 1
        decision = self._p("on_error")
        header = next((m.header for m in msgs.values() if hasattr(m, "header")), None)
        if decision != "skip" and "reject" in self._pubs:
            self._pubs["reject"].publish(Bool(data=decision == "reject"))
        frame_ids = {k: m.header.frame_id for k, m in msgs.items() if hasattr(m, "header")}
        self._publish_result(header, *not_judged_status(kind, reason, decision), frame_ids)

    # ---------------------------------------------------------------- outputs
    def _publish(self, frame: Frame, pred: Any, reject: bool, threshold: float, level: int, message: str,
                 values: dict[str, str]) -> None:
        p = self._pubs
        if not p:
            return
        p["score"].publish(Float32(data=float(pred.score)))
        p["reject"].publish(Bool(data=reject))
        self._publish_result(frame.header, level, message, values, frame.frame_ids)
        amap = pred.anomaly_map
        if "anomaly_map" in p:
            p["anomaly_map"].publish(array_to_image(amap.astype(np.float32), "32FC1", frame.header))
        if "heatmap" in p:
            img = heatmap_image(frame, pred, threshold, float(self._p("output.heatmap_alpha")),
                                float(self._p("output.heatmap_max")))
            p["heatmap"].publish(array_to_image(img, "bgr8", frame.header))
        if "anomaly_cloud" in p and frame.points is not None and len(frame.points):
            p["anomaly_cloud"].publish(xyz_to_pointcloud2(frame.points.astype(np.float32), frame.cloud_header,
                                                          intensity=point_scores(amap, frame.point_pixel)))

    def _publish_result(self, header: Any, level: int, message: str, values: dict[str, str],
                        frame_ids: dict[str, str] | None = None) -> None:
        if "result" in self._pubs:
            model_id = self.detector.model_id if self.detector is not None else ""
            self._pubs["result"].publish(result_array(header, level, message, values, self.mode, model_id,
                                                      frame_ids))

    # ---------------------------------------------------------------- diagnostics
    def _reset_stats(self) -> None:
        self.stats: dict[str, Any] = {"frames": 0, "rejects": 0, "degraded": 0, "dropped_worker": 0,
                                      "qos_incompatible": 0, "errors": collections.Counter(),
                                      "latencies": collections.deque(maxlen=200),
                                      "stamps": collections.deque(maxlen=200)}

    def snapshot(self) -> dict[str, Any]:
        """Counters for diagnostics and tests."""
        with self._lock:
            s = self.stats
            lat = np.array(s["latencies"]) if s["latencies"] else np.zeros(0)
            stamps = list(s["stamps"])
            out = {k: s[k] for k in ("frames", "rejects", "degraded", "dropped_worker", "qos_incompatible")}
            out["errors"] = dict(s["errors"])
        window = [t for t in stamps if t > time.monotonic() - 10.0]
        out["rate_hz"] = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        out["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else 0.0
        out["latency_p95_ms"] = float(np.percentile(lat, 95)) if lat.size else 0.0
        sync = self._sync.stats.snapshot() if self._sync is not None else None
        # inputs received but not (yet) in a synchronized set: evicted, headerless, or still waiting for a partner
        # (a stale message waits until sync.queue_size newer ones evict it); the same count for both sync backends
        out["unmatched"] = sum(r - sync.matched for r in sync.received) if sync is not None else 0
        return out

    def _publish_diagnostics(self) -> None:
        if "diagnostics" not in self._pubs or self.detector is None:
            return
        s = self.snapshot()
        errors = sum(s["errors"].values())
        level = DiagnosticStatus.WARN if (errors or s["qos_incompatible"]) else DiagnosticStatus.OK
        values = {"rate_hz": f"{s['rate_hz']:.2f}", "latency_p50_ms": f"{s['latency_p50_ms']:.1f}",
                  "latency_p95_ms": f"{s['latency_p95_ms']:.1f}", "frames": s["frames"], "rejects": s["rejects"],
                  "degraded": s["degraded"], "dropped_worker": s["dropped_worker"], "unmatched_sync": s["unmatched"],
                  "errors": errors, "qos_incompatible": s["qos_incompatible"], "device": str(self.detector.device),
                  "model_id": self.detector.model_id, "mode": self.mode, "threshold": f"{self._threshold:.6f}"}
        values.update({f"errors.{k}": v for k, v in s["errors"].items()})
        status = DiagnosticStatus(level=level, name="cmdr_inspection: node", hardware_id=str(self.detector.model_id),
                                  message=f"{s['frames']} frames, {errors} not judged",
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(arr)


def main(args: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    try:
        rclpy.init(args=args if args is not None else sys.argv)
    except Exception as e:  # noqa: BLE001 - rcl reports bad --ros-args as a generic RCLError
        raise CmdrError(f"cannot start ROS: {str(e).splitlines()[0][:300]}") from None
    node = InspectionNode()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._teardown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
