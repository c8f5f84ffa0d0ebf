"""Approximate-time synchronization of the inspection node's inputs (image, points, camera_info).

The node needs one image, one organized cloud and (optionally) one camera_info taken at "the same" instant. ROS 2
solves this with ``message_filters.ApproximateTimeSynchronizer``; that package ships with a ROS install but not with
the PyPI client libraries, so this module carries :class:`ApproximateTimePolicy`, a pure-Python copy of the Python
``ApproximateTimeSynchronizer.add`` of ros2/message_filters (same queues, same candidate order, same strict ``<``
test), plus counters. :func:`make_synchronizer` wires either one to rclpy subscriptions.

Reference semantics, reproduced exactly (all times in integer nanoseconds, ``slop_ns = int(slop * 1e9)``):

1. Each input has a queue ``{stamp_ns: msg}``. A new message is stored under its stamp (replacing a queued message
   with the same stamp), then while the queue holds more than ``queue_size`` entries the smallest stamp is deleted
   (this can be the message that just arrived, when it is older than everything queued).
2. For every *other* input, the candidates are its queued stamps with ``|s - new| <= slop_ns``, sorted by that
   distance (stable: ties keep queue order). If any other input has no candidate, nothing happens.
3. Combinations are tried in ``itertools.product`` order of those sorted lists (so the closest stamp of the first
   other input varies slowest); the first whose ``max - min < slop_ns`` (strictly) and whose stamps are all still
   queued is emitted and its messages are removed from their queues. Only one set is emitted per arrival.

With one input the candidate product is a single empty combination, so every message is emitted on arrival.
Because the spread test is strict, a slop below one nanosecond would never emit anything and is refused.
"""
from __future__ import annotations

import collections
import copy
import functools
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cmdr_ros import CmdrError
from cmdr_ros.ros.stamps import seconds_ns, stamp_ns

if TYPE_CHECKING:
    from rclpy.callback_groups import CallbackGroup
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

_LOG = logging.getLogger(__name__)


@dataclass
class SyncStats:
    """Counters of one synchronizer; every update and :meth:`snapshot` / :meth:`reset` holds an internal lock.

    ``received[i]``: messages handed to input ``i``; ``matched``: sets emitted (each uses one message per input);
    ``dropped[i]``: messages of input ``i`` that left its queue without being part of an emitted set (evicted by
    overflow or replaced by a message with the same stamp) — the node's "unmatched frames"; ``rejected[i]``:
    headerless messages refused because ``allow_headerless`` is off. Under :class:`ApproximateTimePolicy`
    ``received[i] == matched + dropped[i] + rejected[i] + pending[i]`` holds (between resets).
    """

    received: list[int]
    dropped: list[int]
    rejected: list[int]
    matched: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def zeros(cls, n_inputs: int) -> SyncStats:
        """All-zero counters for ``n_inputs`` inputs."""
        return cls(received=[0] * n_inputs, dropped=[0] * n_inputs, rejected=[0] * n_inputs)

    def snapshot(self) -> SyncStats:
        """A consistent copy (taken under the lock), safe to read while the callbacks keep counting."""
        with self._lock:
            return SyncStats(list(self.received), list(self.dropped), list(self.rejected), self.matched)

    def note_received(self, index: int, *, unconfirmed: bool = False) -> None:
        """Count an arrival; ``unconfirmed`` also counts it as dropped until :meth:`note_matched` settles it."""
        with self._lock:
            self.received[index] += 1
            if unconfirmed:
                self.dropped[index] += 1

    def note_dropped(self, index: int) -> None:
        """Count a message of input ``index`` that left its queue unused."""
        with self._lock:
            self.dropped[index] += 1

    def note_rejected(self, index: int) -> None:
        """Count a headerless message refused by input ``index``."""
        with self._lock:
            self.rejected[index] += 1

    def note_matched(self, *, settle_unconfirmed: bool = False) -> None:
        """Count an emitted set; ``settle_unconfirmed`` takes its messages back out of ``dropped`` (floor 0)."""
        with self._lock:
            self.matched += 1
            if settle_unconfirmed:
                self.dropped = [max(0, d - 1) for d in self.dropped]


