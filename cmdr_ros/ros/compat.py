"""What differs between the ROS 2 distributions the package runs on (Humble, Jazzy, Kilted), in one place.

- The QoS event classes: ``rclpy.event_handler`` since Iron, ``rclpy.qos_event`` on Humble.
- ``Subscription.get_publisher_count`` (since Iron): on Humble, the publishers of the subscription's topic in the
  ROS graph (``Node.count_publishers``), which counts every publisher discovered on the topic, matched or not.
- Pre- and post-set parameter callbacks (``Node.add_pre_set_parameters_callback`` /
  ``add_post_set_parameters_callback``, since Jazzy). On Humble they are emulated as Jazzy runs them: the pre-set
  callbacks rewrite the list before rclpy checks the values against the descriptors (so a whole number for a float
  parameter is coerced before Humble refuses its type), once per ``set_parameters`` entry and once per
  ``set_parameters_atomically`` call (which the parameter services use); an empty list after them is refused; the
  post-set callbacks run after every successful set.

test/test_ros_api.py checks every rclpy name the package uses against each distribution's API and accepts the
alternatives of a ``try: ... except ImportError:`` here when one of them exists there.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from rcl_interfaces.msg import SetParametersResult

try:  # Iron and later
    from rclpy.event_handler import (PublisherEventCallbacks, QoSRequestedIncompatibleQoSInfo,
                                     SubscriptionEventCallbacks)
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks

if TYPE_CHECKING:  # the annotations let test/test_ros_api.py check the members used here on every distribution
    from rclpy.node import Node
    from rclpy.subscription import Subscription

__all__ = ["PublisherEventCallbacks", "QoSRequestedIncompatibleQoSInfo", "SubscriptionEventCallbacks",
           "add_post_set_parameters_callback", "add_pre_set_parameters_callback", "publisher_count"]

PreSet = Callable[[list], list]
PostSet = Callable[[list], None]
EMPTY_AFTER_PRE_SET = ("parameter list cannot be empty, this might be due to pre_set_parameters_callback modifying "
                       "the original parameters list.")  # Jazzy's words


def publisher_count(node: Node, subscription: Subscription) -> int:
    """The publishers ``subscription`` is matched with (Iron and later); on Humble those of its topic in the graph."""
    native = getattr(subscription, "get_publisher_count", None)
    if native is not None:
        return native()
    return node.count_publishers(subscription.topic_name)


def add_pre_set_parameters_callback(node: Node, callback: PreSet, emulate: bool = False) -> None:
    """``node.add_pre_set_parameters_callback(callback)`` where rclpy has it (Jazzy, Kilted), else emulated
    (``emulate``: emulate anyway; the tests run the Humble path on Kilted)."""
    native = getattr(node, "add_pre_set_parameters_callback", None)
    if native is not None and not emulate:
        native(callback)
    else:
        _hooks(node).pre.insert(0, callback)  # rclpy calls the latest added first


def add_post_set_parameters_callback(node: Node, callback: PostSet, emulate: bool = False) -> None:
    """``node.add_post_set_parameters_callback(callback)`` where rclpy has it (Jazzy, Kilted), else emulated."""
    native = getattr(node, "add_post_set_parameters_callback", None)
    if native is not None and not emulate:
        native(callback)
    else:
        _hooks(node).post.insert(0, callback)


class _SetHooks:
    """Humble's set path with Jazzy's pre- and post-set steps around it (installed once per node).

    Humble: ``set_parameters`` -> ``_set_parameters`` -> ``_set_parameters_atomically`` per parameter;
    ``set_parameters_atomically`` -> ``_set_parameters_atomically``; the parameter services call
    ``set_parameters_atomically``. The pre-set step wraps the two public methods (before the descriptor check); the
    post-set step wraps ``_set_parameters_atomically`` (every set, also a declaration, as Jazzy does)."""

    def __init__(self, node: Node):
        self.pre: list[PreSet] = []
        self.post: list[PostSet] = []
        self._set_atomically = node.set_parameters_atomically
        self._store = node._set_parameters_atomically
        node.set_parameters_atomically = self.set_parameters_atomically
        node.set_parameters = self.set_parameters
        node._set_parameters_atomically = self._stored

    def _pre_set(self, params: list) -> list:
        if not self.pre:
            return list(params)
        changed: list = []
        for callback in self.pre:
            changed.extend(callback(params))
        return changed

    def set_parameters_atomically(self, parameter_list: list) -> SetParametersResult:
        params = self._pre_set(parameter_list)
        if not params:
            return SetParametersResult(successful=False, reason=EMPTY_AFTER_PRE_SET)
        return self._set_atomically(params)

    def set_parameters(self, parameter_list: list) -> list[SetParametersResult]:
        return [self.set_parameters_atomically([param]) for param in parameter_list]

    def _stored(self, parameter_list: list, *args: Any, **kwargs: Any) -> SetParametersResult:
        result = self._store(parameter_list, *args, **kwargs)
        if result.successful:
            for callback in self.post:
                callback(parameter_list)
        return result


def _hooks(node: Node) -> _SetHooks:
    hooks = vars(node).get("_cmdr_set_hooks")
    if hooks is None:
        hooks = _SetHooks(node)
        vars(node)["_cmdr_set_hooks"] = hooks
    return hooks
