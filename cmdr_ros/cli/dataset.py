"""``cmdr dataset``: data sets made from what the cells recorded.

* ``from-review --db DB --out DIR``: a class folder from the parts reviewers labelled in the review station
  (confirmed good parts to train/validation, confirmed defects to test), from their evidence: MVTec 3D-AD style
  frames, or a class of scans (``points/<id>.npy``) from the evidence of unorganized scans.
"""
from __future__ import annotations

import argparse
import json
import logging

from cmdr_ros.cli.audit import TIME_HELP

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``cmdr dataset``."""
    verbs = p.add_subparsers(dest="dataset_verb", required=True, metavar="DATASET_VERB")
    q = verbs.add_parser("from-review", help="a class folder (frames, or scans) from labelled evidence: confirmed "
                                             "good parts to train/validation, confirmed defects to test")
    q.add_argument("--db", required=True, help="audit store with the review station's labels: SQLite file or "
                                               "postgresql://user@host/db URL")
    q.add_argument("--out", required=True, help="the class folder to write (must not exist)")
    q.add_argument("--evidence", default=None, metavar="DIR",
                   help="the evidence root as mounted here (default: each row's recorded root, where it exists)")
    q.add_argument("--node", default="", help="only the parts of this cell (node name)")
    q.add_argument("--since", default=None, metavar="T", help=f"parts decided at or after T: {TIME_HELP}")
    q.add_argument("--until", default=None, metavar="T", help=f"parts decided before T: {TIME_HELP}")
    q.add_argument("--validation", type=float, default=0.2,
                   help="share of the confirmed good parts for validation/good (calibration), spread in time")
    q.add_argument("--holdout", type=float, default=0.0,
                   help="share of the confirmed good parts for test/good (good parts `cmdr promote` judges), spread "
                        "in time, taken before the validation share")
    q.add_argument("--defect", default="review", help="the test folder of confirmed defects (test/<defect>)")
    q.add_argument("--merge", default=None, metavar="DIR", help="start from a copy of this class folder (its kind, "
                                                                "frames or scans, is the new folder's)")
    q.set_defaults(func=run_from_review)


def run_from_review(args: argparse.Namespace) -> int:
    from cmdr_ros.review.dataset import from_review  # noqa: PLC0415 - torch (frame sizes) only when run
    from cmdr_ros.review.db import ReviewDB  # noqa: PLC0415
    from cmdr_ros.review.queries import Filters  # noqa: PLC0415

    f = Filters.parse({"node": args.node, "since": args.since or "", "until": args.until or ""})
    db = ReviewDB(args.db)
    try:
        summary = from_review(db, args.out, evidence=args.evidence, f=f, validation=args.validation,
                              defect=args.defect, merge=args.merge, holdout=args.holdout)
    finally:
        db.close()
    for folder, n in summary["samples"].items():
        log.info("%-24s %d sample(s)", folder, n)
    for part in summary["left_out"]:
        log.info("left out %s run %s seq %s: %s", part["node"], part["run_id"], part["seq"], part["why"])
    print(json.dumps({k: v for k, v in summary.items() if k != "left_out"} | {"left_out": len(summary["left_out"])}))
    return 0
