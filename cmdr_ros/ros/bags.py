"""rosbag2 files for the inspection node: dataset -> bag, bag -> DDS (play), bag -> detector (offline eval).

Bags are read and written with ``rosbags`` (pure Python, sqlite3 and mcap storage) and every message goes
through ``rclpy.serialization``, so the bytes in a bag are exactly what the node sends and receives and the
decoding is the node's own (``conversions`` / ``frames.assemble_frame``).

Metadata version: bags are written as rosbag2 metadata **version 8** (Iron's format), the oldest rosbags writes
(it writes 8 or 9 and has no default). Version 8 keeps ``offered_qos_profiles`` a YAML *string*: version 9 (Jazzy)
made it a list, which older yaml-cpp parsers reject ("bad conversion"). rosbag2's parser reads
each optional field behind a ``version >= N`` test with no upper bound, so Humble (which writes version 5) reads
every key it knows from a version 8 file and ignores ``type_description_hash`` and ``ros_distro``; ``custom_data``
is always a non-empty mapping, never null. Playing the mcap storage on Humble needs
``ros-humble-rosbag2-storage-mcap``; ``--storage sqlite3`` needs nothing extra.
"""
from __future__ import annotations

import bisect
import contextlib
import csv
import importlib
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.config import cross_modal
from cmdr_ros.ros.conversions import make_header, stamp_ns
from cmdr_ros.ros.frames import input_names, mode_of

METADATA_VERSION = 8
STORAGES = ("mcap", "sqlite3")
TOPICS = {"image": "/camera/image", "points": "/camera/points", "info": "/camera/camera_info",
          "gt": "/camera/gt_mask", "sample": "/cmdr/sample"}
RESULTS = {"score": "/cmdr_inspection/score", "reject": "/cmdr_inspection/reject",
           "result": "/cmdr_inspection/result", "heatmap": "/cmdr_inspection/heatmap"}
_NS = 1_000_000_000
TF_STATIC = "/tf_static"  # tf2 static transforms: latched (transient-local) for late joiners
CLOCK = "/clock"
_INFINITE_NS = 2**63 - 1  # RMW_DURATION_INFINITE, recorded by rosbag2 as sec 9223372036, nsec 854775807


