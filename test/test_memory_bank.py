"""The memory-bank branch (``ModelConfig.memory_bank``): the greedy coreset, the nearest-good-feature distance, the
gate on the fused map, and the bank in checkpoints (saved, checked, absent from older files) and in ONNX exports."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import ModelConfig, preset
from cmdr_ros.model import checkpoint, fusion, memory_bank
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.model.export import TOLERANCE, export_onnx, onnx_path_for
from test_checkpoint_integrity import forge
from test_detector import parts, tiny_config  # noqa: F401  (parts: the module fixture of rendered parts)


def test_greedy_coreset_covers_the_rare_features_a_random_sample_misses():
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(5000, 8, generator=gen)
    rare = torch.randn(20, 8, generator=gen) * 0.1 + 12.0  # 0.4 % of the data, far from the rest
    feats = torch.cat([common, rare])
    bank = memory_bank.greedy_coreset(feats, 50, seed=1)
    assert bank.shape == (50, 8) and len(torch.unique(bank, dim=0)) == 50
    assert torch.equal(bank, memory_bank.greedy_coreset(feats, 50, seed=1))  # deterministic for a seed
    # every bank row is a row of the data
    assert bool((bank[:, None] == feats[None]).all(-1).any(1).all())
    # k-center: the data's farthest distance to the bank beats a random sample of the same size
    coverage = torch.cdist(feats, bank, compute_mode="donot_use_mm_for_euclid_dist").amin(1).max()
    sample = feats[torch.randperm(len(feats), generator=gen)[:50]]
    assert coverage < torch.cdist(feats, sample, compute_mode="donot_use_mm_for_euclid_dist").amin(1).max()
    assert memory_bank.nearest_distance(rare.T[None, :, :, None], bank).max() < 1.0
    assert torch.equal(memory_bank.greedy_coreset(feats[:30], 50), feats[:30])  # fewer rows than asked: all


def test_nearest_distance_equals_the_dense_minimum_across_blocks(monkeypatch):
    monkeypatch.setattr(memory_bank, "BLOCK", 7)  # 2 x 6 x 5 = 60 queries: 9 blocks, the last one short
    gen = torch.Generator().manual_seed(2)
    feats, bank = torch.randn(2, 4, 6, 5, generator=gen), torch.randn(33, 4, generator=gen)
    got = memory_bank.nearest_distance(feats, bank)
    want = torch.cdist(feats.permute(0, 2, 3, 1).reshape(-1, 4), bank).amin(1).reshape(2, 6, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert float(memory_bank.nearest_distance(bank[:3].T[None, :, :, None], bank).max()) < 1e-3


def test_the_gate_multiplies_the_fused_map_by_each_smoothed_bank_distance():
    fused = torch.rand(1, 9, 9) + 0.5
    d = torch.zeros(1, 9, 9)
    d[0, 4, 4] = 25.0
    valid = torch.ones(1, 9, 9, dtype=torch.bool)
    out = fusion.memory_bank_gate(fused, [d], valid)
    torch.testing.assert_close(out, fused * fusion.box_filter(d, 5, 1))
    assert float(out[0, 4, 4]) == pytest.approx(float(fused[0, 4, 4]))  # 25 / 25 in the 5x5 window
    assert float(out[0, 0, 0]) == 0.0  # nothing unlike the good parts there: the heads' distance is gated off
    valid[0, 4, 4] = False
    assert float(fusion.memory_bank_gate(fused, [d], valid).abs().max()) == 0.0  # invalid pixels count nothing


def test_memory_bank_setting_is_checked_and_defaults_off():
    assert ModelConfig().memory_bank == 0 and preset("paper", "rgbd").memory_bank == 0
    assert preset("paper3d", "3d").memory_bank == 0 and preset("lite3d", "3d").memory_bank == 2000
    d = preset("lite3d", "3d").to_dict()
    del d["memory_bank"]
    assert ModelConfig.from_dict(d).memory_bank == 0  # a checkpoint written before the setting has no bank
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(CmdrError, match="memory_bank"):
            ModelConfig(mode="3d", memory_bank=bad)


@pytest.fixture(scope="module")
def banked(parts):  # noqa: F811
    good, _ = parts
    cfg = tiny_config("3d", epochs=2)
    cfg.memory_bank = 64
    det = CMDRDetector(cfg, device="cpu")
    fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good], progress=False)
    det.threshold = 1.0
    return det


def test_fit_keeps_a_bank_of_training_features_and_the_maps_are_gated_by_it(banked, parts):  # noqa: F811
    good, bad = parts
    assert set(banked.memory_bank) == {"3d"} and banked.memory_bank["3d"].shape == (64, banked.backbone_3d.out_dim)
    inp = banked.prepare(bad.rgb, bad.xyz)
    feats = banked.grid_features([banked.extract(inp)], inp.valid[None])
    valid = feats.pop("valid")
    maps = banked.anomaly_maps(feats, valid)
    torch.testing.assert_close(maps["bank3d"], memory_bank.nearest_distance(feats["3d"], banked.memory_bank["3d"])
                               * valid)
    plain = fusion.anomaly_map_3d(maps["rec3d"], valid)
    torch.testing.assert_close(maps["fused"], fusion.memory_bank_gate(plain, [maps["bank3d"]], valid))
    pred = banked.predict(bad.rgb, bad.xyz)
    assert np.isfinite(pred.score) and pred.grid_map.shape == (16, 16)


def test_the_bank_travels_in_the_checkpoint_and_is_checked(banked, parts, tmp_path):  # noqa: F811
    _, bad = parts
    path = save_checkpoint(banked, tmp_path / "banked.ckpt")
    loaded = load_checkpoint(path, "cpu")
    assert torch.equal(loaded.memory_bank["3d"], banked.memory_bank["3d"]) and loaded.model_id == banked.model_id
    assert loaded.predict(bad.rgb, bad.xyz).score == pytest.approx(banked.predict(bad.rgb, bad.xyz).score, rel=1e-6)

    raw = torch.load(path, weights_only=True)
    forge(dict(raw, memory_bank={"3d": raw["memory_bank"]["3d"][:, :3]}), tmp_path / "cut.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="memory bank has shape"):
        load_checkpoint(tmp_path / "cut.ckpt", "cpu")
    forge(dict(raw, memory_bank={}), tmp_path / "gone.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="holds no 3d memory bank"):
        load_checkpoint(tmp_path / "gone.ckpt", "cpu")


def test_a_checkpoint_from_before_the_bank_loads_with_its_model_id(parts, tmp_path, monkeypatch):  # noqa: F811
    det = CMDRDetector(tiny_config("3d"), device="cpu")
    det.threshold = 1.0
    raw = torch.load(save_checkpoint(det, tmp_path / "plain.ckpt"), weights_only=True)
    assert raw["memory_bank"] == {}
    # the file as the code before the bank wrote it: no section, no config key, its checksum over what it had
    del raw["memory_bank"]
    raw["config"].pop("memory_bank")
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "TENSOR_KEYS", ("heads", "feature_stats", "backbone_state"))
        forge(raw, tmp_path / "old.ckpt", recompute=True)
    loaded = load_checkpoint(tmp_path / "old.ckpt", "cpu")
    assert loaded.model_id == raw["checksum"][:12] and loaded.memory_bank == {} and loaded.config.memory_bank == 0


def test_a_banked_model_exports_to_onnx_with_its_bank(banked, parts, tmp_path):  # noqa: F811
    _, bad = parts
    path = save_checkpoint(banked, tmp_path / "banked.ckpt")
    info = export_onnx(load_checkpoint(path, "cpu"), onnx_path_for(path))
    assert info["max_rel_diff"] <= TOLERANCE
    a, b = load_checkpoint(path, "cpu").predict(bad.rgb, bad.xyz), load_checkpoint(path, "onnx").predict(bad.rgb, bad.xyz)
    assert b.score == pytest.approx(a.score, rel=TOLERANCE)
    assert np.abs(a.grid_map - b.grid_map).max() <= TOLERANCE * float(np.abs(a.grid_map).max())


def test_memory_bank_modalities_is_checked_and_defaults_to_every_modality():
    assert ModelConfig(mode="rgbd", memory_bank=8).banked_modalities == ("2d", "3d")
    assert ModelConfig(mode="3d", memory_bank=8).banked_modalities == ("3d",)
    assert ModelConfig(mode="rgbd").banked_modalities == ()  # no bank, nothing banked
    d = preset("lite3d", "3d").to_dict()
    del d["memory_bank_modalities"]
    assert ModelConfig.from_dict(d).banked_modalities == ("3d",)  # a checkpoint from before the setting: as it was
    d = dict(preset("lite", "rgbd").to_dict(), memory_bank=8, memory_bank_modalities=["3d"])  # as YAML gives it
    assert ModelConfig.from_dict(d).banked_modalities == ("3d",)
    for mode, bad in (("3d", ("2d",)), ("rgbd", ()), ("rgbd", ("rgb",))):
        with pytest.raises(CmdrError, match="memory_bank_modalities"):
            ModelConfig(mode=mode, memory_bank=8, memory_bank_modalities=bad)


def test_an_rgbd_model_can_bank_its_3d_features_alone(parts, tmp_path):  # noqa: F811
    good, bad = parts
    cfg = tiny_config("rgbd", epochs=1)
    cfg.memory_bank, cfg.memory_bank_modalities = 32, ("3d",)
    det = CMDRDetector(cfg, device="cpu")
    fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good[:3]], progress=False)
    det.threshold = 1.0
    assert set(det.memory_bank) == {"3d"}
    inp = det.prepare(bad.rgb, bad.xyz)
    feats = det.grid_features([det.extract(inp)], inp.valid[None])
    valid = feats.pop("valid")
    maps = det.anomaly_maps(feats, valid)
    assert "bank3d" in maps and "bank2d" not in maps
    plain = fusion.fuse_rgbd(maps["map2d"], maps["map3d"], maps["rec2d"], maps["rec3d"], valid, cfg.beta)
    torch.testing.assert_close(maps["fused"], fusion.memory_bank_gate(plain, [maps["bank3d"]], valid))
    loaded = load_checkpoint(save_checkpoint(det, tmp_path / "bank3d.ckpt"), "cpu")
    assert set(loaded.memory_bank) == {"3d"} and loaded.config.banked_modalities == ("3d",)
    assert loaded.predict(bad.rgb, bad.xyz).score == pytest.approx(det.predict(bad.rgb, bad.xyz).score, rel=1e-6)
