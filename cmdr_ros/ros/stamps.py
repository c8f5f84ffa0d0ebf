"""ROS stamps as integer nanoseconds: the package's one conversion between a ``builtin_interfaces/Time`` (or an
rclpy ``Time``, or a header holding one) and nanoseconds, its ``sec.nanosec`` text (``~/result``'s ``stamp``, file
names), and the stamps of parts written at a fixed rate (bags, the demo).

Pure arithmetic on duck-typed messages: no ROS import.
"""
from __future__ import annotations

import time
from typing import Any

NS_PER_S = 1_000_000_000


def stamp_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time, an rclpy Time, or a message header holding one, in integer nanoseconds."""
    stamp = getattr(stamp, "stamp", stamp)
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def set_stamp(stamp: Any, ns: int) -> Any:
    """Set a builtin_interfaces/Time (``sec``, ``nanosec``) to ``ns`` nanoseconds; returns it."""
    stamp.sec, stamp.nanosec = divmod(int(ns), NS_PER_S)
    return stamp


def stamp_text(stamp: Any) -> str:
    """``sec.nanosec`` (nanoseconds zero-padded to 9 digits) of a stamp, a header or integer nanoseconds."""
    sec, nanosec = divmod(stamp if isinstance(stamp, int) else stamp_ns(stamp), NS_PER_S)
    return f"{sec}.{nanosec:09d}"


def seconds_ns(seconds: float) -> int:
    """A duration in seconds as integer nanoseconds (truncated, as rclpy's ``Duration(seconds=)``)."""
    return int(seconds * NS_PER_S)


def paced_stamps(count: int, rate: float, start_ns: int | None = None) -> list[int]:
    """``count`` stamps ``rate`` per second from ``start_ns`` (default: now, rounded down to the whole second)."""
    start = int(start_ns) if start_ns is not None else time.time_ns() // NS_PER_S * NS_PER_S
    return [start + round(i * NS_PER_S / rate) for i in range(count)]
