"""The two places a store lives: an SQLite file (stdlib ``sqlite3``, WAL) and a PostgreSQL database (``psycopg``,
else ``psycopg2``). Both take the same rows into the same table; an insert is one transaction and idempotent
(a row already stored under its ``run_id`` + ``seq`` is kept, so a retry after an unclear failure adds nothing)."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

from cmdr_ros import CmdrError
from cmdr_ros.audit.schema import ADDED, COLUMNS, SCHEMA_VERSION, TABLE

PG_SCHEMES = ("postgresql://", "postgres://")
_ADVISORY_LOCK = 0x636D6472  # serializes schema creation when several nodes start against one database


class AuditError(CmdrError):
    """The store cannot be written or read (the node counts it and goes on; the CLI prints it)."""


def is_postgres(target: str) -> bool:
    return target.startswith(PG_SCHEMES)


def printable(target: str) -> str:
    """The target without a password."""
    if not is_postgres(target):
        return target
    parts = urlsplit(target)
    if parts.password is None:
        return target
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def open_backend(target: str, *, busy_timeout_s: float = 0.2, readonly: bool = False) -> "Backend":
    """A backend for ``target`` (a file path or a ``postgresql://`` URL), connected, its schema in place."""
    backend: Backend = (PostgresBackend(target, readonly=readonly) if is_postgres(target)
                        else SQLiteBackend(target, readonly=readonly))
    backend.open(busy_timeout_s)
    return backend


class Backend:
    kind = ""
    placeholder = ""
    types: dict[str, str] = {}
    id_column = ""

    def __init__(self, target: str, readonly: bool = False):
        self.target, self.readonly = target, readonly
        self.conn: Any = None

    def open(self, busy_timeout_s: float) -> None:
        raise NotImplementedError

    def verify(self) -> None:
        """Raise when the store cannot take the next write where it took the last (e.g. its file was removed)."""

    def _create(self, cur: Any) -> None:
        cols = ", ".join(f"{c} {self.types[k]}" for c, (k, _) in COLUMNS.items())
        cur.execute("CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({self.id_column}, {cols}, UNIQUE (run_id, seq))")
        cur.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_decided_at ON {TABLE} (decided_at)")
        cur.execute(f"SELECT value FROM audit_meta WHERE key = {self.placeholder % 'k'}", {"k": "schema_version"})
        got = cur.fetchone()
        if got is None:
            cur.execute(f"INSERT INTO audit_meta (key, value) VALUES ({self.placeholder % 'k'}, "
                        f"{self.placeholder % 'v'})", {"k": "schema_version", "v": str(SCHEMA_VERSION)})
        elif got[0].isdigit() and int(got[0]) < SCHEMA_VERSION:  # an older store: add the columns it lacks
            for version in range(int(got[0]) + 1, SCHEMA_VERSION + 1):
                for col in ADDED.get(version, ()):
                    cur.execute(f"ALTER TABLE {TABLE} ADD COLUMN {col} {self.types[COLUMNS[col][0]]}")
            cur.execute(f"UPDATE audit_meta SET value = {self.placeholder % 'v'} WHERE key = {self.placeholder % 'k'}",
                        {"k": "schema_version", "v": str(SCHEMA_VERSION)})
        elif got[0] != str(SCHEMA_VERSION):
            raise AuditError(f"{printable(self.target)}: audit schema version {got[0]}, this cmdr_ros writes "
                             f"version {SCHEMA_VERSION}: use another database (or export and move the old one)")

    def _insert_sql(self, conflict: str) -> str:
        names = ", ".join(COLUMNS)
        values = ", ".join(self.placeholder % c for c in COLUMNS)
        return f"INSERT {conflict[0]}INTO {TABLE} ({names}) VALUES ({values}){conflict[1]}"

    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def select(self, since: float | None = None, until: float | None = None,
               columns: Sequence[str] = tuple(COLUMNS)) -> Iterator[tuple]:
        """Rows decided in [since, until) in the order they were stored."""
        where, args = [], {}
        if since is not None:
            where.append(f"decided_at >= {self.placeholder % 'since'}")
            args["since"] = float(since)
        if until is not None:
            where.append(f"decided_at < {self.placeholder % 'until'}")
            args["until"] = float(until)
        have = self.table_columns()  # a store opened read-only keeps its version: its missing columns read empty
        names = ", ".join(c if c in have else f"NULL AS {c}" for c in columns)
        sql = (f"SELECT {names} FROM {TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id")
        cur = self._cursor_for_reading()
        try:
            cur.execute(sql, args)
            while True:
                batch = cur.fetchmany(5000)
                if not batch:
                    return
                yield from batch
        finally:
            cur.close()

    def _cursor_for_reading(self) -> Any:
        return self.conn.cursor()

    def table_columns(self) -> set[str]:
        """The columns the store's table has."""
        raise NotImplementedError

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail again; it is gone either way
                pass


class SQLiteBackend(Backend):
    kind = "sqlite"
    placeholder = ":%s"
    types = {"text": "TEXT", "int": "INTEGER", "real": "REAL", "bool": "INTEGER"}
    id_column = "id INTEGER PRIMARY KEY"

    def __init__(self, target: str, readonly: bool = False):
        super().__init__(str(Path(target).expanduser()), readonly)
        self._identity: tuple[int, int] | None = None

    def open(self, busy_timeout_s: float) -> None:
        path = Path(self.target)
        if self.readonly:
            if not path.is_file():
                raise AuditError(f"no audit database at {path}")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s,
                                        check_same_thread=False)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode (isolation_level None): transactions are explicit below
            self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")  # committed = on disk, even across a power cut
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                self._create(cur)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            st = path.stat()
        except (sqlite3.Error, OSError) as e:
            self.close()
            raise AuditError(f"{path}: {e}") from None
        except AuditError:
            self.close()
            raise
        self._identity = (st.st_dev, st.st_ino)

    def verify(self) -> None:
        try:
            st = os.stat(self.target)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise AuditError(f"{self.target} was removed or replaced: reopening (the rows it held are not in the "
                             "new file)")

    def table_columns(self) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({TABLE})")}

    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany(self._insert_sql(("OR IGNORE ", "")), rows)
            cur.execute("COMMIT")
        except sqlite3.Error as e:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise AuditError(f"{self.target}: {e}") from None


