"""The inspection node on the wire: its parameters' declarations, which inputs it subscribes to for a mode, which
outputs it publishes, and with which QoS (topic names: ``topics.py``)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Mapping

from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

from cmdr_ros.ros import topics
from cmdr_ros.ros.node import typed_decision
from cmdr_ros.ros.node.parameters import PARAMETERS, coerce_overrides, descriptor, refusal
from cmdr_ros.ros.conversions.frames import input_names

if TYPE_CHECKING:
    from rclpy.node import Node

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                             history=HistoryPolicy.KEEP_LAST)  # what diagnostic_updater offers
OVERRIDABLE = QoSOverridingOptions.with_default_policies()  # reliability, durability, history, depth per input
DECISION_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                          history=HistoryPolicy.KEEP_LAST)  # deep: a burst of fail-safe decisions is never overwritten
MAPS_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                      history=HistoryPolicy.KEEP_LAST)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         history=HistoryPolicy.KEEP_LAST)  # ~/vision_info, ~/ready: a late subscriber gets the value in force


# input.cloud -> the cloud input's topic: a PointCloud2, a raw depth image, or a depth image through
# image_transport's compressedDepth (a CompressedImage, "16UC1|32FC1; compressedDepth png|rvl")
CLOUD_TOPIC = {"points": "points", "depth": "depth", "compressedDepth": "depth"}
OPTIONAL_TYPE = {"extrinsics": Parameter.Type.DOUBLE_ARRAY}  # parameters without a default: unset unless given


def declare_parameters(node: Node) -> list[str]:
    """Declare every parameter of ``parameters.PARAMETERS`` on ``node`` with the values given at start (coerced:
    ``threshold:=3`` is a double). A value ROS itself refuses (range, type) is logged, its default declared instead,
    and returned as "name: why" (configure then refuses to run with it)."""
    problems = []
    overrides = getattr(node, "_parameter_overrides", None)  # rclpy keeps the start values here
    coerce_overrides(overrides)
    for name, (default, _, _) in PARAMETERS.items():
        value = OPTIONAL_TYPE[name] if default is None else default
        try:
            node.declare_parameter(name, value, descriptor(name))
        except Exception as e:  # noqa: BLE001 - rclpy raises several kinds; configure reports them
            given = getattr((overrides or {}).get(name), "value", None)
            problem = refusal(name, given, str(e).splitlines()[0][:200])
            problems.append(f"{name}: {problem}")
            node.get_logger().error(f"parameter refused at start: {problem}")
            node.declare_parameter(name, value, descriptor(name), ignore_override=True)
    return problems


def steady_clock() -> Any:
    """The clock of the timers that guard the line (watchdog, /diagnostics, autostart): steady, so they run with
    use_sim_time and no /clock (a replay not started yet); sim time only stamps. ``create_timer(..., clock=)``
    exists since Humble."""
    from rclpy.clock import Clock, ClockType

    return Clock(clock_type=ClockType.STEADY_TIME)


class ReadyState:
    """``~/ready`` (std_msgs/Bool, reliable, transient local, depth 1): published at each change, so a late
    subscriber gets the value in force. Thread-safe (transitions, the executor and the stopping main thread)."""

    def __init__(self, node: Any) -> None:
        self._bool = topics.STATE_TYPES["ready"]
        self._pub = node.create_publisher(topics.STATE_TYPES["ready"], "~/ready", LATCHED_QOS)
        self._lock = threading.Lock()
        self.value: bool | None = None
        self.set(False)

    def set(self, ready: bool, wait_acked_s: float = 0.0) -> None:
        """Publish ``ready`` when it changes; ``wait_acked_s``: then wait (that long at most) until the subscribers
        have it (before the node stops serving)."""
        with self._lock:
            if ready == self.value:
                return
            self.value = ready
            try:
                self._pub.publish(self._bool(data=ready))
            except Exception:  # noqa: BLE001 - the context may be going away at shutdown
                return
        if wait_acked_s > 0:
            from cmdr_ros.ros.node.settle import wait_acked

            wait_acked([self._pub], wait_acked_s)


def input_topics(mode: str, image_transport: str = "raw", cloud: str = "points") -> list[tuple[type, str]]:
    """(message type, topic) of each synchronized input of ``mode`` (types: ``topics.INPUT_TYPES``)."""
    topic = {"image": "image", "points": CLOUD_TOPIC[cloud]}
    compressed = {"image": image_transport == "compressed", "points": cloud == "compressedDepth"}
    return [(topics.COMPRESSED_TYPE if compressed[name] else topics.INPUT_TYPES[topic[name]], topic[name])
            for name in input_names(mode)]


def input_qos(depth: int, reliability: str) -> QoSProfile:
    """The inputs' QoS (parameters input.depth, input.reliability; overridable per topic)."""
    return QoSProfile(depth=int(depth), reliability=RELIABILITY[reliability], history=HistoryPolicy.KEEP_LAST)


def output_keys(values: Mapping[str, Any]) -> list[str]:
    """The outputs the node publishes with parameter ``values``: the decisions always, each map when enabled (the
    typed outputs: ``typed_outputs``)."""
    return list(topics.DECISION_OUTPUTS) + [key for key in topics.MAPS if values[f"output.{key}"]]


def create_outputs(node: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """The lifecycle publishers of ``output_keys`` (``~/NAME``): decisions deep, maps shallow; and the typed
    outputs (``typed_outputs``)."""
    pubs = {key: node.create_lifecycle_publisher(topics.OUTPUT_TYPES[key], f"~/{key}",
                                                 MAPS_QOS if key in topics.MAPS else DECISION_QOS)
            for key in output_keys(values)}
    return pubs | typed_outputs(node)


def typed_outputs(node: Any) -> dict[str, Any]:
    """``~/decision`` (a lifecycle publisher, deep like the decisions) and ``~/vision_info`` (a plain latched
    publisher: it speaks at configure, before activation); none without vision_msgs, which is logged."""
    if not typed_decision.AVAILABLE:
        node.get_logger().warning(typed_decision.UNAVAILABLE)
        return {}
    return {"decision": node.create_lifecycle_publisher(typed_decision.Classification, "~/decision", DECISION_QOS),
            "vision_info": node.create_publisher(typed_decision.VisionInfo, "~/vision_info", LATCHED_QOS)}


def announce_model(pubs: Mapping[str, Any], stamp: Any, detector: Any, checkpoint: str) -> None:
    """Publish (latched) the ``~/vision_info`` of the model just configured (nothing without that output)."""
    if (pub := pubs.get("vision_info")) is None:
        return
    cfg = detector.config
    used = {"2d": (cfg.backbone_2d,), "3d": (cfg.backbone_3d,)}.get(cfg.mode, (cfg.backbone_2d, cfg.backbone_3d))
    backbones = "+".join(b.name for b in used if b is not None)
    pub.publish(typed_decision.vision_info(stamp, cfg.mode, detector.model_id, checkpoint, backbones))


def incompatible_qos_text(policy: Any, total: int, reliability: str) -> str:
    """What the node says when an input publisher's QoS does not match its subscription."""
    return (f"incompatible QoS with a publisher (policy {policy}, {total} in total): this node subscribes with "
            f"input.reliability='{reliability}'; a reliable subscription never matches a best-effort publisher: set "
            "the parameter input.reliability to best_effort (or make the publisher reliable)")
