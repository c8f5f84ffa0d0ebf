"""The node's audit writer: every decision committed to the store before it is published, without ever stopping
the line.

``record(row)`` queues the row for the writer thread and waits (at most ``timeout_s``) until it is committed.
While the store is healthy that is a few milliseconds and the decision is published after its commit. When
the store fails (full disk, locked database, removed directory, PostgreSQL down) ``record`` does not wait: the
decision is published, the row stays queued (up to ``max_backlog`` rows, then the newest are dropped and
counted) and the writer retries every ``retry_s`` seconds, reopening the connection, until the fault clears and
the backlog is written in order. ``close`` writes what is queued (within a deadline) and says what it could not.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from cmdr_ros.audit.backends import AuditError, Backend, open_backend, printable

BATCH = 500  # rows per transaction when a backlog is written


class AuditStore:
    def __init__(self, target: str, *, timeout_s: float = 0.5, retry_s: float = 1.0, max_backlog: int = 100_000,
                 on_fault: Callable[[str, str], None] | None = None,
                 opener: Callable[[str], Backend] | None = None):
        self.target, self.timeout_s, self.retry_s, self.max_backlog = target, timeout_s, retry_s, max_backlog
        self._open = opener or (lambda t: open_backend(t, busy_timeout_s=min(max(timeout_s / 2, 0.05), 1.0)))
        self._on_fault = on_fault or (lambda level, msg: None)
        self._backend: Backend | None = None
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._next_ticket = 1
        self._committed = 0  # every ticket <= this is stored (rows are written in ticket order)
        self._healthy = True  # the last attempt succeeded (or none was made yet)
        self._busy_since: float | None = None  # a write in progress since (monotonic)
        self._closing = False
        self.counts = collections.Counter()  # written, failures, dropped, late, deferred, reopened
        self.last_error = ""
        self.last_write_ms = 0.0
        self._thread = threading.Thread(target=self._run, name="cmdr_audit", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the decision path
    def record(self, row: dict[str, Any]) -> bool:
        """Queue one decision's row; True when it is committed on return (False: it is queued, dropped, or the
        store is closed; the caller publishes the decision either way)."""
        with self._cv:
            if self._closing:
                self.counts["dropped"] += 1
                return False
            if len(self._queue) >= self.max_backlog:
                self.counts["dropped"] += 1
                self._fault(f"audit backlog full ({self.max_backlog} rows): a decision was not recorded")
                return False
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append((ticket, row))
            self._cv.notify_all()
            if not self._can_wait():
                self.counts["deferred"] += 1
                return False
            deadline = time.monotonic() + self.timeout_s
            while self._committed < ticket:
                left = deadline - time.monotonic()
                if left <= 0 or not self._can_wait():
                    self.counts["late"] += 1
                    return False
                self._cv.wait(min(left, 0.05))
            return True

    def _can_wait(self) -> bool:
        busy = self._busy_since is not None and time.monotonic() - self._busy_since > self.timeout_s
        return self._healthy and not busy

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        error = self._connect()  # at once: a store that cannot be opened is reported before the first decision
        if error is not None:
            self._failed(error, 0)
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    break
                batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
                self._busy_since = time.monotonic()
            error = self._write([row for _, row in batch])
            with self._cv:
                self._busy_since = None
                if error is None:
                    for _ in batch:
                        self._queue.popleft()
                    self._committed = batch[-1][0]
                    self.counts["written"] += len(batch)
                    if not self._healthy:
                        self._healthy = True
                        self._fault(f"audit store recovered: {len(batch)} queued row(s) written", "info")
                    self._cv.notify_all()
                    continue
                closing = self._closing
            self._failed(error, len(batch))
            if closing:
                break
            with self._cv:  # wait before the next attempt (closing wakes it for one last try)
                self._cv.wait_for(lambda: self._closing, timeout=self.retry_s)
        self._disconnect()

    def _failed(self, error: str, n_rows: int) -> None:
        with self._cv:
            self.counts["failures"] += 1
            self._healthy = False
            self.last_error = error
            self._cv.notify_all()
        self._fault(f"audit store failing ({n_rows} row(s) queued, retried every {self.retry_s:g} s): {error}")

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
        with self._cv:
            out = {k: self.counts[k] for k in ("written", "failures", "dropped", "late", "deferred", "reopened")}
            out.update(backlog=len(self._queue), healthy=self._healthy, last_error=self.last_error,
                       last_write_ms=self.last_write_ms, target=printable(self.target))
        return out

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is committed (True) or ``timeout_s`` passed."""
        with self._cv:
            ticket = self._next_ticket - 1
            return self._cv.wait_for(lambda: self._committed >= ticket, timeout=timeout_s)

    def close(self, timeout_s: float = 5.0) -> int:
        """Write what is queued (one last try when the store is failing), stop the writer; returns how many
        rows could not be written."""
        self.flush(timeout_s if self._healthy else 0.0)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        with self._cv:
            lost = len(self._queue)
        if lost:
            self._fault(f"audit store closed with {lost} decision(s) not written: {self.last_error}")
        return lost
