"""``cmdr dataset from-review``: a class folder from the parts reviewers labelled, from their evidence: confirmed
good parts to train/validation (a share spread in time), confirmed defects to test, unsure and unusable parts left
out with the reason, every sample traceable to its decision; merged with an existing class folder on request; a
class of scans from the evidence of unorganized scans (trained and judged: test_learning_loop.py)."""
import json

import numpy as np
import pytest
from cli_harness import one_line_error
from review_harness import RUN, decision, make_store

from cmdr_ros.cli.main import main
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_mask, load_rgb, load_xyz, write_sample
from cmdr_ros.data.scans import ScanDataset, write_scan
from cmdr_ros.evidence import meta_of, part_folder, write_evidence
from cmdr_ros.review import labels, queries

# seq -> the latest label; 9 has no evidence, 10 kept an image and an unorganized cloud (Nx3), 11 a cloud of another
# size than its image
VERDICTS = {0: "good", 1: "good", 2: "good", 3: "good", 4: "good", 5: "good", 6: "defective", 7: "defective",
            8: "unsure", 9: "good", 10: "good", 11: "good"}


def frame(seq: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seq)
    return rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), rng.normal(0, 1, (24, 32, 3)).astype(np.float32)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.full_only)])
def store(request, tmp_path):
    """(the store's target, the evidence root) with the parts of ``VERDICTS`` labelled."""
    target = str(tmp_path / "audit.db") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    root = tmp_path / "evidence"
    rows = [decision(s, decision="reject" if s in (6, 7) else "pass") for s in range(13)]  # 12: not labelled
    for row in rows:
        if row["seq"] == 9:
            continue
        rgb, xyz = frame(row["seq"])
        if row["seq"] == 10:
            xyz = xyz.reshape(-1, 3)
        if row["seq"] == 11:
            xyz = xyz[:20]
        row["evidence"] = part_folder(row["node"], row["decided_at"], row["run_id"], row["seq"])
        write_evidence(root, row["evidence"], image=rgb, xyz=xyz, meta=meta_of(row))
    db = make_store(target, rows)
    for seq, label in VERDICTS.items():
        if seq == 2:  # first said defective, then good: the latest counts
            labels.add_label(db, queries.part(db, RUN, seq), "defective", "vera")
        labels.add_label(db, queries.part(db, RUN, seq), label, "rita")
    yield target, root
    db.close()


