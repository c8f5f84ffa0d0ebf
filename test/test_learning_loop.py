"""The learning loop (docs/review.md, "The learning loop"): ``cmdr dataset from-review --holdout`` turns labelled
evidence into a class folder with good parts to judge (its other behaviour: test_review_dataset.py), ``cmdr train``
trains on it, ``cmdr promote`` judges two models on its test split, refuses the worse one (exit 1) or one of another
mode, records every attempt, and puts a promoted model in service through a real node's model swap over DDS.

The models compared are one trained model with two thresholds (saved as two checkpoints, two model ids): the same
I-AUROC, and miss and false-reject counts fixed by where each threshold sits among the test scores, so which one is
better does not depend on how well a 2-epoch model learned.
"""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from review_harness import RUN, decision, make_store

from cmdr_ros.cli.evaluate import run_eval
from cmdr_ros.cli.main import main
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_mask
from cmdr_ros.data.synthetic import CellConfig, render_part
from cmdr_ros.evidence import meta_of, part_folder, write_evidence
from cmdr_ros.learning import promotion
from cmdr_ros.review import labels
from cmdr_ros.review.db import ReviewDB

N_GOOD, N_BAD = 10, 4
DEFECTS = ("bump", "gouge", "missing_chunk", "tear")


def labelled_store(tmp: Path) -> tuple[str, Path]:
    """An audit store of 16 decided parts with rgbd evidence and labels: 10 good, 4 defective, 1 unsure, and 1
    labelled good whose evidence folder was deleted; the (store, evidence root)."""
    root, cfg = tmp / "evidence", CellConfig(image_size=64)
    rows = []
    for seq in range(N_GOOD + N_BAD + 2):
        bad = N_GOOD <= seq < N_GOOD + N_BAD
        frame = render_part(np.random.default_rng(seq), cfg, DEFECTS[seq - N_GOOD] if bad else None)
        row = decision(seq, decision="reject" if bad else "pass")
        row.update(evidence=part_folder(row["node"], row["decided_at"], row["run_id"], seq), evidence_root=str(root))
        write_evidence(root, row["evidence"], image=frame.rgb, xyz=frame.xyz, meta=meta_of(row))
        rows.append(row)
    shutil.rmtree(root / rows[-1]["evidence"])  # labelled, but its evidence is gone (retention)
    target = str(tmp / "audit.db")
    db = make_store(target, rows)
    try:
        for row in rows:
            seq = row["seq"]
            label = "defective" if N_GOOD <= seq < N_GOOD + N_BAD else "unsure" if seq == N_GOOD + N_BAD else "good"
            if seq == 0:
                labels.add_label(db, row, "defective", "rita")  # corrected: the latest label counts
            labels.add_label(db, row, label, "rita")
    finally:
        db.close()
    return target, root


