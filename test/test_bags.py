"""`cmdr bag`: dataset -> rosbag2 (content, metadata Humble reads), play on DDS, offline eval == `cmdr eval`."""
import csv
import json
import os
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from domains import new_domain
import yaml

from cmdr_ros import CmdrError
from cmdr_ros.cli.main import main
from cmdr_ros.config import ModelConfig, preset
from cmdr_ros.data.mvtec3d import MVTec3DClass, load_mask, load_rgb, load_xyz
from cmdr_ros.data.synthetic import CellConfig, generate_dataset
from cmdr_ros.geometry import CameraIntrinsics
import cmdr_ros.ros.bags.play as play_module
from cmdr_ros.ros.bags import (METADATA_VERSION, BagWriter, bag_from_dataset, eval_bag, open_bag, play_bag,
                               playback_qos, read_messages, topic_qos)
from cmdr_ros.ros.conversions import (array_to_image, camera_info_to_dict, image_to_array, image_to_rgb,
                                      make_header, pointcloud2_fields, pointcloud2_to_xyz, xyz_to_pointcloud2)
from cmdr_ros.ros.topics import MAPS, RECORDED
from cmdr_ros.ros.node.typed_decision import AVAILABLE as TYPED_AVAILABLE

NS = 1_000_000_000
START = 1_700_000_000 * NS
TYPES = {RECORDED["image"]: "Image", RECORDED["points"]: "PointCloud2", RECORDED["camera_info"]: "CameraInfo",
         RECORDED["gt"]: "Image", RECORDED["sample"]: "String"}
HUMBLE_KEYS = {"version", "storage_identifier", "duration", "starting_time", "message_count",
               "topics_with_message_count", "compression_format", "compression_mode", "relative_file_paths", "files"}
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ros_domain() -> str:
    """This module's DDS domain: localhost only, random 1..101 unless the run set one."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(new_domain()))
    return os.environ["ROS_DOMAIN_ID"]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """A tiny MVTec-style class: 1 good + 2 defective 64x64 test samples, pinhole calibration, masks."""
    return generate_dataset(tmp_path_factory.mktemp("syn"), "block", n_train=0, n_val=0, n_test_good=1,
                            n_test_per_defect=1, cfg=CellConfig(image_size=64), defects=("tear", "bump"))


@pytest.fixture(scope="module")
def untrained_rgbd():
    """A lite rgbd detector with random heads: deterministic scores, enough to compare two evaluation paths."""
    from cmdr_ros.model.detector import CMDRDetector

    det = CMDRDetector(preset("lite", "rgbd"), device="cpu")
    det.threshold, det.model_id = 2.0, "untrained"
    return det


def _check_metadata(bag: Path, storage: str, counts: dict[str, int]) -> dict:
    """metadata.yaml holds every key Humble's parser reads, version 8, QoS as the YAML string <= v8 expects."""
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert HUMBLE_KEYS <= set(info) and info["version"] == METADATA_VERSION == 8
    assert info["storage_identifier"] == storage
    assert info["message_count"] == sum(counts.values()) == info["files"][0]["message_count"]
    assert info["relative_file_paths"] == [f["path"] for f in info["files"]]
    assert all((bag / p).is_file() for p in info["relative_file_paths"])
    assert info["compression_format"] == info["compression_mode"] == ""
    assert isinstance(info["custom_data"], dict) and info["custom_data"]  # never null
    topics = {t["topic_metadata"]["name"]: t for t in info["topics_with_message_count"]}
    assert {k: t["message_count"] for k, t in topics.items()} == counts
    for t in topics.values():
        meta = t["topic_metadata"]
        assert meta["type"].endswith("/" + TYPES[meta["name"]]) and meta["serialization_format"] == "cdr"
        assert isinstance(meta["offered_qos_profiles"], str)  # v9 made it a list, which Humble cannot parse
        (qos,) = yaml.safe_load(meta["offered_qos_profiles"])
        # RELIABLE=1, VOLATILE=2, KEEP_LAST=1, depth 10, infinite deadline as rosbag2 records it
        assert (qos["reliability"], qos["durability"], qos["history"], qos["depth"]) == (1, 2, 1, 10)
        assert qos["deadline"] == {"sec": 9223372036, "nsec": 854775807}
    return info


