"""``cmdr promote``: a new model judged against the one in service on the same labelled parts, and the record of it.

Both models are evaluated by ``cmdr eval`` (``run_eval``) on the test split of one class folder (``cmdr dataset
from-review --holdout`` holds good parts out for it), each rejecting at its own calibrated threshold
(``judge.is_reject``). Figures per model (``Figures``): I-AUROC, false rejects (good parts rejected), misses
(defective parts passed), and the numbers of good and defective parts.

The rule (``verdict``): the new model is promoted only when it is no worse than the current one on all three figures
(I-AUROC not lower, not more false rejects, not more misses) and better on at least one. A test split without both
good and defective parts has no I-AUROC: no promotion can be judged on it.

Every attempt, promoted or refused, can be kept in the ``promotions`` table of the audit store (``record``): who,
when, the node, both model ids and checkpoint paths, the figures (JSON), the outcome and the node's answer to the swap.
"""
from __future__ import annotations

import csv
import getpass
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from cmdr_ros.review.db import ReviewDB, promotions_table_sql

FIGURES = ("i_auroc", "false_rejects", "misses")


@dataclass
class Figures:
    """One model's figures on the test split."""

    model_id: str
    checkpoint: str
    threshold: float
    i_auroc: float
    false_rejects: int
    misses: int
    n_good: int
    n_defect: int


def figures_of(report: dict[str, Any], report_dir: Path) -> Figures:
    """The figures of a ``run_eval`` report and its ``scores.csv`` (one row per test part: label, reject)."""
    with open(report_dir / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    good = [r for r in rows if r["label"] == "0"]
    bad = [r for r in rows if r["label"] != "0"]
    return Figures(report["model_id"], report["checkpoint"], float(report["threshold"]),
                   float(report["mean"]["i_auroc"]), sum(r["reject"] == "1" for r in good),
                   sum(r["reject"] != "1" for r in bad), len(good), len(bad))


def same_inputs_problem(current: Any, new: Any) -> str | None:
    """Why two loaded models cannot be compared on one dataset, or replace one another (None when they can)."""
    if current.config.mode != new.config.mode:
        return f"the new model serves mode '{new.config.mode}', the current one mode '{current.config.mode}'"
    if current.config.judges_scans != new.config.judges_scans:
        kind = {True: "unorganized scans (a 'chunks' model)", False: "organized frames"}
        return (f"the new model judges {kind[new.config.judges_scans]}, the current one "
                f"{kind[current.config.judges_scans]}")
    return None


def verdict(current: Figures, new: Figures) -> tuple[bool, str]:
    """(promote?, why): the rule of the module docstring."""
    if math.isnan(new.i_auroc) or math.isnan(current.i_auroc):
        return False, (f"no I-AUROC: the test split holds {new.n_good} good and {new.n_defect} defective parts, it "
                       "needs both")
    worse = [f"{name} {getattr(new, name):.4g} vs {getattr(current, name):.4g}" for name, lower_is_better in
             (("i_auroc", False), ("false_rejects", True), ("misses", True))
             if (getattr(new, name) > getattr(current, name) if lower_is_better
                 else getattr(new, name) < getattr(current, name))]
    if worse:
        return False, "the new model is worse: " + ", ".join(worse)
    better = [name for name in FIGURES if getattr(new, name) != getattr(current, name)]
    if not better:
        return False, "the new model is no better on any figure"
    return True, "no worse on any figure, better on " + ", ".join(better)


def table(current: Figures, new: Figures) -> str:
    """The side-by-side table of both models' figures."""
    def cell(f: Figures, name: str) -> str:
        v = getattr(f, name)
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    names = ("model_id", "threshold", "i_auroc", "false_rejects", "misses", "n_good", "n_defect")
    rows = [("", "current", "new")] + [(n, cell(current, n), cell(new, n)) for n in names]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def default_user() -> str:
    """Who promotes, when ``--user`` does not say: the operating system's user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


COLUMNS = ("promoted_at", "user", "outcome", "reason", "node", "node_answer", "current_model_id",
           "current_checkpoint", "new_model_id", "new_checkpoint", "data", "figures")


def record(db: ReviewDB, *, user: str, outcome: str, reason: str, node: str, node_answer: str,
           models: dict[str, tuple[str, str]], figures: tuple[Figures, Figures] | None, data: str) -> None:
    """Keep one promotion attempt in ``promotions`` (made when missing). ``models``: "current" and "new" -> (model
    id, checkpoint path); ``figures``: (current, new), None when the models were not judged (not comparable)."""
    values = {"promoted_at": time.time(), "user": user, "outcome": outcome, "reason": reason, "node": node,
              "node_answer": node_answer, "data": data,
              "figures": json.dumps({} if figures is None else {"current": asdict(figures[0]),
                                                                 "new": asdict(figures[1])})}
    for name in ("current", "new"):
        values[f"{name}_model_id"], values[f"{name}_checkpoint"] = models[name]
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    db.write([(promotions_table_sql(db.kind), {}),
              (f"INSERT INTO promotions ({cols}) VALUES ({', '.join(db.p(c) for c in COLUMNS)})", values)])


def history(db: ReviewDB, limit: int = 20) -> list[dict[str, Any]]:
    """The latest promotion attempts, newest first, ``figures`` parsed ([] when none was recorded)."""
    if not db.has_table("promotions"):
        return []
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    got = db.rows(f"SELECT {cols} FROM promotions ORDER BY id DESC LIMIT {int(limit)}")
    rows = [dict(zip(COLUMNS, r)) for r in got]
    for r in rows:
        r["figures"] = json.loads(r["figures"])
    return rows


def compare(paths: Sequence[str], detectors: Sequence[Any], data: str, out: Path, run_eval: Callable[..., dict],
            *, cache_dir: str | None = None, no_cache: bool = False, progress: bool = False) -> tuple[Figures, Figures]:
    """Evaluate (current, new) on ``data``'s test split with ``run_eval`` (``cmdr eval``'s, given by the caller: the
    CLI is the top layer), reports under ``out``/current and ``out``/new (the caller checked
    ``same_inputs_problem``)."""
    figures = []
    for name, path, det in zip(("current", "new"), paths, detectors):
        report = run_eval(data, det, out / name, str(Path(path).resolve()), cache_dir, no_cache, progress,
                          write_images=False)
        figures.append(figures_of(report, out / name))
    return figures[0], figures[1]
