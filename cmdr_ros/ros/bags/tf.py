"""The bag's own tf for offline judging: what the node's tf2 listener would have heard, from the bag's ``/tf`` and
``/tf_static``.

* ``read_tf``: every transform of those topics (tf2_msgs/msg/TFMessage, deserialized with rosbags' typestore:
  tf2_msgs has no PyPI wheel, so rclpy cannot decode it in a pip-only venv);
* ``bag_tf_lookup``: a ``frames.TransformLookup`` (target, source, stamp -> 4x4 source -> target, None when there
  is none) over them, the same signature the node's judge takes. With tf2_ros installed (a ROS install) it is
  tf2's own buffer (``tf2_ros.Buffer``, a BufferCore without a node, filled with ``set_transform`` /
  ``set_transform_static``); without it ``TfTree`` below;
* ``tf_message``: a TFMessage to write into a bag (``BagWriter.write``), e.g. a cell's static sensor mount.

``TfTree`` is written here because no tf buffer is on PyPI (no tf2_ros / tf2_py wheel; pytransform3d's temporal
manager interpolates by screw motion, not as tf2 does). It follows tf2's rules, so the offline lookup equals the
node's: a frame's parent and transform come from its last ``/tf_static`` message (valid at every time) or from its
``/tf`` messages, interpolated at the asked time between the two around it (translation linear, rotation slerp:
tf2's ``TimeCache``), never extrapolated (a stamp before the first or after the last transform of a hop has none,
as tf2 raises ExtrapolationException); a chain goes up from both frames to their common ancestor (either
direction); stamp 0 asks for the latest time every hop of the chain has (tf2's latest common time). Unlike the
node's tf2, which keeps 10 s of ``/tf``, the offline buffer holds the whole bag.
"""
from __future__ import annotations

import bisect
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry.transforms import interpolate_transform, make_transform
from cmdr_ros.ros.stamps import NS_PER_S, set_stamp, stamp_ns
from cmdr_ros.ros.topics import TF_STATIC

TF = "/tf"
TF_TOPICS = (TF, TF_STATIC)
TF_TYPE = "tf2_msgs/msg/TFMessage"
_MAX_DEPTH = 1000  # tf2's MAX_GRAPH_DEPTH: a longer chain is a loop


@dataclass(frozen=True)
class Transform:
    """One transform of a TFMessage: ``child`` -> ``parent`` (points in the child frame into the parent frame)."""

    parent: str
    child: str
    stamp_ns: int
    matrix: np.ndarray  # 4x4
    static: bool


@functools.lru_cache(maxsize=1)
def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)  # TFMessage is the same in every ROS 2 distribution


def _strip(frame: str) -> str:
    return frame[1:] if frame.startswith("/") else frame  # tf2 drops a leading slash


def read_tf(reader: Any, path: str | Path) -> list[Transform]:
    """The transforms of the bag's ``/tf`` and ``/tf_static`` (open ``open_bag`` reader), in log-time order;
    CmdrError when one of them carries another type than tf2_msgs/msg/TFMessage."""
    topics = [t for t in TF_TOPICS if t in reader.topics]
    for t in topics:
        if reader.topics[t].msgtype != TF_TYPE:
            raise CmdrError(f"{path}: topic {t} carries {reader.topics[t].msgtype}, expected {TF_TYPE}")
    if not topics:
        return []
    store = _typestore()
    out = []
    conns = [c for t in topics for c in reader.topics[t].connections]
    for conn, _, raw in reader.messages(connections=conns):
        msg = store.deserialize_cdr(bytes(raw), TF_TYPE)
        for ts in msg.transforms:
            tr, rot = ts.transform.translation, ts.transform.rotation
            try:
                matrix = make_transform([tr.x, tr.y, tr.z], [rot.x, rot.y, rot.z, rot.w])
            except CmdrError as e:
                logging.getLogger(__name__).warning("%s: %s: transform %s -> %s left out (%s)", path, conn.topic,
                                                    ts.child_frame_id, ts.header.frame_id, e)
                continue
            out.append(Transform(_strip(ts.header.frame_id), _strip(ts.child_frame_id),
                                 stamp_ns(ts.header), matrix,
                                 conn.topic == TF_STATIC))
    return out


