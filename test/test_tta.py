"""``score_tta``: test-time transforms of a frame (``cmdr_ros.model.tta``) averaged into the image score, the pixel
scores left the frame's own."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import TTA_TRANSFORMS, BackboneConfig, ModelConfig, preset
from cmdr_ros.model import fusion, tta
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from test_detector import parts, tiny_config  # noqa: F401  (parts: the module fixture of rendered parts)


def _fused(det: CMDRDetector, inp) -> torch.Tensor:
    feats = det.grid_features([det.extract(inp)], inp.valid[None])
    valid = feats.pop("valid")
    return det.anomaly_maps(feats, valid)["fused"]


def test_each_transform_is_its_own_inverse_and_moves_pixels_and_cloud_together(parts):
    det = CMDRDetector(dataclasses.replace(tiny_config(), xyz_size=32), device="cpu")
    good, _ = parts
    inp = det.prepare(good[0].rgb, good[0].xyz)
    for name in TTA_TRANSFORMS:
        t = tta.transform_input(inp, name)
        twice = tta.transform_input(t, name)
        for key in ("rgb", "xyz", "valid", "xyz_valid"):
            assert torch.equal(getattr(twice, key), getattr(inp, key)), (name, key)
        assert not torch.equal(t.valid, inp.valid) and torch.equal(tta.map_back(t.valid, name), inp.valid)
        assert t.xyz_valid.shape == (32, 32) and torch.equal(tta.map_back(t.xyz_valid, name), inp.xyz_valid)
        back = tta.map_back(t.xyz.permute(2, 0, 1), name).permute(1, 2, 0)  # the points back on their pixels
        factors = torch.tensor(tta.TRANSFORMS[name][1])
        assert torch.equal(back, inp.xyz * factors)
    rgb = tta.transform_input(inp, "rot180").rgb
    assert torch.equal(rgb[:, 0, 0], inp.rgb[:, -1, -1]) and torch.equal(rgb[:, -1, 0], inp.rgb[:, 0, -1])


def test_rot180_turns_the_part_rigidly_fpfh_unchanged_normals_turned(parts):
    cfg = dataclasses.replace(preset("lite", "rgbd"), grid=16, rgb_size=32, xyz_size=None, fusion_size=None,
                              backbone_2d=BackboneConfig("color_texture"),
                              backbone_3d=BackboneConfig("fpfh", options={"extras": ("normal",)}), window=32)
    det = CMDRDetector(cfg, device="cpu")
    good, _ = parts
    inp = det.prepare(good[0].rgb, good[0].xyz)
    turned = tta.transform_input(inp, "rot180")
    f, g = det.grid_features([det.extract(inp)])["3d"], det.grid_features([det.extract(turned)])["3d"]
    g = tta.map_back(g, "rot180")
    torch.testing.assert_close(g[:, :66], f[:, :66], atol=1e-4, rtol=0)  # the histograms: a rigid motion
    torch.testing.assert_close(g[:, 66:68], -f[:, 66:68], atol=1e-4, rtol=0)  # the normals' x and y turned
    torch.testing.assert_close(g[:, 68], f[:, 68], atol=1e-4, rtol=0)


def test_score_tta_averages_the_maps_for_the_score_and_keeps_the_pixel_scores(parts):
    det = CMDRDetector(tiny_config(), device="cpu")
    with_tta = CMDRDetector(dataclasses.replace(det.config, score_tta=("rot180",)), device="cpu",
                            backbone_2d=det.backbone_2d, backbone_3d=det.backbone_3d)
    with_tta.heads.load_state_dict(det.heads.state_dict())
    _, bad = parts
    plain, pred = det.predict(bad.rgb, bad.xyz), with_tta.predict(bad.rgb, bad.xyz)
    np.testing.assert_array_equal(pred.grid_map, plain.grid_map)
    np.testing.assert_array_equal(pred.anomaly_map, plain.anomaly_map)
    inp = det.prepare(bad.rgb, bad.xyz)
    own = _fused(det, inp)
    turned = tta.map_back(_fused(det, tta.transform_input(inp, "rot180")), "rot180")
    assert not torch.allclose(turned, own)  # the heads see another frame
    np.testing.assert_array_equal(own[0].numpy(), plain.grid_map)
    assert pred.score == pytest.approx(float(fusion.image_score((own + turned) / 2)[0]), rel=1e-6)
    assert pred.score != pytest.approx(plain.score, rel=1e-5)
    mean_score = dataclasses.replace(with_tta.config, image_score="mean")
    with_tta.config = mean_score
    valid = pred.grid_valid
    assert with_tta.predict(bad.rgb, bad.xyz).score == pytest.approx(
        float(((own + turned) / 2)[0].numpy()[valid].mean()), rel=1e-6)


def test_score_tta_survives_the_checkpoint_and_old_checkpoints_have_none(parts, tmp_path):
    det = CMDRDetector(dataclasses.replace(tiny_config(), score_tta=("hflip", "rot180")), device="cpu")
    det.threshold = 1.0
    save_checkpoint(det, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt", "cpu")
    assert loaded.config.score_tta == ("hflip", "rot180")
    _, bad = parts
    assert loaded.predict(bad.rgb, bad.xyz).score == pytest.approx(det.predict(bad.rgb, bad.xyz).score, rel=1e-6)
    d = det.config.to_dict()
    del d["score_tta"]
    assert ModelConfig.from_dict(d).score_tta == ()
    assert ModelConfig.from_dict(dict(d, score_tta=["vflip"])).score_tta == ("vflip",)  # as YAML gives it


@pytest.mark.parametrize("bad", [("turn",), ("rot180", "rot180")])
def test_score_tta_names_distinct_known_transforms(bad):
    with pytest.raises(CmdrError, match="score_tta"):
        ModelConfig(mode="rgbd", score_tta=bad)


def test_score_tta_is_for_frames():
    with pytest.raises(CmdrError, match="score_tta is for frames"):
        dataclasses.replace(preset("lite3d", "3d"), score_tta=("rot180",))


def _lite_config(**kw) -> ModelConfig:
    return dataclasses.replace(preset("lite", "rgbd"), grid=16, rgb_size=32, xyz_size=32, fusion_size=32,
                               backbone_2d=BackboneConfig("color_texture"),
                               backbone_3d=BackboneConfig("fpfh", options={"extras": ("normal", "curvature")}),
                               window=32, **kw)


def test_weights_free_features_of_the_turned_frame_are_the_frames_features_turned(parts):
    det = CMDRDetector(_lite_config(valid_mask="feature"), device="cpu")
    assert det.equivariant_to("rot180") and not det.equivariant_to("hflip") and not det.equivariant_to("vflip")
    assert not CMDRDetector(tiny_config(), device="cpu").equivariant_to("rot180")  # networks: the frame goes through
    _, bad = parts
    inp = det.prepare(bad.rgb, bad.xyz)
    turned = tta.transform_input(inp, "rot180")
    shortcut = det.grid_features([det.extract(inp)], inp.valid[None], "rot180")
    through = det.grid_features([det.extract(turned)], turned.valid[None])
    assert shortcut.keys() == through.keys() == {"2d", "3d", "valid"}
    assert torch.equal(shortcut["valid"], through["valid"])
    for m in ("2d", "3d"):
        torch.testing.assert_close(shortcut[m], through[m], atol=2e-4, rtol=1e-4)
    with pytest.raises(CmdrError, match="cannot compute features under 'hflip'"):
        det.backbone_3d.grid_under(through["3d"], "hflip")


def test_score_tta_of_weights_free_backbones_runs_them_once_with_the_score_of_the_turned_frame(parts, monkeypatch):
    det = CMDRDetector(_lite_config(score_tta=("rot180",)), device="cpu")
    _, bad = parts
    inp = det.prepare(bad.rgb, bad.xyz)
    own = _fused(det, inp)
    turned = tta.map_back(_fused(det, tta.transform_input(inp, "rot180")), "rot180")
    calls = []
    extract = det.backbone_3d.extract
    monkeypatch.setattr(det.backbone_3d, "extract", lambda *a: calls.append(1) or extract(*a))
    pred = det.predict_input(inp)
    assert calls == [1]  # the turned frame's features come from the frame's own
    assert pred.score == pytest.approx(float(fusion.image_score((own + turned) / 2)[0]), rel=1e-4)
    np.testing.assert_array_equal(pred.grid_map, own[0].numpy())
    plain = dataclasses.replace(det.config, score_tta=())
    det.config = plain
    assert det.predict_input(inp).score != pytest.approx(pred.score, rel=1e-4)
