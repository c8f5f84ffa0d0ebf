"""What every conversion shares: the error type, headers, message payload buffers (stamps: ``ros/stamps.py``)."""
from __future__ import annotations

import array
from typing import Any

import numpy as np
from std_msgs.msg import Header

from cmdr_ros import CmdrError
from cmdr_ros.ros.stamps import set_stamp


class ConversionError(CmdrError):
    """A ROS message (or array to be published) whose layout or content cannot be converted."""


def make_header(stamp: int, frame_id: str) -> Header:
    """A std_msgs/Header at ``stamp`` nanoseconds."""
    h = Header(frame_id=frame_id)
    set_stamp(h.stamp, stamp)
    return h


def byte_buffer(data: Any) -> np.ndarray:
    """The message's ``data`` (array.array, bytes, memoryview, ndarray or list) as a flat uint8 array."""
    if isinstance(data, (bytes, bytearray, memoryview, array.array, np.ndarray)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def sized_buffer(data: Any, expected: int, what: str, formula: str) -> np.ndarray:
    """The message payload as uint8, or a ConversionError when its length is not ``expected`` bytes."""
    buf = byte_buffer(data)
    if buf.size != expected:
        raise ConversionError(f"{what} has {buf.size} bytes, expected {formula} = {expected}")
    return buf


def payload_bytes(arr: np.ndarray) -> array.array:
    """Bytes of a C-contiguous array as the ``array('B')`` that rclpy stores (a memcpy, no per-byte check)."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(arr).tobytes())
    return out


def with_byte_order(base: str, bigendian: bool) -> np.dtype:
    """The numpy dtype ``base`` in the message's byte order (``is_bigendian``)."""
    return np.dtype(base).newbyteorder(">" if bigendian else "<")