def _reliable_qos() -> Any:
    """The offered QoS of a RELIABLE, VOLATILE, KEEP_LAST(10) publisher with default (infinite) durations,
    as rosbag2 records it."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(_INFINITE_NS // _NS, _INFINITE_NS % _NS)
    return Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, inf, inf,
               QosLiveliness.AUTOMATIC, inf, False)


def _type_name(msg_class: type) -> str:
    """'sensor_msgs/msg/Image' for the rclpy class sensor_msgs.msg.Image."""
    return f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"


def message_class(type_name: str) -> type:
    """The installed rclpy message class of 'pkg/msg/Name'; CmdrError when it is not installed."""
    pkg, kind, name = (type_name.split("/") + ["", ""])[:3]
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError, ValueError):
        raise CmdrError(f"message type '{type_name}' is not installed (no Python module {pkg}.{kind}.{name})") from None


# ------------------------------------------------------------------------------------------------ writing
class BagWriter:
    """A new rosbag2 (metadata version 8) of rclpy messages; topics are added on their first message.

    Use as a context manager; an exception inside the block removes the unfinished bag folder.
    """

    def __init__(self, path: str | Path, storage: str = "mcap", custom_data: dict[str, str] | None = None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

        if storage not in STORAGES:
            raise CmdrError(f"unknown bag storage '{storage}' (use one of {', '.join(STORAGES)})")
        self.path = Path(path)
        if self.path.exists():
            raise CmdrError(f"{self.path}: already exists; a bag is written as a new folder")
        try:
            self._writer = Writer(self.path, version=METADATA_VERSION,
                                  storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        except WriterError as e:
            raise CmdrError(f"{self.path}: cannot create the bag ({e})") from None
        for key, value in {"cmdr_ros.writer": "cmdr_ros", **(custom_data or {})}.items():
            self._writer.set_custom_data(key, str(value))
        self._connections: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._writer.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)  # the folder is this writer's own: it refused existing paths

    def write(self, topic: str, msg: Any, stamp: int) -> None:
        """Serialize ``msg`` (CDR, as rclpy publishes it) and store it at log time ``stamp`` (ns)."""
        from rclpy.serialization import serialize_message

        if topic not in self._connections:
            from rosbags.typesys import Stores, get_typestore

            typestore = get_typestore(Stores.ROS2_HUMBLE)  # definitions and RIHS01 hashes of the std types
            self._connections[topic] = self._writer.add_connection(
                topic, _type_name(type(msg)), typestore=typestore, offered_qos_profiles=[_reliable_qos()])
        self._writer.write(self._connections[topic], int(stamp), serialize_message(msg))
        self.counts[topic] += 1


def bag_from_dataset(data_dir: str | Path, out: str | Path, storage: str = "mcap", split: str = "test",
                     rate: float = 2.0, frame_id: str = "camera", start_ns: int | None = None) -> dict[str, Any]:
    """Write a split of an MVTec 3D-AD style class folder as a bag a camera driver could have recorded.

    Per sample, all at the same stamp (``start_ns`` + i/rate s; default: now, whole seconds): ``/camera/image``
    rgb8, ``/camera/points`` organized float32 x,y,z pixel-aligned with the image (invalid points NaN, as ROS
    drivers publish them), ``/camera/camera_info`` from calibration/camera_parameters.json when present, and
    when the split has masks ``/camera/gt_mask`` mono8 0/255 (all 0 for a sample without a mask file, as
    ``cmdr eval`` reads it). ``/cmdr/sample`` (std_msgs/String "<defect>/<id>") names the sample; every header
    keeps ``frame_id``. Returns a summary: path, storage, frames, topics {name: count}, start_ns, period_s.
    """
    from std_msgs.msg import String

    from cmdr_ros.data.mvtec3d import MVTec3DClass, load_sample
    from cmdr_ros.geometry import CameraIntrinsics
    from cmdr_ros.ros.conversions import array_to_image, dict_to_camera_info, xyz_to_pointcloud2

    if not (math.isfinite(rate) and rate > 0):
        raise CmdrError(f"--rate {rate}: the frame rate must be a positive number of frames per second")
    data = MVTec3DClass(data_dir)
    samples = data.samples(split)
    if not samples:
        raise CmdrError(f"{data.root / split}: no samples to write")
    params = data.camera_parameters()
    info = CameraIntrinsics.from_mvtec_json(params).to_dict() if params is not None else None
    with_gt = any(s.gt_path is not None for s in samples)
    start = int(start_ns) if start_ns is not None else time.time_ns() // _NS * _NS
    custom = {"cmdr_ros.class": data.name, "cmdr_ros.split": split, "cmdr_ros.rate_hz": repr(float(rate))}
    with BagWriter(out, storage, custom) as bag:
        for i, s in enumerate(samples):
            stamp = start + round(i * _NS / rate)
            header = make_header(stamp, frame_id)
            rgb, xyz, mask = load_sample(s, need_rgb=s.rgb_path is not None, need_xyz=s.xyz_path is not None)
            h, w = (rgb if rgb is not None else xyz).shape[:2]
            if rgb is not None:
                bag.write(TOPICS["image"], array_to_image(rgb, "rgb8", header), stamp)
            if xyz is not None:
                points = xyz.copy()
                points[~np.any(xyz != 0, axis=-1)] = np.nan  # the project's invalid (0,0,0) -> ROS's NaN
                bag.write(TOPICS["points"], xyz_to_pointcloud2(points, header), stamp)
            if info is not None:
                if (info["width"], info["height"]) != (w, h):
                    raise CmdrError(f"{data.root / 'calibration' / 'camera_parameters.json'}: the camera is "
                                    f"{info['width']}x{info['height']} but {s.rgb_path or s.xyz_path} is {w}x{h}")
                bag.write(TOPICS["info"], dict_to_camera_info(info, header), stamp)
            if with_gt:
                gt = np.zeros((h, w), bool) if mask is None else mask
                bag.write(TOPICS["gt"], array_to_image(np.where(gt, 255, 0).astype(np.uint8), "mono8", header), stamp)
            bag.write(TOPICS["sample"], String(data=f"{s.defect}/{s.sample_id}"), stamp)
    return {"path": str(out), "storage": storage, "frames": len(samples), "topics": dict(bag.counts),
            "start_ns": start, "period_s": 1.0 / rate}


# ------------------------------------------------------------------------------------------------ reading
@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open ``rosbags.rosbag2.Reader`` of a bag folder or a single .mcap/.db3 file; CmdrError if unreadable."""
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not path.exists():
        raise CmdrError(f"{path}: bag not found (a rosbag2 folder with metadata.yaml, or a .mcap / .db3 file)")
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as e:
        raise CmdrError(f"{path}: not a readable rosbag2 ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                        ) from None
    try:
        yield reader
    finally:
        reader.close()


def _connections(reader: Any, path: Path, topics: Sequence[str]) -> list[Any]:
    known = reader.topics
    missing = [t for t in topics if t not in known]
    if missing:
        raise CmdrError(f"{path}: no topic {', '.join(missing)} in the bag (it has {', '.join(sorted(known)) or 'none'})")
    return [c for t in topics for c in known[t].connections]


def _check_type(reader: Any, path: Path, topic: str, expected: str) -> None:
    found = reader.topics[topic].msgtype
    if found != expected:
        raise CmdrError(f"{path}: topic {topic} carries {found}, expected {expected}")


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, deserialized rclpy message) of a bag in log-time order, optionally only ``topics``."""
    from rclpy.serialization import deserialize_message

    with open_bag(path) as reader:
        conns = _connections(reader, Path(path), topics if topics is not None else sorted(reader.topics))
        classes = {c.topic: message_class(c.msgtype) for c in conns}
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, t, deserialize_message(bytes(raw), classes[conn.topic])


# ------------------------------------------------------------------------------------------------ playing
def parse_remaps(remap: Sequence[str] | dict[str, str] | None) -> dict[str, str]:
    """``["OLD:=NEW", ...]`` (or a dict) as {old: new}; CmdrError for a malformed entry."""
    if not remap:
        return {}
    if isinstance(remap, dict):
        return dict(remap)
    out = {}
    for r in remap:
        old, sep, new = r.partition(":=")
        if not sep or not old or not new:
            raise CmdrError(f"--remap '{r}': expected OLD:=NEW, e.g. /camera/image:=/cam/color")
        out[old] = new
    return out


def _same_offer(profiles: Sequence[Any]) -> bool:
    """rosbag2's ``all_profiles_effectively_same``: equal in every policy that decides compatibility."""
    return len({(p.reliability, p.durability, p.deadline, p.liveliness, p.liveliness_lease_duration)
                for p in profiles}) == 1


