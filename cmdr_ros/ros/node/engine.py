"""The node's decision engine, without rclpy: from a queued part to its one decision.

``submit`` queues a part in front of the inference thread (``work``); ``watch`` gives the parts past their time
budget the fail-safe; ``settle_all`` answers every part still held; ``decide`` numbers a decision under the
decision lock, then hands it to the outbox thread, which records it in the audit store and publishes its messages in
number order (``queues.DecisionOutbox``): a slow audit store delays the next publication, never the watchdog,
the input callbacks, the inference thread or ``/diagnostics``; so does a decision waiting (at most ``part_id.wait``)
for its part id. The node (``inspection_node.py``) wires it to ROS: it creates the publishers and the
store and hands them over as an ``Outlet`` while configured.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from cmdr_ros import CmdrError
from cmdr_ros.audit.schema import row_from_result
from cmdr_ros.judge import Verdict
from cmdr_ros.ros.node.queues import DecisionOutbox, Part, PartIds, WorkQueue
from cmdr_ros.ros.node.status import DecisionStats, rate_and_latency
from cmdr_ros.ros.stamps import stamp_text
from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values, wanted_outputs

if TYPE_CHECKING:
    from cmdr_ros.audit.store import AuditStore
    from cmdr_ros.ros.node.evidence_writer import EvidenceWriter
    from cmdr_ros.ros.node.frame_judge import FrameJudge
    from cmdr_ros.ros.conversions.frames import Frame


@dataclass
class Outlet:
    """Where decisions go while the node is configured, and what each result names."""

    pubs: dict[str, Any]  # output name -> publisher (``publish``, ``get_subscription_count``)
    audit: AuditStore | None = None
    mode: str = ""
    model_id: str = ""  # the model configured: named by a decision made without a judge (a judge names its own)
    node: str = ""  # the node's fully qualified name (audit rows)
    run_id: str = ""  # this process's run (audit rows: with seq, names each decision)
    evidence: EvidenceWriter | None = None  # keeps the evidence of chosen parts (evidence_writer.py)


def model_id_of(judge: Any) -> str:
    """The id of the model ``judge`` judges with ("" for none, or a judge that names none)."""
    return str(getattr(judge, "model_id", "") or "")


class DecisionEngine:
    """``judge_of()``: the node's judge now (None: not configured); ``param(name)``: a parameter's value now (read
    per decision: on_error, output.heatmap_alpha, output.heatmap_max, sync.slop, part_id.wait); ``warn(kind, msg,
    level)``: the throttled log."""

    def __init__(self, judge_of: Callable[[], FrameJudge | None], param: Callable[[str], Any],
                 warn: Callable[..., None]) -> None:
        self.judge_of, self.param, self.warn = judge_of, param, warn
        self.queue = WorkQueue()
        self.cv = self.queue.cv  # the decision lock: queue, in-flight part, numbering, counters
        self.order = DecisionOutbox(self._send_failed)
        self.part_ids = PartIds()
        self.unmatched_ids: list[str] = []  # the newest part ids that matched no part (diagnostics)
        self.stats = DecisionStats()
        self.outlet: Outlet | None = None
        # held from judging a part until its decision is numbered: a model swap (model_swap.py) takes it to put the
        # new judge in between two parts, so every decision names the model in service when it was made
        self.judging = threading.Lock()
        self.turnstile = threading.Lock()  # a swap waiting for ``judging`` holds it: the next part waits for the swap

    # ---------------------------------------------------------------- parts in
    def submit(self, part: Part, overload: str, queue_size: int) -> None:
        """Queue ``part``; when the queue is full the oldest waiting part is decided now (fail-safe). Its part id,
        when already here, is taken now: a trigger is answered by its frame from the frame's arrival on."""
        self._take_id(part)
        newest = overload == "newest"
        capacity = 1 if newest else queue_size
        for old in self.queue.push(part, capacity):
            if newest:
                self.fail(old, "superseded", "a newer part arrived before this one was judged (overload: newest)")
            else:
                self.fail(old, "overload", f"{capacity} parts were already waiting for inference "
                                           "(worker.queue_size): the oldest gets the fail-safe decision")

    def work(self, stop: threading.Event, alive: Callable[[], bool]) -> None:
        """The inference thread: judge queued parts one at a time until ``stop`` (``alive``: the ROS context is ok;
        a frame that raises is an ``internal`` fail-safe unless the node is going away)."""
        while (part := self.queue.take(stop)) is not None:
            with self.turnstile:  # a model swap waiting for the judging lock goes first
                pass
            with self.judging:  # the judge read here judges this part and names it in its decision
                judge = self.judge_of()
                frame, verdict = None, None
                try:
                    if judge is None:
                        raise CmdrError("the node has no model (cleaned up)")
                    frame, verdict = judge.judge(part.msgs, part.info)
                except Exception as e:  # noqa: BLE001 - the node must keep serving whatever a frame does
                    if stop.is_set() or not alive():
                        return
                    self.warn("internal", f"frame failed: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}",
                              "error")
                    verdict = self.not_judged("internal", f"{type(e).__name__}: {e}")
                finally:
                    self.queue.finished()
                if not self.decide(part, verdict, frame, model_id_of(judge)):
                    with self.cv:
                        self.stats.late_result(time.monotonic())

    def watch(self, budget: float) -> bool:
        """The watchdog's tick: every part past ``budget`` s since its arrival gets the fail-safe; True when the
        inference just became stuck (running past ``budget``; counted once). A part id that no decision took within
        time_budget + sync.timeout + part_id.wait of its arrival is reported (``report_unclaimed_ids``); in trigger
        mode (``part_id.trigger``) it gets the fail-safe decision ``no_frame``."""
        self.report_unclaimed_ids(budget + float(self.param("sync.timeout") or 0.0) +
                                  float(self.param("part_id.wait") or 0.0))
        with self.cv:
            late, newly_stuck = self.queue.overdue(budget, time.monotonic())
            self.stats.counts["stuck"] += int(newly_stuck)
        for p in late:
            self.fail(p, "timeout", f"no decision within time_budget {budget:g} s of its arrival")
        return newly_stuck

    def settle_all(self, kind: str, reason: str) -> int:
        """Give every queued part and the one in inference the fail-safe decision, and in trigger mode every
        trigger no frame took; how many decisions were made meanwhile."""
        n0 = self.order.last
        for p in self.queue.take_all():
            self.fail(p, kind, reason)
        if self.param("part_id.trigger"):
            self.answer_triggers(-1.0, kind, f"{reason} (a trigger without its frame)")
        if not self.flush():
            self.warn("internal", f"{self.order.backlog} decisions still not recorded and published", "error")
        return self.order.last - n0

    # ---------------------------------------------------------------- decisions out
    def not_judged(self, kind: str, reason: str) -> Verdict:
        """The fail-safe verdict (the judge's on_error; without a judge, the parameter's)."""
        judge = self.judge_of()
        if judge is not None:
            return judge.not_judged(kind, reason)
        return Verdict(False, self.param("on_error"), None, kind=kind, reason=reason)

    def fail(self, part: Part, kind: str, reason: str) -> None:
        self.decide(part, self.not_judged(kind, reason))

    def decide(self, part: Part, verdict: Verdict, frame: Frame | None = None, model_id: str | None = None) -> bool:
        """Make the one decision of ``part`` (False when it already had one, e.g. from the watchdog): numbered under
        the decision lock, then recorded and published in number order by the outbox thread (``flush`` waits).
        ``model_id``: the model that judged it (default: the judge's now, else the configured one)."""
        if part.decided:
            return False
        outlet = self.outlet
        try:
            maps = map_messages(verdict, frame, wanted_outputs(outlet.pubs) if outlet else (),
                                float(self.param("output.heatmap_alpha")), float(self.param("output.heatmap_max")))
        except Exception as e:  # noqa: BLE001 - a map that cannot be drawn must not cost the part its decision
            self.warn("internal", f"output maps of part {part.inputs} not built: {type(e).__name__}: {e}", "error")
            maps = {}
        decided_at = time.monotonic()
        latency_ms = (decided_at - part.t_in) * 1e3
        slop, id_wait = float(self.param("sync.slop")), float(self.param("part_id.wait") or 0.0)
        trigger = bool(self.param("part_id.trigger"))  # a trigger gets one decision: an id taken is not taken again

        def send(seq: int) -> None:  # on the outbox thread: whoever decided goes on at once
            if outlet is not None and outlet.pubs:
                part_id = self._part_id(part, slop, decided_at + id_wait, trigger)
                self._publish(outlet, part, verdict, frame, maps, seq, latency_ms, part_id, model_id)

        self._take_id(part)  # an id already here is taken at once, not only when the outbox sends
        with self.cv:
            if part.decided:
                return False
            part.decided = True
            if not model_id:  # read under the decision lock, which a model swap holds too: numbered in model order
                model_id = model_id_of(self.judge_of()) or (outlet.model_id if outlet is not None else "")
            self.order.post(send)  # numbered and queued in one step, in decision order
            self.stats.decided(verdict, latency_ms, time.monotonic())
        if not verdict.judged:
            self.warn(verdict.kind, f"part {part.inputs} not judged -> {verdict.decision}: {verdict.reason}")
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every decision made so far is recorded and published (default bound: each waiting one may
        take audit.timeout for its commit, plus 2 s and part_id.wait); False when that did not happen in time."""
        if timeout is None:
            timeout = 2.0 + float(self.param("part_id.wait") or 0.0) + \
                self.order.backlog * float(self.param("audit.timeout") or 0.0)
        return self.order.flush(timeout)

    def _take_id(self, part: Part) -> None:
        """Give ``part`` the id already received for its stamp (within sync.slop), if any; in trigger mode only one
        no part took yet (a trigger gets one decision). Taken ids are never reported nor expired as triggers."""
        if part.part_id is None and part.header is not None:
            part.part_id = self.part_ids.near(part.header, float(self.param("sync.slop")),
                                              bool(self.param("part_id.trigger")))

    def _part_id(self, part: Part, slop: float, deadline: float, untaken: bool = False) -> str | None:
        """The id of ``part`` (stamps within ``slop``), waited for until ``deadline`` (time.monotonic(): the
        decision's time plus part_id.wait) on the outbox thread: the decision keeps its number, its publication (and
        the later ones') waits. A cell that has sent no part id yet waits for none (its decisions go out at once);
        a part without id is counted once the node has received part ids at all."""
        if part.part_id is not None or part.header is None:
            return part.part_id
        wait = deadline - time.monotonic() if self.part_ids.seen else 0.0
        part_id = self.part_ids.wait_near(part.header, slop, wait, untaken)
        if part_id is None and self.part_ids.seen:
            self.count("no_part_id")
        return part_id

    def report_unclaimed_ids(self, window_s: float) -> list[tuple[str, int]]:
        """Count and log each part id that no decision took within ``window_s`` of its arrival (the watchdog's
        tick); the newest few are kept for /diagnostics. In trigger mode each such id is a trigger without its
        frame: it gets the fail-safe decision ``no_frame`` instead (``answer_triggers``)."""
        if self.param("part_id.trigger"):
            self.answer_triggers(window_s, "no_frame", f"no frame for this trigger within {window_s:g} s of its "
                                                       "arrival (time_budget + sync.timeout + part_id.wait)")
            return []
        lost = self.part_ids.unclaimed(window_s)
        if lost:
            with self.cv:
                self.stats.counts["part_id_unmatched"] += len(lost)
                self.unmatched_ids = (self.unmatched_ids + [pid for pid, _ in lost])[-5:]
            for pid, t in lost:
                self.warn("part_id", f"part id {pid!r} (stamp {stamp_text(t)}) matched "
                                     f"no part within {window_s:g} s of its arrival")
        return lost

    def answer_triggers(self, window_s: float, kind: str, reason: str) -> int:
        """Trigger mode: the fail-safe decision ``kind`` for each trigger no frame took within ``window_s`` of its
        arrival (negative: every one not taken yet), stamped as the trigger and carrying its id; how many."""
        expired = self.part_ids.expired_triggers(window_s)
        for trigger, arrived in expired:
            self.fail(Part.of_trigger(trigger, arrived), kind, reason)
        return len(expired)

    def _send_failed(self, seq: int, e: BaseException) -> None:
        self.warn("internal", f"decision {seq} not recorded or published: {type(e).__name__}: {e}", "error")

    @staticmethod
    def _publish(outlet: Outlet, part: Part, verdict: Verdict, frame: Frame | None, maps: dict[str, Any], seq: int,
                 latency_ms: float, part_id: str | None, model_id: str) -> None:
        values = result_values(part.header, verdict, frame, seq=seq, mode=outlet.mode, model_id=model_id,
                               inputs=part.inputs, latency_ms=latency_ms, frame_ids=part.frame_ids,
                               extra={"part_id": part_id} if part_id is not None else None)
        row = row_from_result(values, node=outlet.node, run_id=outlet.run_id, decided_at=time.time())
        if outlet.evidence is not None:  # queued for its writer thread (with ~/heatmap when drawn), the row names it
            outlet.evidence.submit(row, verdict, frame, maps.get("heatmap"))
        if outlet.audit is not None:  # committed before it is published (or spooled when the store is failing or slow)
            outlet.audit.record(row)
        for key, msg in decision_messages(part.header, verdict, values, maps).items():
            if (pub := outlet.pubs.get(key)) is not None:
                pub.publish(msg)

    # ---------------------------------------------------------------- counters
    def reset_stats(self) -> None:
        with self.cv:
            self.stats = DecisionStats()
            self.unmatched_ids = []

    def count(self, counter: str) -> None:
        with self.cv:
            self.stats.counts[counter] += 1

    def counters(self) -> dict[str, Any]:
        """Decisions, judged, rejects, late, stuck, qos_incompatible, no_part_id, part_id_unmatched (and the newest of
        those ids, part_id_unmatched_last), not_judged (by kind), recent (the transient faults as (time, kind),
        ``DecisionStats.recent``), seq, unsent (decided,
        not yet recorded and published) and unsent_s (how long the oldest of them has waited), waiting,
        inflight_s, rate_hz, latency_p50_ms, latency_p95_ms."""
        with self.cv:
            out, latencies, stamps = self.stats.copy()
            out.update(seq=self.order.last, unsent=self.order.backlog, unsent_s=self.order.oldest_unsent_s(),
                       part_id_unmatched_last=",".join(self.unmatched_ids),
                       waiting=len(self.queue.waiting),
                       inflight_s=self.queue.inflight_s(time.monotonic()))
        out.update(rate_and_latency(latencies, stamps, time.monotonic()))
        return out