def _check_bag_content(bag: Path, data_dir: Path, start: int, period_ns: int) -> None:
    """Every frame decodes (with the node's converters) to exactly the dataset files, at start + i * period."""
    samples = MVTec3DClass(data_dir).samples("test")
    cam = CameraIntrinsics.from_mvtec_json(data_dir / "calibration" / "camera_parameters.json")
    frames: dict[int, dict[str, object]] = {}
    for topic, t, msg in read_messages(bag):
        assert type(msg).__name__ == TYPES[topic]
        if hasattr(msg, "header"):
            assert msg.header.frame_id == "camera"
            assert msg.header.stamp.sec * NS + msg.header.stamp.nanosec == t  # log time == header stamp
        frames.setdefault(t, {})[topic] = msg
    assert sorted(frames) == [start + i * period_ns for i in range(len(samples))]
    for s, t in zip(samples, sorted(frames)):
        f = frames[t]
        assert f[RECORDED["sample"]].data == f"{s.defect}/{s.sample_id}"
        assert np.array_equal(image_to_rgb(f[RECORDED["image"]]), load_rgb(s.rgb_path))
        xyz_file = load_xyz(s.xyz_path)
        xyz, organized = pointcloud2_to_xyz(f[RECORDED["points"]])
        assert organized and xyz.dtype == np.float32
        assert np.array_equal(xyz.view(np.uint32), xyz_file.view(np.uint32))  # bit-exact float32 round trip
        raw_x = pointcloud2_fields(f[RECORDED["points"]], ["x"])["x"]
        assert np.array_equal(np.isnan(raw_x), ~np.any(xyz_file != 0, axis=-1))  # invalid points are NaN
        gt = image_to_array(f[RECORDED["gt"]])
        assert set(np.unique(gt)) <= {0, 255} and np.array_equal(gt != 0, load_mask(s.gt_path))
        info = camera_info_to_dict(f[RECORDED["camera_info"]])
        assert np.allclose(info["k"], cam.K) and np.allclose(info["d"], cam.D)
        assert (info["width"], info["height"]) == (cam.width, cam.height) == xyz.shape[1::-1]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_from_dataset_synthetic_bag(synthetic_dir, tmp_path, storage):
    bag = tmp_path / "bag"
    s = bag_from_dataset(synthetic_dir, bag, storage=storage, rate=4.0, start_ns=START)
    counts = {topic: 3 for topic in TYPES}
    assert s["frames"] == 3 and s["topics"] == counts
    info = _check_metadata(bag, storage, counts)
    assert info["duration"]["nanoseconds"] == 2 * NS // 4 and info["starting_time"]["nanoseconds_since_epoch"] == START
    assert info["custom_data"]["cmdr_ros.class"] == "block"
    _check_bag_content(bag, synthetic_dir, START, NS // 4)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_from_dataset_real_cable_gland(cable_gland_dir, tmp_path, storage, capsys):
    bag = tmp_path / "cable_gland_bag"
    rc = main(["bag", "from-dataset", str(cable_gland_dir), "--out", str(bag), "--storage", storage])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 11 frames" in out and "metadata version 8" in out
    info = _check_metadata(bag, storage, {topic: 11 for topic in TYPES})
    assert info["duration"]["nanoseconds"] == 10 * NS // 2  # default 2 Hz
    start = info["starting_time"]["nanoseconds_since_epoch"]
    assert start % NS == 0 and abs(start / NS - time.time()) < 600  # the CLI stamps from now, whole seconds
    _check_bag_content(bag, cable_gland_dir, start, NS // 2)


def test_user_errors_are_one_line(tmp_path, synthetic_dir, capsys):
    assert main(["bag", "play", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmdr: error:") and "bag not found" in err and "\n" not in err
    (tmp_path / "not_a_bag").mkdir()
    assert main(["bag", "eval", str(tmp_path / "not_a_bag"), "--checkpoint", str(tmp_path / "m.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bag = tmp_path / "bag"
    bag_from_dataset(synthetic_dir, bag, rate=10.0, start_ns=START)
    with pytest.raises(CmdrError, match="already exists"):
        bag_from_dataset(synthetic_dir, bag)
    with pytest.raises(CmdrError, match="not a readable rosbag2"):
        list(read_messages(tmp_path / "not_a_bag"))
    with pytest.raises(ZeroDivisionError), BagWriter(tmp_path / "partial", "sqlite3") as w:
        w.write("/x", make_header(START, "cam"), START)  # any message type: a Header
        _ = 1 / 0
    assert not (tmp_path / "partial").exists()  # an unfinished bag is removed
    with pytest.raises(CmdrError, match="rate"):
        bag_from_dataset(synthetic_dir, tmp_path / "b2", rate=0.0)
    with pytest.raises(CmdrError, match="no topic /nope in the bag"):
        play_bag(bag, topics=["/nope"])
    with pytest.raises(CmdrError, match="OLD:=NEW"):
        play_bag(bag, remap=["/camera/image=/x"])
    stub = SimpleNamespace(threshold=1.0, config=SimpleNamespace(mode="rgbd"))
    with pytest.raises(CmdrError, match=r"no topic /cam/points in the bag \(it has /camera/camera_info"):
        eval_bag(bag, stub, tmp_path / "ev", points_topic="/cam/points")
    with pytest.raises(CmdrError, match="topic /camera/gt_mask carries sensor_msgs/msg/Image, expected sensor_msgs/msg/Po"):
        eval_bag(bag, stub, tmp_path / "ev", points_topic="/camera/gt_mask")


def test_play_on_dds_keeps_stamps_and_spacing(synthetic_dir, tmp_path, ros_domain, monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import String

    bag = tmp_path / "bag"
    bag_from_dataset(synthetic_dir, bag, rate=5.0, start_ns=START)  # 0.2 s apart, played at 2x: 0.1 s
    expected_stamps = [START + i * NS // 5 for i in range(3)]
    subs = {"/played/image": Image, RECORDED["points"]: PointCloud2, RECORDED["camera_info"]: CameraInfo,
            RECORDED["gt"]: Image, RECORDED["sample"]: String}
    got: dict[str, list] = {t: [] for t in subs}
    context = rclpy.Context()
    rclpy.init(context=context)
    listener = rclpy.create_node("bag_play_listener", context=context)
    talker = rclpy.create_node("bag_play_talker", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for topic, cls in subs.items():
        listener.create_subscription(cls, topic, lambda m, t=topic: got[t].append((m, time.monotonic())), qos)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    # the spacing is the player's: each message leaves no earlier than its recorded offset / rate after the start
    # (when it arrives depends on the machine's load, which a test must not assert on)
    paced: list[tuple[float, float]] = []  # (seconds since the start when sent, its due offset)
    original_wait = play_module._Pace.wait

    def recording_wait(pace, t):
        original_wait(pace, t)
        paced.append((time.monotonic() - pace.t0, (t - pace.first) / NS / pace.rate))

    monkeypatch.setattr(play_module._Pace, "wait", recording_wait)
    try:
        lines: list[str] = []
        n = play_bag(bag, rate=2.0, remap=["/camera/image:=/played/image"], wait=10.0, report=lines.append)
        assert n == 15 and lines[-1].startswith("played 15 messages")
        assert any(line.strip().startswith("/camera/image -> /played/image") for line in lines)
        deadline = time.monotonic() + 5.0
        while any(len(v) < 3 for v in got.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {t: len(v) for t, v in got.items()} == {t: 3 for t in subs}
        for topic, received in got.items():
            if topic != RECORDED["sample"]:
                assert [m.header.stamp.sec * NS + m.header.stamp.nanosec for m, _ in received] == expected_stamps
        assert [m.data for m, _ in got[RECORDED["sample"]]] == ["good/000", "bump/000", "tear/000"]
        assert len(paced) == 15 and sorted({round(due, 6) for _, due in paced}) == [0.0, 0.1, 0.2]  # 0.2 s at 2x
        assert all(sent >= due - 1e-6 for sent, due in paced), paced
        assert np.array_equal(image_to_rgb(got["/played/image"][0][0]),
                              load_rgb(synthetic_dir / "test" / "good" / "rgb" / "000.png"))
        # from an existing node, one topic only
        got[RECORDED["sample"]].clear()
        own_publishers = len(list(talker.publishers))
        assert play_bag(bag, rate=100.0, topics=[RECORDED["sample"]], node=talker, wait=10.0) == 3
        deadline = time.monotonic() + 5.0
        while len(got[RECORDED["sample"]]) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(got[RECORDED["sample"]]) == 3 and len(list(talker.publishers)) == own_publishers  # cleaned up
    finally:
        executor.shutdown()
        spinner.join(timeout=2.0)
        listener.destroy_node()
        talker.destroy_node()
        rclpy.shutdown(context=context)


def _offer(reliability: str = "RELIABLE", durability: str = "VOLATILE", depth: int = 10, history: str = "KEEP_LAST"):
    """A recorded offered QoS (rosbags ``Qos``) with rosbag2's infinite durations."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(9223372036, 854775807)
    return Qos(QosHistory[history], depth, QosReliability[reliability], QosDurability[durability], inf, inf,
               QosLiveliness.AUTOMATIC, inf, False)


def _write_qos_bag(path: Path, messages: list, offers: dict, version: int = METADATA_VERSION) -> None:
    """A bag of (topic, log time, rclpy message), each topic recorded with the offered QoS ``offers[topic]``."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(path, version=version, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, t, msg in messages:
            if topic not in conns:
                kind = f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"
                conns[topic] = w.add_connection(topic, kind, typestore=store, offered_qos_profiles=offers[topic])
            w.write(conns[topic], t, serialize_message(msg))


def _static_transform(child: str):
    """A static transform message (tf2_msgs has no PyPI wheel: a TransformStamped stands in for a TFMessage)."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped(header=make_header(START, "base"), child_frame_id=child)
    msg.transform.rotation.w = 1.0
    return msg


def _policies(qos) -> tuple:
    return qos.reliability.name, qos.durability.name, qos.history.name, qos.depth


@pytest.mark.parametrize("version", [8, 9])
def test_playback_qos_follows_the_recording(tmp_path, version, caplog):
    """rosbag2's adapt_offer_to_recorded_offers, from v8 (YAML string) and v9 (list) metadata; /tf_static latched."""
    from std_msgs.msg import String

    latched = _offer(durability="TRANSIENT_LOCAL", depth=1)
    offers = {"/fast": [_offer("BEST_EFFORT", depth=5)], "/map": [latched, latched], "/plain": [],
              "/discovered": [_offer(depth=0, history="UNKNOWN")], "/tf_static": [latched, latched],
              "/mixed": [_offer(), _offer("BEST_EFFORT")]}
    msgs = [(t, START + i, String(data=t)) for i, t in enumerate(offers)]
    msgs += [("/tf_static", START + 10 + i, String(data="more")) for i in range(14)]  # 15 static messages
    bag = tmp_path / "qos_bag"
    _write_qos_bag(bag, msgs, offers, version)
    assert yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == version
    with open_bag(bag) as reader:
        got = {t: _policies(topic_qos(reader, t)) for t in offers}
    assert got == {"/fast": ("BEST_EFFORT", "VOLATILE", "KEEP_LAST", 5),
                   "/map": ("RELIABLE", "TRANSIENT_LOCAL", "KEEP_LAST", 1),
                   "/plain": ("RELIABLE", "VOLATILE", "KEEP_LAST", 10),  # nothing recorded: rosbag2's default
                   "/discovered": ("RELIABLE", "VOLATILE", "KEEP_LAST", 10),  # unknown history: keep last 10
                   "/tf_static": ("RELIABLE", "TRANSIENT_LOCAL", "KEEP_LAST", 15),  # room for every message
                   "/mixed": ("RELIABLE", "VOLATILE", "KEEP_LAST", 10)}  # a mix: rosbag2's default offer
    assert "/mixed: the recorded publishers offered different QoS" in caplog.text
    # /tf_static goes out latched even when recorded otherwise (or not at all)
    assert _policies(playback_qos("/tf_static", [_offer("BEST_EFFORT", depth=1)], 2)) == \
        ("RELIABLE", "TRANSIENT_LOCAL", "KEEP_LAST", 2)
    assert _policies(playback_qos("/tf_static", [], 1)) == ("RELIABLE", "TRANSIENT_LOCAL", "KEEP_LAST", 10)
    assert _policies(playback_qos("/map", [_offer(depth=3), _offer(depth=7)])) == \
        ("RELIABLE", "VOLATILE", "KEEP_LAST", 7)  # same offer, several publishers: the deepest
    with pytest.raises(CmdrError, match="--clock -1"):
        play_bag(bag, clock=-1.0)
    with pytest.raises(CmdrError, match="has its own /clock"):
        play_bag(bag, remap=["/plain:=/clock"], clock=40.0)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)


def test_play_offers_recorded_qos_latches_tf_static_and_publishes_clock(tmp_path, ros_domain):
    """`cmdr bag play BAG --clock` (a process): a late transient-local subscriber still gets both static
    transforms, the best-effort topic goes out best effort, the reliable one reliable, /clock runs in the bag's
    time. The bag is long (2 min): the test interrupts the player once it has seen everything."""
    import rclpy
    from geometry_msgs.msg import TransformStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import String

    latched = _offer(durability="TRANSIENT_LOCAL", depth=1)  # what tf2's StaticTransformBroadcaster offers
    offers = {"/tf_static": [latched, latched], "/fast": [_offer("BEST_EFFORT")], "/slow": [_offer()]}
    msgs = [("/tf_static", START, _static_transform("camera")), ("/tf_static", START + NS // 100,
                                                                  _static_transform("profiler"))]
    for i in range(1, 600):  # 5 Hz for 2 min, after the static transforms
        msgs += [(topic, START + i * NS // 5, String(data=str(i))) for topic in ("/fast", "/slow")]
    bag = tmp_path / "cell"
    _write_qos_bag(bag, msgs, offers)
    end = START + 599 * NS // 5

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("bag_qos_listener", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    got: dict[str, list] = {"/fast": [], "/slow": [], "/clock": [], "/tf_static": []}
    best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(String, "/fast", got["/fast"].append, best_effort)
    node.create_subscription(String, "/slow", got["/slow"].append, QoSProfile(depth=100))
    node.create_subscription(Clock, "/clock", got["/clock"].append, best_effort)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    env = {**os.environ, "ROS_DOMAIN_ID": ros_domain, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONUNBUFFERED": "1"}
    player = subprocess.Popen([sys.executable, "-m", "cmdr_ros.cli.main", "bag", "play", str(bag), "--clock"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
    try:
        _wait_for(lambda: got["/slow"] or player.poll() is not None, 60.0, "message on /slow")
        assert player.poll() is None, player.communicate()[0]
        # /slow is recorded after both static transforms: they were published, before this subscription exists
        node.create_subscription(TransformStamped, "/tf_static", got["/tf_static"].append, QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        _wait_for(lambda: len(got["/tf_static"]) >= 2, 30.0, "latched /tf_static messages")
        assert sorted(m.child_frame_id for m in got["/tf_static"]) == ["camera", "profiler"]
        _wait_for(lambda: got["/fast"] and len(got["/clock"]) >= 5, 30.0, "/fast and /clock messages")
        offered = {}
        for topic in ("/fast", "/slow", "/tf_static", "/clock"):
            _wait_for(lambda t=topic: node.get_publishers_info_by_topic(t), 30.0, f"publisher of {topic}")
            (info,) = node.get_publishers_info_by_topic(topic)
            offered[topic] = (info.qos_profile.reliability.name, info.qos_profile.durability.name)
        assert offered == {"/fast": ("BEST_EFFORT", "VOLATILE"), "/slow": ("RELIABLE", "VOLATILE"),
                           "/tf_static": ("RELIABLE", "TRANSIENT_LOCAL"), "/clock": ("BEST_EFFORT", "VOLATILE")}
        clocks = [m.clock.sec * NS + m.clock.nanosec for m in got["/clock"]]
        assert all(START <= c <= end for c in clocks) and clocks == sorted(clocks), clocks
        player.send_signal(signal.SIGINT)
        out = player.communicate(timeout=30)[0]
        assert player.returncode == 0, out
        assert "/tf_static (geometry_msgs/msg/TransformStamped; reliable, transient_local, depth 2): 2 messages" in out
        assert "/fast (std_msgs/msg/String; best_effort, volatile, depth 10)" in out
        assert "/clock (rosgraph_msgs/msg/Clock; 40 Hz)" in out and "(interrupted)" in out
    finally:
        if player.poll() is None:
            player.kill()
            player.wait()
        executor.shutdown()
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.shutdown(context=context)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TIMED = ("latency_ms", "inference_ms")  # measured times: they differ from one run to the next


def _assert_node_outputs(bag: Path, det, out: Path, params=None, topics=None) -> None:
    """At every part's stamp, ``out``/results_bag holds exactly the messages the node makes for that part: its
    FrameJudge's verdict turned into messages by the node's own ``outputs`` functions, every map its output switches
    enable (``params``) and no other, field for field (``~/result``: every value but the timings). ``topics``: input
    name -> topic (default: the recorded camera's; every stamp holds one complete set)."""
    from cmdr_ros.config import cross_modal
    from cmdr_ros.ros.stamps import stamp_ns
    from cmdr_ros.ros.conversions.frames import input_names
    from cmdr_ros.ros.node.frame_judge import FrameJudge
    from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values
    from cmdr_ros.ros.node.parameters import node_params
    from cmdr_ros.ros.topics import MAPS, output_topic

    params = node_params(params)
    judge = FrameJudge.from_params(det, params)
    names = {(topics or RECORDED)[k]: k for k in input_names(det.config.mode)}
    parts: dict[int, dict] = {}
    infos = {}
    for topic, _, msg in read_messages(bag):
        if topic in names:
            parts.setdefault(stamp_ns(msg.header), {})[names[topic]] = msg
        elif topic == RECORDED["camera_info"]:
            infos[stamp_ns(msg.header)] = msg
    written: dict[int, dict] = {}
    for topic, t, msg in read_messages(out / "results_bag"):
        written.setdefault(t, {})[topic] = msg
    assert sorted(written) == sorted(parts)
    enabled = [k for k in MAPS if params[f"output.{k}"]]
    for seq, (stamp, msgs) in enumerate(sorted(parts.items()), 1):
        header = next(msgs[k] for k in ("image", "points") if k in msgs).header
        frame, verdict = judge.judge(msgs, infos.get(stamp) if cross_modal(det.config.mode) else None)
        got = written[stamp]
        kv = {v.key: v.value for v in got[output_topic("result")].status[0].values}
        values = result_values(header, verdict, frame, seq=seq, mode=judge.mode, model_id=judge.model_id,
                               inputs="+".join(msgs), extra={k: kv[k] for k in ("part_id", "sample") if k in kv})
        expected = decision_messages(header, verdict, values, map_messages(
            verdict, frame, enabled, params["output.heatmap_alpha"], params["output.heatmap_max"]))
        assert sorted(got) == sorted(output_topic(k) for k in expected), stamp
        for key, msg in expected.items():
            if key == "result":
                assert {k: v for k, v in kv.items() if k not in TIMED} == \
                    {k: v for k, v in values.items() if k not in TIMED}, stamp
            else:
                assert got[output_topic(key)] == msg, (stamp, key)  # every field (CDR padding is not defined)


def _assert_same_as_cmdr_eval(data_dir: Path, bag_out: Path, eval_out: Path) -> None:
    """Per-sample scores within 1e-5 relative and the same metrics as the `cmdr eval` report."""
    ref = {f"{r['defect']}/{r['id']}": r for r in _read_csv(eval_out / "scores.csv")}
    rows = {r["sample"]: r for r in _read_csv(bag_out / "results.csv")}
    assert rows.keys() == ref.keys()
    for name, r in rows.items():
        assert float(r["score"]) == pytest.approx(float(ref[name]["score"]), rel=1e-5), name
        assert (int(r["reject"]), int(r["label"])) == (int(ref[name]["reject"]), int(ref[name]["label"])), name
    mine = json.loads((bag_out / "metrics.json").read_text())
    theirs = json.loads((eval_out / "metrics.json").read_text())
    name = MVTec3DClass(data_dir).name
    m, t = mine["classes"][name], theirs["classes"][name]
    for key in ("i_auroc", "p_auroc", "aupro@0.3", "aupro@0.1", "aupro@0.05", "aupro@0.01"):
        assert m[key] == pytest.approx(t[key], abs=1e-9, nan_ok=True), key
    assert m["defects"].keys() == t["defects"].keys()
    for d in m["defects"]:
        assert m["defects"][d]["i_auroc"] == pytest.approx(t["defects"][d]["i_auroc"], abs=1e-9), d
    assert (m["n_good"], m["n_defect"]) == (t["n_good"], t["n_defect"])


def test_eval_bag_matches_cmdr_eval_on_synthetic(synthetic_dir, untrained_rgbd, tmp_path):
    import cv2

    from cmdr_ros.cli.evaluate import run_eval

    det = untrained_rgbd
    run_eval(synthetic_dir, det, tmp_path / "eval", no_cache=True, progress=False, write_images=False)
    bag = tmp_path / "bag"
    bag_from_dataset(synthetic_dir, bag, storage="sqlite3", rate=4.0, start_ns=START)
    rep = eval_bag(bag, det, tmp_path / "bag_eval")
    _assert_same_as_cmdr_eval(synthetic_dir, tmp_path / "bag_eval", tmp_path / "eval")
    assert rep["frames"] == 3 and rep["not_judged"] == 0 and "block" in rep["table"]
    rows = _read_csv(tmp_path / "bag_eval" / "results.csv")
    assert list(rows[0]) == ["stamp", "sample", "inputs", "score", "threshold", "decision", "reject", "label",
                             "latency_ms", "error"]
    assert [r["stamp"] for r in rows] == [f"{START // NS}.{i * NS // 4:09d}" for i in range(3)]
    assert all(int(r["reject"]) == (float(r["score"]) >= 2.0) for r in rows)
    assert sorted(p.name for p in (tmp_path / "bag_eval" / "heatmaps").glob("*.png")) == \
        ["bump_000.png", "good_000.png", "tear_000.png"]
    results: dict[str, list] = {}
    for topic, t, msg in read_messages(tmp_path / "bag_eval" / "results_bag"):
        results.setdefault(topic, []).append((t, msg))
    stamps = [START + i * NS // 4 for i in range(3)]
    typed = ("decision",) if TYPED_AVAILABLE else ()  # where vision_msgs is installed
    assert {k: [t for t, _ in v] for k, v in results.items()} == {
        f"/cmdr_inspection/{k}": stamps for k in ("score", "reject", "result", "heatmap", "anomaly_map",
                                                  "anomaly_cloud", *typed)}  # every output of the node, by default
    _assert_node_outputs(bag, det, tmp_path / "bag_eval")
    for (_, d), r in zip(results.get("/cmdr_inspection/decision", []), rows):  # parity with the node's ~/decision
        assert f"{d.header.stamp.sec}.{d.header.stamp.nanosec:09d}" == r["stamp"] and d.header.frame_id == "camera"
        assert (d.results[0].class_id, d.results[0].score) == (r["decision"], pytest.approx(float(r["score"])))
    assert [m.data for _, m in results["/cmdr_inspection/score"]] == pytest.approx([float(r["score"]) for r in rows])
    assert [m.data for _, m in results["/cmdr_inspection/reject"]] == [bool(int(r["reject"])) for r in rows]
    _, diag = results["/cmdr_inspection/result"][1]
    kv = {v.key: v.value for v in diag.status[0].values}
    assert kv["sample"] == "bump/000" and kv["alignment"] == "aligned" and kv["frame_id.points"] == "camera"
    assert float(kv["score"]) == pytest.approx(float(rows[1]["score"]), abs=1e-6)
    heat = results["/cmdr_inspection/heatmap"][0][1]
    assert (heat.encoding, heat.height, heat.width) == ("bgr8", 64, 64)
    amap, cloud = results["/cmdr_inspection/anomaly_map"][0][1], results["/cmdr_inspection/anomaly_cloud"][0][1]
    assert (amap.encoding, amap.height, amap.width) == ("32FC1", 64, 64)
    assert "intensity" in [f.name for f in cloud.fields]
    png = tmp_path / "bag_eval" / "heatmaps" / f"{rows[0]['sample'].replace('/', '_')}.png"
    assert np.array_equal(cv2.imread(str(png)), image_to_array(heat))  # the PNG is the ~/heatmap's pixels


def test_eval_bag_reports_unjudged_frames_and_unmatched_inputs(synthetic_dir, untrained_rgbd, tmp_path):
    """A frame whose cloud is all invalid is rejected (the node's fail-safe) and listed; no gt -> no metrics."""
    from diagnostic_msgs.msg import DiagnosticStatus

    rgb = load_rgb(synthetic_dir / "test" / "good" / "rgb" / "000.png")
    xyz = load_xyz(synthetic_dir / "test" / "good" / "xyz" / "000.tiff")
    bag = tmp_path / "bag"
    with BagWriter(bag, "mcap") as w:
        for i, points in enumerate([xyz, np.full_like(xyz, np.nan)]):
            stamp = START + i * NS
            h = make_header(stamp, "cam")
            w.write("/image", array_to_image(rgb, "rgb8", h), stamp)
            w.write("/points", xyz_to_pointcloud2(points, h), stamp)
        h = make_header(START + 5 * NS, "cam")  # an image without a cloud: never matched
        w.write("/image", array_to_image(rgb, "rgb8", h), START + 5 * NS)
    rep = eval_bag(bag, untrained_rgbd, tmp_path / "out", image_topic="/image", points_topic="/points",
                   threshold=1e9, write_images=False)
    assert (rep["frames"], rep["not_judged"], rep["rejects"], rep["threshold"]) == (2, 1, 1, 1e9)
    assert rep["unmatched"] == {"/image": 1, "/points": 0} and "table" not in rep
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "heatmaps").exists()
    ok, bad, lone = _read_csv(tmp_path / "out" / "results.csv")  # the lone image gets its own fail-safe row too
    assert ok["error"] == "" and ok["sample"] == "" and float(ok["score"]) > 0 and ok["decision"] == "pass"
    assert bad["reject"] == "1" and bad["score"] == "" and bad["error"].startswith("degraded")
    assert (lone["inputs"], lone["decision"]) == ("image", "reject") and lone["error"].startswith("unmatched")
    results = [(t, m) for t, _, m in read_messages(tmp_path / "out" / "results_bag", ["/cmdr_inspection/result"])]
    assert len(results) == 3 and [m.status[0].level for _, m in results[1:]] == [DiagnosticStatus.WARN] * 2
    if TYPED_AVAILABLE:  # ~/decision: the action, NaN score for the parts not judged
        typed = [m for _, _, m in read_messages(tmp_path / "out" / "results_bag", ["/cmdr_inspection/decision"])]
        assert [m.results[0].class_id for m in typed] == ["pass", "reject", "reject"]
        assert [math.isnan(m.results[0].score) for m in typed] == [False, True, True]
        assert [m.header.stamp for m in typed] == [m.header.stamp for _, m in results]
    rep2 = eval_bag(bag, untrained_rgbd, tmp_path / "out", image_topic="/image", points_topic="/points",
                    write_images=False)  # the results bag of a previous run is replaced
    assert rep2["frames"] == 2
    apart = tmp_path / "apart"
    with BagWriter(apart, "sqlite3") as w:  # image and cloud 0.1 s apart: beyond the default 0.05 s slop
        w.write("/image", array_to_image(rgb, "rgb8", make_header(START, "cam")), START)
        w.write("/points", xyz_to_pointcloud2(xyz, make_header(START + NS // 10, "cam")), START + NS // 10)
    with pytest.raises(CmdrError, match="no /image \\+ /points set matched within the slop of 0.05 s"):
        eval_bag(apart, untrained_rgbd, tmp_path / "out2", image_topic="/image", points_topic="/points")
    assert eval_bag(apart, untrained_rgbd, tmp_path / "out3", image_topic="/image", points_topic="/points",
                    slop=0.2, write_images=False)["frames"] == 1


def test_bag_eval_cli_part_ids_and_output_switches(synthetic_dir, untrained_rgbd, tmp_path, monkeypatch, capsys):
    """`cmdr bag eval --part-id-topic T`: each result carries the id nearest its stamp within sync.slop, recorded
    before or after the frame (a repeated stamp: the newest id, as on the node), none beyond the slop; the output
    switches (params file, overridden by --maps) decide which maps the results bag holds, exactly as the node's; the
    heatmap PNGs are written also with ~/heatmap off."""
    rgb = load_rgb(synthetic_dir / "test" / "good" / "rgb" / "000.png")
    xyz = load_xyz(synthetic_dir / "test" / "good" / "xyz" / "000.tiff")
    bag = tmp_path / "bag"
    with BagWriter(bag, "mcap") as w:
        for i in range(3):
            stamp = START + i * NS
            h = make_header(stamp, "cam")
            w.write("/image", array_to_image(rgb, "rgb8", h), stamp)
            w.write("/points", xyz_to_pointcloud2(xyz, h), stamp)
        w.write("/ids", make_header(START - NS // 100, "A"), START - NS // 100)  # 10 ms before part 0
        w.write("/ids", make_header(START + NS + NS // 50, "B-old"), START + NS)  # 20 ms after part 1
        w.write("/ids", make_header(START + NS + NS // 50, "B"), START + NS + NS // 10)  # the same stamp, later
        w.write("/ids", make_header(START + 2 * NS + NS // 10, "C"), START + 2 * NS)  # 100 ms: beyond the slop
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"output": {"anomaly_cloud": False,
                                                                             "heatmap_alpha": 0.3}}}}))
    monkeypatch.setattr("cmdr_ros.model.checkpoint.load_checkpoint", lambda *a, **k: untrained_rgbd)
    args = ["bag", "eval", str(bag), "--checkpoint", "untrained", "--device", "cpu", "--image-topic", "/image",
            "--points-topic", "/points", "--part-id-topic", "/ids", "--params-file", str(params), "--quiet"]
    topics = {"image": "/image", "points": "/points"}
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    results = [m for _, _, m in read_messages(tmp_path / "a" / "results_bag", ["/cmdr_inspection/result"])]
    assert [{v.key: v.value for v in m.status[0].values}.get("part_id") for m in results] == ["A", "B", None]
    with open_bag(tmp_path / "a" / "results_bag") as reader:
        assert "/cmdr_inspection/anomaly_cloud" not in reader.topics and "/cmdr_inspection/heatmap" in reader.topics
    _assert_node_outputs(bag, untrained_rgbd, tmp_path / "a", {"output.anomaly_cloud": False,
                                                               "output.heatmap_alpha": 0.3}, topics)
    assert main([*args, "--out", str(tmp_path / "b"), "--maps", "anomaly_cloud"]) == 0  # --maps: these, no other
    _assert_node_outputs(bag, untrained_rgbd, tmp_path / "b", {"output.heatmap": False, "output.anomaly_map": False},
                         topics)
    assert len(list((tmp_path / "b" / "heatmaps").glob("*.png"))) == 3  # the PNGs need no ~/heatmap
    assert main([*args, "--out", str(tmp_path / "c"), "--maps", "--no-images"]) == 0  # no maps at all
    _assert_node_outputs(bag, untrained_rgbd, tmp_path / "c", {f"output.{k}": False for k in MAPS}, topics)
    capsys.readouterr()
    with pytest.raises(CmdrError, match="unknown maps \\['depth'\\]"):
        eval_bag(bag, untrained_rgbd, tmp_path / "d", image_topic="/image", points_topic="/points", maps=["depth"])

@pytest.mark.slow
def test_round_trip_bag_eval_equals_cmdr_eval_on_real_data(cable_gland_dir, preprocess_cache, tmp_path, capsys):
    """`bag from-dataset` -> `bag eval` gives `cmdr eval`'s scores (1e-5 relative) and metrics, same checkpoint."""
    from cmdr_ros.cli.evaluate import run_eval
    from cmdr_ros.model.training import train_model
    from cmdr_ros.model.checkpoint import load_checkpoint

    cfg = preset("lite", "rgbd").to_dict()
    cfg["train"]["epochs"] = 2
    ckpt = tmp_path / "rgbd.ckpt"
    train_model(cable_gland_dir, ModelConfig.from_dict(cfg), ckpt, "cpu", str(preprocess_cache), progress=False)
    run_eval(cable_gland_dir, load_checkpoint(ckpt, "cpu"), tmp_path / "eval", str(ckpt),
             cache_dir=str(preprocess_cache), progress=False, write_images=False)
    bag = tmp_path / "cable_gland_bag"
    assert main(["bag", "from-dataset", str(cable_gland_dir), "--out", str(bag)]) == 0
    assert main(["bag", "eval", str(bag), "--checkpoint", str(ckpt), "--out", str(tmp_path / "bag_eval"),
                 "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "i_auroc" in out and "cable_gland" in out and "11 frames" in out
    _assert_same_as_cmdr_eval(cable_gland_dir, tmp_path / "bag_eval", tmp_path / "eval")
    assert len(list((tmp_path / "bag_eval" / "heatmaps").glob("*.png"))) == 11


def test_to_dataset_gives_back_the_recorded_parts(synthetic_dir, tmp_path, capsys):
    """A recording of parts -> class-folder samples (to train on): identical images and clouds, in stamp order."""
    bag = tmp_path / "rec"
    bag_from_dataset(synthetic_dir, bag, split="test", rate=5.0)
    out = tmp_path / "from_bag"
    assert main(["bag", "to-dataset", str(bag), "--out", str(out)]) == 0
    assert "wrote 3 samples" in capsys.readouterr().out
    originals = MVTec3DClass(synthetic_dir).samples("test")
    written = MVTec3DClass(out).samples("train")
    assert [s.sample_id for s in written] == ["000", "001", "002"]
    for orig, new in zip(originals, written):
        np.testing.assert_array_equal(load_rgb(new.rgb_path), load_rgb(orig.rgb_path))
        np.testing.assert_array_equal(load_xyz(new.xyz_path), load_xyz(orig.xyz_path))
    with pytest.raises(CmdrError, match="no topic /nope"):
        from cmdr_ros.ros.bags import bag_to_dataset
        bag_to_dataset(bag, tmp_path / "x", points_topic="/nope")


# ------------------------------------------------------------------------------------------------ scans (chunks)
@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory) -> Path:
    """A tiny class of unorganized scans: 1 good + 1 bump test scan (about 2000 points each), per-point gt."""
    from node_harness import scan_dataset

    return scan_dataset(tmp_path_factory.mktemp("scans"), n_train=1, n_val=0)


@pytest.fixture(scope="module")
def untrained_chunks():
    """A small "chunks" detector (256-point chunks) with random heads: deterministic scores."""
    import torch

    from cmdr_ros.model.detector import CMDRDetector
    from node_harness import scan_model_config

    det = CMDRDetector(scan_model_config(), device="cpu")
    det.threshold, det.model_id = 1.0, "untrained_chunks"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small chunks on shared cores: many times faster
    yield det
    torch.set_num_threads(before)


def test_scan_bag_round_trip_eval_and_to_dataset(scan_dir, untrained_chunks, tmp_path, capsys):
    """from-dataset of a scan class -> the profiler topic in file order, the per-point labels beside it; eval_bag
    judges each scan as the node (one row each, the detector's own scores, part, chunk and point metrics == cmdr
    eval's); to-dataset gives the points back."""
    from cmdr_ros.cli.evaluate import evaluate
    from cmdr_ros.data.scans import ScanDataset
    from cmdr_ros.ros.topics import PROFILER

    det = untrained_chunks
    scans = ScanDataset(scan_dir).scans("test")
    bag = tmp_path / "scan_bag"
    assert main(["bag", "from-dataset", str(scan_dir), "--out", str(bag), "--rate", "4"]) == 0
    assert "wrote 2 frames" in capsys.readouterr().out
    msgs = [(topic, t, m) for topic, t, m in read_messages(bag)]
    assert {topic for topic, _, _ in msgs} == {PROFILER["points"], RECORDED["sample"], RECORDED["gt_points"]}
    clouds = [m for topic, _, m in msgs if topic == PROFILER["points"]]
    truth = [m for topic, _, m in msgs if topic == RECORDED["gt_points"]]
    for scan, gt, cloud in zip(scans, truth, clouds):
        labels = pointcloud2_fields(gt, ["intensity"])["intensity"][0]
        assert gt.header.stamp == cloud.header.stamp and np.array_equal(labels != 0, scan.load()[1])
    assert not (pointcloud2_fields(truth[0], ["intensity"])["intensity"] != 0).any()  # the good scan: all 0
    assert [m.data for topic, _, m in msgs if topic == RECORDED["sample"]] == ["good/000", "bump/000"]
    for scan, msg in zip(scans, clouds):
        f = pointcloud2_fields(msg, ["x", "y", "z"])
        assert msg.height == 1 and np.array_equal(np.stack([f[k][0] for k in "xyz"], 1), np.load(scan.path))

    rep = eval_bag(bag, det, tmp_path / "ev")
    assert rep["frames"] == 2 and rep["not_judged"] == 0 and "scans" in rep["table"]
    rows = _read_csv(tmp_path / "ev" / "results.csv")
    assert [r["sample"] for r in rows] == ["good/000", "bump/000"] and [r["label"] for r in rows] == ["0", "1"]
    for scan, r in zip(scans, rows):
        pred = det.predict_scan(np.load(scan.path))
        assert float(r["score"]) == pytest.approx(pred.score, rel=1e-5)
        assert (int(r["points"]), int(r["chunks"])) == (len(pred.point_scores), len(pred.chunks))
    mine = json.loads((tmp_path / "ev" / "metrics.json").read_text())["classes"]["scans"]
    theirs = evaluate(scan_dir, det, tmp_path / "eval", progress=False, write_images=False)["metrics"]
    assert mine["defects"]["bump"]["n"] == 1
    for key in ("i_auroc", "chunk_i_auroc", "p_auroc"):
        assert mine[key] == pytest.approx(theirs[key], nan_ok=True), key
    assert math.isfinite(mine["p_auroc"]) and "p_auroc" in rep["table"]
    results = {}
    for topic, t, m in read_messages(tmp_path / "ev" / "results_bag"):
        results.setdefault(topic, []).append(m)
    kv = {v.key: v.value for v in results["/cmdr_inspection/result"][1].status[0].values}
    assert kv["alignment"] == "scan" and kv["sample"] == "bump/000" and kv["chunks"] == rows[1]["chunks"]
    assert [c.width for c in results["/cmdr_inspection/anomaly_cloud"]] == [c.width for c in clouds]
    assert len(results["/cmdr_inspection/anomaly_map"]) == len(results["/cmdr_inspection/heatmap"]) == 2
    _assert_node_outputs(bag, det, tmp_path / "ev", topics=PROFILER)  # the scan's top view and its scored points
    assert len(list((tmp_path / "ev" / "heatmaps").glob("*.png"))) == 2

    out = tmp_path / "from_bag"
    assert main(["bag", "to-dataset", str(bag), "--out", str(out), "--scans", "--split", "test",
                 "--defect", "mixed"]) == 0
    assert "wrote 2 scans" in capsys.readouterr().out
    back = ScanDataset(out).scans("test")
    assert [s.sample_id for s in back] == ["000", "001"]
    for orig, new in zip(scans, back):
        a, b = np.load(orig.path), np.load(new.path)
        assert b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))  # bit-exact, same order
        labels = orig.load()[1]  # the per-point ground truth came back from /cmdr/gt_points too
        assert new.gt_path is not None and np.array_equal(np.load(new.gt_path), labels) and labels.dtype == bool
    with pytest.raises(CmdrError, match="carries std_msgs/msg/String, expected sensor_msgs/msg/PointCloud2"):
        from cmdr_ros.ros.bags import bag_to_scans
        bag_to_scans(bag, tmp_path / "x", points_topic=RECORDED["sample"])