def playback_qos(topic: str, profiles: Sequence[Any], count: int = 0) -> Any:
    """The rclpy QoS to offer when playing ``topic``, recorded with the offered ``profiles`` (rosbags ``Qos``).

    As ``ros2 bag play`` (rosbag2 ``Rosbag2QoS::adapt_offer_to_recorded_offers``): profiles that agree in
    reliability, durability, deadline and liveliness give their reliability and durability; none, or a mix, give
    RELIABLE / VOLATILE. History: KEEP_LAST of the largest recorded depth, else 10 (rosbag2 records discovered
    publishers with an unknown history). ``/tf_static`` always goes out RELIABLE / TRANSIENT_LOCAL with room for
    its ``count`` recorded messages, so tf2's static listener gets every one of them, also when it joins late.
    """
    import logging

    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.interfaces import QosDurability, QosHistory, QosReliability

    reliable, latched, depth = True, False, 10
    if profiles and _same_offer(profiles):
        reliable = profiles[0].reliability != QosReliability.BEST_EFFORT
        latched = profiles[0].durability == QosDurability.TRANSIENT_LOCAL
        depth = max((p.depth for p in profiles if p.history == QosHistory.KEEP_LAST and p.depth > 0), default=10)
    elif profiles:
        logging.getLogger(__name__).warning("%s: the recorded publishers offered different QoS; playing it "
                                            "reliable, volatile (as ros2 bag play does)", topic)
    if topic == TF_STATIC:
        reliable, latched, depth = True, True, max(depth, count)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def topic_qos(reader: Any, topic: str) -> Any:
    """``playback_qos`` of a topic of an open bag (``open_bag``), from the offers of all its connections."""
    info = reader.topics[topic]
    return playback_qos(topic, [q for c in info.connections for q in c.ext.offered_qos_profiles], info.msgcount)


def _qos_text(qos: Any) -> str:
    return f"{qos.reliability.name.lower()}, {qos.durability.name.lower()}, depth {qos.depth}"


class _Pace:
    """Sleeps until each message is due (recorded spacing divided by ``rate``); with a /clock publisher, publishes
    the playback position in bag time every ``1/hz`` s meanwhile (never past the message waited for)."""

    def __init__(self, rate: float, clock_pub: Any = None, hz: float = 0.0) -> None:
        self.rate, self.clock_pub = rate, clock_pub
        self.period = 1.0 / hz if clock_pub is not None else math.inf
        self.ticks = 0
        self.restart()

    def restart(self) -> None:
        """From the start of the bag: the next message waited for is played at once."""
        self.t0, self.first = time.monotonic(), None
        self.next_tick = self.t0 if self.clock_pub is not None else math.inf

    def wait(self, t: int) -> None:
        self.first = t if self.first is None else self.first
        due = self.t0 + (t - self.first) / _NS / self.rate
        while True:
            now = time.monotonic()
            if now >= self.next_tick:
                self._tick(min(self.first + round((now - self.t0) * self.rate * _NS), t))
                self.next_tick = now + self.period
            if now >= due:
                return
            time.sleep(min(due, self.next_tick) - now)

    def _tick(self, stamp: int) -> None:
        from rosgraph_msgs.msg import Clock

        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = stamp // _NS, stamp % _NS
        self.clock_pub.publish(msg)
        self.ticks += 1


