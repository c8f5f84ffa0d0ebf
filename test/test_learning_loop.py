"""The learning loop (docs/review.md, "The learning loop"): ``cmdr dataset from-review`` turns labelled evidence into
a class folder, ``cmdr train`` trains on it, ``cmdr promote`` judges two models on its test split, refuses the worse
one (exit 1) or one of another mode, records every attempt, and puts a promoted model in service through a real
node's model swap over DDS.

The models compared are one trained model with two thresholds (saved as two checkpoints, two model ids): the same
I-AUROC, and miss and false-reject counts fixed by where each threshold sits among the test scores, so which one is
better does not depend on how well a 2-epoch model learned.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from review_harness import decision, make_store

from cmdr_ros.cli.main import main
from cmdr_ros.data.mvtec3d import MVTec3DClass
from cmdr_ros.data.synthetic import CellConfig, render_part
from cmdr_ros.evidence import meta_of, part_folder, write_evidence
from cmdr_ros.learning import promotion
from cmdr_ros.learning.from_review import MANIFEST, split_goods
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


def test_from_review_writes_the_class_folder_and_says_what_went_where(store, tmp_path, capsys):
    target, root = store
    out = tmp_path / "cls"
    rc, text, err = cmdr(capsys, "dataset", "from-review", "--db", target, "--out", out, "--holdout", "0.2")
    assert rc == 0, err
    m = json.loads((out / MANIFEST).read_text())
    data = MVTec3DClass(out)
    by_split = {s: [(x.defect, x.sample_id) for x in data.samples(s)] for s in ("train", "validation", "test")}
    goods = [p for p in m["parts"] if p["label"] == "good"]
    assert len(goods) == N_GOOD and sum(p["label"] == "defective" for p in m["parts"]) == N_BAD
    assert len([d for d, _ in by_split["test"] if d == "good"]) == 2  # 20 % of 10
    assert len(by_split["validation"]) == 2 and len(by_split["train"]) == 6  # 20 % of the other 8
    assert sorted(d for d, _ in by_split["test"] if d != "good") == ["confirmed"] * N_BAD
    seq0 = f"{m['parts'][0]['run_id']}-00000000"  # relabelled good
    assert any(sid == seq0 for s in ("train", "validation", "test") for d, sid in by_split[s] if d == "good")
    assert [s["seq"] for s in m["skipped"]["unsure"]] == [N_GOOD + N_BAD]
    [gone] = m["skipped"]["no_evidence"]
    assert gone["seq"] == N_GOOD + N_BAD + 1 and "meta.json" in gone["reason"]
    assert "1 no evidence" in text and "1 unsure" in text
    sample = data.samples("train")[0]
    assert sample.rgb_path.suffix == ".png" and sample.xyz_path.suffix == ".tiff" and sample.gt_path is None
    # the same inputs again: the same folder (it replaces its own output), a foreign folder is never replaced
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert cmdr(capsys, "dataset", "from-review", "--db", target, "--out", out)[0] == 0
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    rc, _, err = cmdr(capsys, "dataset", "from-review", "--db", target, "--out", foreign)
    assert rc == 2 and "not written by" in err and foreign.is_dir()


def test_from_review_merges_an_existing_class_folder(store, tmp_path, capsys):
    from cmdr_ros.data.synthetic import generate_dataset

    target, root = store
    existing = generate_dataset(tmp_path / "old", "block", n_train=2, n_val=1, n_test_good=1, n_test_per_defect=0,
                                cfg=CellConfig(image_size=64))
    out = tmp_path / "merged"
    assert cmdr(capsys, "dataset", "from-review", "--db", target, "--out", out, "--merge", existing)[0] == 0
    data = MVTec3DClass(out)
    ids = {s.sample_id for s in data.samples("train")}
    assert {s.sample_id for s in MVTec3DClass(existing).samples("train")} <= ids and len(ids) == 2 + 6


def test_from_review_errors_are_one_line(tmp_path, capsys):
    from cli_harness import one_line_error

    target = str(tmp_path / "audit.db")
    make_store(target, [decision(1)]).close()
    assert "no labelled parts" in one_line_error(capsys, ["dataset", "from-review", "--db", target, "--out",
                                                           str(tmp_path / "o")])
    assert "no audit database" in one_line_error(capsys, ["dataset", "from-review", "--db", str(tmp_path / "x.db"),
                                                           "--out", str(tmp_path / "o")])


@pytest.mark.full_only  # trains a model
def test_scans_make_a_scan_class_folder_that_trains_and_is_judged(tmp_path, capsys):
    """A "chunks" model's parts keep Nx3 evidence clouds: they become points/<id>.npy, a defect without gt/."""
    from node_harness import scan_model_config, scan_points

    from cmdr_ros.data.scans import ScanDataset
    from cmdr_ros.model.training import train_model

    root, rows = tmp_path / "evidence", []
    for seq in range(7):
        points, _ = scan_points(seq, "bump" if seq >= 5 else None)
        row = decision(seq)
        row.update(mode="3d", evidence=part_folder(row["node"], row["decided_at"], row["run_id"], seq), evidence_root=str(root))
        write_evidence(root, row["evidence"], xyz=points, meta=meta_of(row))
        rows.append(row)
    db = make_store(str(tmp_path / "audit.db"), rows)
    for row in rows:
        labels.add_label(db, row, "defective" if row["seq"] >= 5 else "good", "rita")
    db.close()
    out = tmp_path / "scans"
    assert cmdr(capsys, "dataset", "from-review", "--db", tmp_path / "audit.db", "--out", out)[0] == 0
    data = ScanDataset(out)
    assert ScanDataset.is_scan_folder(out) and len(data.scans("train")) == 3 and len(data.good_scans("test")) == 1
    defects = [s for s in data.scans("test") if s.label]
    assert [s.defect for s in defects] == ["confirmed"] * 2 and defects[0].load()[1] is None
    np.testing.assert_array_equal(defects[0].load()[0], scan_points(5, "bump")[0])
    ckpt = tmp_path / "scan.ckpt"
    train_model(out, scan_model_config(epochs=1), ckpt, device="cpu", no_cache=True, progress=False)
    from cmdr_ros.model.checkpoint import load_checkpoint

    det = load_checkpoint(ckpt, "cpu")
    current, new = promotion.compare([ckpt, ckpt], [det, det], str(out), tmp_path / "judged")
    assert (new.n_good, new.n_defect) == (1, 2) and current == new
    assert promotion.verdict(current, new) == (False, "the new model is no better on any figure")


