"""Batched feature extraction (``CMDRDetector.extract_many``): a ViT runs a batch of images in one forward pass, the
3D backbone one input at a time, and each input gets the features it gets alone."""
from __future__ import annotations

import pytest
import torch

from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from test_detector import parts, tiny_config  # noqa: F401  (the module fixture of rendered parts)


@pytest.mark.parametrize("mode", ["rgbd", "2d", "3d"])
def test_a_batch_gives_each_input_its_own_features(parts, mode):  # noqa: F811
    good, bad = parts
    det = CMDRDetector(tiny_config(mode), device="cpu")
    inputs = [det.prepare(p.rgb, p.xyz) for p in (*good[:3], bad)]
    alone = [det.extract(inp) for inp in inputs]
    for batch_size in (2, 4):
        batched = det.extract_many(inputs, batch_size=batch_size)
        assert len(batched) == len(inputs)
        for a, b in zip(alone, batched):
            assert a.keys() == b.keys() == {"rgbd": {"2d", "3d"}, "2d": {"2d"}, "3d": {"3d"}}[mode]
            for m in a:
                assert a[m].keys() == b[m].keys()
                for k in a[m]:
                    torch.testing.assert_close(b[m][k], a[m][k], rtol=1e-5, atol=1e-5)


def test_the_vit_runs_a_batch_in_one_pass(parts, monkeypatch):  # noqa: F811
    good, _ = parts
    det = CMDRDetector(tiny_config("2d"), device="cpu")
    calls = []
    forward = det.backbone_2d.model.forward_features
    monkeypatch.setattr(det.backbone_2d.model, "forward_features", lambda x: calls.append(len(x)) or forward(x))
    det.extract_many([det.prepare(p.rgb, None) for p in good], batch_size=4)
    assert calls == [4, 1]


def test_training_extracts_in_batches_and_trains_the_same(parts):  # noqa: F811
    good, bad = parts
    cfg = ModelConfig(mode="rgbd", grid=16, rgb_size=32, backbone_2d=BackboneConfig("random_vit"),
                      backbone_3d=BackboneConfig("random_pointmae"), window=32, num_heads=2,
                      train=TrainConfig(epochs=2, seed=3))
    scores = []
    for batch_size in (1, 3):
        det = CMDRDetector(cfg, device="cpu")
        original = det.extract_many
        det.extract_many = (lambda inputs, batch_size=None, bs=batch_size, **kw:  # prediction passes its own
                            original(inputs, batch_size=batch_size or bs, **kw))
        fit_detector(det, [det.prepare(p.rgb, p.xyz) for p in good], progress=False)
        scores.append(det.predict(bad.rgb, bad.xyz).score)
    assert scores[0] == pytest.approx(scores[1], rel=1e-4)
