"""The inspection node with ``device: onnx``: a real node process serving a checkpoint's exported heads and scoring
(``cmdr export``) judges parts with PyTorch's scores and says so on /diagnostics; without the export it refuses to
configure and says why."""
from __future__ import annotations

import pytest
from std_msgs.msg import Header

from cmdr_ros.model.checkpoint import load_checkpoint
from cmdr_ros.model.export import TOLERANCE, export_onnx, onnx_path_for
from cmdr_ros.ros.conversions import xyz_to_pointcloud2
from node_harness import NodeProcess, cell_frame, start_node, train_cell_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("cell_onnx")
    model = train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")
    export_onnx(load_checkpoint(model["checkpoint"], "cpu"), onnx_path_for(model["checkpoint"]))
    return model


@pytest.fixture(scope="module")
def onnx_node(ros, exported, tmp_path_factory):
    yield from start_node(ros, tmp_path_factory.mktemp("node_onnx"),
                          {"checkpoint": exported["checkpoint"], "device": "onnx"}, (ros.image_pub, ros.points_pub))


def test_the_node_judges_with_the_exported_graph(ros, onnx_node, exported):
    torch_det = load_checkpoint(exported["checkpoint"], "cpu")
    for i, defect in enumerate((None, "bump")):
        part = cell_frame(300 + i, defect)
        stamp = ros.next_stamp()
        ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")))
        v = ros.result(stamp)
        assert v["judged"] == "true" and v["model_id"] == exported["model_id"], v
        assert float(v["score"]) == pytest.approx(torch_det.predict(part.rgb, part.xyz).score, rel=TOLERANCE)
    d = ros.diagnostics(lambda v: "model_id" in v, "the model in use")
    assert d["device"].startswith("onnx (CPUExecutionProvider")
    assert "device onnx (CPUExecutionProvider" in onnx_node.stderr()


def test_without_its_export_the_node_does_not_configure(ros, exported, tmp_path):
    onnx_path_for(exported["checkpoint"]).rename(tmp_path / "moved.onnx")
    node = NodeProcess(tmp_path, ros.domain_id, {"checkpoint": exported["checkpoint"], "device": "onnx",
                                                 "diagnostics_period": 0.5})
    try:
        d = ros.diagnostics(lambda v: v.get("state", "").startswith("cannot configure"), "a refused configure")
        assert "no exported graph" in d["state"] and "cmdr export" in d["state"]
    finally:
        node.stop()
        (tmp_path / "moved.onnx").rename(onnx_path_for(exported["checkpoint"]))
