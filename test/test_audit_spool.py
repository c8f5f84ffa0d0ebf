"""The audit store's durable spool (cmdr_ros/audit/spool.py, store.py): a row the database cannot commit in time is
committed to a local SQLite file before record() returns, drained into the database in order when it answers (also
by the next process, after a SIGKILL), exactly once (also after a crash between the database's commit and the spool's
delete), on SQLite and on a real PostgreSQL server."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cmdr_ros.audit.backends import AuditError, open_backend
from cmdr_ros.audit.spool import Spool
from cmdr_ros.audit.store import AuditStore
from test_audit_store import WAIT, FlakyOpener, GatedBackend, row, stored, wait_until

REPO = Path(__file__).resolve().parents[1]


def spooled_seqs(spool_path, target: str) -> list[int]:
    spool = Spool(str(spool_path))
    try:
        return [r["seq"] for _, r in spool.peek(target, 10_000)]
    finally:
        spool.close()


def test_rows_the_store_cannot_take_are_spooled_before_record_returns_then_drained_in_order(tmp_path):
    db, spool_path = str(tmp_path / "a.db"), tmp_path / "log" / "spool.db"
    opener = FlakyOpener()
    opener.broken.set()
    faults = []
    store = AuditStore(db, timeout_s=WAIT, retry_s=0.1, opener=opener, spool=Spool(str(spool_path)),
                       on_fault=lambda lvl, m: faults.append((lvl, m)))
    wait_until(lambda: not store.health()["healthy"], "the first failure")
    for seq in range(1, 21):
        assert store.record(row(seq)) is False
        # durable when record() returns: another connection (another process, after a crash) reads it
        assert spooled_seqs(spool_path, db) == list(range(1, seq + 1))
    h = store.health()
    assert (h["spooled"], h["spool_backlog"], h["backlog"], h["deferred"]) == (20, 20, 20, 20)
    assert h["spool"] == str(spool_path) and h["last_spool_ms"] > 0
    opener.broken.clear()
    wait_until(lambda: store.health()["backlog"] == 0, "the spool to be drained")
    assert store.record(row(21)) is True  # the spool is empty: committed on return again
    h = store.health()
    assert (h["drained"], h["written"], h["spool_backlog"], h["healthy"]) == (20, 21, 0, True)
    assert store.close() == 0
    assert [r["seq"] for r in stored(db)] == list(range(1, 22))
    assert spooled_seqs(spool_path, db) == []
    assert any(lvl == "info" and "recovered" in m for lvl, m in faults)


def test_new_rows_queue_behind_spooled_ones_and_close_spools_what_is_in_memory(tmp_path):
    """A store started on a spool holding rows (a killed node's) writes them first; a row recorded meanwhile goes to
    the spool behind them, never past them. Closed while the database fails, nothing is lost: it is all spooled."""
    db, spool_path = str(tmp_path / "a.db"), str(tmp_path / "spool.db")
    Spool(spool_path).put(db, [row(seq, run_id="old") for seq in range(1, 6)])
    opener = FlakyOpener()
    opener.broken.set()
    store = AuditStore(db, timeout_s=WAIT, retry_s=0.05, opener=opener, spool=Spool(spool_path))
    assert store.health()["spool_backlog"] == 5  # counted before the first record()
    assert store.record(row(1, run_id="new")) is False
    opener.broken.clear()
    wait_until(lambda: store.health()["backlog"] == 0, "the spool to be drained")
    assert store.close() == 0
    assert [(r["run_id"], r["seq"]) for r in stored(db)] == [("old", s) for s in range(1, 6)] + [("new", 1)]

    opener.broken.set()
    store = AuditStore(db, timeout_s=WAIT, retry_s=60, opener=opener, spool=Spool(spool_path))
    wait_until(lambda: not store.health()["healthy"], "the failure")
    store.record(row(2, run_id="new"))
    assert store.close(timeout_s=1.0) == 0  # in the spool: not lost
    assert spooled_seqs(spool_path, db) == [2]


def test_a_row_spooled_while_its_write_is_in_flight_ends_in_the_store_once(tmp_path):
    """The write of a row hangs past audit.timeout: record() spools it and returns; the write then succeeds, and the
    row leaves the spool again instead of being drained a second time."""
    db, spool_path = str(tmp_path / "a.db"), str(tmp_path / "spool.db")
    gate, writing = threading.Event(), threading.Event()
    store = AuditStore(db, timeout_s=0.2, opener=lambda target: GatedBackend(open_backend(target), gate, writing),
                       spool=Spool(spool_path))
    try:
        first = []
        caller = threading.Thread(target=lambda: first.append(store.record(row(1))))
        caller.start()
        assert writing.wait(30)  # row 1's write is in flight (and hangs) while record() waits for its commit
        caller.join(30)
        assert first == [False]  # late: spooled while its write hangs
        assert store.record(row(2)) is False  # behind a spooled row: spooled at once
        assert spooled_seqs(spool_path, db) == [1, 2]
        h = store.health()
        assert (h["late"], h["deferred"], h["spooled"]) == (1, 1, 2)
        gate.set()
        wait_until(lambda: store.health()["backlog"] == 0, "the rows in the store")
    finally:
        gate.set()
        assert store.close() == 0
    h = store.health()
    assert (h["written"], h["drained"]) == (2, 1)  # row 1 from memory, row 2 from the spool
    assert [r["seq"] for r in stored(db)] == [1, 2]
    assert spooled_seqs(spool_path, db) == []


def test_a_spool_that_cannot_be_written_keeps_rows_in_memory(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the spool's directory should be")
    db = str(tmp_path / "a.db")
    opener = FlakyOpener()
    opener.broken.set()
    store = AuditStore(db, timeout_s=WAIT, retry_s=0.05, opener=opener, spool=Spool(str(blocker / "spool.db")))
    wait_until(lambda: not store.health()["healthy"], "the failure")
    assert store.record(row(1)) is False
    h = store.health()
    assert (h["spool_failures"] >= 1, h["spooled"], h["backlog"]) == (True, 0, 1)
    assert "not_a_dir" in h["spool_error"]
    opener.broken.clear()
    wait_until(lambda: store.health()["backlog"] == 0, "the row written from memory")
    assert store.close() == 0
    assert [r["seq"] for r in stored(db)] == [1]


def test_nodes_sharing_a_spool_file_drain_only_their_own_database(tmp_path):
    spool_path = str(tmp_path / "spool.db")
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    Spool(spool_path).put(b, [row(1, run_id="for_b")])
    Spool(spool_path).put(a, [row(1, run_id="for_a")])
    store = AuditStore(a, timeout_s=WAIT, spool=Spool(spool_path))
    wait_until(lambda: store.health()["backlog"] == 0, "a's row drained")
    assert store.close() == 0
    assert [r["run_id"] for r in stored(a)] == ["for_a"]
    assert spooled_seqs(spool_path, b) == [1]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_crash_between_the_store_commit_and_the_spool_delete_adds_no_duplicate(backend, tmp_path, request):
    """What a process killed between the two steps of a drain leaves: rows in the store AND still in the spool. The
    next drain writes them again; the store keeps one of each (run_id + seq)."""
    target = str(tmp_path / "a.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    spool_path = str(tmp_path / "spool.db")
    rows = [row(seq) for seq in range(1, 8)]
    Spool(spool_path).put(target, rows)
    b = open_backend(target)
    b.insert(rows[:4])  # committed by the store, not yet deleted from the spool
    b.close()
    store = AuditStore(target, timeout_s=WAIT, spool=Spool(spool_path))
    wait_until(lambda: store.health()["backlog"] == 0, "the spool drained")
    assert store.record(row(8)) is True
    assert store.close() == 0
    assert [r["seq"] for r in stored(target)] == list(range(1, 9))
    assert spooled_seqs(spool_path, target) == []


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from cmdr_ros.audit.spool import Spool
    from cmdr_ros.audit.store import AuditStore
    from test_audit_store import row
    target, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = AuditStore(target, timeout_s=0.3, retry_s=0.2, spool=Spool(spool))
    for seq in range(1, n + 1):
        store.record(row(seq, run_id="killed"))  # returned: the caller would publish this decision now
        print(seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def record_then_sigkill(target: str, spool_path: str, n: int) -> list[int]:
    """Record ``n`` rows in a process of its own that SIGKILLs itself after the last record() returned; the seqs
    whose record() returned (their decisions would have been published)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "test")])}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, target, spool_path, str(n)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return [int(x) for x in done.stdout.split()]


