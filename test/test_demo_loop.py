"""The demo's learning loop (``cmdr_ros/cli/demo_loop.py``) end to end on a small cell: a real node judges a batch of
a new material with evidence, every reject is labelled as the part truly was, the labelled evidence becomes a class
folder merged with the original, a model is trained on it, ``cmdr promote`` judges it and (when promoted) swaps it into
the running node over DDS, and the second batch is judged by the model in service.

Whether the retrained model is promoted depends on how a 2-epoch model learned: the test asserts what must hold
either way, and that the outcome, the store and the node agree."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from cmdr_ros.cli.demo_loop import NEW_MATERIAL, REVIEWER, run_loop
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.learning import promotion
from cmdr_ros.review.db import ReviewDB
from node_harness import CELL_SIZE, new_domain, train_cell_model

pytestmark = pytest.mark.slow


def test_the_loop_reviews_retrains_promotes_and_judges_the_next_batch(tmp_path, monkeypatch, capsys):
    from cmdr_ros.config import preset
    from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
    from cmdr_ros.model.training import train_model

    monkeypatch.setenv("ROS_DOMAIN_ID", str(new_domain()))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    trained_once = train_cell_model(tmp_path / "data", "rgbd", tmp_path / "rgbd.ckpt")
    # a 2-epoch model on 64-pixel parts does not tell the new material apart: in service at threshold 0 it rejects
    # every part, so the first batch's good parts are false rejects to review, as the demo's are
    det = load_checkpoint(trained_once["checkpoint"], "cpu")
    det.threshold = 0.0
    ckpt = save_checkpoint(det, tmp_path / "strict.ckpt")
    current = {"checkpoint": str(ckpt), "threshold": 0.0, "model_id": load_checkpoint(ckpt, "cpu").model_id}
    trained = []

    def train(data, checkpoint):
        config = preset("lite", "rgbd")
        config.train.epochs = 2
        trained.append(data)
        return train_model(data, config, checkpoint, device="cpu", no_cache=True, progress=False)

    (tmp_path / "report" / "heatmaps").mkdir(parents=True)
    args = argparse.Namespace(seed=3, device="cpu")
    material = dataclasses.replace(NEW_MATERIAL, image_size=CELL_SIZE)
    before, after = run_loop(tmp_path, tmp_path / "data" / "block", current, args, train, material, batch=(4, 1))
    out = capsys.readouterr().out

    rows1, rows2 = before[2], after[2]
    assert len(rows1) == len(rows2) == 4 + 6 and all(r.score == r.score for r in rows1 + rows2)  # every part judged
    assert all(r.reject for r in rows1)
    db = ReviewDB(str(tmp_path / "loop" / "audit.db"))
    try:
        first = db.rows("SELECT run_id, seq, decision FROM decisions ORDER BY id LIMIT 10")
        rejects = [(r, s) for r, s, d in first if d == "reject"]
        got = db.rows('SELECT run_id, seq, label, "user" FROM labels ORDER BY id')
        attempts = promotion.history(db)
    finally:
        db.close()
    # every reject of the first batch, and only those, labelled as the part truly was
    assert sorted((r, s) for r, s, _, _ in got) == sorted(rejects) and {u for *_, u in got} == {REVIEWER}
    truth = {r.part: r.truth for r in rows1}
    assert sorted(label for *_, label, _ in got) == sorted(
        "defective" if truth[r.part] else "good" for r in rows1 if r.reject)
    # the model was trained on the original parts plus the confirmed good ones (some held out to judge it)
    reviewed, = trained
    data = MVTec3DClass(reviewed)
    good = [s for split in ("train", "validation", "test") for s in data.samples(split) if s.defect == "good"]
    assert sum(s.sample_id.startswith("review_") for s in good) == sum(label == "good" for *_, label, _ in got)
    assert sum(not s.sample_id.startswith("review_") for s in data.samples("train")) == 4  # train_cell_model's
    # one promotion attempt recorded; the second batch judged by the model that was then in service
    attempt, = attempts
    assert attempt["current_model_id"] == current["model_id"] and attempt["user"] == REVIEWER
    in_service = attempt["new_model_id"] if attempt["outcome"] == "promoted" else current["model_id"]
    assert attempt["outcome"] in ("promoted", "refused"), attempt
    judged = attempt["figures"]["new"]  # on the held-out good part and the confirmed defects
    assert (judged["n_good"], judged["n_defect"]) == (1, 6) and attempt["figures"]["current"]["false_rejects"] == 1
    assert f"judged by model {in_service}" in out
    assert "false reject rate on the new material: before the loop" in out and "warning" not in out
