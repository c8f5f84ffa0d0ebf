"""The inspection node's run-time model change: a set of ``checkpoint`` while configured, or ``~/reload_model``.

``ModelChange.change`` loads, verifies and warms the new model up beside the running one (``model_swap.ModelSwap``:
on the caller's thread, a parameter or service callback, while parts are judged by the running model), puts it in
service between two parts (the node's ``detector`` and ``judge``, under its judge lock, with every parameter set
so far), announces it on ``~/vision_info`` and logs how long each step took; or refuses, with the reason, and the
running model stays (docs/model_swap.md).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cmdr_ros import CmdrError
from cmdr_ros.ros.node.frame_judge import FrameJudge
from cmdr_ros.ros.node.model_swap import ModelSwap
from cmdr_ros.ros.node.wiring import announce_model

if TYPE_CHECKING:
    from cmdr_ros.ros.node.engine import DecisionEngine
    from cmdr_ros.ros.node.inspection_node import InspectionNode
    from cmdr_ros.ros.node.status import ThrottledLog


class ModelChange:
    """The model changes of one configuration of ``node`` (made at configure): ``values`` reads the node's
    parameters, ``lock`` is the lock the node builds its judge under, ``pubs`` its outputs, ``changed`` runs after
    a change (cached GPU memory released, /diagnostics)."""

    def __init__(self, node: InspectionNode, swap: ModelSwap, engine: DecisionEngine, pubs: Mapping[str, Any],
                 values: Callable[[], dict[str, Any]], lock: threading.Lock, warn: ThrottledLog,
                 changed: Callable[[], None]) -> None:
        self.node, self.swap, self.engine, self.pubs = node, swap, engine, pubs
        self.values, self.lock, self.warn, self.changed = values, lock, warn, changed

    def change(self, path: str) -> str | None:
        """Load ``path`` beside the running model (parts are judged by it meanwhile), verify and warm it up, then put
        it in service between two parts; None when done, else why it was refused (the running model stays)."""
        node = self.node
        running, old_judge = node.detector, node.judge
        if running is None or old_judge is None:
            return "no model to change: the node is not configured"

        def put() -> None:  # under the engine's judging lock: between two parts
            with self.lock:  # with every parameter set so far
                if node.detector is not running:
                    raise CmdrError("the node was reconfigured while the new model loaded")
                node.judge = FrameJudge.from_params(loaded.detector, self.values(), old_judge.tf_lookup)
                node.detector = loaded.detector
            if self.engine.outlet is not None:
                self.engine.outlet.model_id = loaded.detector.model_id

        values = self.values()
        try:
            loaded = self.swap.load(path, running, require_threshold=float(values["threshold"]) < 0,
                                    warmup=bool(values["warmup"]), log=node.get_logger().warning)
            t0 = time.perf_counter()
            ModelSwap.install(self.engine, put)
        except CmdrError as e:
            self.warn("model", f"model change to {path} refused, model {running.model_id} stays: {e}", "error")
            return str(e)
        swap_ms = 1e3 * (time.perf_counter() - t0)
        announce_model(self.pubs, node.get_clock().now().to_msg(), loaded.detector, path)
        node.get_logger().info(
            f"model changed: {running.model_id} -> {loaded.detector.model_id} ({path}): loaded in {loaded.load_s:.2f} "
            f"s, warm-up {loaded.warmup_s:.2f} s, swapped in {swap_ms:.1f} ms between two parts "
            f"(room checked: {loaded.need_bytes / 2 ** 20:.0f} MiB)")
        del running, old_judge, loaded
        self.changed()
        return None