def test_sigkill_while_the_sqlite_store_fails_loses_nothing(tmp_path):
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the store's directory should be: every write fails")
    db, spool_path = str(blocker / "a.db"), str(tmp_path / "spool.db")
    published = record_then_sigkill(db, spool_path, 6)
    assert published == list(range(1, 7))
    blocker.unlink()
    store = AuditStore(db, timeout_s=WAIT, spool=Spool(spool_path))
    wait_until(lambda: store.health()["backlog"] == 0, "the killed process's rows drained")
    assert store.health()["drained"] == 6
    assert store.close() == 0
    assert [(r["run_id"], r["seq"]) for r in stored(db)] == [("killed", s) for s in published]


def test_sigkill_during_a_postgres_outage_then_restart_every_row_once(tmp_path):
    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    try:
        url, spool_path = server.url(), str(tmp_path / "spool.db")
        b = open_backend(url)  # the schema in place, as a node that ran before the outage leaves it
        b.close()
        server.stop_now()
        published = record_then_sigkill(url, spool_path, 8)
        assert published == list(range(1, 9))
        server.start_again()
        store = AuditStore(url, timeout_s=WAIT, retry_s=0.2, spool=Spool(spool_path))
        wait_until(lambda: store.health()["backlog"] == 0, "the spool drained into PostgreSQL", timeout=60)
        assert store.close() == 0
        assert [(r["run_id"], r["seq"]) for r in stored(url)] == [("killed", s) for s in published]
    finally:
        server.stop()