def cmdr(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return labelled_store(tmp_path_factory.mktemp("store"))


def test_from_review_holds_good_parts_out_for_promotion(store, tmp_path, capsys):
    target, _ = store
    out = tmp_path / "cls"
    assert cmdr(capsys, "dataset", "from-review", "--db", target, "--out", out, "--holdout", "0.2")[0] == 0
    data = MVTec3DClass(out)
    count = {s: Counter(x.defect for x in data.samples(s)) for s in ("train", "validation", "test")}
    # 10 good parts in time order: 0.2 (the 5th, 10th) to test, of the other 8 0.2 (the 5th) to validation
    assert count == {"train": {"good": 7}, "validation": {"good": 1}, "test": {"good": 2, "review": N_BAD}}
    assert [s.sample_id for s in data.samples("test") if s.defect == "good"] == [
        f"review_{RUN}_{seq:08d}" for seq in (4, 9)]
    assert all(s.gt_path is None for s in data.samples("test") if s.defect == "review")  # reviewers draw no masks
    for s in data.samples("test"):  # a confirmed good part has no defect pixel
        assert s.defect == "review" or not load_mask(s.gt_path).any()


@pytest.mark.full_only  # trains a model
def test_two_chunks_models_are_judged_on_a_class_of_scans(tmp_path):
    from node_harness import scan_dataset, scan_model_config

    from cmdr_ros.model.checkpoint import load_checkpoint
    from cmdr_ros.model.training import train_model

    data = scan_dataset(tmp_path, n_test_good=1, n_test_per_defect=2)
    ckpt = tmp_path / "scan.ckpt"
    train_model(data, scan_model_config(epochs=1), ckpt, device="cpu", no_cache=True, progress=False)
    det = load_checkpoint(ckpt, "cpu")
    current, new = promotion.compare([ckpt, ckpt], [det, det], str(data), tmp_path / "judged", run_eval)
    assert (new.n_good, new.n_defect) == (1, 2) and current == new
    assert promotion.verdict(current, new) == (False, "the new model is no better on any figure")


@pytest.mark.full_only  # trains a model
def test_a_class_of_scans_from_review_is_trained_and_judged(tmp_path, capsys):
    """The evidence of scans (Nx3 in the sensor's order, unmeasured points NaN, as the node's writer keeps them),
    labelled, written by from-review as a class of scans, trained on (lite3d, 1 epoch) and judged by `cmdr eval`: the
    confirmed defects, without point labels, count in the part-level I-AUROC only."""
    from sklearn.metrics import roc_auc_score

    from cmdr_ros.data.synthetic import render_profilometer_cloud

    root, rows, kinds, measured = tmp_path / "evidence", [], [None] * 5 + ["bump", "tear"], []
    for seq, defect in enumerate(kinds):
        points, _ = render_profilometer_cloud(np.random.default_rng(seq), CellConfig(), defect, shuffle=False)
        points[::40] = np.nan  # the sensor measured no return there
        measured.append(len(points) - len(points[::40]))
        row = decision(seq, decision="reject" if defect else "pass")
        row.update(evidence=part_folder(row["node"], row["decided_at"], row["run_id"], seq), evidence_root=str(root),
                   mode="3d")
        write_evidence(root, row["evidence"], xyz=points, meta=meta_of(row))
        rows.append(row)
    db = make_store(str(tmp_path / "audit.db"), rows)
    try:
        for row, defect in zip(rows, kinds):
            labels.add_label(db, row, "defective" if defect else "good", "rita")
    finally:
        db.close()
    data, ckpt, report = tmp_path / "scans", tmp_path / "scans.ckpt", tmp_path / "eval"
    rc, out, err = cmdr(capsys, "dataset", "from-review", "--db", tmp_path / "audit.db", "--out", data,
                        "--validation", "0.25", "--holdout", "0.2")
    # 5 good parts: 0.2 (the 5th) to test, of the other 4 0.25 (the 4th) to validation, 3 to train
    assert rc == 0 and json.loads(out)["samples"] == {"test/good": 1, "test/review": 2, "train/good": 3,
                                                      "validation/good": 1}, err
    assert cmdr(capsys, "train", "--preset", "lite3d", "--data", data, "--epochs", "1", "--out", ckpt, "--device",
                "cpu", "--quiet")[0] == 0
    assert cmdr(capsys, "eval", "--data", data, "--checkpoint", ckpt, "--out", report, "--no-images", "--device",
                "cpu", "--quiet")[0] == 0
    m = json.loads((report / "metrics.json").read_text())["classes"]["scans"]
    with open(report / "scores.csv") as f:
        scored = list(csv.DictReader(f))
    assert (m["n_good"], m["n_defect"], set(m["defects"])) == (1, 2, {"review"})
    assert m["i_auroc"] == pytest.approx(roc_auc_score([int(r["label"]) for r in scored],
                                                       [float(r["score"]) for r in scored]))
    assert np.isnan(m["p_auroc"]) and np.isnan(m["chunk_i_auroc"])  # no defective point known: nothing to rank
    # each judged on its measured points: the points the node chunked and scored
    assert {r["id"]: int(r["points"]) for r in scored} == {f"review_{RUN}_{s:08d}": measured[s] for s in (4, 5, 6)}


def test_a_defect_without_mask_counts_in_the_image_metrics_only():
    from types import SimpleNamespace

    from cmdr_ros.metrics import compute_metrics
    from cmdr_ros.pipelines import FrameMetrics

    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8), bool), np.zeros((8, 8), bool), np.eye(8, dtype=bool)]
    maps = [rng.random((8, 8)).astype(np.float32) for _ in range(4)]
    labels_, scores = [0, 0, 1, 1], [0.1, 0.4, 0.9, 0.3]
    sink = FrameMetrics("full")  # each frame at its own resolution: the maps are the frames' own
    for amap, label, score, defect, mask in zip(maps, labels_, scores, ["good", "good", "cut", "confirmed"],
                                                masks + [None]):
        sink.add(SimpleNamespace(anomaly_map=amap, pro_map=lambda a=amap: a, score=score), label, defect, mask)
    m = sink.summary()
    known = compute_metrics(masks, maps[:3], labels_[:3], scores[:3], maps[:3])
    assert m["p_auroc"] == known["p_auroc"] and m["aupro@0.3"] == known["aupro@0.3"]
    assert m["i_auroc"] == 0.75  # the maskless defect (0.3) ranks below one good part (0.4)
    assert m["defects"]["confirmed"]["i_auroc"] == 0.5 and np.isnan(m["defects"]["confirmed"]["p_auroc"])
    assert m["n_defect"] == 2


