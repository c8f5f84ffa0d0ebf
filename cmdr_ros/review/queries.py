"""Reading decisions for the station: the filtered list, one part, the dashboard's figures per cell.

Every value a user gives is parsed here (a bad one is a ``BadFilter`` with the reason) and reaches SQL only as a
bound parameter. A store of an older schema reads as it is: the columns it lacks read empty.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence
from urllib.parse import urlencode

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.audit.report import iso, parse_time
from cmdr_ros.judge import DECISIONS
from cmdr_ros.audit.schema import COLUMNS, TABLE
from cmdr_ros.review.db import LABELS, ReviewDB
from cmdr_ros.review.labels import LATEST_ONLY, latest_label_sql

PAGE_SIZE = 50
EVIDENCE_COLUMNS = ("evidence", "evidence_root")  # audit schema 3
LIST_COLUMNS = ("decided_at", "node", "run_id", "seq", "part_id", "decision", "judged", "score", "threshold",
                "model_id", "error", "latency_ms", "evidence")
LABEL_FILTERS = ("unlabelled",) + LABELS
MAX_TEXT = 200


class BadFilter(CmdrError):
    """A filter value that means nothing (the page says which and why)."""


@dataclass(frozen=True)
class Filters:
    node: str = ""
    since: float | None = None
    until: float | None = None
    decision: str = ""
    min_score: float | None = None
    max_score: float | None = None
    model: str = ""
    label: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "Filters":
        """Filters from a query string's values (empty = no filter)."""
        def text(key: str) -> str:
            value = (params.get(key) or "").strip()
            if len(value) > MAX_TEXT:
                raise BadFilter(f"{key}: at most {MAX_TEXT} characters")
            return value

        def number(key: str) -> float | None:
            value = text(key)
            if not value:
                return None
            try:
                x = float(value)
            except ValueError:
                raise BadFilter(f"{key} {value!r}: not a number") from None
            if not math.isfinite(x):
                raise BadFilter(f"{key} {value!r}: not a finite number")
            return x

        def when(key: str) -> float | None:
            value = text(key)
            try:
                return parse_time(value, key) if value else None
            except CmdrError as e:
                raise BadFilter(str(e)) from None

        def one_of(key: str, allowed: Sequence[str]) -> str:
            value = text(key)
            if value and value not in allowed:
                raise BadFilter(f"{key} {value!r}: one of {', '.join(allowed)}")
            return value

        page = text("page") or "1"
        if not page.isdigit() or not 1 <= int(page) <= 10**9:
            raise BadFilter(f"page {page!r}: a whole number from 1")
        f = cls(node=text("node"), since=when("since"), until=when("until"), decision=one_of("decision", DECISIONS),
                min_score=number("min_score"), max_score=number("max_score"), model=text("model"),
                label=one_of("label", LABEL_FILTERS), page=int(page))
        if f.since is not None and f.until is not None and f.since >= f.until:
            raise BadFilter("since must be before until")
        return f

    def form_value(self, key: str) -> str:
        """The value as the filter form shows it (times in ISO 8601, UTC)."""
        value = getattr(self, key)
        if value is None:
            return ""
        if key in ("since", "until"):
            return iso(value)[:19]
        return str(value)

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (e.g. another page)."""
        f = replace(self, **changes)
        return urlencode({k.name: f.form_value(k.name) for k in fields(f) if f.form_value(k.name)})

    def where(self, db: ReviewDB, alias: str = "d") -> tuple[str, dict[str, Any]]:
        """The WHERE clause (with its bound arguments) of these filters on ``decisions`` as ``alias``."""
        p, a = db.p, alias
        clauses, args = [], {}
        for key, sql in (("node", f"{a}.node = {p('node')}"), ("since", f"{a}.decided_at >= {p('since')}"),
                         ("until", f"{a}.decided_at < {p('until')}"), ("decision", f"{a}.decision = {p('decision')}"),
                         ("min_score", f"{a}.score >= {p('min_score')}"),
                         ("max_score", f"{a}.score <= {p('max_score')}"),
                         ("model", f"{a}.model_id = {p('model')}")):
            value = getattr(self, key)
            if value not in (None, ""):
                clauses.append(sql)
                args[key] = value
        if self.label == "unlabelled":
            clauses.append(f"NOT EXISTS (SELECT 1 FROM labels l0 WHERE l0.run_id = {a}.run_id AND l0.seq = {a}.seq)")
        elif self.label:
            clauses.append(f"{latest_label_sql(a)} = {p('label')}")
            args["label"] = self.label
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _select(db: ReviewDB, columns: Sequence[str], alias: str = "d") -> str:
    """The select list of ``columns`` (those the store lacks read NULL)."""
    return ", ".join(f"{alias}.{c}" if c in db.decision_columns else f"NULL AS {c}" for c in columns)


def decisions(db: ReviewDB, f: Filters, page_size: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], int]:
    """One page of the decisions ``f`` selects, the latest first (with each part's latest label), and how many it
    selects in all."""
    where, args = f.where(db)
    total = int(db.rows(f"SELECT COUNT(*) FROM {TABLE} d{where}", args)[0][0])
    # the page first, then the labels of its rows only (PostgreSQL would look them up for the skipped rows too)
    rows = db.rows(f"SELECT {', '.join(f'p.{c}' for c in LIST_COLUMNS)}, {latest_label_sql('p')} FROM "
                   f"(SELECT d.id, {_select(db, LIST_COLUMNS)} FROM {TABLE} d{where} ORDER BY d.decided_at DESC, "
                   f"d.id DESC LIMIT {int(page_size)} OFFSET {(f.page - 1) * page_size}) p "
                   "ORDER BY p.decided_at DESC, p.id DESC", args)
    return [_typed(dict(zip(LIST_COLUMNS + ("label",), r))) for r in rows], total


def part(db: ReviewDB, run_id: str, seq: int) -> dict[str, Any] | None:
    """Every column of one decision (None when there is none)."""
    columns = tuple(COLUMNS) + tuple(c for c in EVIDENCE_COLUMNS if c not in COLUMNS)
    got = db.rows(f"SELECT {_select(db, columns)} FROM {TABLE} d WHERE d.run_id = {db.p('r')} AND d.seq = {db.p('s')}",
                  {"r": run_id, "s": seq})
    return _typed(dict(zip(columns, got[0]))) if got else None


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """``judged`` as a bool (SQLite stores 0/1)."""
    if row.get("judged") is not None:
        row["judged"] = bool(row["judged"])
    return row


def choices(db: ReviewDB, column: str) -> list[str]:
    """The distinct values of ``node`` or ``model_id`` (the filter form's options)."""
    if column not in ("node", "model_id"):
        raise ValueError(column)
    return [r[0] for r in db.rows(f"SELECT DISTINCT {column} FROM {TABLE} WHERE {column} IS NOT NULL ORDER BY 1")]


def dashboard(db: ReviewDB, f: Filters) -> list[dict[str, Any]]:
    """Per cell (node) in the window of ``f``: parts, rejects, reject rate, the reviewers' verdicts on rejects and
    passes (``false_reject_rate``: of the rejects labelled defective or good, the share labelled good) and latency
    percentiles."""
    window = Filters(since=f.since, until=f.until)
    where, args = window.where(db)
    cells: dict[str, dict[str, Any]] = {}
    for node, parts, judged, rejects, first, last in db.rows(
            f"SELECT d.node, COUNT(*), SUM(CASE WHEN d.judged THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN d.decision = 'reject' THEN 1 ELSE 0 END), MIN(d.decided_at), MAX(d.decided_at) "
            f"FROM {TABLE} d{where} GROUP BY d.node ORDER BY d.node", args):
        cells[node] = {"node": node, "parts": int(parts), "judged": int(judged or 0), "rejects": int(rejects or 0),
                       "reject_rate": int(rejects or 0) / int(parts), "first": first, "last": last,
                       "verdicts": {(d, lab): 0 for d in DECISIONS for lab in LABELS}}
    # from the labels (a few thousand) to their decisions, each part's latest label only
    for node, decision, label, n in db.rows(
            f"SELECT d.node, d.decision, l.label, COUNT(*) FROM labels l JOIN {TABLE} d ON d.run_id = l.run_id AND "
            f"d.seq = l.seq WHERE {LATEST_ONLY}{where.replace(' WHERE ', ' AND ', 1)} "
            "GROUP BY d.node, d.decision, l.label", args):
        if node in cells and (decision, label) in cells[node]["verdicts"]:
            cells[node]["verdicts"][(decision, label)] = int(n)
    latencies: dict[str, list[float]] = {}
    lat_where = where + (" AND " if where else " WHERE ") + "d.latency_ms IS NOT NULL"
    for node, ms in db.rows(f"SELECT d.node, d.latency_ms FROM {TABLE} d{lat_where}", args):
        latencies.setdefault(node, []).append(ms)
    for node, cell in cells.items():
        v = cell.pop("verdicts")
        true_rejects, false_rejects = v[("reject", "defective")], v[("reject", "good")]
        cell.update(reviewed_rejects=true_rejects + false_rejects, false_rejects=false_rejects,
                    false_reject_rate=(false_rejects / (true_rejects + false_rejects)
                                       if true_rejects + false_rejects else None),
                    reviewed_passes=v[("pass", "defective")] + v[("pass", "good")], escapes=v[("pass", "defective")],
                    unsure=sum(n for (_, lab), n in v.items() if lab == "unsure"))
        ms = np.asarray(latencies.get(node, []), dtype=np.float64)
        cell["latency_ms"] = (dict(zip(("p50", "p95", "p99"), np.percentile(ms, [50, 95, 99]).tolist()),
                                   max=float(ms.max())) if ms.size else None)
    return list(cells.values())


def series(db: ReviewDB, node: str, f: Filters) -> dict[str, np.ndarray]:
    """The time series of one cell in the window of ``f``: decided_at, score, threshold, latency_ms, in time
    order (NaN where a value is missing)."""
    where, args = Filters(node=node, since=f.since, until=f.until).where(db)
    rows = db.rows(f"SELECT d.decided_at, d.score, d.threshold, d.latency_ms FROM {TABLE} d{where} "
                   "ORDER BY d.decided_at", args)
    data = np.array([[np.nan if x is None else x for x in r] for r in rows], dtype=np.float64).reshape(-1, 4)
    return dict(zip(("t", "score", "threshold", "latency_ms"), data.T))