def play_bag(path: str | Path, rate: float = 1.0, loop: bool = False, topics: Sequence[str] | None = None,
             remap: Sequence[str] | dict[str, str] | None = None, node: Any = None, *, wait: float = 1.0,
             clock: float = 0.0, report: Callable[[str], None] | None = None) -> int:
    """Publish a bag's messages on DDS with their recorded spacing divided by ``rate``; returns how many were sent.

    Messages go out as the stored CDR bytes (``Publisher.publish`` of ``bytes``), header stamps untouched, each
    topic with the QoS it was recorded with (``playback_qos``: ``/tf_static`` transient-local) from publishers that
    live until the playback ends (``topics`` selects, ``remap`` renames). ``clock`` > 0: publish /clock
    (rosgraph_msgs/Clock, best effort) at the bag's time ``clock`` times a second, for nodes with use_sim_time.
    ``node``: publish from that rclpy node; None creates a node in a context of its own (no signal handlers:
    Ctrl-C raises KeyboardInterrupt here, which stops the playback cleanly). Before the first message it waits up
    to ``wait`` seconds for every topic's publisher to be matched, then at the end up to 1 s for reliable delivery
    to be acknowledged. ``loop`` replays until interrupted. ``report`` receives a summary line per topic.
    """
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    if not (math.isfinite(rate) and rate > 0):
        raise CmdrError(f"--rate {rate}: the playback rate must be a positive factor")
    if not (math.isfinite(clock) and clock >= 0):
        raise CmdrError(f"--clock {clock}: /clock is published a positive number of times per second (0: not at all)")
    renames = parse_remaps(remap)
    counts: Counter[str] = Counter()
    interrupted = False
    with open_bag(path) as reader:
        chosen = list(topics) if topics else sorted(reader.topics)
        conns = _connections(reader, Path(path), chosen)
        if clock and CLOCK in (renames.get(t, t) for t in chosen):
            raise CmdrError(f"{path}: the bag has its own {CLOCK}; leave it out (--topics) or play without --clock")
        types = {t: reader.topics[t].msgtype for t in chosen}
        classes = {t: message_class(types[t]) for t in chosen}
        qos = {t: topic_qos(reader, t) for t in chosen}
        context = None
        if node is None:
            from rclpy.signals import SignalHandlerOptions

            context = rclpy.Context()
            # no rclpy signal handler: it would shut the context down from another thread while this one destroys
            # the publishers (seen to hang under load); Ctrl-C is Python's KeyboardInterrupt, handled below
            rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
            node = rclpy.create_node("cmdr_bag_play", context=context)
        pubs = {t: node.create_publisher(classes[t], renames.get(t, t), qos[t]) for t in chosen}
        clock_pub = node.create_publisher(Clock, CLOCK, QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)) if clock else None  # rclcpp's ClockQoS
        pace = _Pace(rate, clock_pub, clock)
        try:
            deadline = time.monotonic() + max(wait, 0.0)
            while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in pubs.values()):
                time.sleep(0.01)
            while True:
                pace.restart()
                for conn, t, raw in reader.messages(connections=conns):
                    pace.wait(t)
                    pubs[conn.topic].publish(bytes(raw))
                    counts[conn.topic] += 1
                if not loop or pace.first is None:
                    break
            for p in pubs.values():
                p.wait_for_all_acked(Duration(seconds=1.0))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            for p in [*pubs.values(), clock_pub]:
                if p is not None:
                    node.destroy_publisher(p)
            if context is not None:
                node.destroy_node()
                with contextlib.suppress(Exception):
                    rclpy.shutdown(context=context)
    if report is not None:
        for t in chosen:
            name = t if renames.get(t, t) == t else f"{t} -> {renames[t]}"
            report(f"  {name} ({types[t]}; {_qos_text(qos[t])}): {counts[t]} messages")
        if clock:
            report(f"  {CLOCK} (rosgraph_msgs/msg/Clock; {clock:g} Hz): {pace.ticks} messages")
        report(f"played {sum(counts.values())} messages from {path} at rate {rate:g}"
               + (" (interrupted)" if interrupted else ""))
    return sum(counts.values())