def test_the_rule_needs_no_worse_on_all_and_better_on_one():
    def f(auroc, fr, miss):
        return promotion.Figures("m", "c", 1.0, auroc, fr, miss, 5, 5)

    assert promotion.verdict(f(0.9, 1, 1), f(0.9, 1, 0))[0]
    assert promotion.verdict(f(0.9, 1, 1), f(0.95, 1, 1))[0]
    ok, why = promotion.verdict(f(0.9, 1, 1), f(0.9, 1, 1))
    assert not ok and "no better" in why
    ok, why = promotion.verdict(f(0.9, 1, 1), f(0.99, 2, 0))
    assert not ok and "false_rejects 2 vs 1" in why
    ok, why = promotion.verdict(f(0.9, 1, 1), f(float("nan"), 0, 0))
    assert not ok and "no I-AUROC" in why


def test_the_dashboard_shows_the_promotions(tmp_path):
    from fastapi.testclient import TestClient
    from review_harness import login

    from cmdr_ros.review.app import create_app

    db = make_store(str(tmp_path / "audit.db"), [decision(1)])
    try:
        client = TestClient(create_app(db, None))
        assert login(client, "vera").status_code == 200
        assert "Model promotions" not in client.get("/dashboard").text
        old, new = (promotion.Figures(m, f"/m/{m}.ckpt", 1.0, 0.9, 1, miss, 5, 4)
                    for m, miss in (("aaa", 2), ("bbb", 1)))
        promotion.record(db, user="pat", outcome="promoted", reason="better on misses", node="/cell_a",
                         node_answer="", models={"current": ("aaa", "/m/a"), "new": ("bbb", "/m/b")},
                         figures=(old, new), data="/d")
        promotion.record(db, user="al", outcome="refused", reason="not comparable: ...", node="", node_answer="",
                         models={"current": ("aaa", "/m/a"), "new": ("ccc", "/m/c")}, figures=None, data="/d")
        page = client.get("/dashboard").text
        assert "Model promotions" in page and "aaa → bbb" in page and "2 → 1 of 4" in page and "pat" in page
        assert "aaa → ccc" in page and "not judged" in page
    finally:
        db.close()


