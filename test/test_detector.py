"""The detector end to end with tiny random-init backbones on small synthetic parts."""
import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig, preset
from cmdr_ros.data.synthetic import CellConfig, render_part
from cmdr_ros.judge import is_reject
from cmdr_ros.model.checkpoint import (FORMAT_VERSION, content_checksum, load_checkpoint, read_checkpoint,
                                       save_checkpoint)
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector, masked_cosine_loss
from cmdr_ros.model.calibration import calibrate


def tiny_config(mode="rgbd", epochs=4):
    return ModelConfig(mode=mode, grid=16, rgb_size=32, backbone_2d=BackboneConfig("random_vit"),
                       backbone_3d=BackboneConfig("random_pointmae"), window=32, num_heads=2,
                       train=TrainConfig(epochs=epochs, seed=3))


@pytest.fixture(scope="module")
def parts():
    cfg = CellConfig(image_size=96, field_of_view=0.30)
    good = [render_part(np.random.default_rng(i), cfg, None) for i in range(5)]
    bad = render_part(np.random.default_rng(100), cfg, "missing_chunk")
    return good, bad


def _fit(mode, parts, epochs=4):
    good, _ = parts
    det = CMDRDetector(tiny_config(mode, epochs), device="cpu")
    hist = fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good], progress=False)
    return det, hist


@pytest.fixture(scope="module")
def rgbd(parts):
    return _fit("rgbd", parts, epochs=12)


def test_fit_lowers_every_head_loss(rgbd):
    det, hist = rgbd
    assert set(hist[0]) == {"rec2d", "rec3d", "map2to3", "map3to2", "skipped"}
    for head in ("rec2d", "rec3d", "map2to3", "map3to2"):
        assert hist[-1][head] < hist[0][head], head
    assert all(h["skipped"] == 0 for h in hist)


def test_predict_shapes_and_values(rgbd, parts):
    det, _ = rgbd
    bad = parts[1]
    pred = det.predict(bad.rgb, bad.xyz)
    assert pred.anomaly_map.shape == (96, 96) and pred.anomaly_map.dtype == np.float32
    assert pred.valid_mask.shape == (96, 96) and pred.valid_mask.dtype == bool
    assert pred.grid_map.shape == (16, 16)
    assert np.isfinite(pred.score) and pred.score > 0
    # the grid's map at the input resolution, unmasked: pixels without a measurement keep their smoothed score
    assert np.array_equal(pred.anomaly_map, det.prepare(bad.rgb, bad.xyz).frame.to_input(pred.pixel_map()))
    assert float(pred.anomaly_map[~pred.valid_mask].max()) > 0
    assert 0 < pred.valid_ratio < 1  # the background plane was removed
    assert pred.latency_ms > 0


def test_a_batch_gives_each_input_its_own_prediction(rgbd, parts):
    """predict_inputs runs the heads on a batch (a scan's chunks): every map and score is per input, as alone."""
    det, _ = rgbd
    good, bad = parts
    inputs = [det.prepare(p.rgb, p.xyz) for p in (good[0], bad, good[1])]
    batched = det.predict_inputs(inputs, batch_size=2)  # a full batch and a partial one
    for inp, b in zip(inputs, batched):
        a = det.predict_input(inp)
        assert b.score == pytest.approx(a.score, rel=1e-5)
        np.testing.assert_allclose(b.grid_map, a.grid_map, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-5, atol=1e-6)
        assert np.array_equal(b.grid_valid, a.grid_valid) and np.array_equal(b.valid_mask, a.valid_mask)
    assert len({b.score for b in batched}) == 3  # three inputs, three predictions (not one map thrice)


def test_checkpoint_round_trip(rgbd, parts, tmp_path):
    det, _ = rgbd
    good, bad = parts
    calibrate(det, [det.prepare(p.rgb, p.xyz) for p in good[:3]], progress=False)
    path = save_checkpoint(det, tmp_path / "m.ckpt")
    again = load_checkpoint(path, device="cpu")
    assert again.threshold == det.threshold and again.score_stats == det.score_stats
    assert again.model_id == det.model_id and again.config.to_dict() == det.config.to_dict()
    a, b = det.predict(bad.rgb, bad.xyz), again.predict(bad.rgb, bad.xyz)
    assert a.score == pytest.approx(b.score, rel=1e-5)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-6)