def test_a_defect_without_mask_counts_in_the_image_metrics_only():
    from cmdr_ros.metrics import compute_metrics, metrics_by_defect

    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8), bool), np.zeros((8, 8), bool), np.eye(8, dtype=bool)]
    maps = [rng.random((8, 8)) for _ in range(3)] + [rng.random((8, 8))]
    labels_, scores = [0, 0, 1, 1], [0.1, 0.4, 0.9, 0.3]
    m = metrics_by_defect(masks + [None], maps, maps, labels_, scores, ["good", "good", "cut", "confirmed"])
    known = compute_metrics(masks, maps[:3], labels_[:3], scores[:3], maps[:3])
    assert m["p_auroc"] == known["p_auroc"] and m["aupro@0.3"] == known["aupro@0.3"]
    assert m["i_auroc"] == 0.75  # the maskless defect (0.3) ranks below one good part (0.4)
    assert m["defects"]["confirmed"]["i_auroc"] == 0.5 and np.isnan(m["defects"]["confirmed"]["p_auroc"])
    assert m["n_defect"] == 2


def test_split_of_the_good_parts_is_seeded_and_keeps_a_training_part():
    parts = list(range(5))
    a, b = split_goods(parts, 0.2, 0.2, seed=3), split_goods(parts, 0.2, 0.2, seed=3)
    assert a == b and sorted(sum(a.values(), [])) == parts
    assert [len(a[s]) for s in ("test", "validation", "train")] == [1, 1, 3]
    assert split_goods([7], 0.5, 0.5, 0) == {"test": [], "validation": [], "train": [7]}


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
    assert main(["dataset", "from-review", "--db", target, "--out", str(data)]) == 0
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
    assert m["n_defect"] == N_BAD and m["n_good"] == 2
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
