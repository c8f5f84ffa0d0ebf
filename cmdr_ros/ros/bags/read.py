"""Reading rosbag2 files: ``open_bag`` (a bag folder or a single file, checked), ``read_messages`` (deserialized
rclpy messages in log-time order) and ``message_class`` (the rclpy class of a type a bag names)."""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Iterator, Sequence

from cmdr_ros import CmdrError


def message_class(type_name: str) -> type:
    """The installed rclpy message class of 'pkg/msg/Name'; CmdrError when it is not installed."""
    pkg, kind, name = (type_name.split("/") + ["", ""])[:3]
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError, ValueError):
        raise CmdrError(f"message type '{type_name}' is not installed (no Python module {pkg}.{kind}.{name})") from None


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


def connections(reader: Any, path: Path, topics: Sequence[str]) -> list[Any]:
    known = reader.topics
    missing = [t for t in topics if t not in known]
    if missing:
        raise CmdrError(f"{path}: no topic {', '.join(missing)} in the bag (it has {', '.join(sorted(known)) or 'none'})")
    return [c for t in topics for c in known[t].connections]


def check_type(reader: Any, path: Path, topic: str, expected: str) -> None:
    found = reader.topics[topic].msgtype
    if found != expected:
        raise CmdrError(f"{path}: topic {topic} carries {found}, expected {expected}")


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, deserialized rclpy message) of a bag in log-time order, optionally only ``topics``."""
    from rclpy.serialization import deserialize_message

    with open_bag(path) as reader:
        conns = connections(reader, Path(path), topics if topics is not None else sorted(reader.topics))
        classes = {c.topic: message_class(c.msgtype) for c in conns}
        for conn, t, raw in reader.messages(connections=conns):
            yield conn.topic, t, deserialize_message(bytes(raw), classes[conn.topic])

