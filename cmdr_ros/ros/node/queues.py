"""The node's parts on their way to a decision: the queue in front of the inference thread (``WorkQueue``) and the
order decisions leave in (``DecisionOutbox``). No rclpy here: the node drives both from its callbacks and threads.

Every part gets exactly one decision: ``Part.decided`` is set under the decision lock (``WorkQueue.cv``) by
whoever decides first (the worker with the model's verdict, the watchdog or an overload with the fail-safe).
The decision then gets its sequence number under that same lock, and is recorded in the audit store and
published in number order by the outbox thread: a slow store holds back the next publication (its row is
committed first, or the wait timed out), never the one who decided, nor the lock the watchdog, the input callbacks
and the diagnostics need.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from cmdr_ros.ros.stamps import seconds_ns, stamp_ns

if TYPE_CHECKING:
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
    from std_msgs.msg import Header

    InputMessage = Image | CompressedImage | PointCloud2  # what the synchronizer hands over (depth: an Image)


@dataclass(eq=False)
class Part:
    """One part on its way to a decision: a synchronized set, or an orphan input (one message)."""

    msgs: dict[str, InputMessage]  # input name -> message
    info: CameraInfo | None
    t_in: float  # time.monotonic() when the set matched (orphan: when it was dropped)
    header: Header | None = None
    inputs: str = ""
    decided: bool = False
    frame_ids: dict[str, str] = field(default_factory=dict)
    part_id: str | None = None  # known when the part is a trigger without its frame

    def __post_init__(self) -> None:
        primary = next((self.msgs[k] for k in ("image", "points", "depth") if k in self.msgs), None)
        self.header = primary.header if primary is not None else None
        self.inputs = "+".join(self.msgs)
        self.frame_ids = {k: m.header.frame_id for k, m in self.msgs.items()}

    @classmethod
    def of_trigger(cls, trigger: Header, t_in: float) -> Part:
        """A trigger (trigger mode) that no frame answered: a part of its own, stamped as the trigger, with its id."""
        part = cls({}, None, t_in, part_id=trigger.frame_id)
        part.header, part.inputs = trigger, "trigger"
        return part


class PartIds:
    """The part ids published on ``part_id`` (a Header: the part's stamp, its id as frame_id), the newest ``keep``.

    A decision takes the id whose stamp is nearest its own within the slop (``near``), or waits a bounded time for it
    (``wait_near``: an id published just after the frame). Each id remembers whether a decision took it: one that no
    decision took within a window of its arrival (or that was pushed out of the newest ``keep`` first) is handed out
    once by ``unclaimed``, to be reported. ``seen`` counts the ids received."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._cv = threading.Condition()
        self._ids: collections.OrderedDict[int, _PartId] = collections.OrderedDict()  # stamp (ns) -> id
        self._lost: list[tuple[str, int]] = []  # pushed out before any decision took them, not reported yet
        self.seen = 0

    def add(self, msg: Header, now: float | None = None) -> None:
        with self._cv:
            self.seen += 1
            t = stamp_ns(msg)
            self._ids.pop(t, None)  # a repeated stamp: the newest id counts, and is the newest to keep
            self._ids[t] = _PartId(msg.frame_id, time.monotonic() if now is None else now, msg)
            while len(self._ids) > self.keep:
                old_t, old = self._ids.popitem(last=False)
                if not old.claimed and not old.reported:
                    self._lost.append((old_t, old))
            self._cv.notify_all()

    def _nearest(self, t: int, slop: int, untaken: bool) -> _PartId | None:
        near = [(abs(s - t), s) for s, p in self._ids.items() if abs(s - t) <= slop and not (untaken and p.claimed)]
        return self._ids[min(near)[1]] if near else None

    def near(self, header: Header, slop_s: float, untaken: bool = False) -> str | None:
        """The id whose stamp is nearest to ``header``'s, within ``slop_s`` seconds (None: none that near); taken.
        ``untaken``: only an id no decision took yet (trigger mode: one decision per trigger)."""
        return self.wait_near(header, slop_s, 0.0, untaken)

    def wait_near(self, header: Header, slop_s: float, timeout: float, untaken: bool = False) -> str | None:
        """``near``, waiting up to ``timeout`` seconds for such an id to arrive."""
        t, slop = stamp_ns(header), seconds_ns(slop_s)
        with self._cv:
            found = self._cv.wait_for(lambda: self._nearest(t, slop, untaken), max(timeout, 0.0))
            if found is None:
                return None
            found.claimed = True
            return found.pid

    def unclaimed(self, window_s: float, now: float | None = None) -> list[tuple[str, int]]:
        """(id, stamp ns) of each id no decision took within ``window_s`` seconds of its arrival, or pushed out of
        the newest ``keep`` untaken: each reported once (it stays available to a decision)."""
        return [(p.pid, t) for t, p in self._expired(window_s, now, claim=False)]

    def expired_triggers(self, window_s: float, now: float | None = None) -> list[tuple[Header, float]]:
        """Trigger mode: (message, arrival) of each id no decision took within ``window_s`` seconds of its arrival
        (negative: every one not taken yet), or pushed out untaken: taken now, by the ``no_frame`` decision its caller
        makes, so a frame that comes later cannot take it too (each trigger gets exactly one decision)."""
        return [(p.msg, p.arrived) for _, p in self._expired(window_s, now, claim=True)]

    def _expired(self, window_s: float, now: float | None, claim: bool) -> list[tuple[int, _PartId]]:
        now = time.monotonic() if now is None else now
        with self._cv:
            out, self._lost = self._lost, []
            for t, p in self._ids.items():
                if not p.claimed and not p.reported and now - p.arrived > window_s:
                    p.reported = True
                    p.claimed = p.claimed or claim
                    out.append((t, p))
        return out


@dataclass(eq=False)
class _PartId:
    pid: str
    arrived: float  # time.monotonic()
    msg: Header  # as published (trigger mode: the no_frame decision is stamped with it)
    claimed: bool = False  # a decision took it
    reported: bool = False  # reported as matching no part


class WorkQueue:
    """The parts waiting for inference and the one in it, guarded by ``cv`` (the node's decision lock)."""

    def __init__(self) -> None:
        self.cv = threading.Condition(threading.RLock())
        self.waiting: collections.deque[Part] = collections.deque()
        self.inflight: Part | None = None
        self.inflight_since = 0.0
        self.stuck = False  # the part in inference is past its time budget (reported once)

    def push(self, part: Part, capacity: int) -> list[Part]:
        """Queue ``part``; returns the oldest waiting parts pushed out to keep at most ``capacity`` waiting."""
        pushed_out = []
        with self.cv:
            while len(self.waiting) >= capacity:
                pushed_out.append(self.waiting.popleft())
            self.waiting.append(part)
            self.cv.notify()
        return pushed_out

    def take(self, stop: threading.Event) -> Part | None:
        """The next waiting part not decided yet, now in inference (blocks); None once ``stop`` is set."""
        with self.cv:
            while True:
                while not self.waiting and not stop.is_set():
                    self.cv.wait()
                if stop.is_set():
                    return None
                part = self.waiting.popleft()
                if not part.decided:
                    self.inflight, self.inflight_since = part, time.monotonic()
                    return part

    def finished(self) -> None:
        """The inference of the part in flight returned (or raised)."""
        with self.cv:
            self.inflight = None
            self.stuck = False

    def overdue(self, budget: float, now: float) -> tuple[list[Part], bool]:
        """The parts past ``budget`` seconds since their arrival (removed from the queue; the one in inference
        too, when not decided yet), and whether the inference just became stuck (running past ``budget``)."""
        with self.cv:
            late = [p for p in self.waiting if now - p.t_in > budget]
            for p in late:
                self.waiting.remove(p)
            inflight = self.inflight
            if inflight is not None and not inflight.decided and now - inflight.t_in > budget:
                late.append(inflight)
            newly_stuck = inflight is not None and now - self.inflight_since > budget and not self.stuck
            if newly_stuck:
                self.stuck = True
        return late, newly_stuck

    def take_all(self) -> list[Part]:
        """Every waiting part and the one in inference (the queue is emptied)."""
        with self.cv:
            parts = list(self.waiting) + ([self.inflight] if self.inflight is not None else [])
            self.waiting.clear()
        return parts

    def inflight_s(self, now: float) -> float:
        """Seconds the inference in flight has been running (0: none)."""
        with self.cv:
            return now - self.inflight_since if self.inflight is not None else 0.0

    def wake(self) -> None:
        with self.cv:
            self.cv.notify_all()


class DecisionOutbox:
    """Numbers the decisions and sends them out in number order from its own thread.

    ``post(send)`` is called under the decision lock, right when a part is marked decided: it hands out the next
    number and queues ``send(seq)`` in one step (no number can be left without its job, which would hold back every
    later one), and returns at once: nobody who decides (an input callback holding the synchronizer, the watchdog,
    the inference thread) ever waits for another decision's audit commit or publication. The outbox thread runs
    each ``send`` (record the audit row, publish the messages) in number order, so the audit writer's FIFO order
    and the published order are the sequence order; a ``send`` that raises is reported to ``on_error`` and the next
    number goes out. ``flush`` waits until everything numbered so far is out (settling, shutdown, tests)."""

    def __init__(self, on_error: Callable[[int, BaseException], None] | None = None) -> None:
        self._cv = threading.Condition()
        self.last = 0  # the highest number handed out
        self._out = 0  # every number <= this has been sent
        self._jobs: dict[int, Callable[[int], None]] = {}
        self._posted: dict[int, float] = {}  # monotonic time each unsent number was handed out
        self._on_error = on_error
        self._thread: threading.Thread | None = None

    def post(self, send: Callable[[int], None]) -> int:
        """The next number, with ``send(number)`` queued: it runs on the outbox thread once every lower number is
        out."""
        with self._cv:
            self.last += 1
            self._jobs[self.last] = send
            self._posted[self.last] = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cmdr_outbox", daemon=True)
                self._thread.start()
            self._cv.notify_all()
            return self.last

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every number handed out so far has been sent; False on time-out."""
        with self._cv:
            target = self.last
            return self._cv.wait_for(lambda: self._out >= target, timeout)

    @property
    def backlog(self) -> int:
        """Numbers handed out and not sent yet."""
        with self._cv:
            return self.last - self._out

    def oldest_unsent_s(self, now: float | None = None) -> float:
        """How long the oldest number not sent yet has waited (0 when everything is out): a decision that waits
        here has been made but not yet recorded and published."""
        with self._cv:
            posted = self._posted.get(self._out + 1)
        return 0.0 if posted is None else max((time.monotonic() if now is None else now) - posted, 0.0)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._out + 1 in self._jobs)
                seq = self._out + 1
                send = self._jobs.pop(seq)
            try:
                send(seq)
            except Exception as e:  # noqa: BLE001 - one decision that cannot go out must not hold back the next
                if self._on_error is not None:
                    self._on_error(seq, e)
            finally:
                with self._cv:
                    self._out = seq
                    self._posted.pop(seq, None)
                    self._cv.notify_all()
