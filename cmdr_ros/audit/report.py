"""Reading a store back: ``cmdr audit export`` (CSV / JSON of the rows) and ``cmdr audit stats`` (a summary).

Rows are streamed from the backend, so memory stays flat in the number of rows (stats keep two float arrays).
"""
from __future__ import annotations

import collections
import csv
import itertools
import json
import sqlite3
from array import array
from datetime import datetime, timezone
from typing import IO, Any, Iterator, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.audit.backends import AuditError, Backend, _pg_driver, open_backend, printable
from cmdr_ros.audit.schema import COLUMNS
from cmdr_ros.judge import DECISIONS

FORMATS = ("csv", "json")
HISTOGRAM_BINS = 10
_JUDGED = list(COLUMNS).index("judged")
_DECIDED_AT = list(COLUMNS).index("decided_at")


def parse_time(text: str, flag: str = "time") -> float:
    """Unix seconds of ``text``: ISO 8601 (no offset = UTC) or Unix seconds."""
    try:
        try:
            seconds = float(text)
        except ValueError:
            t = datetime.fromisoformat(text.strip())
            seconds = (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
        iso(seconds)  # a date (not nan, not beyond year 9999)
        return seconds
    except (ValueError, OverflowError, OSError):
        raise CmdrError(f"{flag} {text!r}: expected ISO 8601 (e.g. 2026-11-29T13:00:00, UTC unless an offset is "
                        "given) or Unix seconds") from None


def iso(t: float | None) -> str | None:
    """ISO 8601 UTC with microseconds, e.g. ``2026-11-29T13:41:40.123456Z``."""
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def open_store(target: str) -> Backend:
    """The store at ``target``, for reading (a missing SQLite file is an error, not created)."""
    return open_backend(target, busy_timeout_s=30.0, readonly=True)  # PostgreSQL: also its statement_timeout


def read_rows(backend: Backend, since: float | None, until: float | None,
              columns: Sequence[str] = tuple(COLUMNS)) -> Iterator[tuple]:
    """``backend.select`` with the drivers' errors as ``AuditError``."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,) if backend.kind == "sqlite" else (_pg_driver().Error,)
    if since is not None and until is not None and since >= until:
        raise CmdrError(f"--since ({iso(since)}) must be before --until ({iso(until)})")
    try:
        yield from backend.select(since, until, columns)
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise AuditError(f"{printable(backend.target)}: cannot read the audit table ({first})") from None


def export(backend: Backend, out: IO[str], fmt: str, since: float | None = None, until: float | None = None) -> int:
    """Write the rows decided in [since, until) to ``out`` as CSV or a JSON array; return how many."""
    rows = read_rows(backend, since, until)
    first = next(rows, None)  # a store that cannot be read fails before anything is written
    rows = itertools.chain([] if first is None else [first], rows)
    return (_write_csv if fmt == "csv" else _write_json)(out, rows)


def _plain(rows: Iterator[tuple], bool_text: bool) -> Iterator[list]:
    """Rows with ``decided_at`` as ISO 8601 and ``judged`` as a bool (or ``true``/``false``)."""
    for row in rows:
        row = list(row)
        row[_DECIDED_AT] = iso(row[_DECIDED_AT])
        judged = row[_JUDGED]
        if judged is not None:
            row[_JUDGED] = ("true" if judged else "false") if bool_text else bool(judged)
        yield row


def _write_csv(out: IO[str], rows: Iterator[tuple]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = 0
    for row in _plain(rows, bool_text=True):
        writer.writerow(row)  # None -> empty field
        n += 1
    return n


def _write_json(out: IO[str], rows: Iterator[tuple]) -> int:
    names = list(COLUMNS)
    n = 0
    out.write("[")
    for row in _plain(rows, bool_text=False):
        out.write(("\n" if n == 0 else ",\n") + json.dumps(dict(zip(names, row))))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def stats(backend: Backend, since: float | None = None, until: float | None = None) -> dict[str, Any]:
    """Counts, decisions, reject rates, errors, score histogram, latency percentiles, per node / model."""
    total = judged = rejects_judged = 0
    decisions = collections.Counter({d: 0 for d in DECISIONS})
    errors: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    models: collections.Counter = collections.Counter()
    scores, latencies = array("d"), array("d")
    first = last = None
    columns = ("decided_at", "node", "decision", "judged", "score", "error", "model_id", "latency_ms")
    for t, node, decision, is_judged, score, error, model_id, latency in read_rows(backend, since, until, columns):
        total += 1
        decisions[decision] += 1
        nodes[node] += 1
        models[model_id] += 1
        if t is not None:
            first = t if first is None or t < first else first
            last = t if last is None or t > last else last
        if latency is not None:
            latencies.append(latency)
        if is_judged:
            judged += 1
            rejects_judged += decision == "reject"
            if score is not None:
                scores.append(score)
        else:
            errors[error] += 1
    return {
        "store": printable(backend.target), "since": iso(since), "until": iso(until),
        "total": total, "judged": judged, "not_judged": total - judged,
        "decisions": dict(decisions),
        "reject_rate": decisions["reject"] / total if total else None,
        "reject_rate_judged": rejects_judged / judged if judged else None,
        "not_judged_by_error": _ranked(errors, "error"),
        "score_histogram": _histogram(np.frombuffer(scores, dtype=np.float64)),
        "latency_ms": _percentiles(np.frombuffer(latencies, dtype=np.float64)),
        "first_decided_at": iso(first), "last_decided_at": iso(last),
        "by_node": _ranked(nodes, "node"), "by_model_id": _ranked(models, "model_id"),
    }


def _ranked(counts: collections.Counter, key: str) -> list[dict[str, Any]]:
    """[{key: value, "count": n}, ...], most frequent first (a list: a value may be null)."""
    return [{key: v, "count": n} for v, n in sorted(counts.items(), key=lambda vn: (-vn[1], str(vn[0])))]


def _histogram(scores: np.ndarray) -> dict[str, list] | None:
    if scores.size == 0:
        return None
    counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
    return {"count": int(scores.size), "edges": edges.tolist(), "counts": counts.tolist()}


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
    return {"count": int(values.size), "p50": p50, "p95": p95, "p99": p99, "max": float(values.max())}


def format_stats(s: dict[str, Any], bar_width: int = 40) -> str:
    """``stats`` as a text table."""
    window = f"{s['since'] or 'start'} .. {s['until'] or 'end'}"
    if s["total"] == 0:
        return f"no decisions in {s['store']} ({window})"
    d = s["decisions"]
    lines = [
        f"store        {s['store']}",
        f"window       {window} (decided_at in [since, until))",
        f"decided      {s['first_decided_at']} .. {s['last_decided_at']}",
        f"decisions    {s['total']} (judged {s['judged']}, not judged {s['not_judged']})",
        "outcome      " + "  ".join(f"{k} {n}" for k, n in d.items()),
        f"reject rate  {s['reject_rate']:.2%} of all" + (f", {s['reject_rate_judged']:.2%} of judged"
                                                         if s["reject_rate_judged"] is not None else ""),
    ]
    if s["not_judged_by_error"]:
        lines.append("not judged   " + ", ".join(f"{e['error'] or '-'} {e['count']}" for e in s["not_judged_by_error"]))
    lat = s["latency_ms"]
    if lat:
        lines.append(f"latency_ms   p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  "
                     f"max {lat['max']:.2f}  (n={lat['count']})")
    hist = s["score_histogram"]
    if hist:
        lines.append(f"score of judged parts (n={hist['count']})")
        top = max(hist["counts"])
        for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
            bar = "#" * round(bar_width * n / top)
            lines.append(f"  {lo:>10.4g} .. {hi:<10.4g} {bar:<{bar_width}} {n}")
    for title, key in (("by node", "node"), ("by model_id", "model_id")):
        lines.append(title)
        lines += [f"  {e[key] or '-':<40} {e['count']}" for e in s[f"by_{key}"]]
    return "\n".join(lines)