def test_the_spool_reports_what_it_cannot_do(tmp_path):
    spool = Spool(str(tmp_path / "x" / "spool.db"))
    (tmp_path / "x").write_text("not a directory")
    with pytest.raises(AuditError, match="audit spool"):
        spool.put("/db", [row(1)])
    (tmp_path / "x").unlink()
    assert spool.put("/db", [row(1), row(2)]) == [1, 2]  # opened again once it can be
    spool.close()


def test_audit_status_reports_the_spool():
    from diagnostic_msgs.msg import DiagnosticStatus

    from cmdr_ros.ros.node.status import audit_status

    h = {"written": 7, "failures": 2, "dropped": 0, "late": 0, "deferred": 5, "reopened": 0, "backlog": 5,
         "healthy": False, "last_error": "connection refused", "last_write_ms": 1.0, "target": "postgresql://db",
         "spooled": 5, "drained": 3, "spool_backlog": 5, "spool_failures": 0, "spool_error": "",
         "last_spool_ms": 2.5, "spool": "/log/cmdr_audit_spool.db"}
    st = audit_status(h, enabled=True, name="cmdr_inspection: audit", hw_id="cell")
    v = {kv.key: kv.value for kv in st.values}
    assert st.level == DiagnosticStatus.WARN and "5 in the spool" in st.message, st.message
    assert (v["spooled"], v["drained"], v["spool_backlog"], v["spool"], v["last_spool_ms"]) == \
        ("5", "3", "5", "/log/cmdr_audit_spool.db", "2.50")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_spool_cost_and_drain_rate_are_reported(backend, tmp_path, request):
    """What spooling one row costs record() and how fast a spool drains (printed with -s, quoted in docs/audit.md;
    never asserted: timing)."""
    import numpy as np

    target = str(tmp_path / "a.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    spool_path = str(tmp_path / "spool.db")
    opener = FlakyOpener()
    opener.broken.set()
    store = AuditStore(target, timeout_s=WAIT, retry_s=3600, opener=opener, spool=Spool(spool_path))
    wait_until(lambda: not store.health()["healthy"], "the failure")
    costs = []
    for seq in range(1, 301):
        t0 = time.perf_counter()
        assert store.record(row(seq)) is False
        costs.append(time.perf_counter() - t0)
    store.close(timeout_s=1.0)
    Spool(spool_path).put(target, [row(seq) for seq in range(301, 3001)])
    t0 = time.perf_counter()
    store = AuditStore(target, timeout_s=WAIT, spool=Spool(spool_path))
    wait_until(lambda: store.health()["backlog"] == 0, "the spool drained", timeout=120)
    rate = 3000 / (time.perf_counter() - t0)
    assert store.close() == 0
    ms = 1e3 * np.array(costs[20:])
    print(f"\n{backend}: record() spooling a row, {len(ms)} rows: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms; drain of 3000 rows: {rate:.0f} rows/s")
    assert [r["seq"] for r in stored(target)] == list(range(1, 3001))


def test_the_spool_parameter_takes_a_file_path_only():
    from cmdr_ros.ros.node.parameters import PARAMETERS, check

    assert PARAMETERS["audit.spool"][0] == ""
    assert check("audit.spool", "/var/log/cmdr/spool.db") is None and check("audit.spool", "") is None
    assert "file path" in check("audit.spool", "postgresql://db/spool")


def test_decision_wait_during_a_postgres_outage_is_reported(tmp_path):
    """What record() costs a decision (the wait before it is published) with the server up, at the first decision of
    an outage and through it (a real server stopped), then the drain when it is back (printed with -s, quoted in
    docs/audit.md; asserted: only that every row lands once, in order)."""
    import numpy as np

    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    try:
        url = server.url()
        store = AuditStore(url, timeout_s=0.5, retry_s=1.0, spool=Spool(str(tmp_path / "spool.db")))

        def waits(seqs) -> list[float]:
            out = []
            for seq in seqs:
                t0 = time.perf_counter()
                store.record(row(seq))
                out.append(1e3 * (time.perf_counter() - t0))
            return out

        normal = waits(range(1, 201))
        server.stop_now()
        outage = waits(range(201, 401))
        assert store.health()["spooled"] >= 199
        server.start_again()
        wait_until(lambda: store.health()["backlog"] == 0, "the spool drained", timeout=60)
        assert store.close() == 0
        assert [r["seq"] for r in stored(url)] == list(range(1, 401))
        n, o = np.array(normal[20:]), np.array(outage[1:])
        print(f"\npostgresql record(): server up p50 {np.percentile(n, 50):.2f} ms, p99 {np.percentile(n, 99):.2f} ms;"
              f" first decision of the outage {outage[0]:.1f} ms; outage (spooled) p50 {np.percentile(o, 50):.2f} ms,"
              f" p99 {np.percentile(o, 99):.2f} ms")
    finally:
        server.stop()


def test_a_row_spooled_by_an_older_version_is_drained_with_the_new_columns_empty(tmp_path):
    """A node of schema version 2 was killed with rows in the spool; this version's columns (evidence,
    evidence_root) are missing from them: they are written with those columns empty, not refused forever."""
    db, spool_path = str(tmp_path / "a.db"), str(tmp_path / "spool.db")
    old = {k: v for k, v in row(1).items() if k not in ("evidence", "evidence_root")}
    spool = Spool(spool_path)
    spool.put(db, [old])
    spool.close()
    store = AuditStore(db, timeout_s=WAIT, retry_s=0.1, spool=Spool(spool_path))
    wait_until(lambda: store.health()["spool_backlog"] == 0, "the old row to be drained")
    assert store.close() == 0
    assert stored(db) == [row(1)]
