"""``ModelConfig.xyz_size``: the 3D backbone sees the xyz map at a finer resolution than the heads' grid, and its
point features are averaged over each grid cell (``backbones.points_to_grid`` of a finer ``side``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig, preset
from cmdr_ros.data.model_input import prepare_input
from cmdr_ros.model import backbones
from cmdr_ros.model.backbones import points_to_grid, scatter_points_to_grid
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.model.calibration import calibrate
from test_detector import parts  # noqa: F401  (the module fixture of rendered parts)


def fpfh_config(xyz_size, mode="3d"):
    return ModelConfig(mode=mode, grid=16, rgb_size=32, xyz_size=xyz_size, backbone_2d=BackboneConfig("color_texture"),
                       backbone_3d=BackboneConfig("fpfh"), standardize_features=True, window=32, num_heads=2,
                       train=TrainConfig(epochs=3, seed=3))


def test_xyz_size_is_checked_and_defaults_to_the_grid():
    assert ModelConfig().xyz_size is None and preset("paper").xyz_size is None
    # lite describes the surface on a 128x128 xyz map in rgbd; in 3d the grid's (the finer map's extra 75 ms a frame
    # bought no clear gain there)
    assert preset("lite", "rgbd").xyz_size == 128 and preset("lite", "3d").xyz_size is None
    for bad in (8, 16.5, True, "32"):
        with pytest.raises(CmdrError, match="xyz_size"):
            ModelConfig(grid=16, xyz_size=bad)
    with pytest.raises(CmdrError, match="chunks"):
        ModelConfig(mode="3d", pipeline="chunks", grid=16, xyz_size=32)
    cfg = ModelConfig(grid=16, xyz_size=32)
    assert ModelConfig.from_dict(cfg.to_dict()).xyz_size == 32


def test_cell_mean_of_the_points_in_each_grid_cell():
    gen = torch.Generator().manual_seed(0)
    side, grid = 8, 4
    pix = torch.tensor([0, 1, 8, 9, 2, 63])  # cell (0,0) gets 4 points, cell (0,1) one, cell (3,3) one
    feats = torch.randn(len(pix), 3, generator=gen)
    native = {"pix": pix, "side": torch.tensor(side)}
    out = points_to_grid(feats, native, grid)
    assert out.shape == (3, grid, grid) and out.is_contiguous()
    torch.testing.assert_close(out[:, 0, 0], feats[:4].mean(0))
    torch.testing.assert_close(out[:, 0, 1], feats[4])
    torch.testing.assert_close(out[:, 3, 3], feats[5])
    empty = torch.ones(grid, grid, dtype=torch.bool)
    empty[0, 0] = empty[0, 1] = empty[3, 3] = False
    assert float(out[:, empty].abs().max()) == 0.0  # no point in the cell: zero, like an invalid pixel
    # `cmdr bench --compare` swaps in the reference's scatter layout: a finer map does not go through it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backbones, "scatter_points_to_grid", backbones.scatter_points_to_grid_reference)
        assert torch.equal(points_to_grid(feats, native, grid), out)
    # the grid's own map (side == grid, or no side: checkpoints before xyz_size) is the reference's scatter + pools
    p16 = torch.tensor([0, 5, 9])
    want = scatter_points_to_grid(feats[:3], p16, grid)
    assert torch.equal(points_to_grid(feats[:3], {"pix": p16, "side": torch.tensor(grid)}, grid), want)
    assert torch.equal(points_to_grid(feats[:3], {"pix": p16}, grid), want)


def test_prepare_gives_the_backbone_the_finer_map_and_the_heads_the_grid(parts):
    good, _ = parts
    p = good[0]
    coarse, fine = prepare_input(p.rgb, p.xyz, fpfh_config(None)), prepare_input(p.rgb, p.xyz, fpfh_config(48))
    assert coarse.xyz.shape == (16, 16, 3) and coarse.xyz_valid is None and coarse.points_valid is coarse.valid
    assert fine.xyz.shape == (48, 48, 3) and fine.xyz_valid.shape == (48, 48)
    assert torch.equal(fine.valid, coarse.valid)  # the heads' mask stays the grid's
    assert int(fine.points_valid.sum()) > 4 * int(coarse.valid.sum())  # ~9x the points to describe the surface
    assert torch.equal(fine.xyz_valid, fine.xyz.abs().sum(-1) > 0)


@pytest.mark.parametrize("mode", ["3d", "rgbd"])
def test_a_model_with_a_finer_xyz_map_trains_predicts_and_reloads(parts, mode, tmp_path):
    good, bad = parts
    det = CMDRDetector(fpfh_config(48, mode), device="cpu")
    fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good], progress=False)
    calibrate(det, [det.prepare(p.rgb, p.xyz) for p in good[:2]], progress=False)
    inp = det.prepare(bad.rgb, bad.xyz)
    native = det.extract(inp)["3d"]
    assert int(native["side"]) == 48 and int(native["pix"].max()) < 48 * 48
    f3d = det.grid_features([det.extract(inp)])["3d"]
    assert f3d.shape == (1, 66, 16, 16) and bool(torch.isfinite(f3d).all())
    pred = det.predict(bad.rgb, bad.xyz)
    assert np.isfinite(pred.score) and pred.grid_map.shape == (16, 16)
    path = save_checkpoint(det, tmp_path / "m.ckpt")
    loaded = load_checkpoint(path, "cpu")
    assert loaded.config.xyz_size == 48
    assert loaded.predict(bad.rgb, bad.xyz).score == pytest.approx(pred.score, rel=1e-6)
    # the finer map changes the features: the setting is not ignored
    same = CMDRDetector(fpfh_config(None, mode), device="cpu")
    coarse = same.backbone_3d.to_grid(same.extract(same.prepare(bad.rgb, bad.xyz))["3d"], 16)
    fine = det.backbone_3d.to_grid(native, 16)
    assert coarse.shape == fine.shape and not torch.allclose(coarse, fine, atol=1e-3)
