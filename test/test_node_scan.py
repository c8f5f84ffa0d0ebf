"""The node with a "chunks" model (the paper's 3D-only cutting-cell pipeline): each PointCloud2 is one scanned part,
judged point by point in message order (no raster), with the judge's fail-safe; its messages (anomaly cloud = the
sensor's points with their scores, heatmap and anomaly map of the scan seen from above); and one run through the
real node process on DDS."""
from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import PointField
from std_msgs.msg import Header

from cmdr_ros.ros.conversions import image_to_array, pointcloud2_fields, xyz_to_pointcloud2
from cmdr_ros.ros.node.frame_judge import FrameJudge, warm_up
from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values
from cmdr_ros.ros.node.typed_decision import AVAILABLE as TYPED_AVAILABLE
from cmdr_ros.ros.node.parameters import node_params
from cmdr_ros.ros.topics import MAPS
from cmdr_ros.visualization import scan_maps
from node_harness import scan_points, start_node, stamp_str, train_scan_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this process while these tests run: small chunks on cores shared with other jobs are
    many times faster so (the node process keeps its own setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scan_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan_model")
    return train_scan_model(d / "data", d / "scan.ckpt")


@pytest.fixture(scope="module")
def detector(scan_model):
    from cmdr_ros.model.checkpoint import load_checkpoint

    return load_checkpoint(scan_model["checkpoint"], "cpu")


@pytest.fixture
def judge(detector):
    return FrameJudge.from_params(detector, node_params(None, {}))


def cloud(points: np.ndarray, frame_id: str = "profiler") -> object:
    return xyz_to_pointcloud2(points, Header(frame_id=frame_id))


def test_a_scan_is_judged_in_message_order_and_scores_line_up(judge, detector):
    points, _ = scan_points(3, "bump")
    sent = points.copy()
    sent[::97] = np.nan  # the profilometer's 'no return', kept in the message
    assert judge.kind.name == "chunks" and judge.mode == "3d"
    frame, verdict = judge.judge({"points": cloud(sent)})
    assert frame.kind == "chunks" and frame.alignment == "scan" and frame.xyz is None and frame.cloud_shape == (1, len(sent))
    np.testing.assert_array_equal(frame.points, sent)  # every point, message order, NaN kept
    assert verdict.judged and verdict.decision in ("pass", "reject")
    assert verdict.coverage == pytest.approx(1 - len(sent[::97]) / len(sent))
    direct = detector.predict_scan(sent)
    np.testing.assert_array_equal(verdict.prediction.point_scores, direct.point_scores)
    assert np.isnan(verdict.prediction.point_scores[::97]).all()
    assert verdict.score == pytest.approx(direct.score)
    v = result_values(frame.header, verdict, frame, seq=1, mode="3d", model_id="m", inputs="points")
    assert v["alignment"] == "scan" and v["chunks"] == str(len(direct.chunks)) == str(-(-len(direct.measured) // 256))
    assert v["frame_id.points"] == "profiler" and v["valid_ratio"] == "1.0000"


def test_an_organized_cloud_keeps_its_grid_and_its_invalid_points(judge, detector):
    points, _ = scan_points(4)
    n = len(points) // 40 * 40
    grid = points[:n].reshape(40, -1, 3).copy()
    grid[3, 5] = np.nan  # a driver's invalid point
    grid[7, 2] = 0.0  # the all-zero 'no measurement' marker of an organized cloud
    frame, verdict = judge.judge({"points": cloud(grid)})
    assert frame.cloud_shape == grid.shape[:2] and len(frame.points) == n
    invalid = np.zeros(grid.shape[:2], bool)
    invalid[3, 5] = invalid[7, 2] = True
    np.testing.assert_array_equal(np.isnan(frame.points).any(1), invalid.ravel())
    np.testing.assert_array_equal(frame.points[~invalid.ravel()], grid.reshape(-1, 3)[~invalid.ravel()])
    assert verdict.judged
    scores = verdict.prediction.point_scores
    np.testing.assert_array_equal(np.isnan(scores), invalid.ravel())
    np.testing.assert_array_equal(scores, detector.predict_scan(frame.points).point_scores)
    msg = map_messages(verdict, frame, {"anomaly_cloud"})["anomaly_cloud"]
    assert (msg.height, msg.width) == grid.shape[:2]  # the anomaly cloud lines up with the message
    f = pointcloud2_fields(msg, ["x", "intensity"])
    np.testing.assert_array_equal(f["intensity"], np.nan_to_num(scores, nan=0.0).reshape(grid.shape[:2]))
    np.testing.assert_array_equal(np.isnan(f["x"]), invalid)


def test_the_messages_of_a_judged_scan(judge):
    points, _ = scan_points(5, "bump")
    frame, verdict = judge.judge({"points": cloud(points)})
    maps = map_messages(verdict, frame, set(MAPS), alpha=0.5)
    assert list(maps) == ["anomaly_map", "heatmap", "anomaly_cloud"]
    ac = maps["anomaly_cloud"]
    assert (ac.height, ac.width) == (1, len(points)) and [f.name for f in ac.fields] == ["x", "y", "z", "intensity"]
    assert all(f.datatype == PointField.FLOAT32 for f in ac.fields) and ac.header.frame_id == "profiler"
    f = pointcloud2_fields(ac, ["x", "y", "z", "intensity"])
    np.testing.assert_array_equal(np.stack([f[k][0] for k in "xyz"], 1), points)  # the sensor's own points
    np.testing.assert_array_equal(f["intensity"][0], verdict.prediction.point_scores)
    _, amap, filled, _ = scan_maps(points, verdict.prediction.point_scores)
    am = image_to_array(maps["anomaly_map"])
    assert maps["anomaly_map"].encoding == "32FC1" and am.shape == amap.shape
    np.testing.assert_allclose(am, amap)  # the top view: highest point score per cell
    assert float(am.max()) == pytest.approx(verdict.score, rel=1e-5)
    heat = maps["heatmap"]
    assert heat.encoding == "bgr8" and (heat.height, heat.width) == amap.shape and filled.any()
    values = result_values(frame.header, verdict, frame, seq=1, mode="3d", model_id="m", inputs="points")
    out = decision_messages(frame.header, verdict, values, maps)
    typed = ["decision"] if TYPED_AVAILABLE else []  # ~/decision where vision_msgs is installed
    assert list(out) == ["result", *typed, "reject", "score", "anomaly_map", "heatmap", "anomaly_cloud"]


def _bad_type_cloud() -> object:
    msg = cloud(np.zeros((300, 3), np.float32))
    msg.fields[2].datatype = PointField.INT32  # z not a float: malformed
    return msg


@pytest.mark.parametrize("msg, kind", [
    (lambda: cloud(scan_points(6)[0][:100]), "bad_input"),  # fewer points than one chunk
    (lambda: cloud(np.zeros((0, 3), np.float32)), "degraded"),  # nothing measured
    (lambda: cloud(np.full((700, 3), np.nan, np.float32)), "degraded"),  # every point non-finite
    (lambda: cloud(scan_points(6)[0] + np.float32(50.0)), "implausible"),  # beyond max_range
    (_bad_type_cloud, "ConversionError"),
])
def test_a_bad_scan_gets_the_fail_safe_with_the_judges_kind(judge, msg, kind):
    frame, verdict = judge.judge({"points": msg()})
    assert not verdict.judged and verdict.kind == kind and verdict.decision == "reject"
    assert map_messages(verdict, frame, set(MAPS)) == {}
    values = result_values(None, verdict, frame, seq=1, mode="3d", model_id="m", inputs="points")
    assert values["error"] == kind and "chunks" not in values
    assert list(decision_messages(None, verdict, values)) == ["result", *(["decision"] if TYPED_AVAILABLE else []),
                                                               "reject"]


def test_other_models_keep_the_frame_pipeline_and_warm_up_fits_the_model(detector):
    from types import SimpleNamespace

    from cmdr_ros.judge import Judge

    assert FrameJudge(Judge(SimpleNamespace(threshold=1.0)), "3d").kind.name == "frame"
    warm_up(detector)  # a scan of one chunk and a tail: no CmdrError


# ------------------------------------------------------------------------------------------------ through DDS
@pytest.mark.slow
def test_the_node_judges_each_scan_once_with_its_anomaly_cloud(ros, scan_model, tmp_path_factory):
    node_gen = start_node(ros, tmp_path_factory.mktemp("scan_node"),
                          {"checkpoint": scan_model["checkpoint"], "time_budget": 120.0}, (ros.points_pub,))
    node = next(node_gen)
    try:
        parts = []
        for seed, defect in ((11, None), (12, "bump")):
            points, _ = scan_points(seed, defect)
            stamp = ros.next_stamp()
            ros.publish_set(stamp, cloud=cloud(points))
            parts.append((stamp, points))
        for stamp, points in parts:
            v = ros.result(stamp)
            assert v["judged"] == "true", (v, node.logs())
            assert v["stamp"] == stamp_str(stamp) and v["inputs"] == "points" and v["alignment"] == "scan"
            assert v["mode"] == "3d" and v["model_id"] == scan_model["model_id"] and int(v["chunks"]) >= 2
            ros.wait_for("the anomaly cloud", lambda: any(m.header.stamp == stamp
                                                          for _, m in ros.received["anomaly_cloud"]))
            ac = ros.by_stamp("anomaly_cloud", stamp)
            assert ac.width * ac.height == len(points) and ac.header.frame_id == "profiler"
            f = pointcloud2_fields(ac, ["x", "intensity"])
            np.testing.assert_array_equal(f["x"][0], points[:, 0])
            assert np.isfinite(f["intensity"]).all() and float(f["intensity"].max()) == pytest.approx(
                float(v["score"]), rel=1e-4)
            ros.wait_for("the heatmap", lambda: any(m.header.stamp == stamp for _, m in ros.received["heatmap"]))
        assert [len(ros.results_for(s)) for s, _ in parts] == [1, 1]  # exactly one decision per part
    finally:
        node_gen.close()
