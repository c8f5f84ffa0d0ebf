"""Both pipeline kinds (organized frames, unorganized scans of a "chunks" model) through the one interface of
``cmdr_ros.pipelines``: chosen once from the config, then training data, calibration, prediction, judging, truth,
the metric sink and ``cmdr eval`` without asking which kind a part is."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cmdr_ros import CmdrError
from cmdr_ros.config import PIPELINES, ModelConfig, preset
from cmdr_ros.data.synthetic import CellConfig, generate_dataset
from cmdr_ros.judge import Judge, is_reject
from cmdr_ros.model.calibration import calibrate
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.pipelines import KINDS, FrameMetrics, ScanMetrics, pipeline_for
from node_harness import scan_dataset, scan_model_config


def test_the_kind_is_chosen_once_from_the_config():
    assert set(KINDS) == set(PIPELINES)
    assert pipeline_for(preset("lite", "rgbd")) is KINDS["frame"]
    assert pipeline_for(preset("lite3d", "3d")) is KINDS["chunks"] is pipeline_for(scan_model_config())
    assert pipeline_for(SimpleNamespace(config=SimpleNamespace(pipeline="chunks"))) is KINDS["chunks"]  # a detector
    assert pipeline_for(SimpleNamespace(threshold=1.0)) is KINDS["frame"]  # a double without a config: frames
    with pytest.raises(CmdrError, match="unknown pipeline 'rows'"):
        pipeline_for(SimpleNamespace(pipeline="rows"))
    assert isinstance(KINDS["frame"].metrics(), FrameMetrics) and isinstance(KINDS["chunks"].metrics(), ScanMetrics)


@pytest.fixture(scope="module", params=["frame", "chunks"])
def case(request, tmp_path_factory):
    """A detector of each kind (random heads) and a class folder of its kind: 2 training, 1 validation, 1 good and
    1 defective test part."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "frame":
        config: ModelConfig = preset("lite", "rgbd")
        data = generate_dataset(root, "block", n_train=2, n_val=1, n_test_good=1, n_test_per_defect=1,
                                cfg=CellConfig(image_size=64), defects=("bump",))
    else:
        config = scan_model_config(epochs=1)
        data = scan_dataset(root, n_train=2, n_val=1)
    return CMDRDetector(config, device="cpu"), data


def test_train_calibrate_predict_and_judge_through_one_interface(case):
    det, data = case
    kind = pipeline_for(det)
    training = kind.training_data(data, det, None, True, False)
    assert len(training.inputs) >= 2 and len(training.train) == 2 and len(training.validation) == 1
    assert training.summary["train_samples"] == 2 and training.summary["validation_samples"] == 1
    fit_detector(det, training.inputs, epochs=1, progress=False)
    scores = [kind.predict(det, s).score for s in kind.validation(data, det, None, True, False)]
    threshold = calibrate(det, training.validation, progress=False)
    assert det.score_stats["n"] == 1 and threshold == pytest.approx(max(scores))

    name, parts = kind.test_parts(data, det, None, True, False)
    parts = list(parts)
    assert [p.label for p in parts] == [0, 1] and [p.defect for p in parts] == ["good", "bump"]
    for part in parts:
        verdict = Judge(det).judge(*part.raw)  # the raw part, as the kind's checks take it
        assert verdict.judged and verdict.decision == ("reject" if is_reject(verdict.score, threshold) else "pass")
        pred = verdict.prediction
        assert np.isfinite(pred.anomaly_map).all() and 0 < pred.valid_ratio <= 1 and pred.valid_mask.any()
        assert kind.scores(pred).shape == pred.valid_mask.shape


def test_truth_and_metric_sink_of_both_kinds(case):
    det, data = case
    kind = pipeline_for(det)
    det.threshold = 1.0
    sink = kind.metrics()
    _, parts = kind.test_parts(data, det, None, True, False)
    for part in parts:
        pred = kind.predict(det, part.sample)
        assert kind.truth(pred, None, False, "here") is None  # a bag without a truth topic
        truth = kind.truth(pred, part.truth, True, "here")
        assert truth is not None and truth.shape == kind.scores(pred).shape
        with pytest.raises(CmdrError, match="at here"):
            kind.truth(pred, np.zeros((3, 3), bool), True, "here")
        sink.add(pred, part.label, part.defect, truth)
    summary = sink.summary()
    assert set(sink.keys) <= set(summary) and summary["n_good"] == summary["n_defect"] == 1
    assert summary["i_auroc"] in (0.0, 1.0) and summary["defects"]["bump"]["n"] == 1
    assert kind.metrics().summary() is None  # nothing added, nothing to report


def test_cmdr_eval_of_both_kinds_writes_the_kinds_files(case, tmp_path):
    from cmdr_ros.cli.evaluate import run_eval

    det, data = case
    kind = pipeline_for(det)
    det.threshold = 1.0
    report = run_eval(data, det, tmp_path, no_cache=True, progress=False)
    (name, metrics), = report["classes"].items()
    assert set(report["mean"]) == set(kind.metrics().keys) and metrics["n_good"] == metrics["n_defect"] == 1
    assert report["resolution"] == ("points" if kind.name == "chunks" else "model")
    saved = sorted(p.relative_to(tmp_path / kind.score_files).as_posix()
                   for p in (tmp_path / kind.score_files).rglob("*.*"))
    suffix = ".npy" if kind.name == "chunks" else ".tiff"
    assert saved == [f"{name}/test/bump/000{suffix}", f"{name}/test/good/000{suffix}"]
    assert len(list((tmp_path / "overlays" / name).glob("*.png"))) == 2 and (tmp_path / "roc.png").is_file()
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0].split(",")[:6] == ["class", "defect", "id", "label", "score", "reject"] and len(rows) == 3
    assert rows[0].endswith("points,chunks") == (kind.name == "chunks")