def test_a_class_folder_from_labelled_evidence(store, tmp_path, capsys):
    db, root = store
    out = tmp_path / "reviewed"
    assert main(["dataset", "from-review", "--db", db, "--evidence", str(root), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    # the 9 confirmed good parts in time order: 0-5, 9, 10, 11; a share of 0.2 picks the 5th (seq 4) for validation
    assert summary["samples"] == {"test/review": 2, "train/good": 5, "validation/good": 1}
    assert summary["labelled"] == 12 and summary["left_out"] == 4
    data = MVTec3DClass(out)
    assert [s.sample_id for s in data.samples("train")] == [f"review_{RUN}_{s:08d}" for s in (0, 1, 2, 3, 5)]
    assert [s.sample_id for s in data.samples("validation")] == [f"review_{RUN}_00000004"]
    test = data.samples("test")
    assert [(s.defect, s.label, s.sample_id) for s in test] == [("review", 1, f"review_{RUN}_{s:08d}") for s in (6, 7)]
    rgb, xyz = frame(6)
    assert np.array_equal(load_rgb(test[0].rgb_path), rgb) and np.array_equal(load_xyz(test[0].xyz_path), xyz)
    manifest = json.loads((out / "review_manifest.json").read_text())
    why = {p["seq"]: p["why"] for p in manifest["left_out"]}
    assert set(why) == {8, 9, 10, 11} and why[8] == "labelled unsure" and why[9] == "no evidence kept"
    assert "unorganized cloud" in why[10] and "differ" in why[11]
    first = manifest["parts"][0]
    assert (first["sample"], first["user"], first["label"]) == (f"train/good/review_{RUN}_00000000", "rita", "good")
    assert not (tmp_path / "reviewed.partial").exists()


def test_merged_with_an_existing_class_folder_and_refusals(store, tmp_path, capsys):
    db, root = store
    old = tmp_path / "old"
    rgb, xyz = frame(99)
    for split, defect in (("train", "good"), ("validation", "good"), ("test", "good"), ("test", "crack")):
        write_sample(old, split, defect, "000", rgb, xyz, np.zeros(rgb.shape[:2]) if split == "test" else None)
    out = tmp_path / "merged"
    args = ["dataset", "from-review", "--db", db, "--evidence", str(root), "--out", str(out), "--node", "/cell_a",
            "--since", "1800000000", "--until", "1800000300", "--validation", "0", "--merge", str(old)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == {"train/good": 5}  # seq 0-4 in the window
    data = MVTec3DClass(out)
    assert len(data.samples("train")) == 6 and len(data.samples("validation")) == 1
    assert {s.defect for s in data.samples("test")} == {"good", "crack"}
    assert len(MVTec3DClass(old).samples("train")) == 1  # the merged folder is copied, not changed
    assert "exists already" in one_line_error(capsys, args)
    held_out = [a if a != str(out) else str(tmp_path / "held_out") for a in args] + ["--holdout", "0.5"]
    assert main(held_out) == 0  # into a test/good whose parts have masks: the held-out good parts get all-zero ones
    capsys.readouterr()
    good = [s for s in MVTec3DClass(tmp_path / "held_out").samples("test") if s.defect == "good"]
    assert len(good) == 3 and all(s.gt_path is not None and not load_mask(s.gt_path).any() for s in good)
    masked_defect = [a if a != str(out) else str(tmp_path / "crack") for a in args] + ["--defect", "crack"]
    assert "holds masks" in one_line_error(capsys, masked_defect)
    assert "no labelled part" in one_line_error(capsys, ["dataset", "from-review", "--db", db, "--out",
                                                         str(tmp_path / "none"), "--node", "/cell_b"])
    elsewhere = [a if a != str(out) else str(tmp_path / "other") for a in args]
    assert "not a class folder" in one_line_error(capsys, elsewhere[:-1] + [str(tmp_path)])
    assert not (tmp_path / "other").exists() and not (tmp_path / "other.partial").exists()


def scan(seq: int, n: int = 500) -> np.ndarray:
    """A scan's points as its evidence keeps them: Nx3 in the sensor's order, every 7th unmeasured (NaN)."""
    pts = np.random.default_rng(seq).normal(size=(n, 3)).astype(np.float32)
    pts[::7] = np.nan
    return pts


def scan_store(tmp_path, labelled: dict[int, str], other: dict[int, dict] | None = None) -> tuple[str, object]:
    """(store, evidence root) of parts whose evidence is a scan (those in ``other``: the arrays given there),
    labelled as ``labelled`` says."""
    root = tmp_path / "evidence"
    rows = [decision(s, decision="pass" if label == "good" else "reject") for s, label in labelled.items()]
    for row in rows:
        row["evidence"] = part_folder(row["node"], row["decided_at"], row["run_id"], row["seq"])
        arrays = (other or {}).get(row["seq"], {"xyz": scan(row["seq"])})
        write_evidence(root, row["evidence"], meta=meta_of(row), **arrays)
    target = str(tmp_path / "audit.db")
    db = make_store(target, rows)
    for seq, label in labelled.items():
        labels.add_label(db, queries.part(db, RUN, seq), label, "rita")
    db.close()
    return target, root


def test_a_class_of_scans_from_the_evidence_of_scans(tmp_path, capsys):
    # 0-5 good, 6-7 defective, 8 unsure, 9 a frame among scans (left out: the folder is of scans, its first part's)
    labelled = {s: "good" for s in range(6)} | {6: "defective", 7: "defective", 8: "unsure", 9: "good"}
    db, root = scan_store(tmp_path, labelled, {9: dict(zip(("image", "xyz"), frame(9)))})
    out = tmp_path / "scans"
    assert main(["dataset", "from-review", "--db", db, "--evidence", str(root), "--out", str(out),
                 "--validation", "0.25", "--holdout", "0.2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    # 7 good parts in time order (0-5, 9): 0.2 (the 5th, seq 4) to test; of the other 6, 0.25 (the 4th, seq 3) to
    # validation; seq 9 is a frame: left out
    assert summary["kind"] == "scans" and summary["left_out"] == 2
    assert summary["samples"] == {"test/good": 1, "test/review": 2, "train/good": 4, "validation/good": 1}
    data = ScanDataset(out)
    assert ScanDataset.is_scan_folder(out)
    ids = {split: [(s.defect, s.sample_id) for s in data.scans(split)] for split in ("train", "validation", "test")}
    assert ids == {"train": [("good", f"review_{RUN}_{s:08d}") for s in (0, 1, 2, 5)],
                   "validation": [("good", f"review_{RUN}_00000003")],
                   "test": [("good", f"review_{RUN}_00000004")] + [("review", f"review_{RUN}_{s:08d}") for s in (6, 7)]}
    defect = data.scans("test")[1]
    points, truth = defect.load()
    finite = scan(6)[np.isfinite(scan(6)).all(1)]
    assert points.dtype == np.float32 and np.array_equal(points, finite)  # the measured points, in the sensor's order
    assert truth is None and defect.gt_path is None and defect.label == 1  # no point labels: the part's label alone
    good_points, good_truth = data.scans("test")[0].load()
    assert not good_truth.any() and len(good_truth) == len(good_points)
    why = {p["seq"]: p["why"] for p in json.loads((out / "review_manifest.json").read_text())["left_out"]}
    assert why == {8: "labelled unsure", 9: "a part of frames in a class folder of scans"}


def test_a_class_of_scans_merged_and_a_scan_without_measured_points(tmp_path, capsys):
    labelled = {0: "good", 1: "good", 2: "defective"}
    db, root = scan_store(tmp_path, labelled, {1: {"xyz": np.full((10, 3), np.nan, np.float32)}})
    old = tmp_path / "old"
    for split in ("train", "validation", "test"):
        write_scan(old, split, "good", "000", scan(99))
    out = tmp_path / "merged"
    assert main(["dataset", "from-review", "--db", db, "--evidence", str(root), "--out", str(out),
                 "--validation", "0", "--merge", str(old)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "scans" and summary["samples"] == {"test/review": 1, "train/good": 1}
    assert [s.sample_id for s in ScanDataset(out).scans("train")] == ["000", f"review_{RUN}_00000000"]
    why = json.loads((out / "review_manifest.json").read_text())["left_out"]
    assert [(p["seq"], p["why"]) for p in why] == [(1, "a scan without a measured point")]
    frames = tmp_path / "frames"  # a class of frames merged: the scans are left out
    rgb, xyz = frame(99)
    write_sample(frames, "train", "good", "000", rgb, xyz)
    assert "no labelled part with usable evidence" in one_line_error(capsys, [
        "dataset", "from-review", "--db", db, "--evidence", str(root), "--out", str(tmp_path / "f"), "--merge",
        str(frames)])
