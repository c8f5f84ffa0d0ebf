"""The audit writer (cmdr_ros/audit/store.py): commit before return, never blocking on a failing store, backlog
written in order when the fault clears, on SQLite (real faults: a lock, a removed directory, a full file) and on
a real PostgreSQL server (stopped and started again; two writers at once)."""
import sqlite3
import threading
import time

import pytest

from cmdr_ros.audit.backends import SQLiteBackend, open_backend
from cmdr_ros.audit.schema import ADDED, COLUMNS, row_from_result
from cmdr_ros.audit.store import AuditStore

# How long a decision may wait for its commit here: generous, so that "committed on return" never depends on how
# loaded the machine is (the node's default is 0.5 s; a slower commit is counted 'late', tested in test_node_audit)
WAIT = 30.0


class GatedBackend:
    """A backend whose inserts hang until ``gate`` opens (a write in flight past audit.timeout); ``writing`` is set
    when one begins."""

    def __init__(self, backend, gate: threading.Event, writing: threading.Event | None = None):
        self.backend, self.gate, self.writing = backend, gate, writing or threading.Event()

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def insert(self, rows):
        self.writing.set()
        self.gate.wait(60)
        self.backend.insert(rows)

def row(seq: int, run_id: str = "run", decision: str = "reject", **values) -> dict:
    v = {"schema": "2", "seq": str(seq), "stamp": f"{seq}.000000001", "decision": decision, "judged": "true",
         "score": f"{seq / 10:.6f}", "threshold": "1.000000", "mode": "rgbd", "model_id": "abc",
         "frame_id.image": "camera", "frame_id.points": "camera", "latency_ms": "12.5", **values}
    return row_from_result(v, node="/cmdr_inspection", run_id=run_id, decided_at=1_800_000_000.0 + seq)


def stored(target: str) -> list[dict]:
    backend = open_backend(target, readonly=True)
    try:
        return [dict(zip(COLUMNS, r)) for r in backend.select()]
    finally:
        backend.close()