# --------------------------------------------------------------------------------------------- evaluating
class _ByStamp:
    """Values keyed by a nanosecond stamp; lookup of the nearest one (optionally only within a tolerance)."""

    def __init__(self, items: list[tuple[int, Any]]) -> None:
        items.sort(key=lambda kv: kv[0])
        self.stamps = [k for k, _ in items]
        self.values = [v for _, v in items]

    def __bool__(self) -> bool:
        return bool(self.stamps)

    def nearest(self, t: int, within: int | None = None) -> Any:
        i = bisect.bisect_left(self.stamps, t)
        near = [j for j in (i - 1, i) if 0 <= j < len(self.stamps)]
        if not near:
            return None
        j = min(near, key=lambda j: abs(self.stamps[j] - t))
        return self.values[j] if within is None or abs(self.stamps[j] - t) <= within else None


@dataclass
class _Aux:
    """The bag's companion topics, read before the inputs: camera infos (by header stamp), ground-truth masks
    (by header stamp, bool HxW) and sample names (by log time: std_msgs/String has no header)."""

    infos: _ByStamp
    gts: _ByStamp
    samples: _ByStamp
    has_gt: bool


def _read_aux(reader: Any, topics: dict[str, str]) -> _Aux:
    from rclpy.serialization import deserialize_message

    from cmdr_ros.ros.conversions import image_to_array

    found: dict[str, list[tuple[int, Any]]] = {"info": [], "gt": [], "sample": []}
    if topics:
        by_topic = {t: k for k, t in topics.items()}
        conns = [c for t in topics.values() for c in reader.topics[t].connections]
        classes = {t: message_class(reader.topics[t].msgtype) for t in topics.values()}
        for conn, t, raw in reader.messages(connections=conns):
            kind = by_topic[conn.topic]
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            if kind == "info":
                found[kind].append((stamp_ns(msg.header), msg))
            elif kind == "gt":
                mask = image_to_array(msg)
                found[kind].append((stamp_ns(msg.header), (mask if mask.ndim == 2 else mask.any(-1)) != 0))
            else:
                found[kind].append((t, str(msg.data)))
    return _Aux(_ByStamp(found["info"]), _ByStamp(found["gt"]), _ByStamp(found["sample"]), "gt" in topics)