def tf_message(transforms: Iterable[tuple[str, str, int, np.ndarray]]) -> Any:
    """A tf2_msgs/msg/TFMessage (rosbags' class, which ``BagWriter.write`` serializes) of (parent, child, stamp ns,
    4x4 child -> parent) transforms."""
    from scipy.spatial.transform import Rotation

    store = _typestore()
    M = store.types
    msgs = []
    for parent, child, stamp, T in transforms:
        T = np.asarray(T, dtype=np.float64)
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        sec, nanosec = divmod(int(stamp), NS_PER_S)
        header = M["std_msgs/msg/Header"](stamp=M["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
                                          frame_id=parent)
        transform = M["geometry_msgs/msg/Transform"](
            translation=M["geometry_msgs/msg/Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=M["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))
        msgs.append(M["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id=child, transform=transform))
    return M[TF_TYPE](transforms=msgs)


class TfError(LookupError):
    """No transform between two frames at a time (tf2's Lookup / Connectivity / Extrapolation exceptions)."""


class TfTree:
    """A pure-Python tf buffer of a whole recording (see the module's doc for the rules it shares with tf2)."""

    def __init__(self, transforms: Iterable[Transform] = ()) -> None:
        self._static: dict[str, tuple[str, np.ndarray]] = {}
        self._dynamic: dict[str, list[tuple[int, str, np.ndarray]]] = {}
        self._frames: set[str] = set()
        for t in transforms:
            self.add(t)

    def add(self, t: Transform) -> None:
        self._frames |= {t.parent, t.child}
        if t.static:
            self._static[t.child] = (t.parent, t.matrix)  # tf2 keeps only the latest static transform of a frame
        else:
            samples = self._dynamic.setdefault(t.child, [])
            bisect.insort(samples, (t.stamp_ns, t.parent, t.matrix), key=lambda s: s[0])

    def _hop(self, child: str, stamp: int) -> tuple[str, np.ndarray] | None:
        """(parent, child -> parent) at ``stamp`` (0: the latest); None for a root; TfError out of the recorded
        time of a dynamic frame."""
        if child in self._static:
            return self._static[child]
        samples = self._dynamic.get(child)
        if not samples:
            return None
        if stamp == 0:
            return samples[-1][1], samples[-1][2]
        first, last = samples[0][0], samples[-1][0]
        if not first <= stamp <= last:
            raise TfError(f"extrapolation: frame '{child}' has transforms from {first / NS_PER_S:.9f} to {last / NS_PER_S:.9f} "
                          f"s, asked at {stamp / NS_PER_S:.9f} s")
        i = bisect.bisect_left(samples, stamp, key=lambda s: s[0])
        t1, p1, T1 = samples[i]
        if t1 == stamp:
            return p1, T1
        t0, p0, T0 = samples[i - 1]
        if p0 != p1:  # re-parented between the two: tf2 keeps the earlier one
            return p0, T0
        return p0, interpolate_transform(T0, T1, (stamp - t0) / (t1 - t0))

    def _walk(self, frame: str, stamp: int) -> tuple[dict[str, np.ndarray], TfError | None]:
        """``frame``'s ancestors in order (itself first) with the ``frame`` -> ancestor transform, up to the root or
        to the first hop without a transform at ``stamp`` (that hop's error, which matters only when the other
        frame is not met below it)."""
        chain = {frame: np.eye(4)}
        T = np.eye(4)
        for _ in range(_MAX_DEPTH):
            try:
                hop = self._hop(frame, stamp)
            except TfError as e:
                return chain, e
            if hop is None:
                return chain, None
            frame, T = hop[0], hop[1] @ T
            if frame in chain:
                break
            chain[frame] = T
        return chain, TfError(f"the tf tree has a loop through '{frame}'")

    def _below_common(self, target: str, source: str, stamp: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                                            str]:
        """Both frames' chains and their lowest common ancestor (as tf2, only the hops below it are evaluated)."""
        up_source, err_source = self._walk(source, stamp)
        up_target, err_target = self._walk(target, stamp)
        common = next((f for f in up_target if f in up_source), None)
        if common is None:
            raise err_source or err_target or TfError(f"'{source}' and '{target}' are not connected in the recorded "
                                                      "tf (two trees)")
        return up_target, up_source, common

    def _latest_common(self, target: str, source: str) -> int:
        """tf2's latest common time of the hops between the two frames (0 when all of them are static)."""
        up_target, up_source, common = self._below_common(target, source, 0)
        below = [f for chain in (up_target, up_source) for f in list(chain)[:list(chain).index(common)]]
        return min((self._dynamic[f][-1][0] for f in below if f not in self._static), default=0)

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """The 4x4 transform of points in ``source`` into ``target`` at ``stamp_ns``; TfError when there is none."""
        target, source = _strip(target), _strip(source)
        if target == source:
            return np.eye(4)
        missing = [f for f in (target, source) if f not in self._frames]
        if missing:
            raise TfError(f"frame '{missing[0]}' does not exist in the recorded tf")
        stamp = self._latest_common(target, source) if stamp_ns == 0 else stamp_ns
        up_target, up_source, common = self._below_common(target, source, stamp)
        return np.linalg.inv(up_target[common]) @ up_source[common]


def _tf2_buffer(transforms: Sequence[Transform]) -> Any:
    """tf2's own buffer filled with the recording (None when tf2_ros is not installed), caching the whole bag."""
    try:
        import tf2_ros
    except ImportError:
        return None
    from geometry_msgs.msg import TransformStamped
    from rclpy.duration import Duration
    from scipy.spatial.transform import Rotation

    stamps = [t.stamp_ns for t in transforms if not t.static]
    span = (max(stamps) - min(stamps)) / NS_PER_S if stamps else 0.0
    buffer = tf2_ros.Buffer(cache_time=Duration(seconds=span + 10.0))
    for t in transforms:
        msg = TransformStamped(child_frame_id=t.child)
        msg.header.frame_id = t.parent
        set_stamp(msg.header.stamp, t.stamp_ns)
        tr, q = msg.transform.translation, msg.transform.rotation
        tr.x, tr.y, tr.z = (float(v) for v in t.matrix[:3, 3])
        q.x, q.y, q.z, q.w = (float(v) for v in Rotation.from_matrix(t.matrix[:3, :3]).as_quat())
        (buffer.set_transform_static if t.static else buffer.set_transform)(msg, "cmdr_bag")
    return buffer


def bag_tf_lookup(transforms: Sequence[Transform], warn: Any = None) -> Any:
    """A ``TransformLookup`` over the recorded ``transforms`` (None when there are none: the judge then uses the
    ``extrinsics`` parameter or refuses, as without tf): tf2's buffer when tf2_ros is installed, else ``TfTree``.
    ``warn(text)`` hears why a lookup found nothing (default: this module's logger, once per distinct text)."""
    if not transforms:
        return None
    said: set[str] = set()

    def say(text: str) -> None:
        if warn is not None:
            warn(text)
        elif text not in said:
            said.add(text)
            logging.getLogger(__name__).warning("%s", text)

    buffer = _tf2_buffer(transforms)
    if buffer is not None:
        from rclpy.time import Time

        def lookup(target: str, source: str, stamp: Any) -> np.ndarray | None:
            try:
                t = buffer.lookup_transform_core(target, source, Time(nanoseconds=stamp_ns(stamp))).transform
            except Exception as e:  # noqa: BLE001 - tf2 raises several exception types
                say(f"no recorded tf {source} -> {target} at the cloud's stamp ({type(e).__name__}: {e})")
                return None
            return make_transform([t.translation.x, t.translation.y, t.translation.z],
                                  [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

        return lookup
    tree = TfTree(transforms)

    def lookup(target: str, source: str, stamp: Any) -> np.ndarray | None:  # noqa: F811 - the pure-Python twin
        try:
            return tree.lookup(target, source, stamp_ns(stamp))
        except TfError as e:
            say(f"no recorded tf {source} -> {target} at the cloud's stamp ({e})")
            return None

    return lookup


def tf_backend() -> str:
    """Which buffer ``bag_tf_lookup`` uses here."""
    import importlib.util

    return "tf2_ros buffer" if importlib.util.find_spec("tf2_ros") is not None else "pure-Python TfTree"


def tf_summary(transforms: Sequence[Transform], use_tf: bool) -> str:
    """What a bag's judge resolves a cloud in another frame with, in words (for the eval report)."""
    if not use_tf:
        return "not used (use_tf false): clouds in another frame use the extrinsics parameter or are no_transform"
    if not transforms:
        return "none in the bag: clouds in another frame use the extrinsics parameter or are no_transform"
    static = sum(t.static for t in transforms)
    frames = sorted({t.child for t in transforms} | {t.parent for t in transforms})
    return (f"{static} static + {len(transforms) - static} dynamic transforms of frames {', '.join(frames)} "
            f"({tf_backend()})")


def recorded_tf(reader: Any, path: str | Path, params: dict[str, Any]) -> Any:
    """The lookup the node's tf2 listener would have had for this bag (open ``open_bag`` reader): its /tf and
    /tf_static (``bag_tf_lookup``) when the node's ``use_tf`` parameter is on; None (``extrinsics``, else
    no_transform) when it is off or the bag has no tf."""
    return bag_tf_lookup(read_tf(reader, path)) if params.get("use_tf", True) else None
