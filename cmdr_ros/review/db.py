"""The review station's connection to the audit store, and its own tables there.

The station reads ``decisions`` and writes nothing but ``labels``: on PostgreSQL its connection is read-only by
default (``default_transaction_read_only``, as ``cmdr audit`` reads) and a label is the one transaction it opens read
write; the database role it connects as needs no more rights than ``grants_sql`` gives. An account's tables are made
by ``ensure_schema`` (``cmdr review users add``, run with a role that may create tables).
"""
from __future__ import annotations

import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from cmdr_ros.audit.backends import AuditError, PostgresBackend, _pg_driver, is_postgres, printable
from cmdr_ros.audit.schema import TABLE

LABELS = ("defective", "good", "unsure")
REVIEW_TABLES = ("users", "labels", "review_meta")
_TYPES = {"sqlite": {"id": "id INTEGER PRIMARY KEY", "int": "INTEGER", "real": "REAL"},
          "postgresql": {"id": "id BIGSERIAL PRIMARY KEY", "int": "BIGINT", "real": "DOUBLE PRECISION"}}


class ReviewDBError(AuditError):
    """The store cannot be read or written (the page says so; nothing is changed)."""


class ReviewDB:
    """One connection to the store, used by one request at a time (a station serves a few reviewers)."""

    def __init__(self, target: str, *, timeout_s: float = 30.0):
        self.target, self.timeout_s = target, timeout_s
        self.kind = "postgresql" if is_postgres(target) else "sqlite"
        self._lock = threading.Lock()
        self.conn: Any = None
        self._errors: tuple[type[BaseException], ...] = \
            (_pg_driver().Error,) if self.kind == "postgresql" else (sqlite3.Error,)
        with self._lock:
            self._connect()
        self.decision_columns = self._columns(TABLE)
        if not self.decision_columns:
            self.close()
            raise ReviewDBError(f"{printable(target)}: not an audit database (no table {TABLE})")

    def _connect(self) -> None:
        if self.kind == "postgresql":
            backend = PostgresBackend(self.target, readonly=True)  # checks that the decisions table is there
            try:
                backend.open(self.timeout_s)
            except AuditError as e:
                raise ReviewDBError(str(e)) from None
            self.conn = backend.conn
            return
        path = Path(self.target).expanduser()
        if not path.is_file():
            raise ReviewDBError(f"no audit database at {path}")
        # mode=rw: never creates a file; autocommit (isolation_level None), a label is one statement
        self.conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=self.timeout_s, isolation_level=None,
                                    check_same_thread=False)

    def _lost(self) -> bool:
        """True when the PostgreSQL connection is gone (a server restart, a network cut): the next call reopens it."""
        return self.kind == "postgresql" and (self.conn is None or bool(self.conn.closed))

    def p(self, name: str) -> str:
        """The driver's placeholder of the bound parameter ``name``."""
        return f":{name}" if self.kind == "sqlite" else f"%({name})s"

    def rows(self, sql: str, args: dict[str, Any] | None = None) -> list[tuple]:
        """The rows of one query (its values bound, never formatted into ``sql``); a lost connection is reopened
        and the query asked again, once."""
        with self._lock:
            try:
                if self._lost():
                    self._connect()
                return self._read(sql, args or {})
            except self._errors as e:
                if not self._lost():
                    raise ReviewDBError(f"{printable(self.target)}: {_first_line(e)}") from None
            try:  # the connection was lost under the query: once more, on a new one
                self._connect()
                return self._read(sql, args or {})
            except self._errors as e:
                raise ReviewDBError(f"{printable(self.target)}: {_first_line(e)}") from None

    def _read(self, sql: str, args: dict[str, Any]) -> list[tuple]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql, args)
            return cur.fetchall()
        finally:
            cur.close()
            if not self._lost() and self.kind == "postgresql":
                self.conn.rollback()  # ends the read-only transaction: no connection left idle in one

    def write(self, statements: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Run ``statements`` in one read-write transaction (all or nothing)."""
        with self._lock:
            if self._lost():  # not retried after a failure: whether a lost transaction committed is unknown
                self._connect()
            cur = self.conn.cursor()
            try:
                if self.kind == "postgresql":
                    cur.execute("SET TRANSACTION READ WRITE")
                else:
                    cur.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    cur.execute(sql, args)
                self._end(cur, "COMMIT")
            except self._errors as e:
                try:
                    self._end(cur, "ROLLBACK")
                except self._errors:
                    pass
                raise ReviewDBError(f"{printable(self.target)}: {_first_line(e)}") from None
            finally:
                cur.close()

    def _end(self, cur: Any, how: str) -> None:
        if self.kind == "sqlite":
            cur.execute(how)
        elif how == "COMMIT":
            self.conn.commit()
        else:
            self.conn.rollback()

    def _columns(self, table: str) -> set[str]:
        if self.kind == "sqlite":
            return {r[1] for r in self.rows(f"PRAGMA table_info({table})")}
        return {r[0] for r in self.rows("SELECT column_name FROM information_schema.columns WHERE table_name = "
                                        "%(t)s AND table_schema = current_schema()", {"t": table})}

    def has_review_tables(self) -> bool:
        return all(self._columns(t) for t in REVIEW_TABLES)

    def has_table(self, table: str) -> bool:
        return bool(self._columns(table))

    def ensure_schema(self) -> None:
        """Create the station's tables and its session secret where they are missing."""
        t = _TYPES[self.kind]
        labels = ", ".join(f"'{x}'" for x in LABELS)
        self.write([
            ("CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL, "
             f"created_at {t['real']} NOT NULL)", {}),
            (f"CREATE TABLE IF NOT EXISTS labels ({t['id']}, node TEXT NOT NULL, run_id TEXT NOT NULL, "
             f"seq {t['int']} NOT NULL, label TEXT NOT NULL CHECK (label IN ({labels})), \"user\" TEXT NOT NULL, "
             f"labelled_at {t['real']} NOT NULL, note TEXT NOT NULL DEFAULT '')", {}),
            ("CREATE INDEX IF NOT EXISTS labels_part ON labels (run_id, seq)", {}),
            ("CREATE TABLE IF NOT EXISTS review_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", {}),
            (promotions_table_sql(self.kind), {}),
        ])
        if not self.rows(f"SELECT value FROM review_meta WHERE key = {self.p('k')}", {"k": "session_secret"}):
            self.write([(f"INSERT INTO review_meta (key, value) VALUES ({self.p('k')}, {self.p('v')})",
                         {"k": "session_secret", "v": secrets.token_urlsafe(48)})])

    def session_secret(self) -> str:
        """The key session cookies are signed with (in the database: every station on it accepts the same)."""
        got = self.rows(f"SELECT value FROM review_meta WHERE key = {self.p('k')}", {"k": "session_secret"})
        if not got:
            raise ReviewDBError(f"{printable(self.target)}: no review tables: create the first account with "
                                "`cmdr review users add NAME --role admin --db ...`")
        return got[0][0]

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


def promotions_table_sql(kind: str) -> str:
    """The ``promotions`` table (``cmdr promote``, ``cmdr_ros.learning.promotion``): one row per attempt, promoted or
    refused; ``figures`` is JSON."""
    t = _TYPES[kind]
    return (f"CREATE TABLE IF NOT EXISTS promotions ({t['id']}, promoted_at {t['real']} NOT NULL, \"user\" TEXT "
            "NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL, node TEXT NOT NULL, node_answer TEXT NOT NULL, "
            "current_model_id TEXT NOT NULL, current_checkpoint TEXT NOT NULL, new_model_id TEXT NOT NULL, "
            "new_checkpoint TEXT NOT NULL, data TEXT NOT NULL, figures TEXT NOT NULL)")


def grants_sql(url: str, role: str) -> str:
    """The SQL that lets database role ``role`` run the station on the database of ``url``: read the decisions
    and the station's tables, add labels; nothing else (no UPDATE, DELETE, or INSERT elsewhere)."""
    if not is_postgres(url):
        raise ReviewDBError("grants are for a postgresql:// database (an SQLite file has its file permissions)")
    database = urlsplit(url).path.lstrip("/") or "postgres"
    q_role, q_db = _ident(role), _ident(database)
    return "\n".join([
        f"GRANT CONNECT ON DATABASE {q_db} TO {q_role};",
        f"GRANT USAGE ON SCHEMA public TO {q_role};",
        f"GRANT SELECT ON audit_meta, {TABLE}, {', '.join(REVIEW_TABLES)} TO {q_role};",
        f"GRANT SELECT ON promotions TO {q_role};",
        f"GRANT INSERT ON labels TO {q_role};",
        f"GRANT USAGE ON SEQUENCE labels_id_seq TO {q_role};",
    ]) + "\n"


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if not name or "\x00" in name:
        raise ReviewDBError(f"not a database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)
