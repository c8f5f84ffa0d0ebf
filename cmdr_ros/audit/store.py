"""The node's audit writer: every decision committed to the store before it is published, without ever stopping
the line.

``record(row)`` queues the row for the writer thread and waits (at most ``timeout_s``) until it is committed.
While the store is healthy that is a few milliseconds and the decision is published after its commit. When
the store fails (full disk, locked database, removed directory, PostgreSQL down) ``record`` does not wait: the
decision is published, the row stays queued (up to ``max_backlog`` rows, then the newest are dropped and
counted) and the writer retries every ``retry_s`` seconds, reopening the connection, until the fault clears and
the backlog is written in order. ``close`` writes what is queued (within a deadline) and says what it could not.

With a ``spool`` (``spool.Spool``, the node always has one), a row not committed within ``timeout_s`` (or while the
store is failing, or while older rows wait in the spool) is committed to the spool before ``record`` returns, so a
decision is never published without its row durable somewhere: the writer drains the spool into the store in order
when it answers again, and at start-up (rows a killed node left), exactly once (see ``spool.py``). Rows wait in
memory only when the spool itself cannot be written; ``close`` spools what is still queued.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from cmdr_ros.audit.backends import AuditError, Backend, open_backend, printable
from cmdr_ros.audit.spool import Spool

BATCH = 500  # rows per transaction when a backlog is written


class AuditStore:
    def __init__(self, target: str, *, timeout_s: float = 0.5, retry_s: float = 1.0, max_backlog: int = 100_000,
                 on_fault: Callable[[str, str], None] | None = None,
                 opener: Callable[[str], Backend] | None = None, spool: Spool | None = None):
        self.target, self.timeout_s, self.retry_s, self.max_backlog = target, timeout_s, retry_s, max_backlog
        self._open = opener or (lambda t: open_backend(t, busy_timeout_s=min(max(timeout_s / 2, 0.05), 1.0)))
        self._on_fault = on_fault or (lambda level, msg: None)
        self._backend: Backend | None = None
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()  # in memory, not spooled
        self._spool = spool
        self._spool_backlog = 0  # rows for this store in the spool (older than every row in _queue)
        self._inflight: set[int] = set()  # tickets of the batch the writer is writing from memory
        self._moved: dict[int, int] = {}  # ticket -> spool id: rows of that batch spooled meanwhile
        self._next_ticket = 1
        self._committed = 0  # every ticket <= this is stored (rows are written in ticket order)
        self._healthy = True  # the last attempt succeeded (or none was made yet)
        self._busy_since: float | None = None  # a write in progress since (monotonic)
        self._closing = False
        # written (drained included), failures, dropped, late, deferred, reopened, spooled, drained, spool_failures
        self.counts = collections.Counter()
        self.last_error = ""
        self.last_write_ms = 0.0
        self.last_spool_ms = 0.0
        self.spool_error = ""
        if spool is not None:
            self._count_spool()  # before the first record(): a new row must not pass rows a killed node left
        self._thread = threading.Thread(target=self._run, name="cmdr_audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the decision path
    def record(self, row: dict[str, Any]) -> bool:
        """Queue one decision's row; True when it is committed to the store on return. False: it is in the spool
        (durable, written to the store later), or, where the spool cannot be written either, queued in memory,
        dropped, or the store is closed; the caller publishes the decision either way."""
        with self._cv:
            if self._closing:
                self.counts["dropped"] += 1
                return False
            if len(self._queue) + self._spool_backlog >= self.max_backlog:
                self.counts["dropped"] += 1
                self._fault(f"audit backlog full ({self.max_backlog} rows): a decision was not recorded")
                return False
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append((ticket, row))
            self._cv.notify_all()
            if not self._can_wait():
                self.counts["deferred"] += 1
            else:
                deadline = time.monotonic() + self.timeout_s
                while self._committed < ticket:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._can_wait():
                        break
                    self._cv.wait(min(left, 0.05))
                else:
                    return True
                self.counts["late"] += 1
            self._spool_up_to(ticket)
            return False

    def _can_wait(self) -> bool:
        busy = self._busy_since is not None and time.monotonic() - self._busy_since > self.timeout_s
        return self._healthy and not busy and not self._spool_backlog  # spooled rows go first: nothing to wait for

    def _spool_up_to(self, ticket: int) -> None:
        """Commit every row still in memory up to ``ticket`` to the spool (under ``_cv``; older rows first, so the
        spool stays ahead of the memory queue); where the spool fails they stay in memory."""
        if self._spool is None:
            return
        n = 0
        for t, _ in self._queue:
            if t > ticket:
                break
            n += 1
        if not n:
            return
        rows = [self._queue[i] for i in range(n)]
        t0 = time.perf_counter()
        try:
            ids = self._spool.put(self.target, [r for _, r in rows])
        except AuditError as e:
            self.counts["spool_failures"] += 1
            self.spool_error = str(e)
            self._fault(f"{e}: {n} row(s) kept in memory only (lost if the node dies before the store takes them)")
            return
        self.last_spool_ms = (time.perf_counter() - t0) * 1e3
        for (t, _), spool_id in zip(rows, ids):
            self._queue.popleft()
            if t in self._inflight:  # the writer is writing it right now: it deletes it from the spool if that works
                self._moved[t] = spool_id
        self.counts["spooled"] += n
        self._spool_backlog += n
        self.spool_error = ""
        self._cv.notify_all()

    def _count_spool(self) -> str | None:
        """Count the rows spooled for this store (under ``_cv``, or before the writer starts); the error, or None."""
        try:
            self._spool_backlog = self._spool.count(self.target)
        except AuditError as e:
            self.counts["spool_failures"] += 1
            self.spool_error = str(e)
            self._fault(str(e))
            return str(e)
        return None

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        error = self._connect()  # at once: a store that cannot be opened is reported before the first decision
        if error is not None:
            self._failed(error)
        elif self._spool_backlog:
            self._fault(f"audit spool {self._spool.path}: {self._spool_backlog} row(s) left by an earlier run: "
                        "writing them first", "info")
        while True:
            with self._cv:
                while not self._queue and not self._spool_backlog and not self._closing:
                    self._cv.wait()
                if self._closing and (not self._queue or self._spool_backlog):
                    break  # spooled rows wait in the spool for the next start; close() spools what is in memory
                from_spool = self._spool_backlog > 0
                if not from_spool:
                    batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                    self._inflight = {t for t, _ in batch}
                self._busy_since = time.monotonic()
            if from_spool:
                error, n = self._drain()
            else:
                error, n = self._write([row for _, row in batch]), len(batch)
            moved: list[int] = []
            with self._cv:
                self._busy_since = None
                tickets, self._inflight = self._inflight, set()
                moved = [self._moved.pop(t) for t in sorted(tickets) if t in self._moved]
                if error is None:
                    if not from_spool:
                        while self._queue and self._queue[0][0] in tickets:
                            self._queue.popleft()
                        self._committed = max(self._committed, batch[-1][0])
                        self.counts["written"] += n
                    if not self._healthy:
                        self._healthy = True
                        self._fault(f"audit store recovered: {n} queued row(s) written", "info")
                    self._cv.notify_all()
                closing = self._closing
            if error is None:
                if moved:  # written from memory and spooled meanwhile: out of the spool again
                    self._forget(moved)
                continue
            self._failed(error)
            if closing:
                break
            with self._cv:  # wait before the next attempt (closing wakes it for one last try)
                self._cv.wait_for(lambda: self._closing, timeout=self.retry_s)
        self._disconnect()

    def _drain(self) -> tuple[str | None, int]:
        """Write the oldest spooled rows to the store, then delete them from the spool (a crash in between: the
        next drain writes them again, which the store ignores); the error in words (or None), and how many."""
        try:
            got = self._spool.peek(self.target, BATCH)
        except AuditError as e:
            return str(e), self._spool_backlog
        if not got:  # drained by another node sharing the spool file (or counted wrong): count again
            with self._cv:
                return self._count_spool(), 0
        error = self._write([row for _, row in got])
        if error is not None:
            return error, self._spool_backlog
        with self._cv:
            self.counts["written"] += len(got)
            self.counts["drained"] += len(got)
        self._forget([i for i, _ in got])
        return None, len(got)

    def _forget(self, ids: list[int]) -> None:
        """Delete rows the store has committed from the spool and count what is left there."""
        try:
            self._spool.delete(ids)
        except AuditError as e:  # they stay spooled: the next drain writes them again, which the store ignores
            with self._cv:
                self.counts["spool_failures"] += 1
                self.spool_error = str(e)
            self._fault(str(e))
            return
        with self._cv:
            self._count_spool()
            self._cv.notify_all()

    def _failed(self, error: str) -> None:
        with self._cv:
            self.counts["failures"] += 1
            self._healthy = False
            self.last_error = error
            queued, spooled = len(self._queue), self._spool_backlog
            self._cv.notify_all()
        where = f"{queued} row(s) queued" + (f", {spooled} in the spool" if self._spool is not None else "")
        self._fault(f"audit store failing ({where}, retried every {self.retry_s:g} s): {error}")

    def _attempt(self, step: Callable[[], None]) -> str | None:
        """Run one step against the store; on failure drop the connection and return why (else None)."""
        try:
            step()
        except AuditError as e:
            self._disconnect()
            return str(e)
        except Exception as e:  # noqa: BLE001 - the writer must survive anything a driver raises
            self._disconnect()
            return f"{type(e).__name__}: {e}"
        return None

    def _ensure_open(self) -> None:
        """Open the store (again, when its file was removed or replaced)."""
        if self._backend is not None:
            try:
                self._backend.verify()
            except AuditError as e:
                with self._cv:
                    self.counts["reopened"] += 1
                self._fault(str(e))
                self._disconnect()
        if self._backend is None:
            self._backend = self._open(self.target)

    def _connect(self) -> str | None:
        return self._attempt(self._ensure_open)

    def _write(self, rows: list[dict[str, Any]]) -> str | None:
        """Write ``rows`` in one transaction; the error in words, or None."""
        t0 = time.perf_counter()
        error = self._connect() or self._attempt(lambda: self._backend.insert(rows))
        if error is None:
            self.last_write_ms = (time.perf_counter() - t0) * 1e3
        return error

    def _disconnect(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def _fault(self, msg: str, level: str = "error") -> None:
        try:
            self._on_fault(level, msg)
        except Exception:  # noqa: BLE001 - a logger failing at shutdown must not stop the writer
            pass

    # ------------------------------------------------------------------ health and end
    def health(self) -> dict[str, Any]:
        """Counters and state; ``backlog`` is every row not yet in the store (in memory and in the spool),
        ``spool_backlog`` the part of it in the spool, ``written`` includes ``drained`` (rows written from the
        spool)."""
        with self._cv:
            out = {k: self.counts[k] for k in ("written", "failures", "dropped", "late", "deferred", "reopened",
                                               "spooled", "drained", "spool_failures")}
            out.update(backlog=len(self._queue) + self._spool_backlog, spool_backlog=self._spool_backlog,
                       healthy=self._healthy, last_error=self.last_error, last_write_ms=self.last_write_ms,
                       last_spool_ms=self.last_spool_ms, spool_error=self.spool_error, target=printable(self.target),
                       spool=self._spool.path if self._spool is not None else "")
        return out

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything recorded so far is committed to the store, the spool drained (True), or
        ``timeout_s`` passed."""
        with self._cv:
            ticket = self._next_ticket - 1
            return self._cv.wait_for(lambda: (not self._queue or self._queue[0][0] > ticket)
                                     and not self._spool_backlog, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> int:
        """Write what is queued (one last try when the store is failing), stop the writer, spool what is still in
        memory (written at the next start); returns how many rows are neither in the store nor in the spool."""
        self.flush(timeout_s if self._healthy else 0.0)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        with self._cv:
            self._spool_up_to(self._next_ticket)
            lost, spooled = len(self._queue), self._spool_backlog
        if lost:
            self._fault(f"audit store closed with {lost} decision(s) not written: {self.last_error}")
        if spooled:
            self._fault(f"audit store closed with {spooled} decision(s) in the spool {self._spool.path}: written "
                        "to the store at the next start", "info")
        if self._spool is not None:
            self._spool.close()
        return lost
