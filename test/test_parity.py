"""The node and `cmdr bag eval` judge a part the same way: one bag, one params file, played into a real node over DDS
and evaluated offline; every stamp gets the same decision, judged flag, error kind, score, coverage and alignment.

Two cells: rgbd with an unorganized cloud in another frame (projected with CameraInfo and the ``extrinsics``
parameter) and 3D-only profilometer scans (rasterized at ``raster_resolution``). Each bag also holds a malformed
cloud and a lone image/cloud, so the fail-safe paths are compared too.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation
from std_msgs.msg import String

from cmdr_ros.geometry import make_transform, transform_points
from cmdr_ros.model.checkpoint import load_checkpoint
from cmdr_ros.ros.bags import BagWriter, eval_bag, open_bag, play_bag, read_messages
from cmdr_ros.ros.bags.tf import tf_message
from cmdr_ros.ros.conversions import array_to_image, make_header, xyz_to_pointcloud2
from cmdr_ros.ros.node.parameters import read_params_file
from cmdr_ros.ros.node.typed_decision import AVAILABLE as TYPED_AVAILABLE
from node_harness import (NS, PROFILE_RESOLUTION, cell_camera_info, cell_frame, profile_cloud,
                          start_node, stamp_ns, train_cell_model, values_of)

pytestmark = pytest.mark.slow
TF2 = all(importlib.util.find_spec(m) is not None for m in ("tf2_ros", "tf2_msgs"))  # a ROS install, not PyPI

T_SENSOR_FROM_CAMERA = make_transform([0.05, -0.02, 0.10], Rotation.from_euler("xyz", [6, -8, 15], degrees=True)
                                      .as_quat())
COMPARED = ("decision", "judged", "score", "threshold", "error", "reason", "inputs", "coverage", "valid_ratio",
            "alignment", "transform", "mode", "model_id", "frame_id.image", "frame_id.points", "part_id")



def _params_file(path, checkpoint, **params) -> str:
    doc = {"/**/cmdr_inspection": {"ros__parameters": {"checkpoint": str(checkpoint), "device": "cpu",
                                                        "time_budget": 120.0, "use_tf": False, **params}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def _topics_of(bag) -> list[str]:
    """Every topic but tf's: rclpy decodes them (tf2_msgs has no PyPI wheel)."""
    with open_bag(bag) as reader:
        return [t for t in reader.topics if t not in ("/tf", "/tf_static")]


def _compare(ros, bag, params_file, checkpoint, tmp_path, n_expected, differ=None):
    """Play the bag into the running node, evaluate it offline, compare result by result; ``differ``: {key:
    (node's value, bag eval's value)} of a key that is expected to differ in every judged result."""
    stamps = sorted({stamp_ns(m.header.stamp) for topic, _, m in read_messages(bag, _topics_of(bag))
                     if topic in ("/image", "/points")})
    with open_bag(bag) as reader:
        topics = [t for t in ("/camera_info", "/part_id", "/image", "/points") if t in reader.topics]
        if TF2 and "/tf_static" in reader.topics:
            topics.insert(0, "/tf_static")  # latched: the node's tf2 listener holds the sensor mount before a cloud
    play_bag(bag, rate=1.0, node=ros.node, topics=topics, wait=10.0)

    def node_results():
        out = {}
        for _, arr in ros.received["result"]:
            out.setdefault(stamp_ns(arr.header.stamp), []).append(values_of(arr))
        return out

    ros.wait_for("a node result for every input stamp", lambda: set(stamps) <= set(node_results()))
    detector = load_checkpoint(checkpoint, "cpu")
    rep = eval_bag(bag, detector, tmp_path / "eval", params=read_params_file(params_file), write_images=False,
                   image_topic="/image", points_topic="/points", info_topic="/camera_info")
    offline = {}
    for _, _, arr in read_messages(tmp_path / "eval" / "results_bag", ["/cmdr_inspection/result"]):
        offline.setdefault(stamp_ns(arr.header.stamp), []).append(values_of(arr))
    online = node_results()
    assert sorted(offline) == stamps and len(stamps) == n_expected
    lines = []
    for s in stamps:
        a = sorted(online[s], key=lambda v: v["inputs"])
        b = sorted(offline[s], key=lambda v: v["inputs"])
        assert len(a) == len(b), (s, a, b)
        for x, y in zip(a, b):
            for k, (online_value, offline_value) in (differ or {}).items():
                if x["judged"] == "true":
                    assert (x.pop(k), y.pop(k)) == (online_value, offline_value), (s, k, x, y)
            assert {k: x.get(k) for k in COMPARED} == {k: y.get(k) for k in COMPARED}, (s, x, y)
            lines.append(f"  {s}: {x['inputs']:<12} {x['decision']:<6} judged={x['judged']:<5} "
                         f"score={x.get('score', '-'):<10} {x.get('error', '')}")
    print("\n[parity] node == bag eval for every result:\n" + "\n".join(lines))
    if TYPED_AVAILABLE:  # ~/decision: the same class and score on the wire and in the results bag
        ros.wait_for("a node ~/decision for every input stamp",
                     lambda: set(stamps) <= set(_typed(m for _, m in ros.received["decision"])))
        bag_out = tmp_path / "eval" / "results_bag"
        bagged = _typed(m for _, _, m in read_messages(bag_out, ["/cmdr_inspection/decision"]))
        with ros.cond:
            assert _typed(m for _, m in ros.received["decision"]) == bagged
    return rep


