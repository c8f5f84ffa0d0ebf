"""The bag's own tf for `cmdr bag eval`: transforms of /tf and /tf_static read back from a bag, chains resolved as
tf2 resolves them (checked against hand-computed poses), /tf_static recorded latched, and eval / to-dataset
judging a separate-sensor bag with it (and refusing it, no_transform, without it)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time
from scipy.spatial.transform import Rotation

from cmdr_ros import CmdrError
from cmdr_ros.config import preset
from cmdr_ros.data.mvtec3d import load_rgb, load_xyz
from cmdr_ros.data.synthetic import CellConfig, generate_dataset
from cmdr_ros.geometry import CameraIntrinsics, make_transform, transform_points
from cmdr_ros.ros.bags import BagWriter, bag_to_dataset, eval_bag, open_bag, playback_qos, topic_qos
from cmdr_ros.ros.bags.tf import TfError, TfTree, bag_tf_lookup, read_tf, tf_message
from cmdr_ros.ros.conversions import array_to_image, dict_to_camera_info, make_header, xyz_to_pointcloud2

NS = 1_000_000_000
START = 1_700_000_000 * NS


def _yaw(deg: float, xyz=(0.0, 0.0, 0.0)) -> np.ndarray:
    return make_transform(xyz, Rotation.from_euler("z", deg, degrees=True).as_quat())


def _time(ns: int) -> Time:
    return Time(sec=ns // NS, nanosec=ns % NS)


def _write_tf_bag(path: Path, static, dynamic=(), storage="mcap") -> None:
    """``static``: [(parent, child, T)] in one /tf_static message; ``dynamic``: [(parent, child, stamp, T)], one
    /tf message each."""
    with BagWriter(path, storage) as w:
        w.write("/tf_static", tf_message([(p, c, START, T) for p, c, T in static]), START)
        for p, c, stamp, T in dynamic:
            w.write("/tf", tf_message([(p, c, stamp, T)]), stamp)


def _lookup(path: Path, warnings=None):
    with open_bag(path) as reader:
        return bag_tf_lookup(read_tf(reader, path), None if warnings is None else warnings.append)


def test_static_chain_either_direction(tmp_path):
    """camera and sensor hang off one base: sensor -> camera goes up to base and down again, by hand:
    camera at (1, 0, 0) turned 90 deg about z, sensor at (0, 2, 0): the sensor's origin is (0, 2, 0) in base,
    (-1, 2, 0) from the camera's origin, (2, 1, 0) in the camera's turned axes."""
    _write_tf_bag(tmp_path / "bag", [("base", "camera", _yaw(90, (1, 0, 0))), ("/base", "/sensor", _yaw(0, (0, 2, 0)))])
    warnings: list[str] = []
    lookup = _lookup(tmp_path / "bag", warnings)
    T = lookup("camera", "sensor", _time(START + 5 * NS))  # static: valid at any stamp
    np.testing.assert_allclose(transform_points(np.array([[0.0, 0, 0], [1, 0, 0]]), T), [[2, 1, 0], [2, 0, 0]],
                               atol=1e-9)
    np.testing.assert_allclose(lookup("sensor", "camera", _time(START)), np.linalg.inv(T), atol=1e-9)
    np.testing.assert_allclose(lookup("base", "sensor", _time(START)), _yaw(0, (0, 2, 0)), atol=1e-9)
    assert lookup("camera", "elsewhere", _time(START)) is None and "elsewhere" in warnings[-1]


def test_dynamic_hops_interpolate_as_tf2_and_never_extrapolate(tmp_path):
    """An arm moving on /tf (base -> arm at 10 s: origin, 0 deg; at 12 s: (2, 0, 0), 90 deg) carries the sensor
    (static, 1 m along the arm's x). At 11 s tf2 interpolates: the arm at (1, 0, 0) turned 45 deg, so the sensor's
    origin is at (1 + cos 45, sin 45, 0) in base; at a recorded stamp the stamp's own pose; before 10 s or after
    12 s nothing; stamp 0 the latest common time (12 s)."""
    t10, t11, t12 = START + 10 * NS, START + 11 * NS, START + 12 * NS
    _write_tf_bag(tmp_path / "bag", [("arm", "sensor", _yaw(0, (1, 0, 0)))],
                  [("base", "arm", t10, _yaw(0)), ("base", "arm", t12, _yaw(90, (2, 0, 0)))])
    warnings: list[str] = []
    lookup = _lookup(tmp_path / "bag", warnings)
    c = np.sqrt(0.5)
    np.testing.assert_allclose(transform_points(np.zeros((1, 3)), lookup("base", "sensor", _time(t11))),
                               [[1 + c, c, 0]], atol=1e-9)
    np.testing.assert_allclose(lookup("base", "sensor", _time(t11))[:3, :3], _yaw(45)[:3, :3], atol=1e-9)
    np.testing.assert_allclose(transform_points(np.zeros((1, 3)), lookup("base", "sensor", _time(t12))),
                               [[2, 1, 0]], atol=1e-9)
    np.testing.assert_allclose(transform_points(np.zeros((1, 3)), lookup("sensor", "base", _time(t10))),
                               [[-1, 0, 0]], atol=1e-9)
    assert lookup("base", "sensor", _time(t10 - 1)) is None and lookup("base", "sensor", _time(t12 + 1)) is None
    assert len(warnings) == 2
    tree = TfTree(read_tf_of(tmp_path / "bag"))
    np.testing.assert_allclose(tree.lookup("base", "sensor", 0), lookup("base", "sensor", _time(t12)), atol=1e-9)
    with pytest.raises(TfError, match="extrapolation"):
        tree.lookup("base", "sensor", t10 - 1)


def read_tf_of(path: Path):
    with open_bag(path) as reader:
        return read_tf(reader, path)


def test_two_trees_loops_and_no_tf():
    """Frames of two separate trees are not connected; a bag without tf gives no lookup at all (today's
    behaviour: the extrinsics parameter, else no_transform)."""
    from cmdr_ros.ros.bags.tf import Transform

    tree = TfTree([Transform("base", "camera", 0, np.eye(4), True), Transform("world", "sensor", 0, np.eye(4), True)])
    with pytest.raises(TfError, match="not connected"):
        tree.lookup("camera", "sensor", START)
    loop = TfTree([Transform("a", "b", 0, np.eye(4), True), Transform("b", "a", 0, np.eye(4), True),
                   Transform("c", "d", 0, np.eye(4), True)])
    with pytest.raises(TfError, match="loop"):
        loop.lookup("d", "a", START)
    assert bag_tf_lookup([]) is None


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_tf_static_is_recorded_transient_local(tmp_path, storage):
    """metadata.yaml (version 8: offered_qos_profiles a YAML string, as rosbag2 reads it) offers /tf_static as
    tf2's static broadcaster does: reliable, transient-local (rmw durability 1), keep_last 1; /tf and the camera
    topics reliable, volatile (2). ``ros2 bag play`` (and ``cmdr bag play``) then latch it."""
    _write_tf_bag(tmp_path / "bag", [("base", "camera", np.eye(4))], [("base", "arm", START, np.eye(4))], storage)
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    offers = {t["topic_metadata"]["name"]: yaml.safe_load(t["topic_metadata"]["offered_qos_profiles"])
              for t in meta["topics_with_message_count"]}
    assert [(o["reliability"], o["durability"], o["history"], o["depth"]) for o in offers["/tf_static"]] == \
        [(1, 1, 1, 1)]
    assert [(o["reliability"], o["durability"]) for o in offers["/tf"]] == [(1, 2)]
    with open_bag(tmp_path / "bag") as reader:
        assert reader.topics["/tf_static"].msgtype == "tf2_msgs/msg/TFMessage"
        qos = topic_qos(reader, "/tf_static")
    assert (qos.reliability.name, qos.durability.name) == ("RELIABLE", "TRANSIENT_LOCAL")
    assert playback_qos("/tf", [], 0).durability.name == "VOLATILE"


# ------------------------------------------------------------------------------------- judging a separate sensor
T_CAMERA_FROM_SENSOR = make_transform([-0.04, 0.03, -0.12], Rotation.from_euler("xyz", [-5, 7, -12], degrees=True)
                                      .as_quat())


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    d = generate_dataset(tmp_path_factory.mktemp("tfcell"), "block", n_train=0, n_val=0, n_test_good=1,
                         n_test_per_defect=1, cfg=CellConfig(image_size=64), defects=("tear",))
    from cmdr_ros.data.mvtec3d import MVTec3DClass
    from cmdr_ros.model.detector import CMDRDetector

    cls = MVTec3DClass(d)
    info = CameraIntrinsics.from_mvtec_json(cls.camera_parameters()).to_dict()
    det = CMDRDetector(preset("lite", "rgbd"), device="cpu")
    det.threshold, det.model_id = 2.0, "untrained"
    return d, info, det


def _sensor_bag(path: Path, cell, tf: str | None) -> None:
    """Two parts seen by the camera (image) and a separate 3D sensor (cloud in frame 'sensor'); ``tf``: 'static'
    mounts the sensor on /tf_static (camera and sensor under 'base'), 'wrong' records a TransformStamped there,
    None records no tf."""
    d, info, _ = cell
    T_base_camera = _yaw(30, (0.5, 0.2, 1.0))
    with BagWriter(path, "mcap") as w:
        if tf == "static":
            w.write("/tf_static", tf_message([("base", "camera", START, T_base_camera),
                                              ("base", "sensor", START, T_base_camera @ T_CAMERA_FROM_SENSOR)]), START)
        elif tf == "wrong":
            from geometry_msgs.msg import TransformStamped

            w.write("/tf_static", TransformStamped(header=make_header(START, "base"), child_frame_id="sensor"), START)
        for i, sample in enumerate(sorted((d / "test").glob("*/rgb/000.png"))):
            stamp = START + (i + 1) * NS
            xyz = load_xyz(sample.parent.parent / "xyz" / "000.tiff")
            pts = xyz[np.any(xyz != 0, axis=-1)]
            cloud = transform_points(pts, np.linalg.inv(T_CAMERA_FROM_SENSOR)).astype(np.float32)  # in 'sensor'
            w.write("/camera_info", dict_to_camera_info(info, make_header(stamp, "camera")), stamp)
            w.write("/image", array_to_image(load_rgb(sample), "rgb8", make_header(stamp, "camera")), stamp)
            w.write("/points", xyz_to_pointcloud2(cloud, make_header(stamp, "sensor")), stamp)


def _eval(bag: Path, cell, out: Path, params=None):
    from cmdr_ros.ros.bags import read_messages

    rep = eval_bag(bag, cell[2], out, params=params, image_topic="/image", points_topic="/points",
                   info_topic="/camera_info", write_images=False)
    return [{**{kv.key: kv.value for kv in arr.status[0].values}, "tf": rep["tf"]}
            for _, _, arr in read_messages(out / "results_bag", ["/cmdr_inspection/result"])]


def test_eval_judges_a_separate_sensor_with_the_recorded_tf(tmp_path, cell):
    """With /tf_static the cloud is projected through the recorded mount (transform 'tf') and scored exactly as
    with the same mount given as the extrinsics parameter; without tf in the bag, or with use_tf off, every part is
    a not-judged no_transform reject; a /tf_static of another type is refused in words."""
    _sensor_bag(tmp_path / "tf", cell, "static")
    _sensor_bag(tmp_path / "none", cell, None)
    with_tf = _eval(tmp_path / "tf", cell, tmp_path / "out_tf")
    assert len(with_tf) == 2 and all(r["judged"] == "true" and r["transform"] == "tf" for r in with_tf)
    assert with_tf[0]["tf"].startswith("2 static + 0 dynamic transforms of frames base, camera, sensor (")
    T = T_CAMERA_FROM_SENSOR
    ext = [*map(float, T[:3, 3]), *map(float, Rotation.from_matrix(T[:3, :3]).as_quat())]
    with_param = _eval(tmp_path / "none", cell, tmp_path / "out_param", {"extrinsics": ext})
    assert [r["transform"] for r in with_param] == ["parameter"] * 2
    for a, b in zip(with_tf, with_param):
        assert float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-6)
        assert a["coverage"] == b["coverage"] and a["decision"] == b["decision"]
    for rows in (_eval(tmp_path / "none", cell, tmp_path / "out_none"),
                 _eval(tmp_path / "tf", cell, tmp_path / "out_off", {"use_tf": False})):
        assert [(r["judged"], r["decision"], r["error"]) for r in rows] == [("false", "reject", "no_transform")] * 2
        assert rows[0]["tf"].startswith(("none in the bag", "not used (use_tf false)"))
    _sensor_bag(tmp_path / "wrong", cell, "wrong")
    with pytest.raises(CmdrError, match="/tf_static carries geometry_msgs/msg/TransformStamped, expected "
                                        "tf2_msgs/msg/TFMessage"):
        _eval(tmp_path / "wrong", cell, tmp_path / "out_wrong")


def test_to_dataset_aligns_a_separate_sensor_with_the_recorded_tf(tmp_path, cell):
    _sensor_bag(tmp_path / "tf", cell, "static")
    _sensor_bag(tmp_path / "none", cell, None)
    args = dict(image_topic="/image", points_topic="/points", info_topic="/camera_info")
    assert bag_to_dataset(tmp_path / "tf", tmp_path / "ds", **args) == 2
    assert len(list((tmp_path / "ds" / "train" / "good" / "xyz").glob("*.tiff"))) == 2
    with pytest.raises(CmdrError, match="2 could not be aligned"):
        bag_to_dataset(tmp_path / "none", tmp_path / "ds2", **args)


def test_interpolation_takes_the_shorter_way_round():
    """tf2 slerps the shorter way: from 170 deg to -170 deg the halfway pose is 180 deg, not 0; a quarter of the way
    from 0 to 90 deg is 22.5 deg, and the translation moves linearly."""
    from cmdr_ros.geometry.transforms import interpolate_transform

    np.testing.assert_allclose(interpolate_transform(_yaw(170), _yaw(-170), 0.5), _yaw(180), atol=1e-9)
    np.testing.assert_allclose(interpolate_transform(_yaw(0), _yaw(90, (4, 0, 0)), 0.25), _yaw(22.5, (1, 0, 0)),
                               atol=1e-9)


def test_cli_eval_says_which_tf_it_judged_with(tmp_path, cell, capsys, monkeypatch):
    from cmdr_ros.cli.main import main

    _sensor_bag(tmp_path / "tf", cell, "static")
    monkeypatch.setattr("cmdr_ros.model.checkpoint.load_checkpoint", lambda *a, **k: cell[2])  # the untrained model
    args = ["--checkpoint", "untrained", "--device", "cpu", "--image-topic", "/image", "--points-topic", "/points",
            "--info-topic", "/camera_info", "--no-images", "--quiet"]
    assert main(["bag", "eval", str(tmp_path / "tf"), "--out", str(tmp_path / "out"), *args]) == 0
    out = capsys.readouterr().out
    assert "tf: 2 static + 0 dynamic transforms of frames base, camera, sensor (" in out
    assert "2 frames (" in out and "0 not judged" in out


def test_only_the_hops_below_the_common_frame_count():
    """As in tf2, a lookup between two frames mounted on 'base' needs no transform above 'base': camera <- sensor
    holds at a stamp where the moving world -> base hop (/tf) has none; sensor <- world there has none."""
    from cmdr_ros.ros.bags.tf import Transform

    tree = TfTree([Transform("world", "base", START, _yaw(10), False), Transform("world", "base", START + NS, _yaw(20),
                                                                                  False),
                   Transform("base", "camera", 0, _yaw(90, (1, 0, 0)), True),
                   Transform("base", "sensor", 0, _yaw(0, (0, 2, 0)), True)])
    late = START + 5 * NS
    np.testing.assert_allclose(transform_points(np.zeros((1, 3)), tree.lookup("camera", "sensor", late)), [[2, 1, 0]],
                               atol=1e-9)
    with pytest.raises(TfError, match="extrapolation"):
        tree.lookup("sensor", "world", late)
    np.testing.assert_allclose(tree.lookup("world", "camera", 0), _yaw(20) @ _yaw(90, (1, 0, 0)), atol=1e-9)
    assert tree._latest_common("camera", "sensor") == 0 and tree._latest_common("world", "sensor") == START + NS


@pytest.mark.skipif(importlib.util.find_spec("tf2_msgs") is not None, reason="tf2_msgs installed: /tf plays")
def test_play_without_tf2_msgs_names_the_topics_it_can_play(tmp_path, capsys):
    """In a pip-only venv a bag's /tf_static cannot be published (no tf2_msgs module): `cmdr bag play` says which
    --topics play without it, before any DDS."""
    from cmdr_ros.cli.main import main

    with BagWriter(tmp_path / "bag", "mcap") as w:
        w.write("/tf_static", tf_message([("base", "camera", START, np.eye(4))]), START)
        w.write("/image", array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8", make_header(START, "camera")), START)
    assert main(["bag", "play", str(tmp_path / "bag")]) == 2
    err = capsys.readouterr().err
    assert "/tf_static: message type 'tf2_msgs/msg/TFMessage' is not installed" in err
    assert "play the other topics with --topics /image" in err