def _pg_driver() -> Any:
    try:
        import psycopg

        return psycopg
    except ImportError:
        pass
    try:
        import psycopg2

        return psycopg2
    except ImportError:
        raise AuditError("a postgresql:// audit store needs psycopg (pip install 'psycopg[binary]') or psycopg2") \
            from None


class PostgresBackend(Backend):
    kind = "postgresql"
    placeholder = "%%(%s)s"
    types = {"text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION", "bool": "BOOLEAN"}
    id_column = "id BIGSERIAL PRIMARY KEY"

    def open(self, busy_timeout_s: float) -> None:
        driver = _pg_driver()
        timeout_ms = max(int(busy_timeout_s * 1000), 100)
        read_only = " -c default_transaction_read_only=on" if self.readonly else ""
        try:
            # a statement that waits on a lock or a hung server fails instead of holding the writer for ever
            self.conn = driver.connect(self.target, connect_timeout=2, keepalives=1, keepalives_idle=5,
                                       keepalives_interval=2, keepalives_count=2,
                                       options=f"-c statement_timeout={max(timeout_ms, 5000)} "
                                               f"-c lock_timeout={timeout_ms}{read_only}")
            with self.conn.cursor() as cur:
                if self.readonly:  # a reader creates nothing (and may lack the right to)
                    cur.execute("SELECT to_regclass(%s)", (TABLE,))
                    if cur.fetchone()[0] is None:
                        raise AuditError(f"{printable(self.target)}: not an audit database (no table {TABLE})")
                else:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK,))
                    self._create(cur)
            self.conn.commit()
        except AuditError:
            self.close()
            raise
        except Exception as e:  # noqa: BLE001 - psycopg and psycopg2 have separate exception trees
            self.close()
            raise AuditError(f"{printable(self.target)}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from None

    def insert(self, rows: Sequence[dict[str, Any]]) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._insert_sql(("", " ON CONFLICT (run_id, seq) DO NOTHING")), rows)
            self.conn.commit()
        except Exception as e:  # noqa: BLE001 - see open()
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001 - the connection may be dead; the store reconnects
                pass
            raise AuditError(f"{printable(self.target)}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from None

    def _cursor_for_reading(self) -> Any:
        return self.conn.cursor(name="cmdr_audit_read")  # server-side: rows stream, memory stays flat

    def table_columns(self) -> set[str]:
        with self.conn.cursor() as cur:
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = current_schema()", (TABLE,))
            return {r[0] for r in cur.fetchall()}
