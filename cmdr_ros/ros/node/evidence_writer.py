"""The inspection node's evidence writer: each kept part's folder (``cmdr_ros.evidence``, docs/evidence.md) written on
a thread of its own, off the decision path.

``submit`` is called on the outbox thread where the decision's audit row is made (``engine.DecisionEngine``): it
decides whether the part is kept (every reject and every part not judged; of the passes the fraction
``evidence.passes``, deterministically: every 1/f-th pass), queues it (at most ``QUEUE`` parts; never waits) with
the ``~/heatmap`` message when one was drawn for the part (its pixels are kept, not drawn again) and
writes the folder's name into the row (``evidence``, ``evidence_root``). The row is committed before the folder is
written, so the row names the folder the writer was asked for: a folder is complete or absent (written under a
temporary name, then renamed), and a write that fails is counted (``failed``), logged with the folder's name and
shown in ``/diagnostics``. A part that finds the queue full is not kept: counted (``dropped``) and its row's
``evidence`` stays empty. While writes fail, a part is queued only once per ``RETRY_S`` (to see when the root is
back), the others are dropped: the rows naming folders that never came are at most one per ``RETRY_S``.
``Retention`` keeps the node's parts under ``evidence.max_bytes``, deleting the oldest (``deleted``).
"""
from __future__ import annotations

import collections
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from cmdr_ros.evidence import EvidenceError, Retention, meta_of, part_folder, write_evidence
from cmdr_ros.judge import Verdict
from cmdr_ros.ros.conversions.images import image_to_array
from cmdr_ros.ros.kinds import kind_of

QUEUE = 8  # parts waiting to be written (each holds its frame's arrays)
RETRY_S = 1.0  # while writes fail: one part queued per this many seconds, the others dropped
CLOSE_S = 10.0  # what is still queued at cleanup is written within this, then dropped


def evidence_arrays(verdict: Verdict, frame: Any, alpha: float, vmax: float,
                    heatmap: Any = None) -> dict[str, np.ndarray]:
    """The arrays ``write_evidence`` takes from a decided part: ``image`` (the image as judged), ``heatmap`` and
    ``anomaly_map`` (judged parts, as the part's kind makes them: ``kinds.RosKind.map_arrays``; the heatmap as
    ~/heatmap publishes it, in RGB: the pixels of ``heatmap``, the bgr8 ``~/heatmap`` message already drawn for the
    part, else drawn now), ``xyz`` (an organized pixel-aligned cloud as received, HxWx3; any other cloud: its points
    Nx3, a scan's in message order with invalid points NaN)."""
    out: dict[str, np.ndarray] = {}
    if frame is None:
        return out
    if frame.rgb is not None:
        out["image"] = frame.rgb
    if frame.alignment == "aligned" and frame.xyz is not None:
        out["xyz"] = frame.xyz
    elif frame.points is not None:
        out["xyz"] = np.asarray(frame.points, dtype=np.float32)
    pred = verdict.prediction
    if verdict.judged and pred is not None:
        drawn = None if heatmap is None else image_to_array(heatmap)
        out["anomaly_map"], bgr = kind_of(frame).map_arrays(frame, pred, verdict.threshold, alpha, vmax, drawn)
        out["heatmap"] = bgr[..., ::-1]
    return out


class PassSampler:
    """Keeps the fraction ``f`` of the passes it is shown, evenly: pass n is kept when floor(n f) > floor((n-1) f)
    (f = 0.25: the 4th, 8th, ...; 1: every one)."""

    def __init__(self) -> None:
        self.n = 0

    def keep(self, f: float) -> bool:
        self.n += 1
        return math.floor(self.n * f + 1e-9) > math.floor((self.n - 1) * f + 1e-9)


