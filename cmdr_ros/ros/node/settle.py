"""Stopping without losing a part: what the node's shutdown, deactivate and cleanup use to take every input the
middleware still holds and to wait until the fail-safe decisions reached their subscribers."""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from rclpy.duration import Duration


def take_all(sub: Any, callback: Callable[[Any], None]) -> None:
    """Hand every message still waiting in the reader of subscription ``sub`` to ``callback`` (executor stopped)."""
    while True:
        with sub.handle:
            got = sub.handle.take_message(sub.msg_type, sub.raw)
        if got is None:
            return
        callback(got[0])


def wait_inputs_quiet(sync: Any, quiet_s: float = 0.3, max_wait_s: float = 3.0) -> None:
    """Return when the synchronizer ``sync`` received no input for ``quiet_s`` (at most ``max_wait_s``)."""
    deadline, seen = time.monotonic() + max_wait_s, -1
    while sync is not None and time.monotonic() < deadline:
        now_seen = sum(sync.stats.snapshot().received)
        if now_seen == seen:
            return
        seen = now_seen
        time.sleep(quiet_s)


def wait_acked(pubs: Iterable[Any], timeout: float) -> None:
    """Wait (up to ``timeout`` s) until the subscribers of ``pubs`` acknowledged what was published; polled,
    because ``wait_for_all_acked`` holds the GIL for as long as it waits (every other thread would stop)."""
    pubs = list(pubs)
    deadline = time.monotonic() + timeout
    while pubs and time.monotonic() < deadline:
        pubs = [p for p in pubs if not p.wait_for_all_acked(Duration(nanoseconds=1_000_000))]
        time.sleep(0.02)