def _percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted values, interpolated linearly (numpy's default)."""
    k = (len(ordered) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class InputLateness:
    """How late each input arrives after the first input of its set: arrival times on this host (monotonic
    seconds), so a driver's clock does not enter. One sample per input per set: a matched set, or a set that
    missed because an input came after its partner had already left the queue unmatched (the late one is then
    measured against the partner's arrival). The last ``keep`` samples per input; thread-safe."""

    def __init__(self, n_inputs: int, keep: int = 200) -> None:
        self._samples: list[collections.deque[float]] = [collections.deque(maxlen=keep) for _ in range(n_inputs)]
        self._lock = threading.Lock()

    def note_set(self, arrivals: Sequence[float | None]) -> None:
        """One set: the arrival time of each input (None: an input not part of it)."""
        known = [a for a in arrivals if a is not None]
        if len(known) < 2:
            return
        first = min(known)
        with self._lock:
            for samples, a in zip(self._samples, arrivals):
                if a is not None:
                    samples.append(a - first)

    def percentiles(self) -> list[tuple[float, float, int]]:
        """Per input: (p50 s, p95 s, number of sets measured); (0, 0, 0) before any set."""
        with self._lock:
            ordered = [sorted(s) for s in self._samples]
        return [(_percentile(o, 50), _percentile(o, 95), len(o)) if o else (0.0, 0.0, 0) for o in ordered]


def _header_stamp_ns(msg: Any) -> int | None:
    """``msg.header.stamp`` in nanoseconds (builtin_interfaces/Time or rclpy Time), or None when absent."""
    stamp = getattr(getattr(msg, "header", None), "stamp", None)
    return None if stamp is None else stamp_ns(stamp)


def _checked_slop_ns(n_inputs: int, queue_size: int, slop: float) -> int:
    """Validate the synchronizer parameters; return the slop in ns as the reference's ``Duration(seconds=slop)``."""
    if n_inputs < 1:
        raise CmdrError(f"synchronizer: n_inputs={n_inputs} must be at least 1.")
    if queue_size < 1:
        raise CmdrError(f"synchronizer: queue_size={queue_size} must be at least 1 or no set can ever match.")
    if not math.isfinite(slop) or seconds_ns(slop) < 1:
        raise CmdrError(f"synchronizer: slop={slop} s must be finite and at least 1 ns (the spread test is "
                        f"strict, so a zero slop never matches).")
    return seconds_ns(slop)


class ApproximateTimePolicy:
    """Thread-safe approximate-time matcher with the semantics of ROS 2 ``ApproximateTimeSynchronizer``.

    ``callback(*msgs)`` receives one message per input, in input order. It runs while the internal (re-entrant)
    lock is held, so sets are delivered in the order they were matched; keep it cheap (hand the set to a worker).
    Headerless messages are stamped with ``clock_ns()`` (arrival time, nanoseconds) when ``allow_headerless`` is
    set, otherwise counted in ``stats.rejected`` and ignored, as in the reference.
    """

    def __init__(self, n_inputs: int, queue_size: int, slop: float, callback: Callable[..., None], *,
                 allow_headerless: bool = False, clock_ns: Callable[[], int] = time.time_ns,
                 on_drop: Callable[[int, Any, str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.slop_ns = _checked_slop_ns(n_inputs, queue_size, slop)
        self.n_inputs = n_inputs
        self.queue_size = queue_size
        self.allow_headerless = allow_headerless
        self.stats = SyncStats.zeros(n_inputs)
        self._callback = callback
        self._clock_ns = clock_ns
        self._on_drop = on_drop
        self._monotonic = monotonic
        self._queues: list[dict[int, Any]] = [{} for _ in range(n_inputs)]
        self._arrival: list[dict[int, float]] = [{} for _ in range(n_inputs)]
        self.lateness = InputLateness(n_inputs)
        # messages that left unmatched (timeout, evicted): (input, stamp, arrival), so that a partner arriving after
        # them still tells how late it was
        self._gone: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=4 * n_inputs * queue_size)
        self._closed: str | None = None  # set by close(): every later message goes straight to on_drop
        self._warned_headerless = [False] * n_inputs
        self._lock = threading.RLock()

    def pending(self) -> list[int]:
        """How many messages each input queue holds, waiting for partners."""
        with self._lock:
            return [len(q) for q in self._queues]

    def add(self, index: int, msg: Any, stamp_ns: int | None = None) -> None:
        """Offer ``msg`` on input ``index`` (stamp: ``stamp_ns``, else ``msg.header.stamp``); may emit one set."""
        if not 0 <= index < self.n_inputs:
            raise IndexError(f"input index {index} outside 0..{self.n_inputs - 1}")
        self.stats.note_received(index)
        stamp = _header_stamp_ns(msg) if stamp_ns is None else int(stamp_ns)
        if stamp is None:
            if not self.allow_headerless:
                self.stats.note_rejected(index)
                if not self._warned_headerless[index]:
                    self._warned_headerless[index] = True
                    _LOG.warning("input %d: message without header.stamp ignored (allow_headerless is off)", index)
                return
            stamp = self._clock_ns()
        with self._lock:
            if self._closed is not None:
                self.stats.note_dropped(index)
                if self._on_drop is not None:
                    self._on_drop(index, msg, self._closed)
                return
            self._insert(index, stamp, msg)
            self._match(index, stamp)

    def _insert(self, index: int, stamp: int, msg: Any) -> None:
        """Store under ``stamp`` (replacing a same-stamp message) and trim the queue by deleting the oldest stamps."""
        queue = self._queues[index]
        if stamp in queue:
            self._drop(index, stamp, "duplicate")
        queue[stamp] = msg
        now = self._arrival[index][stamp] = self._monotonic()
        missed = {i: t for i, s, t in self._gone if i != index and abs(s - stamp) <= self.slop_ns}
        if missed:  # a partner already left unmatched: this input came that much after it
            self.lateness.note_set([now if i == index else missed.get(i) for i in range(self.n_inputs)])
        while len(queue) > self.queue_size:
            self._drop(index, min(queue), "evicted")

    def _drop(self, index: int, stamp: int, why: str) -> None:
        """Remove a queued message unused, count it and hand it to ``on_drop(index, msg, why)``."""
        msg = self._queues[index].pop(stamp)
        arrival = self._arrival[index].pop(stamp, None)
        if why in ("timeout", "evicted") and arrival is not None:
            self._gone.append((index, stamp, arrival))
        self.stats.note_dropped(index)
        if self._on_drop is not None:
            self._on_drop(index, msg, why)

    def expire(self, max_age: float) -> int:
        """Drop (``on_drop(..., 'timeout')``) every message that has waited more than ``max_age`` seconds for its
        partners; returns how many."""
        limit = self._monotonic() - max_age
        with self._lock:
            old = [(i, s) for i, arr in enumerate(self._arrival) for s, t in arr.items() if t < limit]
            for i, s in old:
                self._drop(i, s, "timeout")
        return len(old)

    def close(self, why: str = "shutdown") -> int:
        """Flush, and hand every message offered from now on straight to ``on_drop(..., why)``: a callback still
        running while its subscription is destroyed leaves nothing behind. Returns how many were flushed."""
        with self._lock:
            self._closed = why
            return self.flush(why)

    def flush(self, why: str = "flushed") -> int:
        """Drop every waiting message (e.g. at shutdown); returns how many."""
        with self._lock:
            waiting = [(i, s) for i, q in enumerate(self._queues) for s in list(q)]
            for i, s in waiting:
                self._drop(i, s, why)
        return len(waiting)

    def _match(self, index: int, stamp: int) -> None:
        """Emit the first candidate combination (reference order) whose spread is strictly below the slop."""
        if stamp not in self._queues[index]:
            return  # evicted by its own trim: the reference's "all stamps still queued" test fails for every set
        candidates = []
        for other, queue in enumerate(self._queues):
            if other == index:
                continue
            near = [(s, abs(s - stamp)) for s in queue if abs(s - stamp) <= self.slop_ns]
            if not near:
                return
            candidates.append([s for s, _ in sorted(near, key=lambda sd: sd[1])])
        for combo in itertools.product(*candidates):
            stamps = list(combo)
            stamps.insert(index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns:
                msgs = tuple(q.pop(s) for q, s in zip(self._queues, stamps))
                self.lateness.note_set([arrival.pop(s, None) for arrival, s in zip(self._arrival, stamps)])
                self.stats.note_matched()
                self._callback(*msgs)
                return


def _import_message_filters() -> Any | None:
    """The ROS ``message_filters`` package when installed (a full ROS 2 install), else None (PyPI rclpy only)."""
    try:
        import message_filters
    except ImportError:
        return None
    return message_filters


class Synchronizer:
    """Subscriptions of ``topics`` feeding one approximate-time matcher; built by :func:`make_synchronizer`.

    ``stats`` is the live :class:`SyncStats`; ``backend`` is ``"message_filters"`` or ``"policy"``; ``lateness``
    the policy's :class:`InputLateness` (None under message_filters, whose arrival times are hidden).

    Counting differs by backend. ``"policy"`` counts exactly: ``dropped[i]`` are messages evicted unused, and
    ``rejected[i]`` headerless ones. ``"message_filters"`` hides its queues, so a cheap counting callback on each
    ``message_filters.Subscriber`` (registered before the synchronizer, hence it sees every message first) counts
    ``received[i]``, the sync callback counts ``matched``, and ``dropped[i]`` is the running number of messages
    received and not (yet) matched since the last reset: an upper bound of the evictions that also includes the up
    to ``queue_size`` messages still waiting and any headerless ones (``rejected`` stays 0).
    """

    def __init__(self, node: Node, topics: Sequence[tuple[type, str]], qos: QoSProfile | int, queue_size: int,
                 slop: float, callback: Callable[..., None], *, prefer_message_filters: bool = True,
                 allow_headerless: bool = False, callback_group: CallbackGroup | None = None,
                 event_callbacks: Any | None = None, on_drop: Callable[[int, Any, str], None] | None = None,
                 subscription_options: dict[str, Any] | None = None) -> None:
        if not topics:
            raise CmdrError("synchronizer: no input topics given.")
        _checked_slop_ns(len(topics), queue_size, slop)
        self._node = node
        self._user_callback = callback
        # message_filters never says which message it evicts: a caller that must answer every input (on_drop) gets
        # the policy, which does
        message_filters = _import_message_filters() if prefer_message_filters and on_drop is None else None
        if message_filters is not None:
            self.backend = "message_filters"
            self.policy = None
            self.stats = SyncStats.zeros(len(topics))
            filters = [message_filters.Subscriber(node, msg_type, name, qos_profile=_own(qos), callback_group=callback_group,
                                                  event_callbacks=event_callbacks, **(subscription_options or {}))
                       for msg_type, name in topics]
            for index, sub in enumerate(filters):
                sub.registerCallback(self._count_arrival, index)
            self._sync = message_filters.ApproximateTimeSynchronizer(filters, queue_size, slop,
                                                                     allow_headerless=allow_headerless)
            self._sync.registerCallback(self._on_filters_match)
            self.lateness = None
            self._subscriptions = [sub.sub for sub in filters]
        else:
            self.backend = "policy"
            self._sync = ApproximateTimePolicy(len(topics), queue_size, slop, callback,
                                               allow_headerless=allow_headerless, on_drop=on_drop)
            self.policy = self._sync
            self.stats = self._sync.stats
            self.lateness = self._sync.lateness
            self._subscriptions = [
                node.create_subscription(msg_type, name, functools.partial(self._sync.add, index), _own(qos),
                                         callback_group=callback_group, event_callbacks=event_callbacks,
                                         **(subscription_options or {}))
                for index, (msg_type, name) in enumerate(topics)]

    def _count_arrival(self, _msg: Any, index: int) -> None:
        self.stats.note_received(index, unconfirmed=True)

    def _on_filters_match(self, *msgs: Any) -> None:
        self.stats.note_matched(settle_unconfirmed=True)
        self._user_callback(*msgs)

    def drain(self) -> int:
        """Take every message still waiting in the subscriptions' readers and offer it to the matcher (policy
        backend; call with the executor stopped, e.g. at shutdown, so every accepted input is answered)."""
        if self.policy is None:
            return 0
        taken = 0
        for index, sub in enumerate(self._subscriptions):
            while True:
                with sub.handle:
                    got = sub.handle.take_message(sub.msg_type, sub.raw)
                if got is None:
                    break
                self.policy.add(index, got[0])
                taken += 1
        return taken

    def destroy(self) -> None:
        """Destroy the subscriptions (idempotent); the node itself stays alive."""
        for sub in self._subscriptions:
            self._node.destroy_subscription(sub)
        self._subscriptions = []


def _own(qos: QoSProfile | int) -> QoSProfile | int:
    """A profile of one subscription's own: rclpy's QoS overrides change the profile object they are given."""
    return qos if isinstance(qos, int) else copy.copy(qos)


def make_synchronizer(node: Node, topics: Sequence[tuple[type, str]], qos: QoSProfile | int, queue_size: int,
                      slop: float, callback: Callable[..., None], prefer_message_filters: bool = True, *,
                      allow_headerless: bool = False, callback_group: CallbackGroup | None = None,
                      event_callbacks: Any | None = None,
                      on_drop: Callable[[int, Any, str], None] | None = None,
                      subscription_options: dict[str, Any] | None = None) -> Synchronizer:
    """Subscribe ``node`` to ``topics`` ([(msg_type, name), ...]) and call ``callback(*msgs)`` per matched set.

    Uses ``message_filters`` when importable and ``prefer_message_filters`` is set, else plain subscriptions
    feeding :class:`ApproximateTimePolicy` (same matching). ``slop`` is in seconds. See :class:`Synchronizer`
    for what the counters mean in each case. ``event_callbacks`` (rclpy ``SubscriptionEventCallbacks``) go to every
    subscription, e.g. to report an incompatible QoS. ``on_drop(index, msg, why)`` receives every message that
    leaves a queue unmatched (evicted, duplicate stamp, or by ``policy.expire`` / ``policy.flush``); it selects
    the policy backend. ``subscription_options`` are further ``create_subscription`` keywords (e.g.
    ``qos_overriding_options``).
    """
    return Synchronizer(node, topics, qos, queue_size, slop, callback, prefer_message_filters=prefer_message_filters,
                        allow_headerless=allow_headerless, callback_group=callback_group,
                        event_callbacks=event_callbacks, on_drop=on_drop, subscription_options=subscription_options)