class EvidenceWriter:
    """Writes kept parts under ``root`` (module docstring). ``param(name)``: a parameter's value now
    (evidence.passes, evidence.max_bytes, output.heatmap_alpha, output.heatmap_max); ``warn(kind, msg, level)``:
    the node's throttled log; ``retry_s``: while writes fail, one part is queued per this many seconds."""

    def __init__(self, root: str, location: str, node: str, param: Callable[[str], Any],
                 warn: Callable[..., None], retry_s: float = RETRY_S) -> None:
        self.root, self.location, self.node = Path(root), location, node
        self.param, self.warn, self.retry_s = param, warn, retry_s
        self._jobs: queue.Queue = queue.Queue(QUEUE)
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()  # written, bytes, dropped, failed, deleted...
        self.last_error = ""
        self.last_write_ms = 0.0
        self.retained_bytes = self.retained_parts = 0
        self.last_drop: float | None = None  # time.monotonic() of the newest part not kept
        self._failing_since: float | None = None
        self._last_try = 0.0  # while failing: when the last part was queued (or the failure began)
        self._sampler = PassSampler()
        self._thread = threading.Thread(target=self._run, name="cmdr_evidence", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the outbox thread
    def submit(self, row: dict[str, Any], verdict: Verdict, frame: Any, heatmap: Any = None) -> str | None:
        """Queue the part of ``row`` (an audit row, ``schema.row_from_result``) when it is kept (``heatmap``: its
        ``~/heatmap`` message when one was drawn, kept instead of drawing it again), and name its folder
        in ``row``; the folder, or None (not kept, or dropped: the row's ``evidence`` stays empty). Never waits, never
        raises: a part that cannot be named is counted (``failed``), its decision goes on."""
        if verdict.judged and not verdict.reject and not self._sampler.keep(float(self.param("evidence.passes"))):
            return None
        try:
            rel = part_folder(self.node, row["decided_at"], row["run_id"], row["seq"])
        except (EvidenceError, KeyError, TypeError, ValueError) as e:
            self._failed(f"evidence of decision {row.get('seq')} not kept: {type(e).__name__}: {e}", failing=False)
            return None
        with self._lock:
            if self._failing_since is not None:
                now = time.monotonic()
                if now - self._last_try < self.retry_s:
                    self._drop(f"evidence of {rel} not kept: the evidence root is failing ({self.last_error})")
                    return None
                self._last_try = now
            try:
                self._jobs.put_nowait((rel, meta_of(row), verdict, frame, heatmap))
            except queue.Full:
                self._drop(f"evidence of {rel} not kept: {QUEUE} parts already wait to be written "
                           "(the evidence root is slower than the parts)")
                return None
        row["evidence"], row["evidence_root"] = rel, self.location
        return rel

    def _drop(self, msg: str) -> None:
        self.counts["dropped"] += 1
        self.last_drop = time.monotonic()
        self.warn("evidence", msg)

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        retention = None
        try:
            retention = Retention(self.root, int(self.param("evidence.max_bytes")), node=self.node)
        except (EvidenceError, OSError) as e:
            self._failed(f"evidence retention of {self.root}: {e}")
        while (job := self._jobs.get()) is not None:
            rel, meta, verdict, frame, heatmap = job
            t0 = time.perf_counter()
            try:
                arrays = evidence_arrays(verdict, frame, float(self.param("output.heatmap_alpha")),
                                         float(self.param("output.heatmap_max")), heatmap)
                nbytes = write_evidence(self.root, rel, meta=meta, **arrays)
            except Exception as e:  # noqa: BLE001 - evidence must never stop the writer: counted and shown
                self._failed(str(e) if isinstance(e, EvidenceError) else f"evidence {rel}: {type(e).__name__}: {e}")
                continue
            with self._lock:
                self.last_write_ms = (time.perf_counter() - t0) * 1e3
                self.counts["written"] += 1
                self.counts["bytes"] += nbytes
                self._failing_since = None
            if retention is not None:
                retention.max_bytes = int(self.param("evidence.max_bytes"))
                parts, freed = retention.add(rel, nbytes)
                with self._lock:
                    self.counts["deleted"] += parts
                    self.counts["deleted_bytes"] += freed
                    self.counts["delete_failures"] = retention.failures
                    self.retained_bytes, self.retained_parts = retention.total, retention.parts
                if retention.failures and retention.last_error != self.last_error:
                    self._failed(retention.last_error, count=False)

    def _failed(self, msg: str, count: bool = True, failing: bool = True) -> None:
        """Count (unless not ``count``) and log a failure; ``failing``: the root failed (probed from now on)."""
        with self._lock:
            self.counts["failed"] += int(count)
            self.last_error = msg
            if count and failing and self._failing_since is None:
                self._failing_since = self._last_try = time.monotonic()
        self.warn("evidence", msg, "error")

    # ------------------------------------------------------------------ the node
    def health(self) -> dict[str, Any]:
        """Counters (written, bytes, dropped, failed, deleted, deleted_bytes, delete_failures), ``failing`` (the
        last write failed), ``queued``, what retention holds (retained_parts, retained_bytes), last_write_ms,
        last_error, root, location."""
        with self._lock:
            out: dict[str, Any] = {k: self.counts[k] for k in ("written", "bytes", "dropped", "failed", "deleted",
                                                                "deleted_bytes", "delete_failures")}
            out.update(failing=self._failing_since is not None, queued=self._jobs.qsize(),
                       retained_parts=self.retained_parts, retained_bytes=self.retained_bytes,
                       last_write_ms=self.last_write_ms, last_error=self.last_error, root=str(self.root),
                       location=self.location, last_drop=self.last_drop)
        return out

    def close(self, timeout: float = CLOSE_S) -> int:
        """Write what is queued (within ``timeout``), stop the thread; how many queued parts were not written."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._jobs.put(None, timeout=max(deadline - time.monotonic(), 0.01))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(deadline - time.monotonic(), 0.0))
        lost = 0
        while True:  # a thread past the deadline: what it has not taken is dropped
            try:
                lost += self._jobs.get_nowait() is not None
            except queue.Empty:
                break
        with self._lock:
            self.counts["dropped"] += lost
        return lost


def open_evidence(values: Mapping[str, Any], node: str, param: Callable[[str], Any], logger: Any,
                  warn: Callable[..., None]) -> EvidenceWriter | None:
    """The evidence writer of the node's parameter ``values`` (None: evidence.dir empty)."""
    if not values["evidence.dir"]:
        return None
    root = Path(values["evidence.dir"]).expanduser().absolute()
    location = values["evidence.location"] or str(root)
    writer = EvidenceWriter(str(root), location, node, param, warn)
    logger.info(f"evidence: {root} (recorded as {location}), passes kept {values['evidence.passes']:g}, "
                f"retention {values['evidence.max_bytes']} bytes")
    return writer


def close_evidence(writer: EvidenceWriter | None, logger: Any) -> None:
    if writer is not None:
        lost = writer.close()
        h = writer.health()
        logger.info(f"evidence closed: {h['written']} part(s) written ({h['bytes']} bytes), {h['failed']} failed, "
                    f"{h['dropped']} dropped, {h['deleted']} deleted by retention"
                    + (f", {lost} queued part(s) NOT written" if lost else ""))


def evidence_status(health: Mapping[str, Any] | None, *, name: str, hw_id: str, window: float) -> DiagnosticStatus:
    """The evidence writer's status (None: evidence off): WARN while writes fail, or when a part was dropped within
    the last ``window`` seconds (diagnostics.window)."""
    if health is None:
        return DiagnosticStatus(level=DiagnosticStatus.OK, name=name, hardware_id=hw_id,
                                message="off (evidence.dir empty)")
    h = health
    recent_drop = h["last_drop"] is not None and time.monotonic() - h["last_drop"] < window
    if h["failing"]:
        level, text = DiagnosticStatus.WARN, f"failing: {h['last_error']}"
    elif recent_drop:
        level, text = DiagnosticStatus.WARN, f"{h['dropped']} part(s) not kept (queue full or root failing)"
    else:
        level, text = DiagnosticStatus.OK, f"{h['written']} part(s) written"
    values = {k: h[k] for k in ("root", "location", "written", "bytes", "dropped", "failed", "deleted",
                                "deleted_bytes", "delete_failures", "queued", "retained_parts", "retained_bytes")}
    values.update(failing=str(h["failing"]).lower(), last_write_ms=f"{h['last_write_ms']:.1f}",
                  last_error=h["last_error"][:200])
    return DiagnosticStatus(level=level, name=name, message=text[:300], hardware_id=hw_id,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
