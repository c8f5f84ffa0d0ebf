"""The node's audit store on real faults: every decision is published while the store is locked, full or removed,
the failures are counted on /diagnostics, and every decision is on record once the fault clears. PostgreSQL: two
nodes of a plant writing to one database at once. (Bursts, malformed inputs and SIGINT/SIGTERM against the store:
test_node_faults.py.)"""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from std_msgs.msg import Header

from cmdr_ros.ros.conversions import array_to_image
from node_harness import (CommitBeforePublish, audit_rows, cell_frame, check_audit_has, start_node, train_cell_model,
                          values_of)
from cmdr_ros.audit.spool import Spool

pytestmark = pytest.mark.slow
node_running = contextlib.contextmanager(start_node)


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("audit_model")
    return train_cell_model(d / "data", "2d", d / "2d.ckpt")


@pytest.fixture(scope="module")
def image():
    return array_to_image(cell_frame(700).rgb, "rgb8", Header(frame_id="camera"))


def send(ros, image, n: int) -> list[dict[str, str]]:
    """Publish ``n`` parts and wait for their results (published whatever the store does)."""
    stamps = []
    for _ in range(n):
        image.header.stamp = ros.next_stamp()
        stamps.append(image.header.stamp)
        ros.image_pub.publish(image)
    return [ros.result(s) for s in stamps]


def send_one_by_one(ros, image, n: int) -> tuple[list[dict[str, str]], list[float]]:
    """Publish ``n`` parts, each after the previous one's result arrived; the results and each part's round trip
    (publish to result, ms: printed, never asserted)."""
    results, ms = [], []
    for _ in range(n):
        image.header.stamp = ros.next_stamp()
        t0 = time.perf_counter()
        ros.image_pub.publish(image)
        results.append(ros.result(image.header.stamp))
        ms.append(1e3 * (time.perf_counter() - t0))
    return results, ms


def recovered(v: dict[str, str], written: int) -> bool:
    return v["healthy"] == "true" and v["backlog"] == "0" and int(v["written"]) >= written


def audit_status(ros, pred, what: str) -> dict[str, str]:
    """The first audit status of an open store (one with counters) satisfying ``pred``."""
    return ros.diagnostics(lambda v: "written" in v and pred(v), what, timeout=60, name="cmdr_inspection: audit")


class FullDisk:
    """A filesystem that can be filled and freed under the node's store: a 4 MB tmpfs where root may mount one,
    else a file-size limit on the node process (its files cannot grow: what a full disk does to SQLite)."""

    def __init__(self, tmp: Path):
        self.root, self.mounted, self.pid = tmp / "mnt", False, None
        self.root.mkdir()
        if os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.root)],
                                  capture_output=True)
            self.mounted = done.returncode == 0
        self.how = "a full 4 MB tmpfs" if self.mounted else "a file-size limit on the node process"

    def fill(self) -> None:
        if self.mounted:
            with open(self.root / "filler", "wb") as f:
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
        else:
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    def free(self) -> None:
        if self.mounted:
            (self.root / "filler").unlink()
        else:
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


