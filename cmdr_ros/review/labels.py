"""What a reviewer says a part truly was: one row per label in ``labels`` (who, when, an optional note); every
label is kept and a part's latest one counts."""
from __future__ import annotations

import time
from typing import Any

from cmdr_ros import CmdrError
from cmdr_ros.review.db import LABELS, ReviewDB

MAX_NOTE = 500
# SQL condition on labels as ``l``: each part's latest label only
LATEST_ONLY = "l.id IN (SELECT MAX(id) FROM labels GROUP BY run_id, seq)"


def add_label(db: ReviewDB, part: dict[str, Any], label: str, user: str, note: str = "") -> None:
    """Store ``label`` for ``part`` (a row of ``queries.part``) by ``user``, now."""
    if label not in LABELS:
        raise CmdrError(f"label {label!r}: one of {', '.join(LABELS)}")
    if len(note) > MAX_NOTE:
        raise CmdrError(f"the note has {len(note)} characters, at most {MAX_NOTE}")
    p = db.p
    db.write([(f"INSERT INTO labels (node, run_id, seq, label, \"user\", labelled_at, note) VALUES ({p('node')}, "
               f"{p('run_id')}, {p('seq')}, {p('label')}, {p('user')}, {p('t')}, {p('note')})",
               {"node": part["node"], "run_id": part["run_id"], "seq": part["seq"], "label": label, "user": user,
                "t": time.time(), "note": note})])


def history(db: ReviewDB, run_id: str, seq: int) -> list[dict[str, Any]]:
    """Every label of one part, the latest first."""
    rows = db.rows(f"SELECT label, \"user\", labelled_at, note FROM labels WHERE run_id = {db.p('r')} AND "
                   f"seq = {db.p('s')} ORDER BY id DESC", {"r": run_id, "s": seq})
    return [dict(zip(("label", "user", "labelled_at", "note"), r)) for r in rows]


def latest_label_sql(alias: str) -> str:
    """SQL: the latest label of the decision ``alias`` (NULL when it has none)."""
    return (f"(SELECT l.label FROM labels l WHERE l.run_id = {alias}.run_id AND l.seq = {alias}.seq "
            "ORDER BY l.id DESC LIMIT 1)")
