"""The paper's 3D-only cutting-cell pipeline (presets paper3d / lite3d, pipeline "chunks"): the preset's layout, the
9216-sequence decoder's parameter count, Point-MAE's 96 groups of 32 points, per-point scores in input order, the
fail-safe on bad scans, and train / eval / predict / calibrate through the CLI on simulated profilometer scans."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.cli.main import main
from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig, preset
from cmdr_ros.data.model_input import prepare_chunk
from cmdr_ros.data.scans import chunk_scan
from cmdr_ros.data.synthetic import generate_scan_dataset
from cmdr_ros.judge import Judge
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.model.heads import CMDRHeads
from cmdr_ros.model.pointmae import PointMAEEncoder
from cmdr_ros.model.calibration import calibrate
from cmdr_ros.model.scan import scan_inputs


def test_paper3d_preset_is_the_reference_layout():
    cfg = preset("paper3d", "3d")
    assert (cfg.mode, cfg.pipeline, cfg.grid, cfg.chunk_points) == ("3d", "chunks", 96, 9216)
    assert cfg.backbone_3d.name == "pointmae" and cfg.backbone_3d.bn == "frame"
    assert cfg.backbone_3d.options == {"num_group": 96, "group_size": 32}
    assert (cfg.train.optimizer, cfg.train.batch_size, cfg.train.stop_on_nonfinite) == ("adamw", 4, True)
    assert cfg.pixel_norm == "sqrt_nonzero"
    assert not (cfg.preprocess.remove_plane or cfg.preprocess.keep_largest_cluster)
    lite = preset("lite3d", "3d")
    assert (lite.pipeline, lite.grid, lite.backbone_3d.name) == ("chunks", 96, "fpfh")
    with pytest.raises(CmdrError, match="3D-only"):
        preset("paper3d", "rgbd")
    with pytest.raises(CmdrError, match="3D only"):
        ModelConfig(mode="rgbd", pipeline="chunks")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_decoder_on_the_9216_sequence_has_the_reference_parameter_count():
    heads = CMDRHeads("3d", None, 1152, 96)
    assert heads.head_names() == ["rec3d"]
    assert sum(p.numel() for p in heads.rec3d.parameters()) == 9_435_088  # FeatureDecoder_9216 (PAPER_NOTES)


def test_pointmae_groups_a_chunk_into_96_groups_of_32_points():
    enc = PointMAEEncoder(trans_dim=48, depth=1, num_heads=3, num_group=96, group_size=32, encoder_dims=48,
                          fetch_idx=(0,))
    chunk = torch.from_numpy(chunk_scan(np.random.default_rng(0).normal(size=(9216, 3))).points[0])
    neighborhood, center = enc.group_divider(chunk[None])
    assert center.shape == (1, 96, 3) and neighborhood.shape == (1, 96, 32, 3)


def small(epochs: int = 2) -> ModelConfig:
    """A "chunks" model on 16 x 16 = 256-point chunks (the paper's 96 x 96 layout, smaller)."""
    return ModelConfig(mode="3d", pipeline="chunks", grid=16, pixel_norm="sqrt_nonzero",
                       backbone_3d=BackboneConfig("random_pointmae", options={"num_group": 16, "group_size": 8}),
                       train=TrainConfig(epochs=epochs, batch_size=4, optimizer="adamw", seed=1))


def surface(seed: int, n: int = 700, bump: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A scanned plate in line order (and its per-point labels): a bump on a defective one."""
    rng = np.random.default_rng(seed)
    y, x = np.divmod(np.arange(n), 35)
    pts = np.stack([x * 1e-3, y * 1.5e-3, 1e-4 * rng.standard_normal(n)], 1)
    label = np.zeros(n, bool)
    if bump:
        d2 = (x - 17) ** 2 + (y - 10) ** 2
        label = d2 < 9
        pts[label, 2] += 3e-3
    return pts.astype(np.float32), label


@pytest.fixture(scope="module")
def fitted():
    det = CMDRDetector(small(), device="cpu")
    fit_detector(det, scan_inputs([surface(s)[0] for s in range(3)], det), progress=False)
    calibrate(det, [surface(10)[0], surface(11)[0]], progress=False)
    return det


def test_a_scan_model_is_calibrated_on_part_scores(fitted):
    parts = [fitted.predict_scan(surface(s)[0]).score for s in (10, 11)]  # each: its maximum chunk score
    st = fitted.score_stats
    assert st["n"] == 2 and st["max"] == pytest.approx(max(parts)) and st["mean"] == pytest.approx(np.mean(parts))
    assert fitted.threshold == pytest.approx(max(max(parts), np.mean(parts) + st["sigma"] * np.std(parts, ddof=1)))
    with pytest.raises(CmdrError, match="a scan must be Nx3 points"):  # chunks are no parts
        calibrate(fitted, scan_inputs([surface(10)[0]], fitted), progress=False)


def test_point_scores_come_back_in_input_order(fitted):
    points, _ = surface(20, bump=True)
    pred = fitted.predict_scan(points)
    assert pred.point_scores.shape == (len(points),) and len(pred.chunks) == 3  # 256 + 256 + tail
    # each chunk alone gives the scan's scores of its points (within float reordering, when batched on CUDA)
    first = fitted.predict_input(prepare_chunk(pred.chunks.points[0], fitted.config))
    same = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.point_scores[:256], first.pixel_map().reshape(-1), **same)  # chunk 0: points 0..255
    assert pred.score == pytest.approx(float(pred.chunk_scores.max()))
    assert pred.chunk_scores[0] == pytest.approx(float(first.pixel_map().max()), rel=1e-5)
    tail = fitted.predict_input(prepare_chunk(pred.chunks.points[2], fitted.config)).pixel_map().reshape(-1)
    np.testing.assert_allclose(pred.point_scores[512:], tail[-(700 - 512):], **same)  # only in the tail chunk


def test_unmeasured_points_get_no_score_and_the_part_is_still_judged(fitted):
    points, _ = surface(21)
    points[::50] = np.nan  # a profilometer's 'no return'
    verdict = Judge(fitted).judge(points)
    assert verdict.judged and verdict.coverage == pytest.approx(1 - 14 / 700)
    scores = verdict.prediction.point_scores
    assert np.isnan(scores[::50]).all() and np.isfinite(np.delete(scores, np.s_[::50])).all()


@pytest.mark.parametrize("points, kind", [(np.zeros((100, 3), np.float32), "bad_input"),
                                          (np.full((700, 3), np.nan, np.float32), "degraded"),
                                          (np.full((700, 3), 50.0, np.float32), "implausible")])
def test_bad_scans_get_the_fail_safe_decision(fitted, points, kind):
    verdict = Judge(fitted).judge(points)
    assert not verdict.judged and verdict.kind == kind and verdict.decision == "reject"


def test_a_chunks_model_refuses_an_organized_frame(fitted):
    with pytest.raises(CmdrError, match="unorganized scans"):
        fitted.predict(None, np.zeros((16, 16, 3), np.float32))


def test_nonfinite_loss_ends_training_when_asked():
    cfg = small(epochs=3)
    cfg.train.stop_on_nonfinite = True
    det = CMDRDetector(cfg, device="cpu")
    inputs = scan_inputs([surface(s)[0] for s in range(2)], det)
    with torch.no_grad():
        det.heads.rec3d.seq_proj[0].weight.fill_(float("nan"))
    history = fit_detector(det, inputs, progress=False)
    assert len(history) == 1 and history[0]["skipped"] == 1  # stopped at the first batch's loss
    cfg.train.stop_on_nonfinite = False
    det = CMDRDetector(cfg, device="cpu")
    with torch.no_grad():
        det.heads.rec3d.seq_proj[0].weight.fill_(float("nan"))
    assert len(fit_detector(det, inputs, progress=False)) == 3  # skipped, not stopped


def test_lite3d_train_eval_predict_calibrate_cli(tmp_path, capsys):
    data = generate_scan_dataset(tmp_path / "data", n_train=2, n_val=1, n_test_good=1, n_test_per_defect=1,
                                 defects=("bump",))
    ckpt = tmp_path / "lite3d.ckpt"
    assert main(["train", "--preset", "lite3d", "--data", str(data), "--epochs", "1", "--out", str(ckpt),
                 "--device", "cpu", "--quiet"]) == 0
    report = tmp_path / "eval"
    assert main(["eval", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(report), "--device", "cpu",
                 "--quiet"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    m = metrics["classes"]["foam_block_scans"]
    assert set(m) >= {"i_auroc", "chunk_i_auroc", "p_auroc"} and 0 <= m["p_auroc"] <= 1
    scores = np.load(report / "point_scores/foam_block_scans/test/bump/000.npy")
    scan = np.load(data / "test/bump/points/000.npy")
    assert scores.shape == (len(scan),) and np.isfinite(scores).all()
    assert (report / "overlays/foam_block_scans/bump_000.png").is_file()
    assert "chunk_i_auroc" in capsys.readouterr().out
    out = tmp_path / "predict"
    rc = main(["predict", "--checkpoint", str(ckpt), "--scan", str(data / "test/bump/points/000.npy"),
               "--out", str(out), "--device", "cpu"])
    result = json.loads((out / "result.json").read_text())
    assert rc == 0 and result["judged"] and result["chunks"] == len(result["chunk_scores"]) == 6
    np.testing.assert_allclose(np.load(out / "point_scores.npy"), scores, rtol=1e-5)
    assert main(["calibrate", "--data", str(data), "--checkpoint", str(ckpt), "--sigma", "0", "--device", "cpu",
                 "--quiet"]) == 0
    assert main(["predict", "--checkpoint", str(ckpt), "--xyz", "x.tiff", "--out", str(out), "--device", "cpu"]) == 2
    assert "give --scan" in capsys.readouterr().err


def test_chunk_score_mean_is_the_chunks_mean_distance(fitted):
    points, _ = surface(22, bump=True)
    reference = fitted.predict_scan(points)
    fitted.config.chunk_score = "mean"
    try:
        pred = fitted.predict_scan(points)
        first = fitted.predict_input(prepare_chunk(pred.chunks.points[0], fitted.config))
    finally:
        fitted.config.chunk_score = "max_normalized"
    assert pred.chunk_scores[0] == pytest.approx(float(first.grid_map.mean()))
    assert pred.score == pytest.approx(float(pred.chunk_scores.max()))
    np.testing.assert_array_equal(pred.point_scores, reference.point_scores)  # point scores do not change
    assert preset("lite3d", "3d").chunk_score == "mean" and preset("paper3d", "3d").chunk_score == "max_normalized"
    d = preset("lite3d", "3d").to_dict()
    del d["chunk_score"]
    assert ModelConfig.from_dict(d).chunk_score == "max_normalized"  # a checkpoint from before the setting
    with pytest.raises(CmdrError, match="unknown chunk_score"):
        ModelConfig(mode="3d", pipeline="chunks", grid=16, chunk_score="median")