def test_store_faults_never_stop_decisions_and_clear(ros, model_2d, image, tmp_path):
    disk = FullDisk(tmp_path)
    db = disk.root / "audit" / "cmdr_audit.db"
    params = {"checkpoint": model_2d["checkpoint"], "audit.database": str(db), "audit.timeout": 0.3}
    (tmp_path / "node").mkdir()
    try:
        with node_running(ros, tmp_path / "node", params, (ros.image_pub,)) as node:
            disk.pid = node.proc.pid
            published = send(ros, image, 2)
            check_audit_has(str(db), published)

            # 1. another process holds the database locked
            locker = sqlite3.connect(db, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            during = send(ros, image, 3)
            h = audit_status(ros, lambda v: int(v["failures"]) >= 1 and int(v["backlog"]) >= 1, "a locked store")
            assert "locked" in h["last_error"], h
            assert [v["judged"] for v in during] == ["true"] * 3  # decisions went on
            locker.execute("COMMIT")
            locker.close()
            published += during
            audit_status(ros, lambda v: recovered(v, len(published)), "recovery from the lock")
            check_audit_has(str(db), published)
            failures = int(h["failures"])

            # 2. the disk is full
            disk.fill()
            during = send(ros, image, 3)
            h = audit_status(ros, lambda v: int(v["failures"]) > failures and int(v["backlog"]) >= 1,
                             f"a failure on {disk.how}")
            disk.free()
            published += during
            audit_status(ros, lambda v: recovered(v, len(published)), "recovery from the full disk")
            check_audit_has(str(db), published)
            print(f"\nfull disk ({disk.how}): {h['last_error']}")

            # 3. the directory is removed (a clean-up script): the store is recreated where it was
            shutil.rmtree(db.parent)
            during = send(ros, image, 2)
            h = audit_status(ros, lambda v: int(v["reopened"]) >= 1 and recovered(v, len(published) + 2),
                             "a reopened store")
            check_audit_has(str(db), during)
            assert len(audit_rows(str(db))) == 2, "the new file holds what was decided after the removal"
            total = len(published) + len(during)
            d = ros.diagnostics(lambda v: int(v["decisions"]) >= total, "the node's status")
            assert d["decisions"] == str(total) and d["not_judged"] == "0", d
            assert node.proc.poll() is None, node.logs()
        assert "Traceback" not in node.stderr(), node.logs()
        assert "audit store failing" in node.stderr() and "audit store recovered" in node.stderr(), node.logs()
    finally:
        disk.close()


def test_store_that_cannot_open_is_reported_and_decisions_go_on(ros, model_2d, image, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's directory should be")
    params = {"checkpoint": model_2d["checkpoint"], "audit.database": str(blocker / "cmdr_audit.db")}
    (tmp_path / "node").mkdir()
    with node_running(ros, tmp_path / "node", params, (ros.image_pub,)) as node:
        h = audit_status(ros, lambda v: v["healthy"] == "false", "the store's fault before any decision")
        results = send(ros, image, 2)
        assert [v["judged"] for v in results] == ["true", "true"]
        h = audit_status(ros, lambda v: int(v["backlog"]) >= 2, "two rows queued")
        assert h["_level"] == DiagnosticStatus.WARN and "not_a_dir" in h["last_error"], h
        assert int(h["spool_backlog"]) >= 2 and h["spool"] == str(tmp_path / "node" / "ros_log" /
                                                                  "cmdr_audit_spool.db"), h  # the default spool
        assert node.proc.poll() is None, node.logs()
    assert "audit store closed" in node.stderr() and "in the spool" in node.stderr(), node.logs()
    assert "NOT written" not in node.stderr(), node.logs()  # durable in the spool, not lost


def test_two_nodes_write_to_one_postgres_database(ros, model_2d, image, tmp_path, postgres_url):
    nodes = []
    remaps = ("-r", "image:=/image")
    with contextlib.ExitStack() as stack:
        for cell in ("cell_a", "cell_b"):
            (tmp_path / cell).mkdir()
            nodes.append(stack.enter_context(node_running(
                ros, tmp_path / cell,
                {"checkpoint": model_2d["checkpoint"], "audit.database": postgres_url, "worker.queue_size": 20},
                (ros.image_pub,), ros_args=("-r", f"__ns:=/{cell}", *remaps))))
        deadline = time.monotonic() + 60  # the second node's reader must match before anything is sent
        while ros.image_pub.get_subscription_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ros.image_pub.get_subscription_count() == 2
        stamps = []
        for _ in range(10):
            image.header.stamp = ros.next_stamp()
            stamps.append(f"{image.header.stamp.sec}.{image.header.stamp.nanosec:09d}")
            ros.image_pub.publish(image)
        deadline = time.monotonic() + 120
        while len(audit_rows(postgres_url)) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = audit_rows(postgres_url)
    for cell in ("cell_a", "cell_b"):
        mine = [r for r in rows if r["node"] == f"/{cell}/cmdr_inspection"]
        assert sorted(r["stamp"] for r in mine) == sorted(stamps), (cell, mine)
        assert [r["seq"] for r in mine] == [str(i) for i in range(1, 11)] and len({r["run_id"] for r in mine}) == 1
        assert all(r["judged"] == "true" and r["mode"] == "2d" for r in mine), [(r["error"], r["reason"]) for r in mine]
    assert len(rows) == 20


def test_postgres_burst_committed_before_published_and_sigterm(ros, model_2d, image, tmp_path, postgres_url):
    """The burst and shutdown checks of test_node_faults.py against PostgreSQL: every result's row is in the
    database when the result arrives; SIGTERM mid-burst leaves every published decision on record."""
    (tmp_path / "node").mkdir()
    params = {"checkpoint": model_2d["checkpoint"], "audit.database": postgres_url, "worker.queue_size": 2,
              "audit.timeout": 10.0}
    committed = ros.hooks["result"] = CommitBeforePublish(postgres_url)
    try:
        with node_running(ros, tmp_path / "node", params, (ros.image_pub,)) as node:
            for _ in range(12):  # as fast as possible: judged parts and overload fail-safes
                image.header.stamp = ros.next_stamp()
                ros.image_pub.publish(image)
            ros.wait_for("3 results", lambda: len(ros.received["result"]) >= 3)
            node.proc.send_signal(signal.SIGTERM)
            assert node.proc.wait(timeout=30) == 0, node.logs()
    finally:
        del ros.hooks["result"]
        committed.close()
    with ros.cond:
        results = [values_of(m) for _, m in ros.received["result"]]
    assert committed.checked == len(results) and not committed.missing, committed.missing
    rows = check_audit_has(postgres_url, results)
    assert sorted(int(r["seq"]) for r in rows) == list(range(1, len(rows) + 1))
    kinds = {r["error"] for r in rows}
    print(f"\npostgresql burst + SIGTERM: {len(results)} results, {len(rows)} rows, outcomes {kinds}")


def test_postgres_server_down_and_back_under_the_node(ros, model_2d, image, tmp_path):
    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    (tmp_path / "node").mkdir()
    try:
        url = server.url()
        params = {"checkpoint": model_2d["checkpoint"], "audit.database": url}
        with node_running(ros, tmp_path / "node", params, (ros.image_pub,)) as node:
            published = send(ros, image, 2)
            check_audit_has(url, published)
            server.stop_now()
            during = send(ros, image, 3)  # published while the server is down
            h = audit_status(ros, lambda v: v["healthy"] == "false" and int(v["backlog"]) >= 1, "the server down")
            server.start_again()
            published += during
            audit_status(ros, lambda v: recovered(v, len(published)), "the backlog written after the restart")
            check_audit_has(url, published)
            assert node.proc.poll() is None, node.logs()
        print(f"\npostgresql down: {h['last_error']}")
    finally:
        server.stop()


class SpooledBeforePublish:
    """A ``RosSide`` hook on ~/result during an outage: at the moment a decision arrives, its row must be in the spool
    file (read by a connection of its own) or already in the database."""

    def __init__(self, spool: str, target: str) -> None:
        self.spool, self.target, self.checked, self.missing = spool, target, 0, []

    def __call__(self, msg: Any) -> None:
        v = values_of(msg)
        spool = Spool(self.spool)
        try:
            rows = [r for _, r in spool.peek(self.target, 100_000)]
        finally:
            spool.close()
        self.checked += 1
        if not any(r["seq"] == int(v["seq"]) and r["stamp"] == v["stamp"] for r in rows):
            self.missing.append((v["seq"], v["stamp"]))


def test_sigkill_during_a_postgres_outage_every_published_decision_lands_once(ros, model_2d, image, tmp_path):
    """The issue's test: the server stops, decisions go on being published (their rows spooled first), the node is
    killed (SIGKILL) during the outage, the server comes back, the node is restarted: every decision the test received
    is in PostgreSQL exactly once."""
    from pg_server import PostgresServer, why_unavailable

    if why_unavailable():
        pytest.skip(why_unavailable())
    server = PostgresServer(tmp_path / "pg").start()
    spool = str(tmp_path / "spool" / "cmdr_audit_spool.db")
    for d in ("node1", "node2"):
        (tmp_path / d).mkdir()
    try:
        url = server.url()
        params = {"checkpoint": model_2d["checkpoint"], "audit.database": url, "audit.spool": spool,
                  "audit.timeout": 0.3}
        with node_running(ros, tmp_path / "node1", params, (ros.image_pub,)) as node:
            before, normal_ms = send_one_by_one(ros, image, 3)
            check_audit_has(url, before)
            server.stop_now()
            spooled = ros.hooks["result"] = SpooledBeforePublish(spool, url)
            try:
                during, outage_ms = send_one_by_one(ros, image, 4)
            finally:
                del ros.hooks["result"]
            h = audit_status(ros, lambda v: int(v["spool_backlog"]) >= 4, "the outage's rows in the spool")
            node.proc.kill()  # SIGKILL: no shutdown, nothing flushed
            node.proc.wait(timeout=30)
        assert spooled.checked == 4 and not spooled.missing, spooled.missing
        assert h["_level"] == DiagnosticStatus.WARN and h["healthy"] == "false", h
        server.start_again()
        with node_running(ros, tmp_path / "node2", params, (ros.image_pub,)) as node:
            h = audit_status(ros, lambda v: int(v["drained"]) >= 4 and v["backlog"] == "0", "the spool drained")
            after = send(ros, image, 1)
            audit_status(ros, lambda v: recovered(v, 5), "the new decision written")  # 4 drained + 1
            assert node.proc.poll() is None, node.logs()
        rows = audit_rows(url)
        assert len({(r["run_id"], r["seq"]) for r in rows}) == len(rows) == 8, rows
        for v in before + during + after:
            mine = [r for r in rows if r["stamp"] == v["stamp"]]
            assert len(mine) == 1, (v, mine)
            assert {k: mine[0].get(k) for k in ("seq", "decision", "judged")} == \
                {k: v[k] for k in ("seq", "decision", "judged")}
        first_run = [r for r in rows if r["stamp"] != after[0]["stamp"]]
        assert [r["seq"] for r in first_run] == [str(i) for i in range(1, 8)]  # in order
        assert len({r["run_id"] for r in first_run}) == 1
        assert Spool(spool).count() == 0
        print(f"\npostgresql outage + SIGKILL: {len(during)} decisions spooled, drained at restart: {h['drained']}; "
              f"publish -> result round trip, server up: {', '.join(f'{x:.0f}' for x in normal_ms)} ms; "
              f"outage: {', '.join(f'{x:.0f}' for x in outage_ms)} ms")
    finally:
        server.stop()
