"""The paper preset at full size (224x224, 768/1152-d) with random-init backbones of the paper's architectures.

No pretrained weights exist on this machine, so the backbones are ViT-B/8 and Point-MAE with random weights:
the test checks the architecture sizes and that one real frame flows through every head and the fusion with
the shapes of PAPER_NOTES. One frame on 2 CPU cores takes about a minute.
"""
import numpy as np
import pytest
import torch

from cmdr_ros.config import preset
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_rgb, load_xyz
from cmdr_ros.model.backbones import RandomPointMAE, RandomViT
from cmdr_ros.model.detector import CMDRDetector

pytestmark = pytest.mark.slow


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def paper_detector():
    vit = RandomViT(rgb_size=224, embed_dim=768, depth=12, num_heads=12)  # ViT-B/8 layout, random weights
    cfg = preset("paper", "rgbd")
    pmae = RandomPointMAE(trans_dim=384, depth=12, num_heads=6, num_group=1024, group_size=128, encoder_dims=384,
                          fetch_idx=(3, 7, 11), bn=cfg.backbone_3d.bn)  # the paper's Point-MAE layout, random weights
    return CMDRDetector(cfg, device="cpu", backbone_2d=vit, backbone_3d=pmae)


def test_paper_sizes(paper_detector):
    d = paper_detector
    assert n_params(d.backbone_2d.model) == 85_807_872
    assert n_params(d.backbone_3d.encoder) == 21_825_024
    h = d.heads
    assert (n_params(h.map2to3), n_params(h.map3to2), n_params(h.rec2d), n_params(h.rec3d)) == (
        3_694_272, 3_693_888, 5_026_176, 87_840_208)
    assert d.config.grid == 224 and d.config.train.epochs == 50 and d.config.train.seed == 115
    assert d.config.train.batch_size == 1 and d.config.beta == 0.3
    # the reference's Point-MAE BatchNorm (per-frame statistics) and valid mask ("3D feature != 0")
    assert d.config.backbone_3d.bn == "frame" and d.backbone_3d.encoder.encoder.frame_stats
    assert d.config.valid_mask == "feature" and d.config.pixel_norm == "split"


def test_paper_frame_flows_through(paper_detector, cable_gland_dir):
    d = paper_detector
    s = MVTec3DClass(cable_gland_dir).samples("test")[-1]
    rgb, xyz = load_rgb(s.rgb_path), load_xyz(s.xyz_path)
    inp = d.prepare(rgb, xyz)
    assert inp.rgb.shape == (3, 224, 224) and inp.xyz.shape == (224, 224, 3)
    native = d.extract(inp)
    assert native["2d"]["tokens"].shape == (768, 28, 28)  # cached at native resolution
    assert native["3d"]["center_feats"].shape == (1024, 1152)
    n_valid = int(inp.valid.sum())
    assert native["3d"]["idx"].shape == (n_valid, 3)
    feats = d.grid_features([native], inp.valid[None])
    assert feats["2d"].shape == (1, 768, 224, 224) and feats["3d"].shape == (1, 1152, 224, 224)
    valid = feats.pop("valid")[0]  # the reference's mask: wider than the valid points (pooling ring, holes filled)
    assert bool((valid | ~inp.valid).all()) and int(valid.sum()) > int(inp.valid.sum())
    with torch.inference_mode():
        maps = d.anomaly_maps(feats, valid[None])
    for k in ("rec2d", "rec3d", "map2d", "map3d", "fused"):
        assert maps[k].shape == (1, 224, 224), k
        assert torch.isfinite(maps[k]).all(), k
    for k in ("rec2d", "rec3d", "map2d", "map3d"):  # distances of unit vectors: in [0, 2], 0 off the part
        assert maps[k].min() >= 0 and maps[k].max() <= 2 + 1e-5
        assert (maps[k][0][~valid] == 0).all()
    pred = d.predict_input(inp)
    assert pred.anomaly_map.shape == (400, 400) and np.isfinite(pred.score) and pred.score > 0
