"""``cmdr export --format onnx`` and ``device: onnx``: the exported heads and scoring give the maps and scores of
PyTorch (within ``export.TOLERANCE``) in every mode, a stale or missing export is refused, and the CLI and the
node's parameters take the device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_harness import one_line_error
from cmdr_ros import CmdrError
from cmdr_ros.cli.main import main
from cmdr_ros.data.synthetic import CellConfig, render_part
from cmdr_ros.model.checkpoint import load_checkpoint, save_checkpoint
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.model.export import TOLERANCE, backbone_path_for, export_onnx, onnx_path_for
from test_detector import tiny_config


@pytest.fixture(scope="module")
def parts():
    cfg = CellConfig(image_size=96, field_of_view=0.30)
    return [render_part(np.random.default_rng(i), cfg, d) for i, d in ((1, None), (2, "missing_chunk"))]


def _saved(mode: str, folder) -> str:
    det = CMDRDetector(tiny_config(mode), device="cpu")  # random heads: the export must carry any weights
    det.threshold = 1.0
    return str(save_checkpoint(det, folder / f"{mode}.ckpt"))


@pytest.mark.parametrize("mode", ["rgbd", "3d", "2d"])
def test_onnx_scoring_gives_the_maps_and_scores_of_pytorch(mode, parts, tmp_path):
    ckpt = _saved(mode, tmp_path)
    info = export_onnx(load_checkpoint(ckpt, "cpu"), onnx_path_for(ckpt))
    assert info["max_rel_diff"] <= TOLERANCE and info["cmdr_ros.mode"] == mode
    torch_det, onnx_det = load_checkpoint(ckpt, "cpu"), load_checkpoint(ckpt, "onnx")
    assert onnx_det.scoring is not None and onnx_det.runtime.startswith("onnx (CPUExecutionProvider")
    for p in parts:
        a, b = torch_det.predict(p.rgb, p.xyz), onnx_det.predict(p.rgb, p.xyz)
        scale = float(np.abs(a.grid_map).max())
        assert np.abs(a.grid_map - b.grid_map).max() <= TOLERANCE * scale
        assert np.array_equal(a.grid_valid, b.grid_valid) and np.array_equal(a.valid_mask, b.valid_mask)
        assert b.score == pytest.approx(a.score, rel=TOLERANCE)
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= TOLERANCE * max(float(np.abs(a.anomaly_map).max()), 1)
    inputs = [torch_det.prepare(p.rgb, p.xyz) for p in parts]
    for a, b in zip(torch_det.predict_inputs(inputs), onnx_det.predict_inputs(inputs, batch_size=2)):  # batch axis
        assert b.score == pytest.approx(a.score, rel=TOLERANCE)
        assert np.abs(a.grid_map - b.grid_map).max() <= TOLERANCE * float(np.abs(a.grid_map).max())


def test_the_vit_backbone_is_exported_beside_the_scoring_graph(parts, tmp_path):
    ckpt = _saved("rgbd", tmp_path)
    info = export_onnx(load_checkpoint(ckpt, "cpu"), onnx_path_for(ckpt))
    vit = backbone_path_for(onnx_path_for(ckpt))
    assert info["backbone_2d"]["path"] == str(vit) and vit.is_file() and info["backbone_2d"]["max_rel_diff"] <= TOLERANCE
    assert info["backbone_2d"]["cmdr_ros.backbone"] == "random_vit"
    torch_det, onnx_det = load_checkpoint(ckpt, "cpu"), load_checkpoint(ckpt, "onnx")
    assert onnx_det.backbone_2d.onnx is not None and "2D backbone in onnx, 3D backbone on cpu" in onnx_det.runtime
    inp = torch_det.prepare(parts[1].rgb, parts[1].xyz)
    a, b = torch_det.backbone_2d.extract(inp.rgb)["tokens"], onnx_det.backbone_2d.extract(inp.rgb)["tokens"]
    assert a.shape == b.shape and float((a - b).abs().max()) <= TOLERANCE * float(a.abs().max())
    two = onnx_det.backbone_2d.extract_batch(torch.stack([inp.rgb, inp.rgb.flip(-1)]))  # the graph takes a batch
    assert len(two) == 2 and float((two[0]["tokens"] - b).abs().max()) <= TOLERANCE * float(b.abs().max())
    # an export from before backbones were exported (no file): the ViT runs in PyTorch, and says so
    vit.rename(tmp_path / "kept.onnx")
    old = load_checkpoint(ckpt, "onnx")
    assert old.backbone_2d.onnx is None and old.runtime.endswith("backbones on cpu)")
    assert old.predict(parts[1].rgb, parts[1].xyz).score == pytest.approx(
        torch_det.predict(parts[1].rgb, parts[1].xyz).score, rel=TOLERANCE)
    # another model's backbone graph is refused, as its scoring graph would be
    other = _saved("2d", tmp_path)
    export_onnx(load_checkpoint(other, "cpu"), onnx_path_for(other))
    backbone_path_for(onnx_path_for(other)).rename(vit)
    with pytest.raises(CmdrError, match="was exported from model .* export it again"):
        load_checkpoint(ckpt, "onnx")
    assert "backbone_2d" not in export_onnx(load_checkpoint(_saved("3d", tmp_path), "cpu"), tmp_path / "3d.onnx")


def test_a_stale_or_missing_export_is_refused(tmp_path):
    ckpt = _saved("3d", tmp_path)
    with pytest.raises(CmdrError, match="no exported graph; write it with `cmdr export"):
        load_checkpoint(ckpt, "onnx")
    export_onnx(load_checkpoint(ckpt, "cpu"), onnx_path_for(ckpt))
    det = load_checkpoint(ckpt, "cpu")
    det.threshold = 2.0  # re-calibrated: another model id, the old export no longer names it
    save_checkpoint(det, ckpt)
    with pytest.raises(CmdrError, match="was exported from model .* export it again"):
        load_checkpoint(ckpt, "onnx")
    onnx_path_for(ckpt).write_bytes(b"not a graph")
    with pytest.raises(CmdrError, match="not a usable ONNX graph"):
        load_checkpoint(ckpt, "onnx")
    with pytest.raises(CmdrError, match="training runs on cpu or cuda"):
        CMDRDetector(tiny_config("3d"), device="onnx")


def test_cli_export_then_predict_on_onnx(parts, tmp_path, capsys):
    import tifffile

    ckpt = _saved("3d", tmp_path)
    assert main(["export", ckpt, "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {onnx_path_for(ckpt)}" in out and "max relative difference" in out
    xyz = tmp_path / "part.tiff"
    tifffile.imwrite(xyz, parts[1].xyz)
    for device in ("cpu", "onnx"):
        assert main(["predict", "--checkpoint", ckpt, "--xyz", str(xyz), "--out", str(tmp_path / device),
                     "--device", device]) in (0, 3)
    a = tifffile.imread(tmp_path / "cpu" / "anomaly_map.tiff")
    b = tifffile.imread(tmp_path / "onnx" / "anomaly_map.tiff")
    assert np.abs(a - b).max() <= TOLERANCE * max(float(np.abs(a).max()), 1)
    assert "missing.ckpt" in one_line_error(capsys, ["export", str(tmp_path / "missing.ckpt")])


def test_the_node_takes_device_onnx():
    from cmdr_ros.ros.node.parameters import check

    assert check("device", "onnx") is None and "or onnx" in check("device", "tpu")


def test_a_scan_model_runs_on_onnx_point_for_point(tmp_path):
    from node_harness import scan_model_config, scan_points

    det = CMDRDetector(scan_model_config(), device="cpu")
    det.threshold = 1.0
    ckpt = save_checkpoint(det, tmp_path / "scan.ckpt")
    export_onnx(load_checkpoint(ckpt, "cpu"), onnx_path_for(ckpt))
    points = scan_points(3, "bump")[0]
    a, b = load_checkpoint(ckpt, "cpu").predict_scan(points), load_checkpoint(ckpt, "onnx").predict_scan(points)
    assert b.score == pytest.approx(a.score, rel=TOLERANCE) and np.array_equal(a.measured, b.measured)
    assert np.nanmax(np.abs(a.point_scores - b.point_scores)) <= TOLERANCE * np.nanmax(a.point_scores)
