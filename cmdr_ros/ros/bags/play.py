"""Playing rosbag2 files on DDS: ``play_bag`` with the recorded spacing, each topic with the QoS it was recorded
with (``playback_qos``), optionally publishing /clock."""
from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from cmdr_ros import CmdrError
from cmdr_ros.ros.bags.read import connections, message_class, open_bag
from cmdr_ros.ros.dds_profile import use_large_message_profile
from cmdr_ros.ros.stamps import NS_PER_S, set_stamp
from cmdr_ros.ros.topics import CLOCK, TF_STATIC


def parse_remaps(remap: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    """``["OLD:=NEW", ...]`` (or a dict) as {old: new}; CmdrError for a malformed entry."""
    if not remap:
        return {}
    if isinstance(remap, dict):
        return dict(remap)
    out = {}
    for r in remap:
        old, sep, new = r.partition(":=")
        if not sep or not old or not new:
            raise CmdrError(f"--remap '{r}': expected OLD:=NEW, e.g. /camera/image:=/cam/color")
        out[old] = new
    return out


def _same_offer(profiles: Sequence[Any]) -> bool:
    """rosbag2's ``all_profiles_effectively_same``: equal in every policy that decides compatibility."""
    return len({(p.reliability, p.durability, p.deadline, p.liveliness, p.liveliness_lease_duration)
                for p in profiles}) == 1


def playback_qos(topic: str, profiles: Sequence[Any], count: int = 0) -> Any:
    """The rclpy QoS to offer when playing ``topic``, recorded with the offered ``profiles`` (rosbags ``Qos``).

    As ``ros2 bag play`` (rosbag2 ``Rosbag2QoS::adapt_offer_to_recorded_offers``): profiles that agree in
    reliability, durability, deadline and liveliness give their reliability and durability; none, or a mix, give
    RELIABLE / VOLATILE. History: KEEP_LAST of the largest recorded depth, else 10 (rosbag2 records discovered
    publishers with an unknown history). ``/tf_static`` always goes out RELIABLE / TRANSIENT_LOCAL with room for
    its ``count`` recorded messages, so tf2's static listener gets every one of them, also when it joins late.
    """
    import logging

    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.interfaces import QosDurability, QosHistory, QosReliability

    reliable, latched, depth = True, False, 10
    if profiles and _same_offer(profiles):
        reliable = profiles[0].reliability != QosReliability.BEST_EFFORT
        latched = profiles[0].durability == QosDurability.TRANSIENT_LOCAL
        depth = max((p.depth for p in profiles if p.history == QosHistory.KEEP_LAST and p.depth > 0), default=10)
    elif profiles:
        logging.getLogger(__name__).warning("%s: the recorded publishers offered different QoS; playing it "
                                            "reliable, volatile (as ros2 bag play does)", topic)
    if topic == TF_STATIC:
        reliable, latched, depth = True, True, max(depth, count)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def topic_qos(reader: Any, topic: str) -> Any:
    """``playback_qos`` of a topic of an open bag (``open_bag``), from the offers of all its connections."""
    info = reader.topics[topic]
    return playback_qos(topic, [q for c in info.connections for q in c.ext.offered_qos_profiles], info.msgcount)


def _class_to_play(type_name: str, topic: str, chosen: Sequence[str]) -> type:
    """The rclpy class to publish ``topic`` with; CmdrError naming the --topics that can be played without it (e.g.
    /tf and /tf_static in a pip-only venv: tf2_msgs has no PyPI wheel)."""
    try:
        return message_class(type_name)
    except CmdrError as e:
        others = " ".join(t for t in chosen if t != topic)
        raise CmdrError(f"{topic}: {e}; play the other topics with --topics {others}" if others else
                        f"{topic}: {e}") from None


def _qos_text(qos: Any) -> str:
    return f"{qos.reliability.name.lower()}, {qos.durability.name.lower()}, depth {qos.depth}"


class _Pace:
    """Sleeps until each message is due (recorded spacing divided by ``rate``); with a /clock publisher, publishes
    the playback position in bag time every ``1/hz`` s meanwhile (never past the message waited for)."""

    def __init__(self, rate: float, clock_pub: Any = None, hz: float = 0.0) -> None:
        self.rate, self.clock_pub = rate, clock_pub
        self.period = 1.0 / hz if clock_pub is not None else math.inf
        self.ticks = 0
        self.restart()

    def restart(self) -> None:
        """From the start of the bag: the next message waited for is played at once."""
        self.t0, self.first = time.monotonic(), None
        self.next_tick = self.t0 if self.clock_pub is not None else math.inf

    def wait(self, t: int) -> None:
        self.first = t if self.first is None else self.first
        due = self.t0 + (t - self.first) / NS_PER_S / self.rate
        while True:
            now = time.monotonic()
            if now >= self.next_tick:
                self._tick(min(self.first + round((now - self.t0) * self.rate * NS_PER_S), t))
                self.next_tick = now + self.period
            if now >= due:
                return
            time.sleep(min(due, self.next_tick) - now)

    def _tick(self, stamp: int) -> None:
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        set_stamp(msg.clock, stamp)
        self.clock_pub.publish(msg)
        self.ticks += 1


def play_bag(path: str | Path, rate: float = 1.0, loop: bool = False, topics: Sequence[str] | None = None,
             remap: Sequence[str] | dict[str, str] | None = None, node: Any = None, *, wait: float = 1.0,
             clock: float = 0.0, report: Callable[[str], None] | None = None) -> int:
    """Publish a bag's messages on DDS with their recorded spacing divided by ``rate``; returns how many were sent.

    Messages go out as the stored CDR bytes (``Publisher.publish`` of ``bytes``), header stamps untouched, each
    topic with the QoS it was recorded with (``playback_qos``: ``/tf_static`` transient-local) from publishers that
    live until the playback ends (``topics`` selects, ``remap`` renames). ``clock`` > 0: publish /clock
    (rosgraph_msgs/Clock, best effort) at the bag's time ``clock`` times a second, for nodes with use_sim_time.
    ``node``: publish from that rclpy node; None creates a node in a context of its own (no signal handlers:
    Ctrl-C raises KeyboardInterrupt here, which stops the playback cleanly). Before the first message it waits up
    to ``wait`` seconds for every topic's publisher to be matched, then at the end up to 1 s for reliable delivery
    to be acknowledged. ``loop`` replays until interrupted. ``report`` receives a summary line per topic.
    """
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    from cmdr_ros.ros.compat import PublisherEventCallbacks

    if not (math.isfinite(rate) and rate > 0):
        raise CmdrError(f"--rate {rate}: the playback rate must be a positive factor")
    if not (math.isfinite(clock) and clock >= 0):
        raise CmdrError(f"--clock {clock}: /clock is published a positive number of times per second (0: not at all)")
    renames = parse_remaps(remap)
    counts: Counter[str] = Counter()
    interrupted = False
    with open_bag(path) as reader:
        chosen = list(topics) if topics else sorted(reader.topics)
        conns = connections(reader, Path(path), chosen)
        if clock and CLOCK in (renames.get(t, t) for t in chosen):
            raise CmdrError(f"{path}: the bag has its own {CLOCK}; leave it out (--topics) or play without --clock")
        types = {t: reader.topics[t].msgtype for t in chosen}
        classes = {t: _class_to_play(types[t], t, chosen) for t in chosen}
        qos = {t: topic_qos(reader, t) for t in chosen}
        context = None
        if node is None:
            from rclpy.signals import SignalHandlerOptions

            use_large_message_profile()  # an image and its cloud from one participant: both whole through shared memory
            context = rclpy.Context()
            # no rclpy signal handler: it would shut the context down from another thread while this one destroys
            # the publishers (seen to hang under load); Ctrl-C is Python's KeyboardInterrupt, handled below
            rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
            node = rclpy.create_node("cmdr_bag_play", context=context)
        # no QoS event handlers: destroying a publisher whose handlers the caller's executor is adding to its wait set
        # in another thread kills that executor (rclpy InvalidHandle, seen in a test); this module never spins them
        quiet = PublisherEventCallbacks(use_default_callbacks=False)
        pubs = {t: node.create_publisher(classes[t], renames.get(t, t), qos[t], event_callbacks=quiet) for t in chosen}
        clock_pub = node.create_publisher(Clock, CLOCK, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT), event_callbacks=quiet) if clock else None  # ClockQoS
        pace = _Pace(rate, clock_pub, clock)
        try:
            deadline = time.monotonic() + max(wait, 0.0)
            while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in pubs.values()):
                time.sleep(0.01)
            while True:
                pace.restart()
                for conn, t, raw in reader.messages(connections=conns):
                    pace.wait(t)
                    pubs[conn.topic].publish(bytes(raw))
                    counts[conn.topic] += 1
                if not loop or pace.first is None:
                    break
            for p in pubs.values():
                p.wait_for_all_acked(Duration(seconds=1.0))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for p in [*pubs.values(), clock_pub]:
                if p is not None:
                    node.destroy_publisher(p)
            if context is not None:
                node.destroy_node()
                with contextlib.suppress(Exception):
                    rclpy.shutdown(context=context)
    if report is not None:
        for t in chosen:
            name = t if renames.get(t, t) == t else f"{t} -> {renames[t]}"
            report(f"  {name} ({types[t]}; {_qos_text(qos[t])}): {counts[t]} messages")
        if clock:
            report(f"  {CLOCK} (rosgraph_msgs/msg/Clock; {clock:g} Hz): {pace.ticks} messages")
        report(f"played {sum(counts.values())} messages from {path} at rate {rate:g}"
               + (" (interrupted)" if interrupted else ""))
    return sum(counts.values())