# ------------------------------------------------------------------------------ train on it, then promote
@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """The class folder of the store, a lite rgbd model trained on it with `cmdr train`, and two copies of it:
    ``loose`` (threshold above every test score: passes every part) and ``tight`` (threshold just above the good
    test parts: passes them, rejects the defects that score higher)."""
    from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint

    target, _ = store
    tmp = tmp_path_factory.mktemp("trained")
    data = tmp / "cls"
    assert main(["dataset", "from-review", "--db", target, "--out", str(data), "--holdout", "0.2"]) == 0
    ckpt = tmp / "model.ckpt"
    assert main(["train", "--data", str(data), "--preset", "lite", "--mode", "rgbd", "--epochs", "2", "--out",
                 str(ckpt), "--device", "cpu", "--no-cache", "--quiet"]) == 0
    assert main(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(tmp / "eval"), "--no-images",
                 "--device", "cpu", "--no-cache", "--quiet"]) == 0
    with open(tmp / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    good = max(float(r["score"]) for r in rows if r["label"] == "0")
    bad = sorted(float(r["score"]) for r in rows if r["label"] == "1")
    assert bad[-1] > good, f"no defect scores above the good parts ({bad} vs {good}): the models cannot differ"
    above = min(s for s in bad if s > good)
    det = load_checkpoint(ckpt, "cpu")
    paths = {}
    for name, thr in (("loose", bad[-1] + 1.0), ("tight", (good + above) / 2)):
        det.threshold = thr
        paths[name] = save_checkpoint(det, tmp / f"{name}.ckpt")
    return {"data": data, "db": target, "tmp": tmp, "misses_tight": sum(s < above for s in bad), **paths}


def promotions(target: str) -> list[dict]:
    db = ReviewDB(target)
    try:
        return promotion.history(db)
    finally:
        db.close()


@pytest.mark.full_only  # trains a model
def test_a_better_model_is_promoted_and_a_worse_one_refused_both_recorded(trained, capsys):
    common = ["--data", trained["data"], "--db", trained["db"], "--device", "cpu", "--no-cache", "--quiet"]
    rc, out, err = cmdr(capsys, "promote", trained["tight"], "--current", trained["loose"], "--user", "pat", *common)
    assert rc == 0, err + out
    assert "PROMOTED" in out and "misses" in out and "current" in out
    rc, out, err = cmdr(capsys, "promote", trained["loose"], "--current", trained["tight"], *common)
    assert rc == 1, err + out
    assert "REFUSED: the new model is worse: misses" in out and "false_rejects" in out  # the table is printed
    refused, promoted = promotions(trained["db"])[:2]
    assert (promoted["outcome"], promoted["user"], refused["outcome"]) == ("promoted", "pat", "refused")
    assert refused["user"] == promotion.default_user()
    figures = promoted["figures"]
    assert figures["new"]["misses"] == trained["misses_tight"] < figures["current"]["misses"] == N_BAD
    assert figures["new"]["false_rejects"] == figures["current"]["false_rejects"] == 0
    assert figures["new"]["i_auroc"] == figures["current"]["i_auroc"]
    assert promoted["new_checkpoint"] == str(Path(trained["tight"]).resolve())
    assert promoted["new_model_id"] != promoted["current_model_id"] and promoted["node"] == ""


@pytest.mark.full_only  # trains a model
def test_a_model_of_another_mode_is_refused(trained, capsys):
    other = trained["tmp"] / "other.ckpt"
    assert main(["train", "--data", str(trained["data"]), "--preset", "lite", "--mode", "2d", "--epochs", "1",
                 "--out", str(other), "--device", "cpu", "--no-cache", "--quiet"]) == 0
    capsys.readouterr()
    rc, out, err = cmdr(capsys, "promote", other, "--current", trained["loose"], "--data", trained["data"],
                        "--db", trained["db"], "--device", "cpu", "--no-cache", "--quiet")
    assert rc == 1, err + out
    assert "REFUSED: not comparable: the new model serves mode '2d', the current one mode 'rgbd'" in out
    latest = promotions(trained["db"])[0]
    assert (latest["outcome"], latest["figures"], latest["new_checkpoint"]) == ("refused", {}, str(other))


@pytest.mark.full_only  # trains a model
def test_cmdr_eval_judges_the_maskless_defects_at_the_image_level(trained):
    from sklearn.metrics import roc_auc_score

    report = json.loads((trained["tmp"] / "eval" / "metrics.json").read_text())
    m = report["classes"]["cls"]
    with open(trained["tmp"] / "eval" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert m["n_defect"] == N_BAD and m["n_good"] == 2 and set(m["defects"]) == {"review"}
    assert m["i_auroc"] == pytest.approx(roc_auc_score([int(r["label"]) for r in rows],
                                                       [float(r["score"]) for r in rows]))
    assert np.isnan(m["p_auroc"])  # only the good parts have masks: no defect pixel to rank


# ------------------------------------------------------------------------------ over DDS: the node's model swap
@pytest.mark.slow
def test_promote_puts_the_model_in_service_through_the_node(trained, ros, capsys, monkeypatch):
    from node_harness import start_node

    monkeypatch.setenv("ROS_DOMAIN_ID", str(ros.domain_id))  # where cmdr promote looks for the node
    tmp = trained["tmp"] / "node"
    tmp.mkdir()
    gen = start_node(ros, tmp, {"checkpoint": trained["loose"], "audit.database": tmp / "audit.db"},
                     (ros.image_pub, ros.points_pub))
    next(gen)
    try:
        rc, out, err = cmdr(capsys, "promote", trained["tight"], "--current", trained["loose"], "--data",
                            trained["data"], "--db", trained["db"], "--node", "/cmdr_inspection", "--device", "cpu",
                            "--no-cache", "--quiet")
        assert rc == 0, err + out
        latest = promotions(trained["db"])[0]
        assert (latest["outcome"], latest["node"], latest["node_answer"]) == ("promoted", "/cmdr_inspection",
                                                                              "in service")
        new_id = latest["new_model_id"]
        assert f"node /cmdr_inspection: model {new_id} in service" in out
        ros.diagnostics(lambda v: v.get("model_id") == new_id, f"model_id {new_id} on /diagnostics")
    finally:
        gen.close()
    # promoted by the figures, but no node answers: exit 4, recorded as such
    rc, out, err = cmdr(capsys, "promote", trained["tight"], "--current", trained["loose"], "--data", trained["data"],
                        "--db", trained["db"], "--node", "/no_such_node", "--swap-timeout", "3", "--device", "cpu",
                        "--no-cache", "--quiet")
    assert rc == 4, err + out
    latest = promotions(trained["db"])[0]
    assert latest["outcome"] == "swap_failed" and "no service /no_such_node/set_parameters" in latest["node_answer"]