def test_calibration_rule(rgbd, parts):
    det, _ = rgbd
    inputs = [det.prepare(p.rgb, p.xyz) for p in parts[0]]
    thr = calibrate(det, inputs, progress=False)
    scores = np.array([det.predict_input(i).score for i in inputs])
    expected = max(scores.max(), scores.mean() + 3.0 * scores.std(ddof=1))
    assert thr == pytest.approx(expected, rel=1e-5)
    assert not any(is_reject(s, thr) for s in scores)


def test_checkpoint_errors(rgbd, parts, tmp_path):
    det, _ = rgbd
    if det.threshold is None:  # loading needs a calibrated threshold (run alone, the round trip did not calibrate)
        calibrate(det, [det.prepare(p.rgb, p.xyz) for p in parts[0][:3]], progress=False)
    path = save_checkpoint(det, tmp_path / "m.ckpt")
    with pytest.raises(CmdrError, match="trained for mode 'rgbd', cannot serve mode '3d'"):
        load_checkpoint(path, device="cpu", expected_mode="3d")
    ckpt = read_checkpoint(path)
    ckpt["format_version"] = FORMAT_VERSION + 1
    torch.save(ckpt, tmp_path / "future.ckpt")
    with pytest.raises(CmdrError, match="format version"):
        load_checkpoint(tmp_path / "future.ckpt", device="cpu")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CmdrError, match="not a readable cmdr_ros checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CmdrError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    ckpt = read_checkpoint(path)
    del ckpt["backbone_state"]["3d"]
    ckpt["checksum"] = content_checksum(ckpt)  # a consistent file, only without the backbone weights
    ckpt["model_id"] = ckpt["checksum"][:12]
    torch.save(ckpt, tmp_path / "nostate.ckpt")
    with pytest.raises(CmdrError, match="no stored weights"):
        load_checkpoint(tmp_path / "nostate.ckpt", device="cpu")


def test_bad_inputs_are_clear_errors(rgbd, parts):
    det, _ = rgbd
    good = parts[0][0]
    with pytest.raises(CmdrError, match="all-invalid"):
        det.predict(good.rgb, np.zeros_like(good.xyz))
    with pytest.raises(CmdrError, match="not pixel-aligned"):
        det.predict(good.rgb, good.xyz[:48])
    with pytest.raises(CmdrError, match="needs a point cloud"):
        det.predict(good.rgb, None)
    with pytest.raises(CmdrError, match="uint8"):
        det.predict(good.rgb.astype(np.float32), good.xyz)


def test_training_is_reproducible(parts):
    a, ha = _fit("3d", parts, epochs=2)
    b, hb = _fit("3d", parts, epochs=2)
    assert ha == hb
    for (k, va), vb in zip(a.heads.state_dict().items(), b.heads.state_dict().values()):
        assert torch.equal(va, vb), k


def test_2d_mode_needs_no_cloud(parts):
    good, bad = parts
    det = CMDRDetector(tiny_config("2d", 2), device="cpu")
    fit_detector(det, [det.prepare(p.rgb, None) for p in good[:3]], progress=False)
    pred = det.predict(bad.rgb, None)
    assert pred.valid_mask.all() and pred.anomaly_map.shape == (96, 96)
    assert det.backbone_3d is None and det.heads.head_names() == ["rec2d"]


def test_non_finite_loss_skips_the_step(parts):
    good, _ = parts
    det = CMDRDetector(tiny_config("3d", 1), device="cpu")
    inp = det.prepare(good[0].rgb, good[0].xyz)
    inp.xyz[inp.valid] = float("nan")  # poisoned features -> NaN loss
    before = {k: v.clone() for k, v in det.heads.state_dict().items()}
    hist = fit_detector(det, [inp], progress=False)
    assert hist[0]["skipped"] == 1
    for k, v in det.heads.state_dict().items():  # weights and BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k


