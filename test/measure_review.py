"""How long the review station's pages take with many decisions (docs/review.md): a store of N decisions (default
100,000: 4 cells over 7 days, 5 % rejects, 2,000 labelled), every page asked REPEAT times through the application
(Starlette's TestClient: the server's whole work, no network), the median and the slowest per page, on SQLite and,
where a server can start (test/pg_server.py), on PostgreSQL. Not a test: run it by hand.

    cd REPO && PYTHONPATH=$PWD:test python test/measure_review.py [N] [REPEAT]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from review_harness import RUN, T0, csrf_of, decision, login, make_store

from cmdr_ros.review.app import create_app

CELLS = ("/line1/cell_a", "/line1/cell_b", "/line2/cell_a", "/line2/cell_b")
LABELLED = 2000


def rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    span = 7 * 24 * 3600
    out = []
    for seq in range(n):
        score = float(rng.gamma(4.0, 0.2) + 0.1 * seq / n)  # a slow drift upwards
        row = decision(seq, node=CELLS[seq % len(CELLS)], decision="reject" if score > 1.6 else "pass", score=score,
                       threshold=1.6, latency_ms=float(rng.normal(45, 6)), model_id="m1" if seq < n // 2 else "m2")
        row["decided_at"] = T0 + span * seq / n
        out.append(row)
    return out


def label_some(db, n: int) -> None:
    p = db.p
    db.write([(f"INSERT INTO labels (node, run_id, seq, label, \"user\", labelled_at, note) VALUES ({p('n')}, "
               f"{p('r')}, {p('s')}, {p('l')}, 'rita', {p('t')}, '')",
               {"n": CELLS[s % len(CELLS)], "r": RUN, "s": s, "l": ("good", "defective", "unsure")[s % 3],
                "t": T0 + s}) for s in range(0, n, max(n // LABELLED, 1))])


def measure(target: str, n: int, repeat: int) -> None:
    t0 = time.perf_counter()
    db = make_store(target, rows(n))
    label_some(db, n)
    print(f"\n{db.kind}: {n} decisions stored in {time.perf_counter() - t0:.1f} s")
    client = TestClient(create_app(db))
    login(client, "rita")
    mid = n // 2
    pages = {"decisions, first page": "/decisions",
             "decisions, cell + reject + unlabelled": f"/decisions?node={CELLS[1]}&decision=reject&label=unlabelled",
             "decisions, score >= 2, one day": "/decisions?min_score=2&since=2027-01-17&until=2027-01-18",
             "decisions, page 1000": "/decisions?page=1000",
             "part page": f"/part/{RUN}/{mid}",
             "dashboard (4 cells)": "/dashboard",
             "dashboard, one day": "/dashboard?since=2027-01-17&until=2027-01-18",
             "drift plot, one cell (25,000 decisions)": f"/plot/drift.png?node={CELLS[0]}"}
    print(f"{'page':<42} {'median ms':>10} {'max ms':>8}")
    for name, path in pages.items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            r = client.get(path)
            times.append((time.perf_counter() - t) * 1e3)
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        print(f"{name:<42} {statistics.median(times):>10.1f} {max(times):>8.1f}")
    token = csrf_of(client.get(f"/part/{RUN}/{mid}").text)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.post(f"/part/{RUN}/{mid}/label", data={"label": "good", "csrf": token}, follow_redirects=False)
        times.append((time.perf_counter() - t) * 1e3)
        assert r.status_code == 303
    print(f"{'label a part (POST, before its redirect)':<42} {statistics.median(times):>10.1f} {max(times):>8.1f}")
    db.close()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        measure(str(Path(tmp) / "audit.db"), n, repeat)
        from pg_server import PostgresServer, why_unavailable

        why = why_unavailable()
        if why is not None:
            print(f"\nPostgreSQL: not measured ({why})")
            return
        server = PostgresServer(Path(tmp) / "pg").start()
        try:
            measure(server.create_database("review_bench"), n, repeat)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