class _Evaluation:
    """Per matched set: the node's ``FrameJudge`` (same parameters, same alignment, same decision), the node's
    outputs into the results bag, a CSV row, a heatmap PNG, and (with ground truth) the inputs of
    ``compute_metrics`` exactly as ``cmdr eval`` gathers them. Every input that never matched gets a not-judged
    'unmatched' row and result, like on the node."""

    def __init__(self, judge: Any, params: dict[str, Any], inputs: list[str], aux: _Aux, slop_ns: int,
                 results: BagWriter, heatmaps: Path | None) -> None:
        self.judge, self.params, self.inputs, self.aux, self.slop_ns = judge, params, inputs, aux, slop_ns
        self.det = judge.judge_.detector
        self.results, self.heatmaps = results, heatmaps
        self.seq = 0
        self.rows: list[dict[str, Any]] = []
        self.metric_inputs: dict[str, list[Any]] = {k: [] for k in ("gts", "pix", "pro", "labels", "scores", "defects")}
        self.latencies: list[float] = []

    def __call__(self, msgs: dict[str, Any]) -> None:
        header = (msgs["image"] if "image" in msgs else msgs["points"]).header
        stamp = stamp_ns(header)
        sample = self.aux.samples.nearest(stamp, self.slop_ns)
        t0 = time.perf_counter()
        frame, verdict = self.judge.judge(msgs, self.aux.infos.nearest(stamp) if cross_modal(self.judge.mode) else None)
        latency_ms = (time.perf_counter() - t0) * 1e3
        label = self._truth(stamp, sample, verdict.prediction) if verdict.judged else None
        if verdict.judged:
            self.latencies.append(latency_ms)
        self._write(header, stamp, sample, "+".join(msgs), frame, verdict, latency_ms,
                    {k: m.header.frame_id for k, m in msgs.items()}, label)

    def orphan(self, index: int, msg: Any, why: str) -> None:
        """An input without partner (the synchronizer dropped it, or it still waited at the end of the bag)."""
        from cmdr_ros.ros.frame_judge import unmatched_reason

        name = self.inputs[index]
        verdict = self.judge.judge_.not_judged(*unmatched_reason(name, self.inputs, why,
                                                                 float(self.params["sync.timeout"])))
        stamp = stamp_ns(msg.header)
        self._write(msg.header, stamp, self.aux.samples.nearest(stamp, self.slop_ns), name, None, verdict, None,
                    {name: msg.header.frame_id}, None)

    def _write(self, header: Any, stamp: int, sample: str | None, inputs: str, frame: Any, verdict: Any,
               latency_ms: float | None, frame_ids: dict[str, str], label: int | None) -> None:
        import cv2
        from std_msgs.msg import Bool, Float32

        from cmdr_ros.ros.conversions import array_to_image
        from cmdr_ros.ros.outputs import heatmap_image, result_array

        self.seq += 1
        self.results.write(RESULTS["result"], result_array(
            header, verdict, frame, seq=self.seq, mode=self.judge.mode, model_id=self.det.model_id, inputs=inputs,
            latency_ms=latency_ms, frame_ids=frame_ids, extra={"sample": sample} if sample else None), stamp)
        if verdict.decision != "skip":
            self.results.write(RESULTS["reject"], Bool(data=verdict.reject), stamp)
        if verdict.judged:
            self.results.write(RESULTS["score"], Float32(data=float(verdict.score)), stamp)
            img = heatmap_image(frame, verdict.prediction, verdict.threshold,
                                float(self.params["output.heatmap_alpha"]), float(self.params["output.heatmap_max"]))
            self.results.write(RESULTS["heatmap"], array_to_image(img, "bgr8", frame.header), stamp)
            if self.heatmaps is not None:
                name = sample.replace("/", "_") if sample else f"{stamp // _NS}.{stamp % _NS:09d}"
                path = self.heatmaps / f"{name}.png"
                if not cv2.imwrite(str(path), img):
                    raise CmdrError(f"{path}: OpenCV could not write the heatmap")
        self.rows.append({"stamp": f"{header.stamp.sec}.{header.stamp.nanosec:09d}", "sample": sample or "",
                          "inputs": inputs, "score": verdict.score if verdict.judged else "",
                          "threshold": verdict.threshold, "decision": verdict.decision,
                          "reject": int(verdict.reject), "label": "" if label is None else label,
                          "latency_ms": round(latency_ms, 3) if latency_ms is not None else "",
                          "error": "" if verdict.judged else f"{verdict.kind}: {verdict.reason}"})

    def _truth(self, stamp: int, sample: str | None, pred: Any) -> int | None:
        """The frame's label (sample's defect folder, else its mask); collects the metric inputs with gt."""
        from cmdr_ros.data.preprocess import SquareFrame, resize_mask

        label = None if sample is None else int(sample.split("/")[0] != "good")
        if not self.aux.has_gt:
            return label
        mask = self.aux.gts.nearest(stamp, self.slop_ns)
        if mask is None:
            mask = np.zeros(pred.anomaly_map.shape, bool)  # like `cmdr eval` for a sample without a mask file
        if mask.shape != pred.anomaly_map.shape:
            raise CmdrError(f"ground-truth mask at stamp {stamp} is {mask.shape[1]}x{mask.shape[0]}, the input is "
                            f"{pred.anomaly_map.shape[1]}x{pred.anomaly_map.shape[0]}")
        label = int(mask.any()) if label is None else label
        m, pix = self.metric_inputs, pred.pixel_map()
        m["gts"].append(resize_mask(SquareFrame.of(*mask.shape).pad(mask), pix.shape[-1]))  # the model's map size
        m["pix"].append(pix)
        m["pro"].append(pred.pro_map())
        m["labels"].append(label)
        m["scores"].append(pred.score)
        m["defects"].append(sample.split("/")[0] if sample else ("good" if label == 0 else "defect"))
        return label

    def metrics(self) -> dict[str, Any] | None:
        """``compute_metrics`` of the judged frames, with per-defect I-AUROC etc. as ``cmdr eval`` reports them."""
        from cmdr_ros.metrics import metrics_by_defect

        m = self.metric_inputs
        if not self.aux.has_gt or not m["scores"]:
            return None
        out = metrics_by_defect(m["gts"], m["pix"], m["pro"], m["labels"], m["scores"], m["defects"])
        out["latency_ms_mean"] = float(np.mean(self.latencies))
        return out