def test_masked_loss_ignores_invalid_pixels():
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)
    # pixel 0: identical direction (loss 0); pixel 1: orthogonal (loss 1)
    assert masked_cosine_loss(pred, target, torch.tensor([[[True, True]]])).item() == pytest.approx(0.5)
    assert masked_cosine_loss(pred, target, torch.tensor([[[True, False]]])).item() == pytest.approx(0.0)


def test_pretrained_backbones_never_fall_back_to_random(tmp_path):
    cfg = preset("paper", "3d")
    with pytest.raises(CmdrError, match="pretrain.pth"):
        CMDRDetector(cfg, device="cpu")
    cfg.backbone_3d.weights = str(tmp_path / "pretrain.pth")
    with pytest.raises(CmdrError, match="not found"):
        CMDRDetector(cfg, device="cpu")
    cfg = preset("paper", "2d")
    cfg.backbone_2d.weights = str(tmp_path / "dino_vitbase8_pretrain.pth")
    with pytest.raises(CmdrError, match="dino_vitbase8_pretrain.pth"):
        CMDRDetector(cfg, device="cpu")


def test_image_score_mean_scores_a_frame_by_its_mean_valid_distance(parts):
    """image_score: the paper's normalised maximum (every preset, and checkpoints without the key) or the mean of
    the fused map over the valid pixels; frames only."""
    from cmdr_ros.model import fusion

    det, _ = _fit("3d", parts, epochs=2)
    frame = parts[1]
    paper = det.predict(frame.rgb, frame.xyz)
    assert paper.score == pytest.approx(float(fusion.image_score(torch.from_numpy(paper.grid_map))), rel=1e-6)
    det.config.image_score = "mean"
    mean = det.predict(frame.rgb, frame.xyz)
    np.testing.assert_array_equal(mean.grid_map, paper.grid_map)
    assert mean.score == pytest.approx(float(paper.grid_map[paper.grid_valid].mean()), rel=1e-6)
    assert mean.score != pytest.approx(paper.score)
    assert {preset(p, m).image_score for p in ("lite", "paper") for m in ("rgbd", "3d", "2d")} == {"max_normalized"}
    d = preset("lite", "3d").to_dict()
    d["image_score"] = "mean"
    assert ModelConfig.from_dict(d).image_score == "mean"
    del d["image_score"]
    assert ModelConfig.from_dict(d).image_score == "max_normalized"  # a checkpoint from before the setting
    with pytest.raises(CmdrError, match="unknown image_score"):
        ModelConfig(image_score="median")
    with pytest.raises(CmdrError, match="image_score is for frames"):
        ModelConfig(mode="3d", pipeline="chunks", grid=96, image_score="mean")


def test_max_steps_caps_the_epochs_of_large_classes(parts):
    """The step cap ends training with the epoch that reaches it; classes it does not reach train their epochs."""
    lite = preset("lite", "rgbd").train
    assert (lite.epochs, lite.max_steps) == (40, 6000)
    assert [lite.epochs_for(n) for n in (15, 150, 151, 200, 223)] == [40, 40, 40, 30, 27]
    assert TrainConfig(epochs=40, batch_size=4, max_steps=6000).epochs_for(223) == 40  # 56 steps an epoch
    assert TrainConfig(epochs=40).epochs_for(10_000) == 40  # no cap
    good, _ = parts
    cfg = tiny_config("3d", epochs=4)
    cfg.train.max_steps = 6  # 5 parts a step each: the second epoch reaches it
    det = CMDRDetector(cfg, device="cpu")
    inputs = [det.prepare(p.rgb, p.xyz) for p in good]
    assert len(fit_detector(det, inputs, progress=False)) == 2
    assert len(fit_detector(det, inputs, epochs=3, progress=False)) == 3  # an explicit count is the count
    for bad in (0, -5, 2.5, True):
        with pytest.raises(CmdrError, match="max_steps"):
            ModelConfig(train=TrainConfig(max_steps=bad))


