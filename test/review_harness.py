"""What the review station tests share: a store of known decisions (with evidence pictures for some parts), its
accounts, and logging in through the login form as a browser does."""
from __future__ import annotations

import re

import numpy as np

from cmdr_ros.audit.backends import open_backend
from cmdr_ros.audit.schema import COLUMNS
from cmdr_ros.evidence import meta_of, part_folder, write_evidence
from cmdr_ros.review import auth
from cmdr_ros.review.db import ReviewDB

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
PASSWORD = "correct horse battery"
ACCOUNTS = {"vera": "viewer", "rita": "reviewer", "adam": "admin"}
RUN = "0123456789abcdef"


def decision(seq: int, node: str = "/cell_a", decision: str = "pass", score: float | None = 0.5,
             threshold: float = 1.0, latency_ms: float = 10.0, model_id: str = "m1", run_id: str = RUN,
             **values) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(decided_at=T0 + 60 * seq, node=node, run_id=run_id, seq=seq, decision=decision,
               judged=score is not None, score=score, threshold=threshold, latency_ms=latency_ms, model_id=model_id,
               mode="rgbd", stamp=f"{seq}.000000000", result_schema="2", **values)
    if score is None:
        row.update(error="invalid_input", reason="too few valid points")
    return row


def known_rows() -> list[dict]:
    """Cell A: 10 parts, seq 0-3 rejected (score 2), seq 9 not judged; latency 1..10 ms. Cell B: 5 parts, passes."""
    rows = [decision(s, decision="reject" if s < 4 else "skip" if s == 9 else "pass",
                     score=None if s == 9 else 2.0 if s < 4 else 0.1 * s, latency_ms=float(s + 1),
                     model_id="m2" if s >= 8 else "m1") for s in range(10)]
    rows += [decision(100 + s, node="/cell_b", score=0.2, latency_ms=50.0) for s in range(5)]
    return rows


# the reviewers' verdicts on cell A: seq 2 was labelled twice (the latest counts), seq 5 is a confirmed escape
KNOWN_LABELS = [(0, "good"), (1, "defective"), (2, "good"), (2, "defective"), (3, "unsure"), (5, "defective")]


def make_store(target: str, rows: list[dict], evidence_root=None) -> ReviewDB:
    """A store holding ``rows`` (the parts with ``evidence`` get pictures under ``evidence_root``), the station's
    tables and one account per role (password ``PASSWORD``); the station's connection to it."""
    for row in rows:
        if evidence_root is not None and row.get("evidence") is None and row["seq"] % 2 == 0:
            row["evidence"] = part_folder(row["node"], row["decided_at"], row["run_id"], row["seq"])
            row["evidence_root"] = str(evidence_root)
            write_evidence(evidence_root, row["evidence"], image=picture(row["seq"], 0),
                           heatmap=picture(row["seq"], 1), meta=meta_of(row))
    backend = open_backend(target)
    try:
        backend.insert(rows)
    finally:
        backend.close()
    db = ReviewDB(target)
    for name, role in ACCOUNTS.items():
        auth.add_user(db, name, role, PASSWORD)
    return db


def picture(seq: int, channel: int) -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[..., channel] = 40 + seq
    img[8:40, 8:56, 2 - channel] = 200
    return img


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client, name: str, password: str = PASSWORD):
    """Log ``client`` in through the login form; the response it ends on."""
    form = client.get("/login")
    return client.post("/login", data={"csrf": csrf_of(form.text), "name": name, "password": password,
                                       "next": "/decisions"})


def count_of(html: str) -> int:
    return int(re.search(r'<p id="count">(\d+) decision', html).group(1))
