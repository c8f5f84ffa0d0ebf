"""The demo's learning loop (docs/review.md, "The learning loop"): the cell meets good parts it has never seen, people
review what it rejected, a model retrained on what they confirmed is promoted into the running node, and the false
reject rate is measured before and after.

1. a new batch of foam in a colour the model never saw (blue-grey instead of cream: ``NEW_MATERIAL``) reaches the
   cell; the node (evidence kept for every part, an audit store of its own) judges its first batch;
2. a reviewer confirms or overrules every reject (the labels are scripted from the simulation's truth, as a person
   at ``cmdr review serve`` would give them);
3. ``from_review`` turns the labelled evidence into a class folder merged with the original training data, good parts
   of the new material held out for judging (``--holdout``);
4. a model is trained on it and calibrated (``cmdr train``'s ``train_model``);
5. ``cmdr promote --node`` judges the new model against the one in service on the merged test split (old and new
   material) and, when it is no worse and better, swaps it into the running node;
6. a second batch of the new material, parts neither model saw, is judged by whatever model is then in service.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Callable

from cmdr_ros.cli.demo_cell import CellNode, report
from cmdr_ros.data.synthetic import CellConfig, generate_dataset
from cmdr_ros.run_report import PartRow
from cmdr_ros.ros.stamps import stamp_text

# blue-grey foam: every good part of it scores above the cream-trained model's threshold (measured: 8 of 8)
NEW_MATERIAL = CellConfig(material_hue=(0.55, 0.62), material_saturation=(0.1, 0.2), material_value=(0.8, 0.9))
REVIEWER = "demo-reviewer"
BATCH_GOOD, BATCH_PER_DEFECT = 16, 1  # parts per batch of the new material
HOLDOUT = 0.25  # share of the confirmed good parts kept for judging the promotion


def _batch(root: Path, name: str, seed: int, material: CellConfig, size: tuple[int, int]) -> Path:
    """A batch of ``material``: ``size`` = (good parts, parts per defect), all in the test split (the belt's)."""
    return generate_dataset(root, class_name=name, n_train=0, n_val=0, n_test_good=size[0], n_test_per_defect=size[1],
                            cfg=material, seed=seed, overwrite=True)


def review_rejects(database: Path, samples: dict[int, str], evidence: Path, timeout: float = 120.0) -> dict[str, int]:
    """Label every reject of the store as the part truly was (its sample name: ``good/...`` or a defect), as
    ``REVIEWER``; waits up to ``timeout`` for each reject's evidence folder (written off the decision path) first.
    Counts per label."""
    from cmdr_ros.review import labels
    from cmdr_ros.review.db import ReviewDB

    names = {stamp_text(stamp): name for stamp, name in samples.items()}
    db = ReviewDB(str(database))
    try:
        db.ensure_schema()
        cols = ("node", "run_id", "seq", "stamp", "evidence")
        rejects = [dict(zip(cols, r)) for r in db.rows(
            f"SELECT {', '.join(cols)} FROM decisions WHERE decision = 'reject' ORDER BY id")]
        deadline = time.monotonic() + timeout
        while not all((evidence / r["evidence"]).is_dir() for r in rejects if r["evidence"]):
            if time.monotonic() > deadline:  # dropped by the writer (counted on /diagnostics): from_review says which
                print(f"      warning: not every reject's evidence appeared in {evidence} within {timeout:g} s")
                break
            time.sleep(0.2)
        counts = {"good": 0, "defective": 0}
        for r in rejects:
            label = "good" if names.get(r["stamp"], "").startswith("good/") else "defective"
            labels.add_label(db, r, label, REVIEWER, note="demo: scripted from the simulation's truth")
            counts[label] += 1
        return counts
    finally:
        db.close()


def _retrain_and_promote(loop: Path, data: Path, database: Path, current: dict, args: argparse.Namespace,
                         train: Callable[[Path, Path], dict]) -> tuple[int, dict]:
    """From review to a class folder merged with ``data``, a model trained on it, ``cmdr promote --node`` of it
    against ``current``: (promote's exit code, the new model's summary)."""
    from cmdr_ros.cli.main import main as cmdr
    from cmdr_ros.review.dataset import from_review
    from cmdr_ros.review.db import ReviewDB

    db = ReviewDB(str(database))
    try:
        merged = from_review(db, loop / "data" / f"{data.name}_reviewed", merge=data, holdout=HOLDOUT)
    finally:
        db.close()
    print(f"      dataset from review, merged with the original: {merged['samples']} added "
          f"({len(merged['left_out'])} left out) -> {merged['out']}")
    new = train(Path(merged["out"]), loop / "model_retrained.ckpt")
    print(f"      cmdr promote {Path(new['checkpoint']).name} --current {Path(current['checkpoint']).name} "
          f"--node /cmdr_inspection --db {database.name}")
    rc = cmdr(["promote", new["checkpoint"], "--current", current["checkpoint"], "--data", merged["out"],
               "--node", "/cmdr_inspection", "--db", str(database), "--user", REVIEWER, "--device", args.device,
               "--report", str(loop / "promotion"), "--quiet"])
    return rc, new


def _rate(rows: list[PartRow]) -> str:
    """The false reject rate of ``rows``: good parts rejected of the good parts."""
    good = [r for r in rows if not r.truth]
    rejected = sum(r.reject for r in good)
    return f"{rejected}/{len(good)} ({rejected / max(len(good), 1):.0%})"


def run_loop(out: Path, data: Path, current: dict, args: argparse.Namespace,
             train: Callable[[Path, Path], dict], material: CellConfig = NEW_MATERIAL,
             batch: tuple[int, int] = (BATCH_GOOD, BATCH_PER_DEFECT)) -> list[tuple]:
    """The loop on the cell of ``data`` (the original class) whose model ``current`` (``train_model``'s summary) is
    in service (``args``: seed, device); ``train(data, checkpoint)`` trains and calibrates a model (its summary);
    batches of ``material`` of ``batch`` parts. Returns the report's sections."""
    from cmdr_ros.ros.bags import bag_from_dataset

    loop = out / "loop"
    shutil.rmtree(loop, ignore_errors=True)
    loop.mkdir(parents=True)
    report_dir, database, evidence = out / "report", loop / "audit.db", loop / "evidence"
    batches = [_batch(out / "data", f"{data.name}_new_material_{i}", args.seed + 100 * i, material, batch)
               for i in (1, 2)]
    params = {"audit.database": database, "evidence.dir": evidence, "evidence.passes": 0.0}
    print(f"      a new batch of foam in a colour the model never saw: {batch[0]} good parts and "
          f"{batch[1]} of each defect per batch, judged by a node keeping evidence of every reject "
          f"({evidence}) and an audit store of its own ({database})")
    with CellNode(Path(current["checkpoint"]), loop, args.device, params=params, log_name="node_loop.log") as cell:
        bag1 = loop / "batch1_bag"
        bag_from_dataset(batches[0], bag1, storage="mcap", split="test")
        results, samples = cell.replay(bag1)
        rows1, before = report(results, samples, report_dir, "loop1_", current["threshold"])
        counts = review_rejects(database, samples, evidence)
        print(f"      reviewed the {sum(counts.values())} rejects as {REVIEWER}: {counts['good']} truly good "
              f"(false rejects), {counts['defective']} truly defective")
        if counts["good"]:
            rc, new = _retrain_and_promote(loop, data, database, current, args, train)
        else:
            rc, new = None, current
            print("      no good part was rejected: nothing to learn")
        in_service = new if rc == 0 else current
        bag2 = loop / "batch2_bag"
        bag_from_dataset(batches[1], bag2, storage="mcap", split="test")
        print(f"      a second batch of the new material, parts neither model saw, judged by model "
              f"{in_service['model_id']}")
        results, samples = cell.replay(bag2)
        rows2, after = report(results, samples, report_dir, "loop2_", in_service["threshold"])
    judged_by = {r.values.get("model_id") for r in results.values()}
    if judged_by != {in_service["model_id"]}:
        print(f"      warning: the second batch was judged by {sorted(map(str, judged_by))}, not only by "
              f"{in_service['model_id']}")
    swap = (f"model {current['model_id']} -> {in_service['model_id']}" if rc == 0
            else f"model {current['model_id']} kept: no retrained model was promoted")
    print(f"      false reject rate on the new material: before the loop {_rate(rows1)}, after the loop "
          f"{_rate(rows2)} ({swap}); defects caught {before['recall']:.0%} before, {after['recall']:.0%} after")
    return [
        ("Learning loop: a new material, before", before, rows1,
         f"A batch of blue-grey foam (the model in service, {current['model_id']}, was trained on cream foam only); "
         f"its {sum(counts.values())} rejects were reviewed: {counts['good']} truly good, {counts['defective']} "
         "truly defective."),
        ("Learning loop: the new material, after", after, rows2,
         f"A second batch of the new material, judged after the loop by model {in_service['model_id']} ({swap}; "
         "retrained on the original parts plus the confirmed good ones, promoted by cmdr promote into the running "
         "node when no worse and better on the held-out parts).")]
