"""The ROS side of both pipeline kinds (``cmdr_ros.ros.kinds``) through one interface: the node's ``FrameJudge``
picks its kind once from the model, every assembled part carries it, and the messages, the bag a class folder
becomes and what ``cmdr bag eval`` reads follow the part's kind without asking which it is."""
from __future__ import annotations

import numpy as np
import pytest

from cmdr_ros.config import preset
from cmdr_ros.data.synthetic import CellConfig, generate_dataset, render_part
from cmdr_ros.judge import Judge
from cmdr_ros.model.detector import CMDRDetector
from cmdr_ros.pipelines import KINDS
from cmdr_ros.ros.bags import bag_from_dataset, read_messages
from cmdr_ros.ros.bench.judge_path import frame_messages
from cmdr_ros.ros.kinds import ROS_KINDS, kind_of, ros_kind
from cmdr_ros.ros.node.frame_judge import FrameJudge
from cmdr_ros.ros.node.outputs import map_messages, result_values
from cmdr_ros.ros.topics import MAPS, PROFILER, RECORDED
from node_harness import scan_dataset, scan_model_config, scan_points


@pytest.fixture(scope="module", params=["frame", "chunks"])
def case(request):
    """A detector of each kind (random heads, threshold 0: every judged part a reject) and one part's messages."""
    if request.param == "frame":
        det = CMDRDetector(preset("lite", "3d"), device="cpu")
        msgs = frame_messages(None, render_part(np.random.default_rng(0), CellConfig(image_size=64)).xyz, "3d")
    else:
        det = CMDRDetector(scan_model_config(), device="cpu")
        msgs = frame_messages(None, scan_points(3, "bump")[0], "3d")
    det.threshold, det.model_id = 0.0, request.param
    return det, msgs


def test_every_pipeline_kind_has_its_ros_side():
    assert set(ROS_KINDS) == set(KINDS)
    assert ros_kind(preset("lite", "rgbd")) is ROS_KINDS["frame"] and ros_kind(None) is ROS_KINDS["frame"]
    assert ros_kind(scan_model_config()) is ROS_KINDS["chunks"]
    assert ROS_KINDS["frame"].points_topic == RECORDED["points"] and ROS_KINDS["chunks"].points_topic == PROFILER["points"]
    assert ROS_KINDS["frame"].truth == ("gt", RECORDED["gt"]) and ROS_KINDS["chunks"].truth[1] == RECORDED["gt_points"]


def test_a_part_is_assembled_judged_and_published_as_its_kind(case):
    det, msgs = case
    fj = FrameJudge(Judge(det), "3d")
    assert fj.kind is ros_kind(det)
    frame, verdict = fj.judge(msgs)
    assert kind_of(frame) is fj.kind and frame.kind == det.config.pipeline
    assert verdict.judged and verdict.decision == "reject", verdict.reason
    maps = map_messages(verdict, frame, set(MAPS))
    assert list(maps) == ["anomaly_map", "heatmap", "anomaly_cloud"]
    assert maps["anomaly_cloud"].width * maps["anomaly_cloud"].height == len(frame.points)
    values = result_values(frame.header, verdict, frame, seq=1, mode="3d", model_id=det.model_id, inputs="points")
    assert ("chunks" in values) == (frame.kind == "chunks")
    aligned = FrameJudge.aligner("3d", {}, kind=frame.kind).assemble(msgs)  # alignment only, the same part
    assert aligned.kind == frame.kind and np.array_equal(aligned.points, frame.points, equal_nan=True)


@pytest.mark.parametrize("layout", ["frame", "chunks"])
def test_a_class_folder_becomes_the_bag_of_its_sensor(layout, tmp_path):
    if layout == "frame":
        data = generate_dataset(tmp_path / "d", "block", n_train=0, n_val=0, n_test_good=1, n_test_per_defect=1,
                                cfg=CellConfig(image_size=64), defects=("bump",))
    else:
        data = scan_dataset(tmp_path / "d", n_train=0, n_val=0)
    summary = bag_from_dataset(data, tmp_path / "bag", start_ns=10**18)
    cloud = ROS_KINDS[layout].points_topic
    assert summary["frames"] == 2 and summary["topics"][cloud] == 2 and summary["topics"][RECORDED["sample"]] == 2
    truth = ROS_KINDS[layout].truth[1]
    assert summary["topics"][truth] == 2
    samples = [m.data for topic, _, m in read_messages(tmp_path / "bag") if topic == RECORDED["sample"]]
    assert samples == ["good/000", "bump/000"]
