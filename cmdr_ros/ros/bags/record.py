"""Writing rosbag2 files: ``BagWriter`` (rclpy messages -> a new bag) and ``bag_from_dataset`` (a dataset split
-> the bag its sensor could have recorded: a camera driver's for frames (``frame_records``), a laser profilometer's
for a class of unorganized scans (``scan_records``)).

Metadata version: bags are written as rosbag2 metadata **version 8** (Iron's format), the oldest rosbags writes
(it writes 8 or 9 and has no default). Version 8 keeps ``offered_qos_profiles`` a YAML *string*: version 9 (Jazzy)
made it a list, which older yaml-cpp parsers reject ("bad conversion"). rosbag2's parser reads
each optional field behind a ``version >= N`` test with no upper bound, so Humble (which writes version 5) reads
every key it knows from a version 8 file and ignores ``type_description_hash`` and ``ros_distro``; ``custom_data``
is always a non-empty mapping, never null. Playing the mcap storage on Humble needs
``ros-humble-rosbag2-storage-mcap``; ``--storage sqlite3`` needs nothing extra.
"""
from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.ros.conversions import make_header
from cmdr_ros.ros.stamps import NS_PER_S, paced_stamps
from cmdr_ros.ros.topics import PROFILER, RECORDED, TF_STATIC

METADATA_VERSION = 8
STORAGES = ("mcap", "sqlite3")
_INFINITE_NS = 2**63 - 1  # RMW_DURATION_INFINITE, recorded by rosbag2 as sec 9223372036, nsec 854775807


def _reliable_qos() -> Any:
    """The offered QoS of a RELIABLE, VOLATILE, KEEP_LAST(10) publisher with default (infinite) durations,
    as rosbag2 records it."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(*divmod(_INFINITE_NS, NS_PER_S))
    return Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, inf, inf,
               QosLiveliness.AUTOMATIC, inf, False)


def _latched_qos() -> Any:
    """What tf2's StaticTransformBroadcaster offers on /tf_static: RELIABLE, TRANSIENT_LOCAL, KEEP_LAST(1), default
    (infinite) durations. Recorded so, ``ros2 bag play`` republishes /tf_static latched (rosbag2's
    adapt_offer_to_recorded_offers keeps a recorded durability), and a node that starts after the playback's first
    message still gets the sensor mount."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    inf = QosTime(*divmod(_INFINITE_NS, NS_PER_S))
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL, inf, inf,
               QosLiveliness.AUTOMATIC, inf, False)


def offered_qos(topic: str) -> Any:
    """The offered QoS a topic is recorded with: ``/tf_static`` latched (``_latched_qos``), every other topic
    reliable and volatile (``_reliable_qos``), as the publishers of a camera driver and of tf2 offer them."""
    return _latched_qos() if topic == TF_STATIC else _reliable_qos()


def _type_name(msg_class: type) -> str:
    """'sensor_msgs/msg/Image' for the rclpy class sensor_msgs.msg.Image (a rosbags class names its own type)."""
    return getattr(msg_class, "__msgtype__", None) or f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"


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
        self._typestore: Any = None
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._writer.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            shutil.rmtree(self.path, ignore_errors=True)  # the folder is this writer's own: it refused existing paths

    def write(self, topic: str, msg: Any, stamp: int) -> None:
        """Serialize ``msg`` (CDR, as rclpy publishes it) and store it at log time ``stamp`` (ns). ``msg`` is an
        rclpy message, or a rosbags one (``tf.tf_message``: types without a PyPI wheel, such as tf2_msgs). The
        topic is recorded with ``offered_qos(topic)``."""
        if self._typestore is None:
            from rosbags.typesys import Stores, get_typestore

            from cmdr_ros.ros.node.typed_decision import register_types

            self._typestore = get_typestore(Stores.ROS2_HUMBLE)  # definitions and RIHS01 hashes of the std types
            register_types(self._typestore)  # vision_msgs (~/decision): not in rosbags' store
        typestore = self._typestore
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, _type_name(type(msg)), typestore=typestore, offered_qos_profiles=[offered_qos(topic)])
        if hasattr(type(msg), "__msgtype__"):
            data = typestore.serialize_cdr(msg, type(msg).__msgtype__)
        else:
            from rclpy.serialization import serialize_message

            data = serialize_message(msg)
        self._writer.write(self._connections[topic], int(stamp), data)
        self.counts[topic] += 1


