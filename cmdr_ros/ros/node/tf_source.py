"""The cloud -> camera transform from tf2 for ``FrameJudge`` (``frames.TransformLookup``), and what the node says
when tf2 has none.

When tf2 has no transform at a cloud's stamp, ``assemble_frame`` falls back to the ``extrinsics`` parameter (when
set) or refuses the frame (``no_transform``). The log names that fallback as it is *when the lookup fails*:
``extrinsics`` can be set or unset at run time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from rclpy.duration import Duration

if TYPE_CHECKING:
    from rclpy.node import Node

    from cmdr_ros.ros.conversions.frames import TransformLookup

NO_FALLBACK = "nothing: a cloud in another frame than the image is not judged (no_transform)"


def tf_fallback(extrinsics: Any) -> str:
    """What a cloud in another frame than the image uses without a tf2 transform, in words."""
    return "the extrinsics parameter" if extrinsics is not None else NO_FALLBACK


def tf_lookup(buffer: Any, warn: Callable[[str, str], None], fallback: Callable[[], str]) -> TransformLookup:
    """A lookup in the tf2 ``buffer`` (a 4x4 cloud -> camera transform, None when tf2 has none: ``warn`` says so,
    with ``fallback()`` read then)."""

    def lookup(target: str, source: str, stamp: Any) -> np.ndarray | None:
        from cmdr_ros.geometry import make_transform

        try:
            t = buffer.lookup_transform(target, source, stamp, timeout=Duration(seconds=0.05)).transform
        except Exception as e:  # noqa: BLE001 - tf2 raises several exception types
            warn("tf", f"no tf {source} -> {target} at the cloud's stamp ({type(e).__name__}): using {fallback()}")
            return None
        return make_transform([t.translation.x, t.translation.y, t.translation.z],
                              [t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w])

    return lookup


class TfSource:
    """One tf2 listener for the node's life: created at the first configure that wants it (``lookup``), released
    at cleanup (``release``). ``fallback`` reads the node's ``extrinsics`` parameter when called."""

    def __init__(self, node: Node, warn: Callable[[str, str], None], fallback: Callable[[], str]) -> None:
        self.node, self.warn, self.fallback = node, warn, fallback
        self.listener: Any = None
        self.buffer: Any = None

    def lookup(self, use_tf: bool) -> TransformLookup | None:
        """The lookup for this configure (None: tf2 not used or not installed); what a failure leads to is said."""
        log = self.node.get_logger()
        if not use_tf:
            log.info(f"tf2 not used (use_tf false): clouds in another frame use {self.fallback()}")
            return None
        try:
            import tf2_ros
        except ImportError:
            log.warning(f"tf2_ros is not installed (ROS package tf2_ros_py): clouds in another frame than the image "
                        f"use {self.fallback()}")
            return None
        if self.listener is None:
            self.buffer = tf2_ros.Buffer()
            self.listener = tf2_ros.TransformListener(self.buffer, self.node)
        log.info(f"tf2 in use for clouds in another frame than the image; without a transform: {self.fallback()}")
        return tf_lookup(self.buffer, self.warn, self.fallback)

    def release(self) -> None:
        listener, self.listener, self.buffer = self.listener, None, None
        if listener is not None:
            try:
                listener.unregister()
            except Exception as e:  # noqa: BLE001 - releasing must not fail cleanup
                self.node.get_logger().warning(f"tf listener release: {e}")
