"""Checkpoints fail closed: content checksum, finite tensors, positive feature std, a calibrated threshold."""
import math

import numpy as np
import pytest
import torch

from cmdr_ros import CmdrError
from cmdr_ros.cli.main import main
from cmdr_ros.config import BackboneConfig, ModelConfig, TrainConfig
from cmdr_ros.data.synthetic import CellConfig, generate_dataset, render_part
from cmdr_ros.model.checkpoint import (FORMAT_VERSION, content_checksum, load_checkpoint, read_checkpoint,
                                       save_checkpoint)
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.fitting import fit_detector
from cmdr_ros.model.calibration import calibrate

CELL = CellConfig(image_size=64, field_of_view=0.30)


def tiny_config() -> ModelConfig:
    """rgbd with both random-init backbones (their weights travel in the file) and standardized features."""
    return ModelConfig(mode="rgbd", grid=16, rgb_size=32, backbone_2d=BackboneConfig("random_vit"),
                       backbone_3d=BackboneConfig("random_pointmae"), window=32, num_heads=2,
                       standardize_features=True, train=TrainConfig(epochs=1, seed=3))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(detector, calibrated checkpoint path, uncalibrated checkpoint path)."""
    parts = [render_part(np.random.default_rng(i), CELL, None) for i in range(3)]
    det = CMDRDetector(tiny_config(), device="cpu")
    inputs = [det.prepare(p.rgb, p.xyz) for p in parts]
    fit_detector(det, inputs, progress=False)
    folder = tmp_path_factory.mktemp("ckpt")
    raw = save_checkpoint(det, folder / "uncalibrated.ckpt")
    calibrate(det, inputs, progress=False)
    path = save_checkpoint(det, folder / "model.ckpt")
    return det, path, raw


def forge(ckpt: dict, path, recompute: bool) -> None:
    """Write a modified checkpoint, with its checksum and model id recomputed (an attacker) or stale."""
    if recompute:
        ckpt["checksum"] = content_checksum(ckpt)
        ckpt["model_id"] = ckpt["checksum"][:12]
    torch.save(ckpt, path)


def test_format_and_model_id_is_recomputed(model, tmp_path):
    det, path, _ = model
    ckpt = read_checkpoint(path)
    assert ckpt["format_version"] == FORMAT_VERSION == 2
    assert len(ckpt["checksum"]) == 64 and ckpt["checksum"] == content_checksum(ckpt)
    assert det.model_id == ckpt["checksum"][:12]
    again = load_checkpoint(path, device="cpu")
    assert again.model_id == det.model_id and again.threshold == det.threshold
    # saving the loaded model again: same content, same id
    assert save_checkpoint(again, tmp_path / "again.ckpt") and again.model_id == det.model_id
    assert load_checkpoint(tmp_path / "again.ckpt", device="cpu").model_id == det.model_id
    # a model id written into the file is never trusted
    raw = torch.load(path, weights_only=True)
    raw["model_id"] = "000000000000"
    torch.save(raw, tmp_path / "renamed.ckpt")
    with pytest.raises(CmdrError, match="renamed.ckpt.*model id"):
        load_checkpoint(tmp_path / "renamed.ckpt", device="cpu")
    # the threshold is content: recalibrating gives a new id
    raw = torch.load(path, weights_only=True)
    raw["threshold"] = raw["threshold"] * 2
    forge(raw, tmp_path / "recal.ckpt", recompute=True)
    assert load_checkpoint(tmp_path / "recal.ckpt", device="cpu").model_id != det.model_id


def test_flipped_bytes_are_refused(model, tmp_path):
    _, path, _ = model
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    bad = tmp_path / "flipped.ckpt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CmdrError, match="flipped.ckpt"):  # unreadable or checksum mismatch, whatever torch does
        load_checkpoint(bad, device="cpu")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 3])
    with pytest.raises(CmdrError, match="truncated.ckpt.*not a readable"):
        load_checkpoint(truncated, device="cpu")


@pytest.mark.parametrize("section", ["heads", "backbone_state", "feature_stats"])
def test_tampered_tensor_fails_the_checksum(model, tmp_path, section):
    _, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    d = ckpt[section]["3d"] if section == "backbone_state" else ckpt[section]
    key = next(k for k, v in d.items() if v.is_floating_point())
    d[key] = d[key].clone()
    d[key].view(-1)[0] += 0.5
    forge(ckpt, tmp_path / "tampered.ckpt", recompute=False)
    with pytest.raises(CmdrError, match="tampered.ckpt fails its content checksum"):
        load_checkpoint(tmp_path / "tampered.ckpt", device="cpu")


@pytest.mark.parametrize("recompute", [False, True], ids=["stale-checksum", "forged-checksum"])
@pytest.mark.parametrize("section", ["heads", "backbone_state", "feature_stats"])
def test_nan_tensor_is_refused(model, tmp_path, section, recompute):
    _, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    d = ckpt[section]["2d"] if section == "backbone_state" else ckpt[section]
    key = next(k for k, v in d.items() if v.is_floating_point())
    d[key] = d[key].clone()
    d[key].view(-1)[0] = float("nan")
    forge(ckpt, tmp_path / "nan.ckpt", recompute)
    match = "non-finite" if recompute else "fails its content checksum"
    with pytest.raises(CmdrError, match=f"nan.ckpt.*{match}"):
        load_checkpoint(tmp_path / "nan.ckpt", device="cpu")


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf")])
def test_bad_feature_std_is_refused(model, tmp_path, value):
    _, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    fs = ckpt["feature_stats"]["3d"].clone()
    fs[1, :] = value
    ckpt["feature_stats"]["3d"] = fs
    forge(ckpt, tmp_path / "std.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="std.ckpt.*(feature std|non-finite)"):
        load_checkpoint(tmp_path / "std.ckpt", device="cpu")
    ckpt["feature_stats"]["3d"] = torch.stack([fs[0, :3], torch.ones(3)])  # finite, but the wrong width
    forge(ckpt, tmp_path / "narrow.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="narrow.ckpt.*3 channels"):
        load_checkpoint(tmp_path / "narrow.ckpt", device="cpu")
    del ckpt["feature_stats"]["3d"]  # stripped statistics would silently change every score
    forge(ckpt, tmp_path / "nostats.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="nostats.ckpt.*no 3d feature statistics"):
        load_checkpoint(tmp_path / "nostats.ckpt", device="cpu")


def test_missing_threshold_needs_require_threshold_false(model):
    det, _, raw = model
    with pytest.raises(CmdrError, match="uncalibrated.ckpt has no calibrated threshold: run `cmdr calibrate`"):
        load_checkpoint(raw, device="cpu")
    with pytest.raises(CmdrError, match="no calibrated threshold"):
        read_checkpoint(raw)
    loaded = load_checkpoint(raw, device="cpu", require_threshold=False)
    assert loaded.threshold is None and loaded.model_id == read_checkpoint(raw, require_threshold=False)["model_id"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_threshold_is_refused(model, tmp_path, value):
    det, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    ckpt["threshold"] = value
    forge(ckpt, tmp_path / "thr.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="thr.ckpt has a non-finite threshold"):
        load_checkpoint(tmp_path / "thr.ckpt", device="cpu")
    ckpt["threshold"] = "0.5"
    forge(ckpt, tmp_path / "str.ckpt", recompute=True)
    with pytest.raises(CmdrError, match="str.ckpt.*threshold is a str"):
        load_checkpoint(tmp_path / "str.ckpt", device="cpu", require_threshold=False)
    saved = det.threshold
    try:
        det.threshold = value
        with pytest.raises(CmdrError, match="refusing to save .*not a finite number"):
            save_checkpoint(det, tmp_path / "never.ckpt")
        assert not (tmp_path / "never.ckpt").exists()
    finally:
        det.threshold = saved


def test_save_refuses_non_finite_weights(model, tmp_path):
    det, _, _ = model
    saved = det.feature_stats["2d"]
    try:
        det.feature_stats["2d"] = saved.clone()
        det.feature_stats["2d"][1, 0] = 0.0
        with pytest.raises(CmdrError, match="refusing to save .*feature std of '2d'"):
            save_checkpoint(det, tmp_path / "never.ckpt")
    finally:
        det.feature_stats["2d"] = saved
    assert not (tmp_path / "never.ckpt").exists()


def test_version_1_is_refused(model, tmp_path):
    _, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    ckpt["format_version"] = 1
    del ckpt["checksum"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(CmdrError, match="old.ckpt has checkpoint format version 1, which predates content checksums"):
        load_checkpoint(tmp_path / "old.ckpt", device="cpu")
    ckpt["format_version"] = FORMAT_VERSION
    torch.save(ckpt, tmp_path / "nosum.ckpt")
    with pytest.raises(CmdrError, match="nosum.ckpt fails its content checksum"):
        load_checkpoint(tmp_path / "nosum.ckpt", device="cpu")


def test_old_backbone_names_still_load(model, tmp_path):
    """A checkpoint saved before the random-init backbones were renamed (tiny_vit / tiny_pointmae) loads as the
    same network under the new names; the file and its model id stay as saved."""
    det, path, _ = model
    ckpt = torch.load(path, weights_only=True)
    for m, old in (("2d", "tiny_vit"), ("3d", "tiny_pointmae")):
        ckpt["config"][f"backbone_{m}"]["name"] = old
        ckpt["backbones"][m]["name"] = old
    forge(ckpt, tmp_path / "old_names.ckpt", recompute=True)  # as the earlier version wrote it
    stored = read_checkpoint(tmp_path / "old_names.ckpt")
    assert stored["config"]["backbone_2d"]["name"] == "tiny_vit"  # reading verifies, it does not rewrite
    old = load_checkpoint(tmp_path / "old_names.ckpt", device="cpu")
    assert (old.backbone_2d.name, old.backbone_3d.name) == ("random_vit", "random_pointmae")
    assert (old.config.backbone_2d.name, old.config.backbone_3d.name) == ("random_vit", "random_pointmae")
    assert old.model_id == stored["model_id"] == ckpt["checksum"][:12]
    part = render_part(np.random.default_rng(50), CELL, "missing_chunk")
    a, b = det.predict(part.rgb, part.xyz), old.predict(part.rgb, part.xyz)
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    # saved again, it is written under the new names: the same content as the current version's file
    assert save_checkpoint(old, tmp_path / "resaved.ckpt") and old.model_id == det.model_id


def _cli_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("cmdr: error:"), err
    return lines[0]


def test_predict_refuses_and_calibrate_repairs_an_uncalibrated_checkpoint(model, tmp_path, capsys):
    _, _, raw = model
    line = _cli_error(capsys, ["predict", "--checkpoint", str(raw), "--xyz", str(tmp_path / "x.tiff"),
                               "--rgb", str(tmp_path / "x.png"), "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert "no calibrated threshold" in line and str(raw) in line
    assert not (tmp_path / "p" / "result.json").exists()
    data = generate_dataset(tmp_path / "data", "block", n_train=0, n_val=2, n_test_good=0, n_test_per_defect=0,
                            cfg=CELL, defects=())
    out = tmp_path / "calibrated.ckpt"
    assert main(["calibrate", "--data", str(data), "--checkpoint", str(raw), "--out", str(out), "--quiet",
                 "--no-cache", "--device", "cpu"]) == 0, capsys.readouterr().err
    det = load_checkpoint(out, device="cpu")
    assert det.threshold is not None and math.isfinite(det.threshold) and det.score_stats["n"] == 2