def eval_bag(bag: str | Path, detector: Any, out: str | Path, *, params: dict[str, Any] | None = None,
             image_topic: str = TOPICS["image"], points_topic: str = TOPICS["points"],
             info_topic: str = TOPICS["info"], gt_topic: str = TOPICS["gt"], sample_topic: str = TOPICS["sample"],
             slop: float | None = None, threshold: float | None = None, checkpoint: str = "",
             write_images: bool = True, progress: bool = False) -> dict[str, Any]:
    """Run ``detector`` over a bag offline, judging every part exactly as the node would, without DDS.

    ``params``: the node's parameter values (``cmdr_ros.ros.parameters.read_params_file``; default: the node's
    defaults): the same ``FrameJudge`` (alignment with ``extrinsics`` / ``raster_resolution``, ``on_error``,
    minimum coverage / valid ratio, ``max_range``, threshold) and the synchronizer's ``sync.queue_size`` /
    ``sync.slop``; ``slop`` and ``threshold`` override theirs. Inputs are matched with the node's
    ``ApproximateTimePolicy``; each set gets the nearest camera_info. Writes ``out/results_bag`` (mcap, replaced
    if present: score, reject, result, heatmap stamped with the input stamps), ``out/results.csv`` and
    ``out/heatmaps/*.png``; with a ground-truth topic also ``out/metrics.json`` (the metrics of ``cmdr eval``).
    Returns the report (``table`` holds the printable metrics table when there are metrics).
    """
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from cmdr_ros.metrics import METRIC_KEYS, format_table
    from cmdr_ros.ros.frame_judge import FrameJudge
    from cmdr_ros.ros.parameters import node_params
    from cmdr_ros.ros.sync import ApproximateTimePolicy

    bag, out = Path(bag), Path(out)
    params = node_params(params, {"sync.slop": slop, "threshold": threshold})
    mode = detector.config.mode
    inputs = [(name, {"image": image_topic, "points": points_topic}[name]) for name in input_names(mode)]
    types = {"image": "sensor_msgs/msg/Image", "points": "sensor_msgs/msg/PointCloud2",
             "info": "sensor_msgs/msg/CameraInfo", "gt": "sensor_msgs/msg/Image", "sample": "std_msgs/msg/String"}
    t_start = time.perf_counter()
    with open_bag(bag) as reader:
        in_conns = _connections(reader, bag, [t for _, t in inputs])
        aux_topics = {k: t for k, t in (("info", info_topic), ("gt", gt_topic), ("sample", sample_topic))
                      if t in reader.topics and (k != "info" or cross_modal(mode))}
        for kind, topic in [*inputs, *aux_topics.items()]:
            _check_type(reader, bag, topic, types[kind])
        judge = FrameJudge.from_params(detector, params)
        aux = _read_aux(reader, aux_topics)
        custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
        class_name = custom.get("cmdr_ros.class") or bag.name
        results_dir = out / "results_bag"
        if results_dir.exists():
            if not (results_dir / "metadata.yaml").is_file():
                raise CmdrError(f"{results_dir}: exists and is not a bag; remove it or choose another --out")
            shutil.rmtree(results_dir)
        heatmaps = out / "heatmaps" if write_images else None
        if heatmaps is not None:
            heatmaps.mkdir(parents=True, exist_ok=True)
        index = {t: i for i, (_, t) in enumerate(inputs)}
        classes = {t: message_class(types[k]) for k, t in inputs}
        events: list[tuple[str, tuple[Any, ...]]] = []  # matched sets and orphans, in the order they happen
        policy = ApproximateTimePolicy(len(inputs), int(params["sync.queue_size"]), float(params["sync.slop"]),
                                       lambda *msgs: events.append(("set", msgs)),
                                       on_drop=lambda i, msg, why: events.append(("orphan", (i, msg, why))))
        with BagWriter(results_dir, "mcap", {"cmdr_ros.source": str(bag)}) as results:
            evaluation = _Evaluation(judge, params, [k for k, _ in inputs], aux, policy.slop_ns, results, heatmaps)

            def handle() -> None:
                while events:
                    what, item = events.pop(0)
                    if what == "set":
                        evaluation(dict(zip([k for k, _ in inputs], item)))
                        bar.update(1)
                    else:
                        evaluation.orphan(*item)

            with tqdm(total=reader.topics[inputs[0][1]].msgcount, disable=not progress, unit="frame",
                      leave=False) as bar:
                for conn, _, raw in reader.messages(connections=in_conns):
                    policy.add(index[conn.topic], deserialize_message(bytes(raw), classes[conn.topic]))
                    handle()
                policy.flush("timeout")  # still waiting at the end of the bag: on the node it would time out
                handle()
    full = "+".join(k for k, _ in inputs)
    judged = [r for r in evaluation.rows if r["inputs"] == full]
    if not judged:
        raise CmdrError(f"{bag}: no {' + '.join(t for _, t in inputs)} set matched within the slop of "
                        f"{params['sync.slop']:g} s")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(evaluation.rows[0]))
        w.writeheader()
        w.writerows(evaluation.rows)
    unmatched = Counter(r["inputs"] for r in evaluation.rows if r["inputs"] != full)
    report: dict[str, Any] = {
        "bag": str(bag), "checkpoint": str(checkpoint), "model_id": detector.model_id, "mode": mode,
        "grid": detector.config.grid, "map_size": detector.config.map_size, "threshold": judge.threshold,
        "device": str(detector.device), "frames": len(judged),
        "not_judged": sum(bool(r["error"]) for r in judged), "rejects": sum(r["reject"] for r in judged),
        "unmatched": {t: unmatched[k] for k, t in inputs},
        "results_bag": str(results_dir), "seconds": time.perf_counter() - t_start}
    metrics = evaluation.metrics()
    if metrics is not None:
        classes_m = {class_name: metrics}
        report["classes"] = classes_m
        report["mean"] = {k: float(metrics[k]) for k in METRIC_KEYS}
        (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=True))
        report["table"] = format_table(classes_m, report["mean"])
    return report