def test_config_validation():
    with pytest.raises(CmdrError, match="multiple of 8"):
        ModelConfig(mode="3d", grid=20)
    with pytest.raises(CmdrError, match="unknown mode"):
        ModelConfig(mode="4d")
    with pytest.raises(CmdrError, match="unknown model config key"):
        ModelConfig.from_dict({"grdi": 4})
    cfg = preset("lite", "rgbd")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_fusion_at_a_larger_map_size(parts):
    """Distances computed on the 16x16 grid, fused at 32x32 (fusion_size): maps and masks at 32x32."""
    good, bad = parts
    cfg = tiny_config("3d", 1)
    cfg.fusion_size = 32
    det = CMDRDetector(cfg, device="cpu")
    fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good[:2]], progress=False)
    pred = det.predict(bad.rgb, bad.xyz)
    assert pred.grid_map.shape == (32, 32) and pred.grid_valid.shape == (32, 32)
    assert (pred.grid_map[~pred.grid_valid] >= 0).all() and np.isfinite(pred.score)
    assert pred.pro_map().shape == (32, 32) and pred.anomaly_map.shape == (96, 96)
    with pytest.raises(CmdrError, match="fusion_size"):
        ModelConfig(grid=16, fusion_size=8)
    # lite fuses rgbd's maps at 128x128 (measured better on real and simulated parts), 3d's on its 64x64 grid
    assert (preset("lite", "rgbd").map_size, preset("lite", "3d").map_size) == (128, 64)


def test_backbone_factory_passes_only_declared_arguments(tmp_path):
    from cmdr_ros.model.backbones import (BACKBONES, Backbone2D, Backbone3D, ColorTexture, RandomViT,
                                          build_backbone)

    # each registered backbone implements the extract interface of its modality
    for cls in BACKBONES.values():
        assert issubclass(cls, Backbone2D if cls.modality == "2d" else Backbone3D), cls
    with pytest.raises(TypeError):  # the interface is abstract: a backbone without extract cannot be built
        type("NoExtract", (Backbone2D,), {"to_grid": lambda self, native, grid: None})()
    # rgb_size goes to the backbones that declare it, a weights file only to those that take one (weights-free
    # backbones ignore it, as before); the config's options override rgb_size
    vit = build_backbone("random_vit", "2d", weights=str(tmp_path / "unused.pth"), rgb_size=32,
                         options={"embed_dim": 16, "depth": 1})
    assert isinstance(vit, RandomViT) and vit.out_dim == 16 and vit.model.patch_embed.img_size == (32, 32)
    vit = build_backbone("random_vit", "2d", rgb_size=32, options={"rgb_size": 16})
    assert vit.model.patch_embed.img_size == (16, 16)
    assert isinstance(build_backbone("color_texture", "2d", weights=str(tmp_path / "x.pth"), rgb_size=128),
                      ColorTexture)
    assert build_backbone("fpfh", "3d", weights=str(tmp_path / "x.pth"), options={"radii": [4.0]}).out_dim == 33
    with pytest.raises(CmdrError, match=r"bad options for backbone 'fpfh': unknown option\(s\) depth "
                                        r"\(it takes: extras, normal_radius, radii, viewpoint\)"):
        build_backbone("fpfh", "3d", options={"depth": 2})
    with pytest.raises(CmdrError, match="color_texture': unknown option.*it takes: no options"):
        build_backbone("color_texture", "2d", options={"rgb_size": 64})
    with pytest.raises(CmdrError, match="bad options for backbone 'random_pointmae'"):  # **kwargs: the encoder's
        build_backbone("random_pointmae", "3d", options={"colour": 1})
    with pytest.raises(CmdrError, match="weights file as the backbone's `weights`"):
        build_backbone("pointmae", "3d", options={"weights": "pretrain.pth"})
    with pytest.raises(CmdrError, match="is a 3D backbone, configured as 2D"):
        build_backbone("random_pointmae", "2d")
    with pytest.raises(CmdrError, match="'tiny_vit' has been renamed 'random_vit'"):
        build_backbone("tiny_vit", "2d")
    with pytest.raises(CmdrError, match="unknown backbone 'resnet'"):
        build_backbone("resnet", "2d")
