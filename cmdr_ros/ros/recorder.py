"""Record what the inspection node publishes, keyed by the input stamp (demo, tests, offline checks)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from cmdr_ros.ros.compat import publisher_count
from cmdr_ros.ros.conversions import image_to_array
from cmdr_ros.ros.node.parameters import NODE_NAME
from cmdr_ros.ros.stamps import stamp_ns


@dataclass
class FrameResult:
    stamp_ns: int
    level: int
    message: str
    values: dict[str, str]
    received: float  # time.monotonic() at arrival
    heatmap: np.ndarray | None = None  # BGR uint8

    @property
    def judged(self) -> bool:
        return "score" in self.values

    @property
    def score(self) -> float:
        return float(self.values.get("score", "nan"))

    @property
    def reject(self) -> bool:
        return self.values.get("decision") == "reject"


@dataclass
class ResultRecorder:
    """Subscribes to ``<node>/result`` and ``<node>/heatmap`` of an inspection node and stores them by stamp."""

    node: Node
    prefix: str = f"/{NODE_NAME}"
    keep_heatmaps: bool = True
    results: dict[int, FrameResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._heat: dict[int, np.ndarray] = {}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [self.node.create_subscription(DiagnosticArray, f"{self.prefix}/result", self._on_result, qos)]
        if self.keep_heatmaps:
            self._subs.append(self.node.create_subscription(Image, f"{self.prefix}/heatmap", self._on_heatmap, qos))

    def matched(self) -> bool:
        """Whether every subscription is matched with the node's publisher: what it publishes from then on arrives
        (reliable), which seeing its publishers in the graph alone does not promise."""
        return all(publisher_count(self.node, sub) > 0 for sub in self._subs)

    def _on_result(self, msg: DiagnosticArray) -> None:
        st = msg.status[0]
        key = stamp_ns(msg.header.stamp)
        res = FrameResult(key, int.from_bytes(st.level, "little") if isinstance(st.level, bytes) else int(st.level),
                          st.message, {kv.key: kv.value for kv in st.values}, time.monotonic())
        with self._lock:
            res.heatmap = self._heat.get(key)
            self.results[key] = res

    def _on_heatmap(self, msg: Image) -> None:
        key = stamp_ns(msg.header.stamp)
        img = image_to_array(msg)
        with self._lock:
            self._heat[key] = img
            if key in self.results:
                self.results[key].heatmap = img

    def _missing(self, stamps: set[int] | int) -> bool:
        with self._lock:
            return len(self.results) < stamps if isinstance(stamps, int) else not stamps.issubset(self.results)

    def wait_for(self, stamps: set[int] | int, timeout: float, heatmap_grace: float = 2.0) -> bool:
        """Wait until results for all ``stamps`` (or that many results) arrived, then up to ``heatmap_grace``
        seconds for their heatmaps (a separate topic). False on timeout."""
        deadline = time.monotonic() + timeout
        while self._missing(stamps):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        grace = time.monotonic() + heatmap_grace
        while self.keep_heatmaps and time.monotonic() < grace:
            with self._lock:
                if all(r.heatmap is not None or not r.judged for r in self.results.values()):
                    break
            time.sleep(0.05)
        return True

    def destroy(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []
