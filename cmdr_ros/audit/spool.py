"""The audit store's durable spool: a local SQLite file that holds the rows the database could not take in time.

A row the database has not committed within ``audit.timeout`` (or while it is failing) is committed here before its
decision is published, so that no published decision depends on the node staying alive until the database is back.
The store's writer drains the spool into the database in the order the rows were spooled, when the database answers
again and at start-up (what a killed node left). A row is deleted from the spool only after the database committed
it; a crash in between leaves it here, and the next drain writes it again, which the database ignores (its insert
keeps a row already stored under the same ``run_id`` + ``seq``): every row ends in the database exactly once.

Each row is spooled with the database it is for (``target_key``), so that nodes sharing one spool file (one ROS log
directory) each drain their own rows only. No ROS import here.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from cmdr_ros.audit.backends import AuditError, is_postgres, printable
from cmdr_ros.audit.schema import COLUMNS

SPOOL_FILE = "cmdr_audit_spool.db"


def target_key(target: str) -> str:
    """What names a database in the spool: a URL without its password, a file by its absolute path."""
    if is_postgres(target):
        return printable(target)
    return os.path.abspath(os.path.expanduser(target))


class Spool:
    """One spool file, opened on first use (and again after a failure); safe to use from several threads."""

    def __init__(self, path: str, busy_timeout_s: float = 2.0):
        self.path = str(Path(path).expanduser())
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ connection
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")  # committed = on disk, also across a power cut
                conn.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "target TEXT NOT NULL, spooled_at REAL NOT NULL, row TEXT NOT NULL)")
                conn.execute("CREATE INDEX IF NOT EXISTS spool_target ON spool (target, id)")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _do(self, what: str, step: Any) -> Any:
        """Run ``step(conn)`` under the lock; an error drops the connection (reopened next time) and raises
        ``AuditError``."""
        with self._lock:
            try:
                return step(self._connection())
            except (sqlite3.Error, OSError) as e:
                self._close_locked()
                raise AuditError(f"audit spool {self.path}: {what}: {e}") from None

    # ------------------------------------------------------------------ rows
    def put(self, target: str, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Commit ``rows`` (in this order, after every row already spooled); their spool ids."""
        key, now = target_key(target), time.time()

        def step(cur: sqlite3.Cursor) -> list[int]:
            ids = []
            for row in rows:
                cur.execute("INSERT INTO spool (target, spooled_at, row) VALUES (?, ?, ?)", (key, now, json.dumps(row)))
                ids.append(cur.lastrowid)
            return ids

        return self._do("spooling a row", lambda conn: _transaction(conn, step))

    def peek(self, target: str, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """The oldest ``limit`` rows spooled for ``target``: (spool id, row), oldest first; a row spooled by an
        older version lacks the columns added since: they are empty."""
        got = self._do("reading", lambda conn: conn.execute(
            "SELECT id, row FROM spool WHERE target = ? ORDER BY id LIMIT ?", (target_key(target), limit)).fetchall())
        return [(i, {**dict.fromkeys(COLUMNS), **json.loads(r)}) for i, r in got]

    def delete(self, ids: Sequence[int]) -> None:
        """Forget rows the database has committed."""
        if ids:
            self._do("deleting drained rows", lambda conn: _transaction(conn, lambda cur: cur.executemany(
                "DELETE FROM spool WHERE id = ?", [(i,) for i in ids])))

    def count(self, target: str | None = None) -> int:
        """Rows spooled for ``target`` (None: for every database)."""
        if target is None:
            return self._do("counting", lambda conn: conn.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        return self._do("counting", lambda conn: conn.execute(
            "SELECT COUNT(*) FROM spool WHERE target = ?", (target_key(target),)).fetchone()[0])

    # ------------------------------------------------------------------ end
    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        with self._lock:
            self._close_locked()


def _transaction(conn: sqlite3.Connection, step: Any) -> Any:
    """``step(cursor)`` in one transaction (one sync to disk), rolled back when it fails."""
    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        out = step(cur)
        cur.execute("COMMIT")
    except BaseException:
        try:
            cur.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return out
