"""``cmdr audit``: read the node's audit store (an SQLite file or a ``postgresql://`` URL).

* ``export DB``: the decisions as CSV (default) or a JSON array, to stdout or ``--out FILE``;
* ``stats DB``: counts, reject rates, errors, score histogram, latency percentiles, per node and model.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from cmdr_ros import CmdrError
from cmdr_ros.audit import report

log = logging.getLogger(__name__)
TIME_HELP = "ISO 8601 (2026-11-29T13:00:00, UTC unless it has an offset such as +01:00) or Unix seconds"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``cmdr audit``."""
    verbs = p.add_subparsers(dest="audit_verb", required=True, metavar="AUDIT_VERB")

    q = verbs.add_parser("export", help="write the decisions as CSV or JSON (columns as in the audit table)")
    _add_store_args(q)
    q.add_argument("--format", choices=report.FORMATS, default="csv", help="csv (default) or json (one array)")
    q.add_argument("--out", default=None, metavar="FILE", help="file to write (default stdout)")
    q.set_defaults(func=run_export)

    q = verbs.add_parser("stats", help="summarise the decisions: counts, reject rate, errors, scores, latency")
    _add_store_args(q)
    q.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    q.set_defaults(func=run_stats)


def _add_store_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("db", metavar="DB", help="audit store: SQLite file or postgresql://user@host/db URL")
    q.add_argument("--since", default=None, metavar="T", help=f"decisions at or after T: {TIME_HELP}")
    q.add_argument("--until", default=None, metavar="T", help=f"decisions before T: {TIME_HELP}")


def _window(args: argparse.Namespace) -> tuple[float | None, float | None]:
    since = None if args.since is None else report.parse_time(args.since, "--since")
    until = None if args.until is None else report.parse_time(args.until, "--until")
    return since, until


def run_export(args: argparse.Namespace) -> int:
    since, until = _window(args)
    out = None if args.out is None else Path(args.out)
    if out is not None and not out.parent.is_dir():
        raise CmdrError(f"--out {out}: no directory {out.parent}")
    backend = report.open_store(args.db)
    try:
        if out is None:
            try:
                report.export(backend, sys.stdout, args.format, since, until)
                sys.stdout.flush()
            except BrokenPipeError:  # `cmdr audit export DB | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        partial = out.with_name(out.name + ".partial")  # no half-written FILE when the export fails
        try:
            with open(partial, "w", newline="", encoding="utf-8") as f:
                n = report.export(backend, f, args.format, since, until)
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        log.info("%d decisions -> %s", n, out)
        return 0
    finally:
        backend.close()


def run_stats(args: argparse.Namespace) -> int:
    since, until = _window(args)
    backend = report.open_store(args.db)
    try:
        figures = report.stats(backend, since, until)
    finally:
        backend.close()
    print(json.dumps(figures, indent=2) if args.json else report.format_stats(figures))
    return 0