# ------------------------------------------------------------------------------------------------ bag -> folder
def bag_to_dataset(bag: str | Path, out: str | Path, split: str = "train", defect: str = "good",
                   image_topic: str | None = TOPICS["image"], points_topic: str | None = TOPICS["points"],
                   info_topic: str | None = TOPICS["info"], slop: float | None = None, start_index: int = 0,
                   params: dict[str, Any] | None = None) -> int:
    """Write the synchronized image/cloud sets of a recorded bag as samples of an MVTec 3D-AD style class folder
    (``out/<split>/<defect>/{rgb,xyz}/NNN``), so ``cmdr train`` can learn from recordings of good parts.

    Clouds go through the node's own alignment (``FrameJudge.assemble`` with the node's ``params``: pixel-aligned,
    projected with the bag's camera_info and ``extrinsics``, or rasterized with ``raster_resolution``), so the
    model is trained on exactly what the node will see. ``None`` leaves a topic out (3D-only: no image; 2D-only:
    no points). A set that cannot be aligned is left out with a warning. Returns the number of samples written.
    """
    import logging

    from rclpy.serialization import deserialize_message

    from cmdr_ros.data.mvtec3d import write_sample
    from cmdr_ros.ros.frame_judge import FrameJudge
    from cmdr_ros.ros.parameters import node_params
    from cmdr_ros.ros.sync import ApproximateTimePolicy

    params = node_params(params, {"sync.slop": slop})
    inputs = [(k, t) for k, t in (("image", image_topic), ("points", points_topic)) if t]
    if not inputs:
        raise CmdrError("bag to-dataset: give an image topic, a points topic or both")
    mode = mode_of([k for k, _ in inputs])
    aligner = FrameJudge.aligner(mode, params)
    bag = Path(bag)
    sets: list[tuple[Any, ...]] = []
    infos: list[Any] = []
    written = skipped = 0
    with open_bag(bag) as reader:
        conns = _connections(reader, bag, [t for _, t in inputs])
        if info_topic and info_topic in reader.topics:
            conns += _connections(reader, bag, [info_topic])
        classes = {c.topic: message_class(c.msgtype) for c in conns}
        index = {t: i for i, (_, t) in enumerate(inputs)}
        policy = ApproximateTimePolicy(len(inputs), int(params["sync.queue_size"]), float(params["sync.slop"]),
                                       lambda *msgs: sets.append(msgs))
        for conn, _, raw in reader.messages(connections=conns):
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            if conn.topic == info_topic:
                infos.append(msg)
                continue
            policy.add(index[conn.topic], msg)
            while sets:
                msgs = dict(zip([k for k, _ in inputs], sets.pop(0)))
                try:
                    frame = aligner.assemble(msgs, infos[-1] if infos else None)
                except CmdrError as e:
                    skipped += 1
                    logging.getLogger(__name__).warning("left out the set stamped %s: %s",
                                                        stamp_ns(next(iter(msgs.values())).header), e)
                    continue
                write_sample(out, split, defect, f"{start_index + written:03d}", frame.rgb, frame.xyz)
                written += 1
    if not written:
        raise CmdrError(f"{bag}: no {' + '.join(t for _, t in inputs)} set matched within the slop of "
                        f"{params['sync.slop']:g} s" + (f" ({skipped} could not be aligned)" if skipped else ""))
    return written