def wait_until(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def test_row_from_result_types_every_column():
    r = row(7, part_id="P-7", error=None)
    assert set(r) == set(COLUMNS)
    assert (r["seq"], r["score"], r["judged"], r["part_id"], r["stamp"]) == (7, 0.7, True, "P-7", "7.000000001")
    nj = row_from_result({"seq": "1", "decision": "reject", "judged": "false", "error": "unmatched",
                          "threshold": "nan"}, node="/n", run_id="r", decided_at=1.0)
    assert nj["judged"] is False and nj["score"] is None and nj["threshold"] is None and nj["error"] == "unmatched"


def test_record_returns_after_the_commit(tmp_path):
    db = tmp_path / "deep" / "dir" / "audit.db"  # parents are created
    store = AuditStore(str(db), timeout_s=WAIT)
    other = None
    try:
        for seq in range(1, 51):
            assert store.record(row(seq)) is True
            other = other or sqlite3.connect(db)
            # another connection sees the row as soon as record() returned: committed before the caller publishes
            assert other.execute("SELECT decision, score FROM decisions WHERE seq = ?", (seq,)).fetchone() == \
                ("reject", seq / 10)
    finally:
        other.close()
        assert store.close() == 0
    rows = stored(str(db))
    assert [r["seq"] for r in rows] == list(range(1, 51))
    assert rows[0]["judged"] == 1 and rows[0]["frame_id_image"] == "camera" and rows[0]["node"] == "/cmdr_inspection"
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_retry_never_duplicates(tmp_path):
    db = str(tmp_path / "a.db")
    backend = open_backend(db)
    backend.insert([row(1), row(2)])
    backend.insert([row(2), row(3)])  # row 2 again (a retry after an unclear failure)
    backend.close()
    assert [r["seq"] for r in stored(db)] == [1, 2, 3]


class FlakyOpener:
    """Opens the real SQLite store, or fails while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = threading.Event()

    def __call__(self, target: str):
        if self.broken.is_set():
            from cmdr_ros.audit.backends import AuditError

            raise AuditError("server unreachable (test)")
        return open_backend(target)


def test_a_failing_store_never_holds_decisions_back_and_catches_up_in_order(tmp_path):
    db = str(tmp_path / "a.db")
    opener = FlakyOpener()
    opener.broken.set()
    faults = []
    store = AuditStore(db, timeout_s=WAIT, retry_s=0.1, opener=opener,
                       on_fault=lambda lvl, m: faults.append((lvl, m)))
    wait_until(lambda: not store.health()["healthy"], "the first failure")
    # while failing, record() does not wait for a commit (with WAIT per decision, 20 decisions would stall for
    # minutes): each is counted as deferred, not late
    assert not any(store.record(row(seq)) for seq in range(1, 21))
    h = store.health()
    assert h["deferred"] == 20 and h["failures"] >= 1 and "unreachable" in h["last_error"]
    opener.broken.clear()
    wait_until(lambda: store.health()["backlog"] == 0, "the backlog to be written")
    assert store.record(row(21)) is True
    assert store.close() == 0
    assert [r["seq"] for r in stored(db)] == list(range(1, 22))
    assert any(lvl == "error" and "unreachable" in m for lvl, m in faults)
    assert any(lvl == "info" and "recovered" in m for lvl, m in faults)


def test_backlog_overflow_is_counted_and_close_reports_what_was_lost(tmp_path):
    opener = FlakyOpener()
    opener.broken.set()
    store = AuditStore(str(tmp_path / "a.db"), retry_s=0.05, max_backlog=5, opener=opener)
    for seq in range(1, 9):
        store.record(row(seq))
    h = store.health()
    assert (h["backlog"], h["dropped"]) == (5, 3)
    assert store.close(timeout_s=2.0) == 5


def test_locked_database(tmp_path):
    db = tmp_path / "a.db"
    store = AuditStore(str(db), timeout_s=WAIT, retry_s=0.1)
    assert store.record(row(1))
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holding the database
    assert store.record(row(2)) is False
    wait_until(lambda: store.health()["failures"] >= 1, "a counted failure")
    assert "locked" in store.health()["last_error"]
    store.record(row(3))
    locker.execute("COMMIT")
    locker.close()
    wait_until(lambda: store.health()["backlog"] == 0 and store.health()["healthy"], "recovery")
    assert store.close() == 0
    assert [r["seq"] for r in stored(str(db))] == [1, 2, 3]


def test_removed_directory_is_recreated(tmp_path):
    import shutil

    db = tmp_path / "audit" / "a.db"
    store = AuditStore(str(db), timeout_s=WAIT, retry_s=0.1)
    assert store.record(row(1))
    shutil.rmtree(db.parent)  # e.g. a cleanup script: an open SQLite handle would write into the removed file
    assert store.record(row(2)) is True
    assert store.health()["reopened"] == 1
    assert store.close() == 0
    assert [r["seq"] for r in stored(str(db))] == [2]


def test_full_file(tmp_path):
    """A database that cannot grow (SQLite's max_page_count, the portable stand-in for a full disk; the node test
    fills a real tmpfs where root allows it)."""
    db = str(tmp_path / "a.db")
    limit = {"pages": None}

    def opener(target):
        backend = open_backend(target)
        if limit["pages"] is not None:
            backend.conn.execute(f"PRAGMA max_page_count = {limit['pages']}")
        return backend

    store = AuditStore(db, timeout_s=WAIT, retry_s=0.05, opener=opener)
    assert store.record(row(1))
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    limit["pages"] = pages
    store._backend.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = "x" * 200_000
    for seq in range(2, 6):
        store.record(row(seq, reason=big))
    wait_until(lambda: store.health()["failures"] >= 1, "a failure on the full file")
    assert "full" in store.health()["last_error"]
    limit["pages"] = None
    store._backend and store._backend.conn.execute("PRAGMA max_page_count = 1073741823")
    wait_until(lambda: store.health()["backlog"] == 0, "recovery once the file may grow")
    assert store.close() == 0
    assert [r["seq"] for r in stored(db)] == [1, 2, 3, 4, 5]


def test_schema_version_mismatch_is_refused(tmp_path):
    from cmdr_ros import CmdrError

    db = tmp_path / "a.db"
    open_backend(str(db)).close()
    con = sqlite3.connect(db)
    con.execute("UPDATE audit_meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(CmdrError, match="schema version 999"):
        SQLiteBackend(str(db)).open(0.1)


def test_a_version_1_store_is_read_as_it_is_and_upgraded_when_written(tmp_path):
    """Version 2 added ``chunks``, version 3 ``evidence`` and ``evidence_root``: an export reads an old file
    unchanged (those columns empty); a node opening it for writing adds them and keeps every old row."""
    db = tmp_path / "v1.db"
    added = {c for cols in ADDED.values() for c in cols}
    assert added == {"chunks", "evidence", "evidence_root"}
    old = [c for c in COLUMNS if c not in added]
    con = sqlite3.connect(db)
    types = SQLiteBackend.types
    con.execute("CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO audit_meta VALUES ('schema_version', '1')")
    con.execute(f"CREATE TABLE decisions (id INTEGER PRIMARY KEY, "
                f"{', '.join(f'{c} {types[COLUMNS[c][0]]}' for c in old)}, UNIQUE (run_id, seq))")
    r1 = row(1)
    con.execute(f"INSERT INTO decisions ({', '.join(old)}) VALUES ({', '.join('?' for _ in old)})",
                [r1[c] for c in old])
    con.commit()
    con.close()
    assert stored(str(db)) == [r1]  # read-only: nothing changed in the file, the new columns read empty
    assert sqlite3.connect(db).execute("SELECT value FROM audit_meta").fetchone() == ("1",)
    store = AuditStore(str(db), timeout_s=WAIT)
    r2 = {**row(2, chunks="3"), "evidence": "n/2026-12-07/run-00000002", "evidence_root": "/srv/evidence"}
    try:
        assert store.record(r2) is True
    finally:
        store.close()
    assert stored(str(db)) == [r1, r2]
    assert sqlite3.connect(db).execute("SELECT value FROM audit_meta").fetchone() == ("3",)


def test_postgres_store_and_two_writers(postgres_url):
    stores = [AuditStore(postgres_url, timeout_s=WAIT) for _ in range(2)]  # two nodes of a plant, one database

    def write(store, run_id):
        for seq in range(1, 101):
            assert store.record(row(seq, run_id=run_id))

    threads = [threading.Thread(target=write, args=(s, f"run{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [s.close() for s in stores] == [0, 0]
    rows = stored(postgres_url)
    assert len(rows) == 200
    for run_id in ("run0", "run1"):
        assert [r["seq"] for r in rows if r["run_id"] == run_id] == list(range(1, 101))
    r = rows[0]
    assert r["judged"] is True and isinstance(r["seq"], int) and r["mode"] == "rgbd"


def test_postgres_server_down_and_back(tmp_path):
    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    try:
        url = server.url()
        store = AuditStore(url, timeout_s=WAIT, retry_s=0.2)
        assert store.record(row(1))
        server.stop_now()
        for seq in range(2, 6):
            store.record(row(seq))  # published meanwhile; queued
        wait_until(lambda: not store.health()["healthy"], "the failure to be seen")
        server.start_again()
        wait_until(lambda: store.health()["backlog"] == 0, "the backlog after the server came back", timeout=60)
        assert store.close() == 0
        assert [r["seq"] for r in stored(url)] == [1, 2, 3, 4, 5]
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_write_latency_is_reported(backend, tmp_path, request):
    """What one decision waits for its commit (printed with -s; the README quotes it; never asserted: timing)."""
    import numpy as np

    target = str(tmp_path / "a.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = AuditStore(target, timeout_s=WAIT)
    waits = []
    for seq in range(1, 301):
        t0 = time.perf_counter()
        assert store.record(row(seq))
        waits.append(time.perf_counter() - t0)
    assert store.close() == 0
    ms = 1e3 * np.array(waits[20:])  # after the first rows (connection, page cache)
    print(f"\n{backend}: record() until committed, {len(ms)} decisions: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.2f} ms")
    assert len(stored(target)) == 300


def test_a_slow_store_publishes_late_instead_of_waiting(tmp_path):
    """The node's promise: a decision waits at most audit.timeout for its commit, then goes out (counted 'late'); while
    a write has been hanging longer than that, later decisions do not wait at all; the rows land when it returns."""
    db = str(tmp_path / "a.db")
    gate = threading.Event()
    store = AuditStore(db, timeout_s=0.2, opener=lambda target: GatedBackend(open_backend(target), gate))
    try:
        assert store.record(row(1)) is False  # not committed within 0.2 s: published anyway
        wait_until(lambda: store._busy_since is not None and time.monotonic() - store._busy_since > 0.2,
                   "the write hanging longer than the timeout")
        assert store.record(row(2)) is False  # returns at once
        h = store.health()
        assert (h["late"], h["deferred"], h["backlog"]) == (1, 1, 2)
        gate.set()
        wait_until(lambda: store.health()["backlog"] == 0, "the rows written once the store answers")
    finally:
        gate.set()
        assert store.close() == 0
    assert [r["seq"] for r in stored(db)] == [1, 2]
