"""``cmdr_inspection``: the managed (lifecycle) inspection node.

Every synchronized set and every orphan input gets exactly one decision, stamped with its header:

subscription callbacks -> approximate-time synchronizer (``sync.py``; an input without partner within
``sync.timeout``, evicted or duplicated gets an ``unmatched`` result) -> ``_on_set`` queues the part (``overload``:
judge_all keeps ``worker.queue_size`` waiting and gives the oldest the fail-safe when full; newest keeps one) ->
worker thread -> ``FrameJudge`` (alignment, model, decision rule, fail-safe; ``frame_judge.py``) -> ``_decide``
(result with a sequence number, reject, score, maps). A watchdog gives every part not decided within
``time_budget`` of its arrival the fail-safe decision and reports a stuck inference on ``/diagnostics``. Inference
never runs in a callback. At SIGINT/SIGTERM every part still waiting gets its fail-safe decision before exit.

Lifecycle: configure validates every parameter (as at run time), loads the checkpoint, warms the model up and
creates the publishers; activate subscribes; deactivate unsubscribes (waiting parts get the fail-safe) and frees
cached GPU memory; cleanup drops the model. ``autostart`` walks to active and exits non-zero when it cannot.
"""
from __future__ import annotations

import collections
import copy
import signal
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Bool, Float32, Header

from cmdr_ros import CmdrError
from cmdr_ros.audit.schema import row_from_result
from cmdr_ros.audit.store import AuditStore
from cmdr_ros.judge import JudgeSettings, Verdict
from cmdr_ros.ros.conversions import array_to_image, stamp_ns, xyz_to_pointcloud2
from cmdr_ros.ros.frame_judge import FrameJudge, extrinsics_transform, unmatched_reason
from cmdr_ros.geometry import scores_to_points
from cmdr_ros.config import cross_modal
from cmdr_ros.ros.frames import Frame, input_names
from cmdr_ros.ros.outputs import heatmap_image, result_message, result_values
from cmdr_ros.ros.parameters import PARAMETERS, READ_ONLY, check, check_all, coerce
from cmdr_ros.ros.sync import make_synchronizer
from cmdr_ros.ros import topics

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
def input_topics(mode: str, image_transport: str = "raw", cloud: str = "points") -> list[tuple[type, str]]:
    """(message type, topic) of each synchronized input of ``mode``."""
    image = CompressedImage if image_transport == "compressed" else Image
    topics = {"image": (image, "image"), "points": (PointCloud2, "points") if cloud == "points" else (Image, "depth")}
    return [topics[name] for name in input_names(mode)]
JUDGE_PARAMS = ("on_error", "min_valid_ratio", "min_coverage", "max_range")
OPTIONAL_TYPE = {"extrinsics": Parameter.Type.DOUBLE_ARRAY}  # parameters without a default: unset unless given
WATCH_PERIOD_S = 0.05
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                             history=HistoryPolicy.KEEP_LAST)  # what diagnostic_updater offers
PRETRAINED = {"dino_vitb8", "pointmae"}  # backbones that need a GPU on a line
OVERRIDABLE = QoSOverridingOptions.with_default_policies()  # reliability, durability, history, depth per input
DECISION_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                          history=HistoryPolicy.KEEP_LAST)  # deep: a burst of fail-safe decisions is never overwritten


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


@dataclass(eq=False)
class Part:
    """One part on its way to a decision: a synchronized set, or an orphan input (one message)."""

    msgs: dict[str, Any]
    info: Any
    t_in: float  # time.monotonic() when the set matched (orphan: when it was dropped)
    header: Any = None
    inputs: str = ""
    decided: bool = False
    frame_ids: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        primary = next((self.msgs[k] for k in ("image", "points", "depth") if k in self.msgs), None)
        self.header = primary.header if primary is not None else None
        self.inputs = "+".join(self.msgs)
        self.frame_ids = {k: m.header.frame_id for k, m in self.msgs.items()}


class InspectionNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cmdr_inspection", **kwargs)
        self._judge_lock = threading.Lock()  # the judge and run-time parameter changes applied to it
        self._start_problems: list[str] = []  # values given at start that ROS itself refused (range, type)
        self._coerce_overrides()
        for name, (default, text, rng) in PARAMETERS.items():
            value = OPTIONAL_TYPE[name] if default is None else default
            try:
                self.declare_parameter(name, value, _descriptor(name, default, text, rng))
            except Exception as e:  # noqa: BLE001 - rclpy raises several kinds; configure reports them
                self._start_problems.append(f"{name}: {str(e).splitlines()[0][:200]}")
                self.declare_parameter(name, value, _descriptor(name, default, text, rng), ignore_override=True)
        self.add_pre_set_parameters_callback(self._coerce_set)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._applied)
        self.exit_code: int | None = None  # set when the node must end (autostart failed)
        self.detector = None
        self.mode = ""
        self.judge: FrameJudge | None = None
        self._pubs: dict[str, Any] = {}
        self._sync = None
        self._info_sub = self._part_sub = None
        self._latest_info: CameraInfo | None = None
        self._part_ids: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._cv = threading.Condition(threading.RLock())  # guards the queue, the in-flight part and decisions
        self._waiting: collections.deque[Part] = collections.deque()
        self._inflight: Part | None = None
        self._inflight_since = 0.0
        self._stuck = False
        self._closing = False  # stopping: a set that still matches gets the fail-safe at once
        self._seq = 0
        self._run_id = uuid.uuid4().hex[:16]  # with seq, names each decision of this process in the audit store
        self._audit: AuditStore | None = None
        self._tf_listener = self._tf_buffer = self._tf_lookup = None
        self._inputs_seen = (0, time.monotonic())
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._warn = ThrottledLog(self.get_logger())
        self._state_text = "unconfigured"
        self._reset_stats()
        self._watch_group = MutuallyExclusiveCallbackGroup()
        self._input_group = ReentrantCallbackGroup()
        self._watch_timer = None
        # /diagnostics is a plain publisher: a node that cannot configure still says why
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(float(self._p("diagnostics_period")), self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        if self._p("autostart"):  # its own group: parameter and lifecycle services answer during a long configure
            self._autostart_timer = self.create_timer(0.0, self._autostart,
                                                      callback_group=MutuallyExclusiveCallbackGroup())

    @property
    def lifecycle_state(self) -> str:
        """The lifecycle state's label (unconfigured, configuring, inactive, activating, active, ...)."""
        return str(self._state_machine.current_state[1])

    # ---------------------------------------------------------------- parameters
    def _p(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # an optional parameter nobody set
            return None

    @staticmethod
    def _coerced(p: Parameter) -> Parameter:
        value = coerce(p.name, p.value)
        return p if value is p.value else Parameter(p.name, value=value)

    def _coerce_overrides(self) -> None:
        """``-p threshold:=3`` or a YAML ``3``: a whole number for a float parameter is taken as the float (rclpy
        would refuse the integer and end the node at start)."""
        overrides = getattr(self, "_parameter_overrides", None)  # rclpy keeps the start values here
        if isinstance(overrides, dict):
            for name, p in list(overrides.items()):
                if name in PARAMETERS:
                    overrides[name] = self._coerced(p)

    def _coerce_set(self, params: list[Parameter]) -> list[Parameter]:
        """Before a run-time set (``ros2 param set /cmdr_inspection threshold 3``): the same coercion."""
        return [self._coerced(p) if p.name in PARAMETERS else p for p in params]

    def _values(self) -> dict[str, Any]:
        return {name: self._p(name) for name in PARAMETERS}

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name not in PARAMETERS:
                continue
            value = list(p.value) if p.name == "extrinsics" and p.value is not None else p.value
            problem = check(p.name, value)
            if problem is None and p.name == "threshold" and self.judge is not None:
                try:
                    self.judge.judge_.resolve_threshold(p.value)
                except CmdrError as e:
                    problem = str(e)
            if problem is not None:
                self._warn("parameter", f"refused: {problem}")
                return SetParametersResult(successful=False, reason=problem)
        names = {p.name for p in params}
        self._start_problems = [x for x in self._start_problems if x.split(":")[0] not in names]
        for p in params:
            if p.name in READ_ONLY and self.detector is not None:
                self.get_logger().info(f"parameter '{p.name}' takes effect at the next configure")
        return SetParametersResult(successful=True)

    def _applied(self, params: list[Parameter]) -> None:
        """After a run-time set is stored: apply it to the judge. Under the lock configure builds the judge with,
        so a value set while configure runs is never lost (either configure reads it, or it is applied here)."""
        with self._judge_lock:
            if self.judge is not None:
                self._apply(params)

    def _apply(self, params: list[Parameter]) -> None:
        """Apply run-time changes (already validated) to the judge."""
        j = self.judge
        settings = {k: getattr(j.judge_.settings, k) for k in JUDGE_PARAMS}
        for p in params:
            if p.name == "threshold":
                j.judge_.set_threshold(p.value)
            elif p.name in JUDGE_PARAMS:
                settings[p.name] = p.value
            elif p.name == "extrinsics":
                j.extrinsics = extrinsics_transform(p.value)
            elif p.name == "raster_resolution":
                j.raster_resolution = float(p.value)
            elif p.name == "cloud_registered":
                j.registered = bool(p.value)
        j.judge_.settings = JudgeSettings(**settings)

    # ---------------------------------------------------------------- lifecycle
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        ok = ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        if not ok:
            self.get_logger().error(f"autostart failed ({self._state_text}): exiting with status 1")
            self._publish_diagnostics()
            self.exit_code = 1
        else:
            self.get_logger().info(f"autostart: {self._state_text}")

    def _refuse(self, why: str) -> TransitionCallbackReturn:
        self._state_text = f"cannot configure: {why}"
        self.get_logger().error(self._state_text)
        self.detector, self.judge = None, None
        self._publish_diagnostics()
        return TransitionCallbackReturn.FAILURE

    def _guarded(self, name: str, transition: Any, state: LifecycleState) -> TransitionCallbackReturn:
        """Run a transition; an exception is logged with its cause, what it created is released, and the
        transition fails (rclpy would swallow it without a word)."""
        try:
            return transition(state)
        except Exception as e:  # noqa: BLE001 - any failure of a transition must be reported, not lost
            self._state_text = f"cannot {name}: {type(e).__name__}: {e}"
            self.get_logger().error(f"{self._state_text}\n{traceback.format_exc(limit=5)}")
            try:
                if name == "activate":
                    self._unsubscribe()
                elif name == "configure":
                    self._teardown()
            except Exception as cleanup_error:  # noqa: BLE001 - report the first cause, not the clean-up's
                self.get_logger().error(f"releasing after the failed {name}: {cleanup_error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("configure", self._configure, state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("activate", self._activate, state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("deactivate", self._deactivate, state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("cleanup", self._cleanup, state)

    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from cmdr_ros.model.checkpoint import load_checkpoint  # torch import only when configuring

        values = self._values()
        problems = self._start_problems + check_all(values)
        if problems:
            return self._refuse("; ".join(problems))
        if not values["checkpoint"]:
            return self._refuse("parameter 'checkpoint' is empty: give a model trained with `cmdr train`")
        try:
            self.detector = load_checkpoint(values["checkpoint"], values["device"], values["weights_2d"] or None,
                                            values["weights_3d"] or None, expected_mode=values["mode"],
                                            require_threshold=values["threshold"] < 0)
            self._setup_tf()
            with self._judge_lock:  # the values now, with any set while the model loaded
                self.judge = FrameJudge.from_params(self.detector, self._values(), self._tf_lookup)
        except CmdrError as e:
            return self._refuse(str(e))
        except Exception as e:  # noqa: BLE001 - e.g. CUDA errors: the node must say why, not die
            return self._refuse(f"{type(e).__name__}: {e}")
        self.mode = self.detector.config.mode
        if values["warmup"]:
            self._warm_up()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE, history=HistoryPolicy.KEEP_LAST)
        self._pubs = {key: self.create_lifecycle_publisher(topics.OUTPUT_TYPES[key], f"~/{key}", DECISION_QOS)
                      for key in topics.DECISIONS}
        for key in topics.MAPS:
            if values[f"output.{key}"]:
                self._pubs[key] = self.create_lifecycle_publisher(topics.OUTPUT_TYPES[key], f"~/{key}", reliable)
        self._open_audit(values)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="cmdr_inference", daemon=True)
        self._worker.start()
        self._reset_stats()
        self._state_text = "configured"
        self.get_logger().info(
            f"configured: mode {self.mode}, model {self.detector.model_id}, device {self.detector.device}, "
            f"threshold {self.judge.threshold:.4f}, time budget {values['time_budget']:g} s, "
            f"overload {values['overload']}")
        return TransitionCallbackReturn.SUCCESS

    def _open_audit(self, values: dict[str, Any]) -> None:
        """Start the audit writer (a store that cannot be opened is a fault to report, not a reason to stop)."""
        if not values["audit.enabled"]:
            self.get_logger().warning("audit store disabled (audit.enabled false): decisions are not recorded")
            return
        target = values["audit.database"] or audit_default_path()
        self._audit = AuditStore(target, timeout_s=float(values["audit.timeout"]),
                                 max_backlog=int(values["audit.max_backlog"]),
                                 on_fault=self._on_audit_fault)
        self.get_logger().info(f"audit store: {self._audit.health()['target']}")

    def _on_audit_fault(self, level: str, msg: str) -> None:
        if level == "info":
            self.get_logger().info(msg)
        else:
            self._warn("audit", msg, "error")

    def _close_audit(self) -> None:
        audit, self._audit = self._audit, None
        if audit is not None:
            lost = audit.close(5.0)
            h = audit.health()
            self.get_logger().info(f"audit store closed: {h['written']} decision(s) written"
                                   + (f", {lost} NOT written ({h['last_error']})" if lost else ""))

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
        """One tf2 listener for the node's life (created at the first configure that wants it, released at
        cleanup); what a lookup failure leads to is said once here."""
        self._tf_lookup = None
        fallback = ("the extrinsics parameter" if self._p("extrinsics") is not None
                    else "nothing: a cloud in another frame than the image is not judged (no_transform)")
        if not self._p("use_tf"):
            self.get_logger().info(f"tf2 not used (use_tf false): clouds in another frame use {fallback}")
            return
        try:
            import tf2_ros
        except ImportError:
            self.get_logger().warning(f"tf2_ros is not installed (ROS package tf2_ros_py): clouds in another frame "
                                      f"than the image use {fallback}")
            return
        if self._tf_listener is None:
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
        buffer = self._tf_buffer
        self.get_logger().info(f"tf2 in use for clouds in another frame than the image; without a transform: {fallback}")

        def lookup(target: str, source: str, stamp: Any) -> np.ndarray | None:
            from cmdr_ros.geometry import make_transform

            try:
                t = buffer.lookup_transform(target, source, stamp, timeout=Duration(seconds=0.05)).transform
            except Exception as e:  # noqa: BLE001 - tf2 raises several exception types
                self._warn("tf", f"no tf {source} -> {target} at the cloud's stamp ({type(e).__name__}): using "
                                 f"{fallback}")
                return None
            return make_transform([t.translation.x, t.translation.y, t.translation.z],
                                  [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

        self._tf_lookup = lookup

    def _release_tf(self) -> None:
        listener, self._tf_listener = self._tf_listener, None
        self._tf_lookup = self._tf_buffer = None
        if listener is not None:
            try:
                listener.unregister()
            except Exception as e:  # noqa: BLE001 - releasing must not fail cleanup
                self.get_logger().warning(f"tf listener release: {e}")

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        topics = input_topics(self.mode, self._p("input.image_transport"), self._p("input.cloud"))
        self._inputs = [name for _, name in topics]
        self._latest_info = None
        qos = QoSProfile(depth=int(self._p("input.depth")), reliability=RELIABILITY[self._p("input.reliability")],
                         history=HistoryPolicy.KEEP_LAST)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        try:
            # reentrant: one input's callback never waits behind another's (the policy has its own lock)
            # qos_overrides./TOPIC.subscription.reliability (etc.) in the params file sets one input's QoS
            self._sync = make_synchronizer(self, topics, qos, int(self._p("sync.queue_size")),
                                           float(self._p("sync.slop")), self._on_set, event_callbacks=events,
                                           on_drop=self._on_orphan, callback_group=self._input_group,
                                           subscription_options={"qos_overriding_options": OVERRIDABLE})
        except CmdrError as e:
            self._state_text = f"cannot activate: {e}"
            self.get_logger().error(self._state_text)
            return TransitionCallbackReturn.FAILURE
        if cross_modal(self.mode) or "depth" in self._inputs:
            self._info_sub = self.create_subscription(CameraInfo, "camera_info", self._on_info, copy.copy(qos),
                                                      event_callbacks=events, callback_group=self._input_group,
                                                      qos_overriding_options=OVERRIDABLE)
        self._part_sub = self.create_subscription(Header, "part_id", self._on_part_id, qos,
                                                  callback_group=self._input_group)
        self._watch_timer = self.create_timer(WATCH_PERIOD_S, self._watch, callback_group=self._watch_group)
        self._closing = False
        self._inputs_seen = (0, time.monotonic())  # (inputs received, when that count last changed)
        self._state_text = "active"
        self.get_logger().info(f"active: subscribed to {', '.join(self.resolve_topic_name(t) for t in self._inputs)}"
                               f" ({self._p('input.reliability')}, sync backend {self._sync.backend})")
        return super().on_activate(state)

    def _on_incompatible_qos(self, event: Any) -> None:
        self._warn("qos", f"incompatible QoS with a publisher (policy {event.last_policy_kind}, {event.total_count} "
                          f"in total): this node subscribes with input.reliability='{self._p('input.reliability')}';"
                          " a reliable subscription never matches a best-effort publisher: set the parameter "
                          "input.reliability to best_effort (or make the publisher reliable)", "error")
        with self._cv:
            self.stats["qos_incompatible"] += 1

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_and_settle("shutdown", "the node was deactivated before this part was judged")
        self._free_gpu()
        self._state_text = "inactive"
        return super().on_deactivate(state)

    def _unsubscribe(self) -> None:
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        for name in ("_info_sub", "_part_sub"):
            if getattr(self, name) is not None:
                self.destroy_subscription(getattr(self, name))
                setattr(self, name, None)
        if self._sync is not None:
            sync, self._sync = self._sync, None
            sync.destroy()  # first: no reader accepts an input from here on ...
            if sync.policy is not None:  # ... then waiting inputs, and any a late callback still offers, are answered
                sync.policy.close("shutdown")

    def _free_gpu(self) -> None:
        if self.detector is not None and self.detector.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _teardown(self) -> None:
        self.stop_and_settle("shutdown", "the node shut down before this part was judged")
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
            if self._worker.is_alive():
                self.get_logger().warning("the inference thread did not stop within 5 s; leaving it behind")
            self._worker = None
        self._close_audit()
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._free_gpu()
        self.detector, self.judge = None, None

    def _cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        self._release_tf()
        self._state_text = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_and_settle("shutdown", "the node shut down before this part was judged")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- inputs
    def _on_info(self, msg: CameraInfo) -> None:
        self._latest_info = msg

    def _on_part_id(self, msg: Header) -> None:
        with self._cv:
            self._part_ids[stamp_ns(msg)] = msg.frame_id
            while len(self._part_ids) > 256:
                self._part_ids.popitem(last=False)

    def _part_id(self, header: Any) -> str | None:
        if header is None or not self._part_ids:
            return None
        t, slop = stamp_ns(header), int(float(self._p("sync.slop")) * 1e9)
        with self._cv:
            near = [(abs(s - t), pid) for s, pid in self._part_ids.items() if abs(s - t) <= slop]
        return min(near)[1] if near else None

    def _on_set(self, *msgs: Any) -> None:
        """Synchronizer callback: queue the part; when the queue is full the oldest waiting part is decided now."""
        part = Part(dict(zip(self._inputs, msgs)), self._latest_info if self._info_sub is not None else None,
                    time.monotonic())
        if self._closing:
            self._fail(part, "shutdown", "the node is stopping: this part arrived after the last one judged")
            return
        newest = self._p("overload") == "newest"
        capacity = 1 if newest else int(self._p("worker.queue_size"))
        pushed_out = []
        with self._cv:
            while len(self._waiting) >= capacity:
                pushed_out.append(self._waiting.popleft())
            self._waiting.append(part)
            self._cv.notify()
        for old in pushed_out:
            if newest:
                self._fail(old, "superseded", "a newer part arrived before this one was judged (overload: newest)")
            else:
                self._fail(old, "overload", f"{capacity} parts were already waiting for inference "
                                            "(worker.queue_size): the oldest gets the fail-safe decision")

    def _on_orphan(self, index: int, msg: Any, why: str) -> None:
        """An input that left the synchronizer without partner: its own not-judged result."""
        name = self._inputs[index]
        kind, reason = unmatched_reason(name, self._inputs, why, float(self._p("sync.timeout")))
        self._fail(Part({name: msg}, None, time.monotonic()), kind, reason)

    # ---------------------------------------------------------------- worker and watchdog
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stop.is_set():
                    self._cv.wait()
                if self._stop.is_set():
                    return
                part = self._waiting.popleft()
                if part.decided:
                    continue
                self._inflight, self._inflight_since = part, time.monotonic()
            judge = self.judge
            frame, verdict = None, None
            try:
                if judge is None:
                    raise CmdrError("the node has no model (cleaned up)")
                frame, verdict = judge.judge(part.msgs, part.info)
            except Exception as e:  # noqa: BLE001 - the node must keep serving whatever a frame does
                if self._stop.is_set() or not self.context.ok():
                    return
                self._warn("internal", f"frame failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",
                           "error")
                verdict = self._not_judged("internal", f"{type(e).__name__}: {e}")
            finally:
                with self._cv:
                    self._inflight = None
                    self._stuck = False
            if not self._decide(part, verdict, frame):
                with self._cv:
                    self.stats["late"] += 1

    def _watch(self) -> None:
        """Unmatched inputs past sync.timeout, parts past time_budget, a stuck inference."""
        sync = self._sync
        if sync is not None and sync.policy is not None:
            sync.policy.expire(float(self._p("sync.timeout")))
        budget, now = float(self._p("time_budget")), time.monotonic()
        with self._cv:
            late = [p for p in self._waiting if now - p.t_in > budget]
            for p in late:
                self._waiting.remove(p)
            inflight = self._inflight
            if inflight is not None and not inflight.decided and now - inflight.t_in > budget:
                late.append(inflight)
            newly_stuck = inflight is not None and now - self._inflight_since > budget and not self._stuck
            if newly_stuck:
                self._stuck = True
                self.stats["stuck"] += 1
        for p in late:
            self._fail(p, "timeout", f"no decision within time_budget {budget:g} s of its arrival")
        if newly_stuck:
            self.get_logger().error(f"inference has been running for more than time_budget {budget:g} s: every part "
                                    "gets the fail-safe decision until it returns")
            self._publish_diagnostics()

    def wait_quiet(self, quiet_s: float = 0.3, max_wait_s: float = 3.0) -> None:
        """Start stopping while the executor still spins: sets matched from now on are decided at once (fail-safe),
        and this returns when no input arrived for ``quiet_s`` (at most ``max_wait_s``), so that the readers are
        (nearly) empty before the executor is shut down."""
        self._closing = True
        sync = self._sync
        deadline, seen = time.monotonic() + max_wait_s, -1
        while sync is not None and time.monotonic() < deadline:
            now_seen = sum(sync.stats.snapshot().received)
            if now_seen == seen:
                return
            seen = now_seen
            time.sleep(quiet_s)

    def stop_and_settle(self, kind: str, reason: str) -> int:
        """Stop judging and give every part not decided yet the fail-safe decision: take what the input readers
        still hold (best with the executor stopped: nothing else takes, and destruction is immediate), unsubscribe,
        then answer the inputs waiting for a partner and every queued or running part."""
        n0 = self._seq
        self._closing = True
        if self._part_sub is not None:
            self._take_all(self._part_sub, self._on_part_id)
        if self._sync is not None:
            self._sync.drain()
        self._unsubscribe()  # right after the drain: what arrives from here on is refused, not accepted unanswered
        self.settle_all(kind, reason)
        return self._seq - n0

    @staticmethod
    def _take_all(sub: Any, callback: Any) -> None:
        while True:
            with sub.handle:
                got = sub.handle.take_message(sub.msg_type, sub.raw)
            if got is None:
                return
            callback(got[0])

    def settle_all(self, kind: str, reason: str) -> int:
        """Give every queued part and the one in inference the fail-safe decision (inputs waiting for a partner are
        answered when ``stop_and_settle`` closes the synchronizer); wait (up to 2 s) until the decisions are
        acknowledged. Returns how many were settled."""
        n0 = self._seq
        with self._cv:
            parts = list(self._waiting) + ([self._inflight] if self._inflight is not None else [])
            self._waiting.clear()
        for p in parts:
            self._fail(p, kind, reason)
        if self._seq > n0:
            self._wait_acked(2.0)
        return self._seq - n0

    def _wait_acked(self, timeout: float) -> None:
        """Wait until the subscribers acknowledged the decisions; polled, because ``wait_for_all_acked`` holds the
        GIL for as long as it waits (every other thread of the node would stop)."""
        pubs = [self._pubs[k] for k in ("result", "reject") if k in self._pubs]
        deadline = time.monotonic() + timeout
        while pubs and time.monotonic() < deadline:
            pubs = [p for p in pubs if not p.wait_for_all_acked(Duration(nanoseconds=1_000_000))]
            time.sleep(0.02)

    # ---------------------------------------------------------------- decisions
    def _not_judged(self, kind: str, reason: str) -> Verdict:
        judge = self.judge
        if judge is not None:
            return judge.judge_.not_judged(kind, reason)
        return Verdict(False, self._p("on_error"), None, kind=kind, reason=reason)

    def _fail(self, part: Part, kind: str, reason: str) -> None:
        self._decide(part, self._not_judged(kind, reason))

    def _decide(self, part: Part, verdict: Verdict, frame: Frame | None = None) -> bool:
        """Publish the one decision of ``part`` (False when it already had one, e.g. from the watchdog)."""
        if part.decided:
            return False
        heat = None
        if verdict.judged and self._wanted("heatmap"):
            heat = heatmap_image(frame, verdict.prediction, verdict.threshold, float(self._p("output.heatmap_alpha")),
                                 float(self._p("output.heatmap_max")))
        part_id = self._part_id(part.header)
        with self._cv:
            if part.decided:
                return False
            part.decided = True
            self._seq += 1
            latency_ms = (time.monotonic() - part.t_in) * 1e3
            self._publish(part, verdict, frame, heat, latency_ms, part_id)
            s = self.stats
            s["decisions"] += 1
            if verdict.judged:
                s["judged"] += 1
                s["latencies"].append(latency_ms)
                s["stamps"].append(time.monotonic())
            else:
                s["not_judged"][verdict.kind] += 1
                self._warn(verdict.kind, f"part {part.inputs} not judged -> {verdict.decision}: {verdict.reason}")
            s["rejects"] += int(verdict.reject)
        return True

    def _wanted(self, key: str) -> bool:
        """An optional output is built only when it is enabled and someone subscribes to it."""
        pub = self._pubs.get(key)
        return pub is not None and pub.get_subscription_count() > 0

    def _publish(self, part: Part, verdict: Verdict, frame: Frame | None, heat: np.ndarray | None,
                 latency_ms: float, part_id: str | None) -> None:
        p = self._pubs
        if not p:
            return
        model_id = self.detector.model_id if self.detector is not None else ""
        values = result_values(part.header, verdict, frame, seq=self._seq, mode=self.mode, model_id=model_id,
                               inputs=part.inputs, latency_ms=latency_ms, frame_ids=part.frame_ids,
                               extra={"part_id": part_id} if part_id is not None else None)
        if self._audit is not None:  # committed before it is published (unless the store is failing or slow)
            self._audit.record(row_from_result(values, node=self.get_fully_qualified_name(), run_id=self._run_id,
                                               decided_at=time.time()))
        p["result"].publish(result_message(part.header, verdict, values))
        if verdict.decision != "skip":
            p["reject"].publish(Bool(data=verdict.reject))
        if not verdict.judged:
            return
        pred = verdict.prediction
        p["score"].publish(Float32(data=float(verdict.score)))
        if self._wanted("anomaly_map"):
            p["anomaly_map"].publish(array_to_image(pred.anomaly_map.astype(np.float32), "32FC1", frame.header))
        if heat is not None:
            p["heatmap"].publish(array_to_image(heat, "bgr8", frame.header))
        if self._wanted("anomaly_cloud") and frame.points is not None and len(frame.points):
            p["anomaly_cloud"].publish(xyz_to_pointcloud2(frame.points.astype(np.float32), frame.cloud_header,
                                                          intensity=scores_to_points(pred.anomaly_map, frame.point_pixel, 0.0)))

    # ---------------------------------------------------------------- diagnostics
    def _reset_stats(self) -> None:
        with self._cv:
            self.stats: dict[str, Any] = {"decisions": 0, "judged": 0, "rejects": 0, "late": 0, "stuck": 0,
                                          "qos_incompatible": 0, "not_judged": collections.Counter(),
                                          "latencies": collections.deque(maxlen=200),
                                          "stamps": collections.deque(maxlen=200)}

    def snapshot(self) -> dict[str, Any]:
        """Counters for diagnostics and tests."""
        with self._cv:
            s = self.stats
            lat = np.array(s["latencies"]) if s["latencies"] else np.zeros(0)
            stamps = list(s["stamps"])
            out = {k: s[k] for k in ("decisions", "judged", "rejects", "late", "stuck", "qos_incompatible")}
            out["not_judged"] = dict(s["not_judged"])
            out["seq"] = self._seq
            out["waiting"] = len(self._waiting)
            out["inflight_s"] = time.monotonic() - self._inflight_since if self._inflight is not None else 0.0
        window = [t for t in stamps if t > time.monotonic() - 10.0]
        out["rate_hz"] = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        out["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else 0.0
        out["latency_p95_ms"] = float(np.percentile(lat, 95)) if lat.size else 0.0
        sync = self._sync
        out["pending_sync"] = sum(sync.policy.pending()) if sync is not None and sync.policy is not None else 0
        seen = sum(sync.stats.snapshot().received) if sync is not None else 0
        if seen != self._inputs_seen[0]:
            self._inputs_seen = (seen, time.monotonic())
        out["input_idle_s"] = time.monotonic() - self._inputs_seen[1]
        return out

    def _publish_diagnostics(self) -> None:
        s = self.snapshot()
        n_bad = sum(s["not_judged"].values())
        stuck = s["inflight_s"] > float(self._p("time_budget"))
        judge, det = self.judge, self.detector
        if self._state_text.startswith("cannot"):  # a failed configure or activate says why
            level, message = DiagnosticStatus.ERROR, self._state_text
        elif judge is None:
            level, message = DiagnosticStatus.WARN, self._state_text
        elif stuck:
            level, message = DiagnosticStatus.ERROR, f"stuck: inference running for {s['inflight_s']:.1f} s"
        else:
            level, message = max(self._faults(s, det), key=lambda f: f[0], default=(DiagnosticStatus.OK, ""))
            message = (f"{message}; " if message else "") + \
                f"{self._state_text}: {s['decisions']} decisions, {s['judged']} judged, {n_bad} not judged"
        values = {"state": self._state_text, "decisions": s["decisions"], "seq": s["seq"], "judged": s["judged"],
                  "rejects": s["rejects"], "not_judged": n_bad, "late_results": s["late"], "stuck": int(stuck),
                  "stuck_events": s["stuck"], "waiting": s["waiting"], "pending_sync": s["pending_sync"],
                  "rate_hz": f"{s['rate_hz']:.2f}", "latency_p50_ms": f"{s['latency_p50_ms']:.1f}",
                  "latency_p95_ms": f"{s['latency_p95_ms']:.1f}", "qos_incompatible": s["qos_incompatible"],
                  "input_idle_s": f"{s['input_idle_s']:.1f}", "mode": self.mode}
        values.update({f"not_judged.{k}": v for k, v in sorted(s["not_judged"].items())})
        if judge is not None and det is not None:
            values.update({"threshold": f"{judge.threshold:.6f}", "model_id": det.model_id, "device": str(det.device)})
        status = DiagnosticStatus(level=level, name=self._status_name("node"), hardware_id=self._hardware_id(),
                                  message=message[:300], values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status, self._audit_status()])
        arr.header.stamp = self.get_clock().now().to_msg()
        try:
            self._diag_pub.publish(arr)
        except Exception:  # noqa: BLE001 - the context may be going away at shutdown
            pass


    def _status_name(self, task: str) -> str:
        """diagnostic_updater's convention: '<node>: <task>', the node by its name with namespace."""
        return f"{self.get_fully_qualified_name().lstrip('/')}: {task}"

    def _hardware_id(self) -> str:
        return str(self._p("hardware_id") or self.get_fully_qualified_name())

    def _faults(self, s: dict[str, Any], det: Any) -> list[tuple[bytes, str]]:
        """What is wrong now besides a stuck inference, each with its level."""
        faults = []
        if s["qos_incompatible"]:
            faults.append((DiagnosticStatus.ERROR, f"incompatible QoS with an input publisher ({s['qos_incompatible']} "
                                                   "times): no message of it arrives; see input.reliability"))
        stale_after = float(self._p("diagnostics.stale_after"))
        if stale_after > 0 and self._sync is not None and s["input_idle_s"] > stale_after:
            faults.append((DiagnosticStatus.WARN, f"stale inputs: nothing arrived for {s['input_idle_s']:.0f} s"))
        if det is not None and det.device.type == "cpu" and PRETRAINED & {det.config.backbone_2d.name,
                                                                           det.config.backbone_3d.name}:
            faults.append((DiagnosticStatus.WARN, "a model with pretrained backbones (paper preset) runs on CPU: "
                                                  "seconds per part; give the node a GPU (device cuda)"))
        if sum(s["not_judged"].values()):
            faults.append((DiagnosticStatus.WARN, ""))
        return faults

    def _audit_status(self) -> DiagnosticStatus:
        """The audit store's own status: WARN while writes fail (rows queued), ERROR once a decision was lost."""
        audit = self._audit
        name = self._status_name("audit")
        if audit is None:
            text = "disabled (audit.enabled false)" if not self._p("audit.enabled") else "not open (node not configured)"
            return DiagnosticStatus(level=DiagnosticStatus.OK, name=name, message=text, hardware_id=self._hardware_id())
        h = audit.health()
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
        return DiagnosticStatus(level=level, name=name, message=text[:300], hardware_id=self._hardware_id(),
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])


def audit_default_path() -> str:
    """``cmdr_audit.db`` in the ROS log directory (ROS_LOG_DIR, else ROS_HOME/log, else ~/.ros/log)."""
    from pathlib import Path

    from rclpy.logging import get_logging_directory

    return str(Path(get_logging_directory()) / "cmdr_audit.db")


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (every waiting part then gets its fail-safe decision) or until autostart
    fails (exit status 1)."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    try:
        rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as e:  # noqa: BLE001 - rcl reports bad --ros-args as a generic RCLError
        raise CmdrError(f"cannot start ROS: {str(e).splitlines()[0][:300]}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = InspectionNode()
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, name="cmdr_executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.1) and node.exit_code is None and spinner.is_alive():
            pass
        if stop.is_set():
            node.wait_quiet()  # the executor still spins: what the readers accepted reaches a callback
        executor.shutdown(timeout_sec=5.0)
        if stop.is_set():  # no callback runs any more: drain the stragglers, unsubscribe, answer everything
            n = node.stop_and_settle("shutdown", "the node was stopped before this part was judged")
            node.get_logger().info(f"stopping: {n} part(s) not judged yet got the fail-safe decision")
    finally:
        executor.shutdown(timeout_sec=5.0)
        node._teardown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return node.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
