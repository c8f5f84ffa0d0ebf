"""`cmdr audit export` / `stats` against SQLite and PostgreSQL stores of known rows: exact round trips, window
boundaries, figures checked against numpy, one-line errors, and 100,000 rows."""
import collections
import csv
import io
import json
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from cmdr_ros.audit.backends import open_backend
from cmdr_ros.audit.report import parse_time
from cmdr_ros.audit.schema import COLUMNS, row_from_result
from cli_harness import one_line_error as _err
from cmdr_ros.cli.main import main

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
T0 = int((datetime(2026, 11, 29, 13, 0, 0, tzinfo=timezone.utc) - EPOCH).total_seconds())
NODES = ("/cell_a/inspection", "/cell_b/inspection")
REASON = 'cloud covers 3.1% of the map, below "min_coverage"\nsecond line, é'


def make_rows(n, seed=0, step_us=500_000):
    """n rows as the node writes them (row_from_result of string values), decided_at on whole microseconds."""
    rng = np.random.default_rng(seed)
    micro = rng.integers(0, step_us, n)
    judged = rng.random(n) < 0.9
    scores, latencies = rng.random(n), rng.gamma(2.0, 10.0, n)
    errors = rng.choice(["degraded", "implausible", "timeout"], n)
    rows = []
    for i in range(n):
        values = {"seq": str(i // 2), "stamp": f"{T0 + i}.{i * 7919 % 10**9:09d}", "inputs": "image+points",
                  "frame_id.image": "camera", "frame_id.points": "camera", "frame_id.camera_info": "camera",
                  "threshold": "0.8", "mode": "rgbd", "alignment": "projected", "schema": "1",
                  "inference_ms": repr(float(latencies[i] / 2)), "valid_ratio": "0.97", "coverage": "0.91",
                  "judged": "true" if judged[i] else "false"}
        if i % 3:
            values["part_id"] = f"P{i:06d}"
        if i % 50 != 7:
            values["latency_ms"] = repr(float(latencies[i]))
        if judged[i]:
            values.update(score=repr(float(scores[i])), decision="reject" if scores[i] >= 0.8 else "pass",
                          model_id="abc123" if i % 4 else "def456")
        else:
            values.update(error=str(errors[i]), reason=REASON, decision="skip" if i % 2 else "reject")
            if i % 5:
                values["model_id"] = "abc123"
        us = T0 * 10**6 + i * step_us + int(micro[i])
        rows.append(row_from_result(values, node=NODES[i % 2], run_id=f"run-{i % 2}", decided_at=us / 1e6))
    return rows


def iso_of(t):
    """decided_at as the export writes it, by integer arithmetic (independent of the exporter)."""
    return (EPOCH + timedelta(microseconds=round(t * 1e6))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def store(target, rows, batch=10_000):
    backend = open_backend(target)
    for k in range(0, len(rows), batch):
        backend.insert(rows[k:k + batch])
    backend.close()


def expected_export(rows):
    """The rows as exported: decided_at as ISO 8601, everything else typed as stored."""
    return [{**r, "decided_at": iso_of(r["decided_at"])} for r in rows]


def parse_csv(text):
    typed = {"real": float, "int": int, "bool": lambda x: {"true": True, "false": False}[x], "text": str}
    reader = csv.reader(io.StringIO(text, newline=""))
    assert next(reader) == list(COLUMNS)
    kinds = [str if c == "decided_at" else typed[k] for c, (k, _) in COLUMNS.items()]
    return [{c: None if f == "" else kind(f) for c, kind, f in zip(COLUMNS, kinds, fields)} for fields in reader]


def parse_json(text):
    got = json.loads(text)
    assert all(list(r) == list(COLUMNS) for r in got)
    return got


def expected_stats(rows):
    """The figures of `stats`, computed here from the inserted rows."""
    judged = [r for r in rows if r["judged"]]
    scores = np.array([r["score"] for r in judged])
    lat = np.array([r["latency_ms"] for r in rows if r["latency_ms"] is not None])
    counts, edges = np.histogram(scores, bins=10)
    rejects = sum(r["decision"] == "reject" for r in rows)
    return {
        "total": len(rows), "judged": len(judged), "not_judged": len(rows) - len(judged),
        "decisions": {d: sum(r["decision"] == d for r in rows) for d in ("reject", "pass", "skip")},
        "reject_rate": rejects / len(rows),
        "reject_rate_judged": sum(r["decision"] == "reject" for r in judged) / len(judged),
        "not_judged_by_error": dict(collections.Counter(r["error"] for r in rows if not r["judged"])),
        "score_histogram": {"count": len(scores), "edges": edges.tolist(), "counts": counts.tolist()},
        "latency_ms": dict(zip(("p50", "p95", "p99"), np.percentile(lat, [50, 95, 99]).tolist()),
                           max=float(lat.max()), count=len(lat)),
        "first_decided_at": iso_of(min(r["decided_at"] for r in rows)),
        "last_decided_at": iso_of(max(r["decided_at"] for r in rows)),
        "by_node": dict(collections.Counter(r["node"] for r in rows)),
        "by_model_id": dict(collections.Counter(r["model_id"] for r in rows)),
    }


def check_stats(got, rows):
    want = expected_stats(rows)
    for key in ("total", "judged", "not_judged", "decisions", "first_decided_at", "last_decided_at"):
        assert got[key] == want[key], key
    for key in ("reject_rate", "reject_rate_judged"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got["latency_ms"] == pytest.approx(want["latency_ms"], rel=1e-12)
    assert got["score_histogram"]["counts"] == want["score_histogram"]["counts"]
    assert got["score_histogram"]["edges"] == pytest.approx(want["score_histogram"]["edges"], rel=1e-12)
    for key, col in (("not_judged_by_error", "error"), ("by_node", "node"), ("by_model_id", "model_id")):
        assert {e[col]: e["count"] for e in got[key]} == want[key], key
        assert [e["count"] for e in got[key]] == sorted(want[key].values(), reverse=True), key


def out_of(capsys, argv):
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


@pytest.fixture(params=["sqlite", "postgres"])
def target(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "audit.db")
    return request.getfixturevalue("postgres_url")


def test_export_round_trips_exactly(capsys, target):
    rows = make_rows(400, seed=1)
    store(target, rows)
    want = expected_export(rows)
    assert any(r["part_id"] is None for r in rows) and any(r["latency_ms"] is None for r in rows)
    assert parse_csv(out_of(capsys, ["audit", "export", target])) == want
    assert parse_json(out_of(capsys, ["audit", "export", target, "--format", "json"])) == want


def test_window_is_since_inclusive_until_exclusive(capsys, target):
    rows = make_rows(10, seed=2)
    for i, r in enumerate(rows):  # decided_at on whole seconds: rows on the boundaries
        r["decided_at"] = float(T0 + i)
    store(target, rows)
    same_instants = (["--since", "2026-11-29T13:00:02", "--until", "2026-11-29T13:00:05"],
                     ["--since", "2026-11-29T14:00:02+01:00", "--until", "2026-11-29T13:00:05Z"],
                     ["--since", str(T0 + 2), "--until", f"{T0 + 5}.0"])
    for window in same_instants:
        got = parse_json(out_of(capsys, ["audit", "export", target, "--format", "json", *window]))
        assert got == expected_export(rows[2:5]), window
        check_stats(json.loads(out_of(capsys, ["audit", "stats", target, "--json", *window])), rows[2:5])
    got = parse_csv(out_of(capsys, ["audit", "export", target, "--since", "2026-11-29T13:00:08"]))
    assert got == expected_export(rows[8:])
    got = parse_csv(out_of(capsys, ["audit", "export", target, "--until", "2026-11-29T13:00:00.000001"]))
    assert got == expected_export(rows[:1])


def test_stats_figures(capsys, target):
    rows = make_rows(1000, seed=3)
    store(target, rows)
    check_stats(json.loads(out_of(capsys, ["audit", "stats", target, "--json"])), rows)
    want = expected_stats(rows)
    table = out_of(capsys, ["audit", "stats", target])
    assert f"decisions    {want['total']} (judged {want['judged']}, not judged {want['not_judged']})" in table
    assert f"reject rate  {want['reject_rate']:.2%} of all, {want['reject_rate_judged']:.2%} of judged" in table
    assert f"p99 {want['latency_ms']['p99']:.2f}" in table
    assert sum("#" in line for line in table.splitlines()) == 10
    assert "\n  - " in table  # the rows without a model_id


def test_empty_store_and_empty_window(capsys, target):
    store(target, [])
    assert out_of(capsys, ["audit", "export", target]) == ",".join(COLUMNS) + "\n"
    assert json.loads(out_of(capsys, ["audit", "export", target, "--format", "json"])) == []
    assert out_of(capsys, ["audit", "stats", target]).startswith("no decisions in ")
    figures = json.loads(out_of(capsys, ["audit", "stats", target, "--json"]))
    assert figures["total"] == 0 and figures["latency_ms"] is None and figures["score_histogram"] is None
    store(target, make_rows(20, seed=4))
    text = out_of(capsys, ["audit", "stats", target, "--since", "2030-01-01"])
    assert text.startswith("no decisions in ") and "2030-01-01T00:00:00.000000Z" in text


def test_export_to_file_while_the_node_writes(capsys, tmp_path):
    db, out = tmp_path / "audit.db", tmp_path / "out.json"
    writer = open_backend(str(db))  # the node's connection stays open (WAL): a reader sees what is committed
    rows = make_rows(50, seed=5)
    writer.insert(rows)
    try:
        assert out_of(capsys, ["audit", "export", str(db), "--format", "json", "--out", str(out)]) == ""
        assert parse_json(out.read_text()) == expected_export(rows)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.json"]
    finally:
        writer.close()


def test_parse_time():
    assert parse_time("2026-11-29T13:00:00") == T0 == parse_time("2026-11-29T13:00:00Z")
    assert parse_time("2026-11-29T14:00:00+01:00") == T0 == parse_time(str(T0))
    assert parse_time("2026-11-29T13:00:00.25") == T0 + 0.25 == parse_time(f"{T0}.25")


def test_errors_are_one_line(capsys, tmp_path):
    missing = tmp_path / "nope.db"
    for verb in ("export", "stats"):
        assert "no audit database at" in _err(capsys, ["audit", verb, str(missing)])
    assert list(tmp_path.iterdir()) == []  # not created
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    line = _err(capsys, ["audit", "export", str(other)])
    assert str(other) in line and "no such table: decisions" in line
    assert "no such table" in _err(capsys, ["audit", "stats", str(other)])
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n" * 100)
    assert "file is not a database" in _err(capsys, ["audit", "stats", str(text)])
    out = tmp_path / "x.csv"
    assert "file is not a database" in _err(capsys, ["audit", "export", str(text), "--out", str(out)])
    assert not out.exists() and not (tmp_path / "x.csv.partial").exists()
    line = _err(capsys, ["audit", "stats", "postgresql://cmdr:secret@127.0.0.1:1/audit"])
    assert "127.0.0.1:1" in line and "secret" not in line
    db = tmp_path / "audit.db"
    store(str(db), make_rows(3))
    for bad in ("yesterday", "nan", "1e20", "2026-13-01"):
        assert f"--since '{bad}'" in _err(capsys, ["audit", "export", str(db), "--since", bad])
    assert "must be before --until" in _err(capsys, ["audit", "stats", str(db), "--since", "2026-12-01",
                                                     "--until", "2026-11-30"])
    assert "no directory" in _err(capsys, ["audit", "export", str(db), "--out", str(tmp_path / "no" / "x.csv")])


def test_postgres_reader_creates_nothing(capsys, postgres_url):
    import psycopg

    assert "not an audit database (no table decisions)" in _err(capsys, ["audit", "stats", postgres_url])
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall() == []
    rows = make_rows(30, seed=7)
    store(postgres_url, rows)
    reader = "cmdr_reader"  # SELECT only, no CREATE: what an auditor's role may be
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {reader} LOGIN")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = postgres_url.replace("postgres@", f"{reader}@", 1)
    assert parse_json(out_of(capsys, ["audit", "export", url, "--format", "json"])) == expected_export(rows)
    check_stats(json.loads(out_of(capsys, ["audit", "stats", url, "--json"])), rows)


def test_100k_rows(capsys, tmp_path):
    rows = make_rows(100_000, seed=6, step_us=10_000)
    db, times = tmp_path / "big.db", {}
    t = time.perf_counter()
    store(str(db), rows)
    times["insert"] = time.perf_counter() - t
    want = expected_export(rows)
    for fmt, parse in (("csv", parse_csv), ("json", parse_json)):
        out = tmp_path / f"big.{fmt}"
        t = time.perf_counter()
        out_of(capsys, ["audit", "export", str(db), "--format", fmt, "--out", str(out)])
        times[f"export {fmt}"] = time.perf_counter() - t
        assert parse(out.read_text(encoding="utf-8")) == want, fmt
    t = time.perf_counter()
    figures = json.loads(out_of(capsys, ["audit", "stats", str(db), "--json"]))
    times["stats"] = time.perf_counter() - t
    check_stats(figures, rows)
    with capsys.disabled():
        print("\n100k rows, SQLite: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
