"""The inspection node's subscriptions while active: the synchronized inputs of its mode (``sync.py``), camera_info
and part ids. A matched set is queued for inference (``DecisionEngine.submit``), an input that leaves the
synchronizer without partner gets its own not-judged result, and while the node stops (``closing``) a set that
still matches gets the fail-safe at once. Also the inputs' QoS against their publishers'.
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any, Callable

from rclpy.callback_groups import ReentrantCallbackGroup

from cmdr_ros.config import cross_modal
from cmdr_ros.ros import topics
from cmdr_ros.ros.compat import SubscriptionEventCallbacks
from cmdr_ros.ros.node.frame_judge import unmatched_reason
from cmdr_ros.ros.node.queues import Part
from cmdr_ros.ros.node.settle import take_all, wait_inputs_quiet
from cmdr_ros.ros.node.status import incompatible_publishers
from cmdr_ros.ros.node.sync import make_synchronizer
from cmdr_ros.ros.node.wiring import OVERRIDABLE, incompatible_qos_text, input_qos, input_topics

if TYPE_CHECKING:
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo

    from cmdr_ros.ros.compat import QoSRequestedIncompatibleQoSInfo
    from cmdr_ros.ros.node.engine import DecisionEngine
    from cmdr_ros.ros.node.queues import InputMessage
    from cmdr_ros.ros.node.status import ThrottledLog


class NodeInputs:
    """The subscriptions of ``node`` (made by ``subscribe``, released by ``unsubscribe``); ``param`` reads its
    parameters, ``warn`` logs throttled. ``sync`` (None while unsubscribed), ``names``: the synchronized inputs."""

    def __init__(self, node: Node, engine: DecisionEngine, param: Callable[[str], Any], warn: ThrottledLog) -> None:
        self.node, self.engine, self.param, self.warn = node, engine, param, warn
        self.group = ReentrantCallbackGroup()
        self.sync = None
        self.info_sub = self.part_sub = None
        self.names: list[str] = []
        self.latest_info: CameraInfo | None = None
        self.closing = False  # stopping: a set that still matches gets the fail-safe at once

    def subscribe(self, mode: str) -> None:
        """Subscribe to the inputs of ``mode``, camera_info (when the mode or a depth input needs it) and part ids;
        CmdrError when the synchronizer cannot be made."""
        p = self.param
        inputs = input_topics(mode, p("input.image_transport"), p("input.cloud"))
        self.names = [name for _, name in inputs]
        self.latest_info = None
        qos = input_qos(p("input.depth"), p("input.reliability"))
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        # reentrant: one input's callback never waits behind another's (the policy has its own lock)
        # qos_overrides./TOPIC.subscription.reliability (etc.) in the params file sets one input's QoS
        self.sync = make_synchronizer(self.node, inputs, qos, int(p("sync.queue_size")), float(p("sync.slop")),
                                      self._on_set, event_callbacks=events, on_drop=self._on_orphan,
                                      callback_group=self.group,
                                      subscription_options={"qos_overriding_options": OVERRIDABLE})
        if cross_modal(mode) or "depth" in self.names:
            self.info_sub = self.node.create_subscription(topics.INPUT_TYPES["camera_info"], "camera_info",
                                                          self._on_info, copy.copy(qos), event_callbacks=events,
                                                          callback_group=self.group,
                                                          qos_overriding_options=OVERRIDABLE)
        self.part_sub = self.node.create_subscription(topics.INPUT_TYPES["part_id"], "part_id",
                                                      self.engine.part_ids.add, qos, callback_group=self.group)
        self.closing = False

    def take_waiting(self) -> None:
        """Take what the readers still hold: part ids, and each input into the synchronizer (``sync.drain``)."""
        if self.part_sub is not None:
            take_all(self.part_sub, self.engine.part_ids.add)
        if self.sync is not None:
            self.sync.drain()

    def wait_quiet(self, quiet_s: float, max_wait_s: float) -> None:
        """Return when no input arrived for ``quiet_s`` (at most ``max_wait_s``)."""
        wait_inputs_quiet(self.sync, quiet_s, max_wait_s)

    def unsubscribe(self) -> None:
        """Release the subscriptions; then the inputs waiting for a partner are answered (``shutdown``)."""
        for name in ("info_sub", "part_sub"):
            if getattr(self, name) is not None:
                self.node.destroy_subscription(getattr(self, name))
                setattr(self, name, None)
        if self.sync is not None:
            sync, self.sync = self.sync, None
            sync.destroy()  # first: no reader accepts an input from here on ...
            if sync.policy is not None:  # ... then waiting inputs, and any a late callback still offers, are answered
                sync.policy.close("shutdown")

    def expire(self) -> None:
        """Inputs waiting longer than sync.timeout for a partner get their unmatched result."""
        sync = self.sync
        if sync is not None and sync.policy is not None:
            sync.policy.expire(float(self.param("sync.timeout")))

    def counters(self) -> dict[str, Any]:
        """Inputs waiting for a partner, inputs received, and per input its lateness (p50 s, p95 s, sets)."""
        sync = self.sync
        lateness = sync.lateness if sync is not None else None
        return {"pending_sync": sum(sync.policy.pending()) if sync is not None and sync.policy is not None else 0,
                "received": sum(sync.stats.snapshot().received) if sync is not None else 0,
                "late_inputs": dict(zip(self.names, lateness.percentiles())) if lateness is not None else {}}

    def qos_mismatches(self) -> dict[str, int]:
        """Per input topic, how many of its publishers cannot reach the node's subscription (QoS), from the ROS
        graph, which forgets a publisher once it is gone: an incompatible-QoS error lasts while one is there."""
        node, found = self.node, {}
        names = list(self.names) + (["camera_info"] if self.info_sub is not None else [])
        try:
            for topic in map(node.resolve_topic_name, names):
                ours = [i.qos_profile for i in node.get_subscriptions_info_by_topic(topic)
                        if i.node_name == node.get_name() and i.node_namespace == node.get_namespace()]
                if n := incompatible_publishers(node.get_publishers_info_by_topic(topic), ours):
                    found[topic] = n
        except Exception as e:  # noqa: BLE001 - the graph may be going away at shutdown: say so, do not stop
            self.warn("qos", f"cannot read the ROS graph for the QoS check: {type(e).__name__}: {e}")
        return found

    def _on_incompatible_qos(self, event: QoSRequestedIncompatibleQoSInfo) -> None:
        self.warn("qos", incompatible_qos_text(event.last_policy_kind, event.total_count,
                                               self.param("input.reliability")), "error")
        self.engine.count("qos_incompatible")

    def _on_info(self, msg: CameraInfo) -> None:
        self.latest_info = msg

    def _on_set(self, *msgs: InputMessage) -> None:
        """Synchronizer callback: queue the part; when the queue is full the oldest waiting part is decided now."""
        part = Part(dict(zip(self.names, msgs)), self.latest_info if self.info_sub is not None else None,
                    time.monotonic())
        if self.closing:
            self.engine.fail(part, "shutdown", "the node is stopping: this part arrived after the last one judged")
            return
        self.engine.submit(part, self.param("overload"), int(self.param("worker.queue_size")))

    def _on_orphan(self, index: int, msg: InputMessage, why: str) -> None:
        """An input that left the synchronizer without partner: its own not-judged result."""
        name = self.names[index]
        kind, reason = unmatched_reason(name, self.names, why, float(self.param("sync.timeout")))
        self.engine.fail(Part({name: msg}, None, time.monotonic()), kind, reason)