def _check_rate(rate: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise CmdrError(f"--rate {rate}: the frame rate must be a positive number of frames per second")


def bag_from_dataset(data_dir: str | Path, out: str | Path, storage: str = "mcap", split: str = "test",
                     rate: float = 2.0, frame_id: str = "camera", start_ns: int | None = None) -> dict[str, Any]:
    """Write a split of a class folder as the bag its sensor could have recorded: an MVTec 3D-AD style folder as a
    camera driver's (``frame_records``), a class of unorganized scans (``cmdr_ros.data.scans`` layout) as a laser
    profilometer's (``scan_records``). Per part, all at the same stamp (``start_ns`` + i/rate s; default: now, whole
    seconds), its messages and ``/cmdr/sample`` (std_msgs/String "<defect>/<id>", naming the part); every header
    keeps ``frame_id``. Returns a summary: path, storage, frames, topics {name: count}, start_ns, period_s."""
    from cmdr_ros.data.scans import ScanDataset

    _check_rate(rate)
    records = scan_records if ScanDataset.is_scan_folder(data_dir) else frame_records
    name, custom, parts = records(data_dir, split)
    stamps = paced_stamps(len(parts), rate, start_ns)
    custom = {"cmdr_ros.class": name, "cmdr_ros.split": split, "cmdr_ros.rate_hz": repr(float(rate)), **custom}
    with BagWriter(out, storage, custom) as bag:
        for part, stamp in zip(parts, stamps):
            for topic, msg in part(make_header(stamp, frame_id)):
                bag.write(topic, msg, stamp)
    return {"path": str(out), "storage": storage, "frames": len(parts), "topics": dict(bag.counts),
            "start_ns": stamps[0], "period_s": 1.0 / rate}


#: a part of a recording: its messages for a header, in the order they are written
Part = Callable[[Any], list[tuple[str, Any]]]


def _sample(defect: str, sample_id: str) -> tuple[str, Any]:
    from std_msgs.msg import String

    return RECORDED["sample"], String(data=f"{defect}/{sample_id}")


def frame_records(data_dir: str | Path, split: str) -> tuple[str, dict[str, str], list[Part]]:
    """The parts of an MVTec 3D-AD style split as a camera driver publishes them: ``/camera/image`` rgb8,
    ``/camera/points`` organized float32 x,y,z pixel-aligned with the image (invalid points NaN, as ROS drivers
    publish them), ``/camera/camera_info`` from calibration/camera_parameters.json when present, and when the split
    has masks ``/camera/gt_mask`` mono8 0/255 (all 0 for a sample without a mask file, as ``cmdr eval`` reads it);
    with the class name and no further custom data."""
    from cmdr_ros.data.mvtec3d import MVTec3DClass, load_sample
    from cmdr_ros.geometry import CameraIntrinsics
    from cmdr_ros.ros.conversions import array_to_image, dict_to_camera_info, xyz_to_pointcloud2

    data = MVTec3DClass(data_dir)
    samples = data.samples(split)
    if not samples:
        raise CmdrError(f"{data.root / split}: no samples to write")
    params = data.camera_parameters()
    info = CameraIntrinsics.from_mvtec_json(params).to_dict() if params is not None else None
    with_gt = any(s.gt_path is not None for s in samples)

    def part(s: Any) -> Part:
        def messages(header: Any) -> list[tuple[str, Any]]:
            rgb, xyz, mask = load_sample(s, need_rgb=s.rgb_path is not None, need_xyz=s.xyz_path is not None)
            h, w = (rgb if rgb is not None else xyz).shape[:2]
            out = []
            if rgb is not None:
                out.append((RECORDED["image"], array_to_image(rgb, "rgb8", header)))
            if xyz is not None:
                points = xyz.copy()
                points[~np.any(xyz != 0, axis=-1)] = np.nan  # the project's invalid (0,0,0) -> ROS's NaN
                out.append((RECORDED["points"], xyz_to_pointcloud2(points, header)))
            if info is not None:
                if (info["width"], info["height"]) != (w, h):
                    raise CmdrError(f"{data.root / 'calibration' / 'camera_parameters.json'}: the camera is "
                                    f"{info['width']}x{info['height']} but {s.rgb_path or s.xyz_path} is {w}x{h}")
                out.append((RECORDED["camera_info"], dict_to_camera_info(info, header)))
            if with_gt:
                gt = np.zeros((h, w), bool) if mask is None else mask
                out.append((RECORDED["gt"], array_to_image(np.where(gt, 255, 0).astype(np.uint8), "mono8", header)))
            return out + [_sample(s.defect, s.sample_id)]
        return messages

    return data.name, {}, [part(s) for s in samples]


def scan_records(data_dir: str | Path, split: str) -> tuple[str, dict[str, str], list[Part]]:
    """The parts of a split of unorganized scans as a laser profilometer publishes them: the profiler's ``points``
    topic (``topics.PROFILER``: an unorganized PointCloud2, float32 x,y,z, one row of N points in the file's order,
    so a "chunks" model cuts the same chunks) and, when the split has per-point ground truth (``gt/NNN.npy``),
    ``/cmdr/gt_points``: the same points with the labels as their intensity (0 / 1; all 0 for a scan without a
    labels file), from which ``cmdr bag eval`` computes the chunk and point metrics; with the class name and the
    custom data ``cmdr_ros.layout: scans``."""
    from cmdr_ros.data.scans import ScanDataset
    from cmdr_ros.ros.conversions import xyz_to_pointcloud2

    data = ScanDataset(data_dir)
    scans = data.scans(split)
    if not scans:
        raise CmdrError(f"{data.root / split}: no scans to write (expected <defect>/points/NNN.npy|ply|pcd)")
    with_gt = any(s.gt_path is not None for s in scans)

    def part(scan: Any) -> Part:
        def messages(header: Any) -> list[tuple[str, Any]]:
            points, labels = scan.load()
            points = np.asarray(points, dtype=np.float32)
            out = [(PROFILER["points"], xyz_to_pointcloud2(points, header)), _sample(scan.defect, scan.sample_id)]
            if with_gt:
                truth = np.zeros(len(points), np.float32) if labels is None else labels.astype(np.float32)
                out.append((RECORDED["gt_points"], xyz_to_pointcloud2(points, header, intensity=truth)))
            return out
        return messages

    return data.root.name, {"cmdr_ros.layout": "scans"}, [part(s) for s in scans]
