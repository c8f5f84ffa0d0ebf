"""``cmdr promote NEW --current OLD --data DIR``: judge both models on DIR's test split (docs/review.md, "The learning
loop"); exit 1 with the table and the reason when the new one is refused; else, with ``--node``, put it in service
through the node's model swap. ``--db`` records every attempt in the store's ``promotions`` table
(``cmdr_ros.learning.promotion``).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cmdr_ros import CmdrError

DB_HELP = "the audit store: SQLite file or postgresql://user@host/db URL"
SWAP_FAILED = 4  # promoted by the figures, but the node did not put it in service (or did not answer)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("new", metavar="NEW.ckpt", help="the candidate model")
    p.add_argument("--current", required=True, metavar="OLD.ckpt", help="the model in service")
    p.add_argument("--data", required=True, metavar="DIR", help="class folder whose test split both are judged on")
    p.add_argument("--node", default=None, help="on promotion, set this node's checkpoint parameter (its model "
                                                "swap), e.g. /cmdr_inspection")
    p.add_argument("--db", default=None, help=DB_HELP + ": record the attempt in its promotions table")
    p.add_argument("--user", default=None, help="who promotes (default: the operating system's user)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="keep both evaluation reports here (current/, new/); default: a temporary folder")
    p.add_argument("--weights-2d", default=None)
    p.add_argument("--weights-3d", default=None)
    p.add_argument("--swap-timeout", type=float, default=120.0, help="seconds to wait for the node's answer")


def run(args: argparse.Namespace) -> int:
    from cmdr_ros.cli.evaluate import run_eval  # noqa: PLC0415 - torch only for this verb
    from cmdr_ros.learning import promotion  # noqa: PLC0415
    from cmdr_ros.model.checkpoint import load_checkpoint  # noqa: PLC0415 - torch only for this verb

    paths = (args.current, args.new)
    detectors = [load_checkpoint(p, args.device, args.weights_2d, args.weights_3d) for p in paths]
    db = None
    if args.db:
        from cmdr_ros.review.db import ReviewDB  # noqa: PLC0415

        db = ReviewDB(args.db)  # opened first: a store that cannot be written is found before the judging
    try:
        models = {name: (det.model_id, str(Path(path).resolve()))
                  for name, path, det in zip(("current", "new"), paths, detectors)}
        problem = promotion.same_inputs_problem(*detectors)
        figures = None
        if problem:
            promoted, reason = False, f"not comparable: {problem}"
        else:
            with tempfile.TemporaryDirectory(prefix="cmdr_promote_") as tmp:
                figures = promotion.compare(paths, detectors, args.data, Path(args.report or tmp), run_eval,
                                            cache_dir=args.cache_dir, no_cache=args.no_cache, progress=not args.quiet)
            promoted, reason = promotion.verdict(*figures)
            print(promotion.table(*figures))
        print(f"{'PROMOTED' if promoted else 'REFUSED'}: {reason}")
        outcome, answer, rc = ("promoted", "", 0) if promoted else ("refused", "", 1)
        if promoted and args.node:
            from cmdr_ros.ros.set_parameter import set_string_parameter  # noqa: PLC0415 - rclpy only here

            try:
                ok, answer = set_string_parameter(args.node, "checkpoint", models["new"][1], args.swap_timeout)
            except CmdrError as e:  # no such node, or no answer: recorded as such
                ok, answer = False, str(e)
            answer = answer or ("in service" if ok else "refused without a reason")
            print(f"node {args.node}: model {models['new'][0]} in service" if ok
                  else f"node {args.node}: NOT in service: {answer}")
            if not ok:
                outcome, rc = "swap_failed", SWAP_FAILED
        if db is not None:
            promotion.record(db, user=args.user or promotion.default_user(), outcome=outcome, reason=reason,
                             node=args.node or "", node_answer=answer, models=models, figures=figures,
                             data=str(args.data))
        return rc
    finally:
        if db is not None:
            db.close()