def _typed(msgs) -> dict[int, list[tuple[str, str]]]:
    """(class_id, score) of each ~/decision, by stamp."""
    out: dict[int, list[tuple[str, str]]] = {}
    for m in msgs:
        out.setdefault(stamp_ns(m.header.stamp), []).append((m.results[0].class_id, f"{m.results[0].score:.6f}"))
    return {k: sorted(v) for k, v in out.items()}


def _write_sensor_part(w: BagWriter, stamp: int, seed: int, defect: str | None) -> None:
    """One part of a cell whose 3D sensor sits apart from the camera (the cloud in frame 'sensor'): its CameraInfo,
    image and cloud; ``defect`` 'malformed' truncates the cloud's data, 'lone' records no cloud, others are drawn."""
    part = cell_frame(seed, None if defect in ("malformed", "lone") else defect)
    pts = transform_points(part.xyz[part.xyz[..., 2] > 0], T_SENSOR_FROM_CAMERA).astype(np.float32)
    cloud = xyz_to_pointcloud2(pts, make_header(stamp, "sensor"))
    if defect == "malformed":
        cloud.data = cloud.data[: len(cloud.data) // 2]
    w.write("/camera_info", _info(stamp), stamp)
    w.write("/image", array_to_image(part.rgb, "rgb8", make_header(stamp, "camera")), stamp)
    if defect != "lone":
        w.write("/points", cloud, stamp)


def test_rgbd_projected_cloud_in_another_frame(ros, tmp_path_factory):
    d = tmp_path_factory.mktemp("parity_rgbd")
    model = train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")
    T = np.linalg.inv(T_SENSOR_FROM_CAMERA)  # sensor -> camera: the extrinsics parameter
    ext = [*map(float, T[:3, 3]), *map(float, Rotation.from_matrix(T[:3, :3]).as_quat())]
    params_file = _params_file(d / "params.yaml", model["checkpoint"], extrinsics=ext)
    bag, t0 = d / "bag", 1_700_000_000 * NS
    with BagWriter(bag, "mcap") as w:
        w.write("/camera_info", _info(t0 - NS), t0 - NS)  # the node holds a CameraInfo before the first part
        for i, defect in enumerate((None, "tear", None, "bump", "malformed", "lone")):
            stamp = t0 + i * NS // 2
            _write_sensor_part(w, stamp, 300 + i, defect)
            w.write("/cmdr/sample", String(data=f"{defect or 'good'}/{i:03d}"), stamp)
            if i != 2:  # part 2 has no id; odd parts' ids come 20 ms after the frame (within part_id.wait)
                w.write("/part_id", make_header(stamp + 10_000_000 * (i % 2), f"P-{i}"), stamp + 20_000_000 * (i % 2))
    gen = start_node(ros, d, {}, (ros.image_pub, ros.points_pub), params_file=params_file)
    next(gen)
    try:
        rep = _compare(ros, bag, params_file, model["checkpoint"], d, 6)
    finally:
        gen.close()
    assert rep["unmatched"] == {"/image": 1, "/points": 0} and rep["frames"] == 5 and rep["not_judged"] == 1
    every = [values_of(arr) for _, _, arr in read_messages(d / "eval" / "results_bag", ["/cmdr_inspection/result"])]
    assert [v.get("part_id") for v in every] == ["P-0", "P-1", None, "P-3", "P-4", "P-5"]  # before or after
    rows = [v for v in every if v["judged"] == "true"]
    assert len(rows) == 4 and all(v["alignment"] == "projected" and v["transform"] == "parameter" for v in rows)
    aligned = np.mean([(cell_frame(300 + i).xyz[..., 2] > 0).mean() for i in (0, 2)])
    assert float(rows[0]["coverage"]) == pytest.approx(aligned, abs=0.05)


def _sensor_bag(bag, t0: int, tf_static: bool) -> None:
    """The cell with a separate 3D sensor: parts as in the test above, the cloud in frame 'sensor'; with
    ``tf_static`` the mount is recorded on /tf_static as a cell's static broadcaster publishes it (camera and sensor
    under 'base', so the lookup walks up and down a tree)."""
    T_base_camera = make_transform([0.4, -0.3, 1.2], Rotation.from_euler("xyz", [180, 0, 25], degrees=True).as_quat())
    with BagWriter(bag, "mcap") as w:
        if tf_static:
            w.write("/tf_static", tf_message([("base", "camera", t0 - NS, T_base_camera), (
                "base", "sensor", t0 - NS, T_base_camera @ np.linalg.inv(T_SENSOR_FROM_CAMERA))]), t0 - NS)
        w.write("/camera_info", _info(t0 - NS), t0 - NS)
        for i, defect in enumerate((None, "tear", None, "malformed")):
            _write_sensor_part(w, t0 + i * NS // 2, 500 + i, defect)


def test_rgbd_separate_sensor_mounted_on_tf_static(ros, tmp_path_factory):
    """A bag of a cell whose 3D sensor is mounted apart from the camera, the mount on /tf_static: `cmdr bag eval`
    resolves it from the bag's own tf (transform 'tf') and judges every part as the node does; the same bag
    without /tf_static is a no_transform reject offline. With tf2 (a ROS install) the node hears the played
    /tf_static; in a pip-only venv it has no tf2_ros, so it gets the same mount as its extrinsics parameter (its
    documented fallback) and only the 'transform' key differs (parameter on the node, tf offline)."""
    d = tmp_path_factory.mktemp("parity_tf")
    model = train_cell_model(d / "data", "rgbd", d / "rgbd.ckpt")
    T = np.linalg.inv(T_SENSOR_FROM_CAMERA)
    ext = [*map(float, T[:3, 3]), *map(float, Rotation.from_matrix(T[:3, :3]).as_quat())]
    params_file = _params_file(d / "params.yaml", model["checkpoint"], use_tf=True,
                               **({} if TF2 else {"extrinsics": ext}))
    bag, t0 = d / "bag", 1_700_000_200 * NS
    _sensor_bag(bag, t0, tf_static=True)
    gen = start_node(ros, d, {}, (ros.image_pub, ros.points_pub), params_file=params_file)
    node = next(gen)
    try:
        rep = _compare(ros, bag, params_file, model["checkpoint"], d, 4,
                       differ=None if TF2 else {"transform": ("parameter", "tf")})
        if not TF2:
            assert "tf2_ros is not installed" in node.logs()  # the gap: no tf2 on PyPI, the node cannot hear /tf_static
    finally:
        gen.close()
    assert rep["frames"] == 4 and rep["not_judged"] == 1
    rows = [values_of(arr) for _, _, arr in read_messages(d / "eval" / "results_bag", ["/cmdr_inspection/result"])]
    assert [(r["judged"], r.get("transform")) for r in rows] == [("true", "tf")] * 3 + [("false", "none")]
    _sensor_bag(d / "bag_no_tf", t0, tf_static=False)
    detector = load_checkpoint(model["checkpoint"], "cpu")
    eval_bag(d / "bag_no_tf", detector, d / "eval_no_tf", params=read_params_file(
        _params_file(d / "params_no_ext.yaml", model["checkpoint"], use_tf=True)), write_images=False,
        image_topic="/image", points_topic="/points", info_topic="/camera_info")
    rows = [values_of(arr) for _, _, arr in read_messages(d / "eval_no_tf" / "results_bag",
                                                          ["/cmdr_inspection/result"])]
    assert [(r["judged"], r["error"]) for r in rows] == [("false", "no_transform")] * 3 + [("false", "ConversionError")]


def _info(stamp: int):
    info = cell_camera_info()
    info.header = make_header(stamp, "camera")
    return info


def test_3d_rasterized_profilometer_scans(ros, tmp_path_factory):
    d = tmp_path_factory.mktemp("parity_3d")
    model = train_cell_model(d / "data", "3d", d / "3d.ckpt", profilometer=True)
    params_file = _params_file(d / "params.yaml", model["checkpoint"], raster_resolution=PROFILE_RESOLUTION)
    bag, t0 = d / "bag", 1_700_000_100 * NS
    with BagWriter(bag, "mcap") as w:
        for i, defect in enumerate((None, "tear", None, "stuck")):
            stamp = t0 + i * NS // 2
            pts = profile_cloud(400 + i, defect if defect != "stuck" else None)
            if defect == "stuck":
                pts = np.tile(pts[:1], (len(pts), 1))  # a stuck sensor: every point the same
            w.write("/points", xyz_to_pointcloud2(pts, make_header(stamp, "profiler")), stamp)
    gen = start_node(ros, d, {}, (ros.points_pub,), params_file=params_file)
    next(gen)
    try:
        rep = _compare(ros, bag, params_file, model["checkpoint"], d, 4)
    finally:
        gen.close()
    assert rep["frames"] == 4 and rep["not_judged"] == 1

