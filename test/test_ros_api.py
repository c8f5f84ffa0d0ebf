"""The package's rclpy / launch / launch_ros use against each distribution's API (Humble, Jazzy, Kilted).

The name lists (test/data/ros_api/<distro>.json) are written by tools/ros_api_names.py from the distributions' Python
sources; test_name_lists_are_current checks they are what the script writes now (needs ../shared/ros_api)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ros_api_check import DISTROS, REPO, Api, Checker, check_package, package_files

ROS_API = Path(os.environ.get("CMDR_SHARED_ROS_API", REPO.parent / "shared" / "ros_api"))


@pytest.fixture(scope="module", params=DISTROS)
def api(request) -> Api:
    return Api.load(request.param)


def problems(distro: str, source: str) -> list[str]:
    return Checker(Api.load(distro)).check_source(source)


def test_package_uses_only_what_each_distribution_has(api):
    assert check_package(api) == []


def test_the_check_reads_the_node_the_cli_and_the_launch_files():
    names = {str(p.relative_to(REPO)) for p in package_files()}
    assert {"cmdr_ros/ros/node/inspection_node.py", "cmdr_ros/ros/compat.py", "cmdr_ros/cli/demo.py",
            "launch/inspection.launch.py", "launch/replay.launch.py", "test/node_harness.py"} <= names


def test_the_package_parses_as_humbles_python_3_10():
    """Humble runs on Python 3.10: no 3.11+ syntax (``except*``, PEP 695 type parameters) in what it runs."""
    import ast

    for path in package_files():
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))


# ---------------------------------------------------------------------------------------------- the checker itself
def test_an_import_humble_lacks_is_flagged_for_humble_only():
    source = "from rclpy.event_handler import SubscriptionEventCallbacks\n"
    assert problems("humble", source) == ["<source>:1: humble: no rclpy.event_handler",
                                          "<source>:1: humble: no rclpy.event_handler.SubscriptionEventCallbacks"]
    assert problems("jazzy", source) == problems("kilted", source) == []


def test_compat_alternatives_pass_where_one_branch_exists():
    source = ("try:\n    from rclpy.event_handler import SubscriptionEventCallbacks\n"
              "except ImportError:\n    from rclpy.qos_event import SubscriptionEventCallbacks\n"
              "SubscriptionEventCallbacks(incompatible_qos=print)\n")
    for distro in DISTROS:
        assert problems(distro, source) == []
    neither = source.replace("rclpy.qos_event", "rclpy.no_such_module")
    assert problems("humble", neither) == ["<source>:2: humble: no rclpy.event_handler",
                                           "<source>:2: humble: no rclpy.event_handler.SubscriptionEventCallbacks"]


def test_members_of_a_lifecycle_node_subclass_follow_its_bases():
    source = ("from rclpy.lifecycle import LifecycleNode\n"
              "class N(LifecycleNode):\n"
              "    def __init__(self):\n"
              "        super().__init__('n', enable_logger_service=True)\n"
              "        self.add_pre_set_parameters_callback(print)\n"
              "        self.add_on_set_parameters_callback(self.own)\n"  # Node's, found through LifecycleNode
              "        self.pub = self.create_publisher(int, 't', 1)\n"
              "        self.pub.publish(1)\n"
              "        self.pub.no_such_method()\n"
              "    def own(self, params):\n"
              "        return self.pub, self.never_set\n")
    found = problems("humble", source)
    assert found == ["<source>:4: humble: rclpy.lifecycle.node.LifecycleNode.__init__() takes no keyword "
                     "enable_logger_service",
                     "<source>:5: humble: rclpy.lifecycle.node.LifecycleNode has no add_pre_set_parameters_callback",
                     "<source>:9: humble: rclpy.publisher.Publisher has no no_such_method",
                     "<source>:11: humble: rclpy.lifecycle.node.LifecycleNode has no never_set"]
    assert problems("kilted", source) == ["<source>:9: kilted: rclpy.publisher.Publisher has no no_such_method",
                                          "<source>:11: kilted: rclpy.lifecycle.node.LifecycleNode has no never_set"]


def test_keywords_of_methods_on_annotated_nodes_and_optional_getattr():
    source = ("from rclpy.node import Node\n"
              "def f(node: 'Node | None'):\n"
              "    node.create_subscription(int, 't', print, 1, content_filter_options=None)\n"
              "    getattr(node, 'add_post_set_parameters_callback', None)\n"
              "    node._set_parameters_atomically([])\n")
    for distro in ("humble", "jazzy"):  # content filters came with Kilted's rclpy
        assert problems(distro, source) == [f"<source>:3: {distro}: rclpy.node.Node.create_subscription() takes no "
                                            "keyword content_filter_options"]
    assert problems("kilted", source) == []


def test_a_method_humble_has_nowhere_is_flagged_on_an_object_of_unknown_type():
    source = ("class Bench:\n"
              "    def matched(self):\n"
              "        return self.subs[0].get_publisher_count() >= 1 and self.count(self.subs)\n"
              "    def count(self, subs):\n"
              "        return len(subs)\n")
    assert problems("humble", source) == ["<source>:3: humble: self.subs[0].get_publisher_count(): humble's rclpy has "
                                          "no method get_publisher_count (on any class; the object's type is not "
                                          "known here)"]
    assert problems("jazzy", source) == problems("kilted", source) == []


def test_launch_keywords_follow_kwargs_to_the_base_actions():
    source = ("from launch_ros.actions import LifecycleNode\n"
              "LifecycleNode(package='p', executable='e', name='n', namespace='', output='screen', respawn=True,\n"
              "              no_such_option=1)\n")
    for distro in DISTROS:
        assert problems(distro, source) == [f"<source>:2: {distro}: launch_ros.actions.lifecycle_node.LifecycleNode"
                                            f"() takes no keyword no_such_option"]


# ------------------------------------------------------------------------------------------------ the name lists
def test_name_lists_hold_what_the_distributions_differ_in():
    humble, jazzy, kilted = (Api.load(d) for d in DISTROS)
    assert "rclpy.qos_event" in humble.modules and "rclpy.event_handler" not in humble.modules
    assert "rclpy.event_handler" in jazzy.modules and "rclpy.event_handler" in kilted.modules
    node = "rclpy.lifecycle.node.LifecycleNode"
    assert "add_pre_set_parameters_callback" not in humble.classes[node]
    assert {"add_pre_set_parameters_callback", "add_post_set_parameters_callback"} <= set(kilted.classes[node])


@pytest.mark.parametrize("distro", DISTROS)
def test_name_lists_are_current(distro, tmp_path):
    if not ROS_API.is_dir():
        pytest.skip(f"the distributions' sources are not at {ROS_API} (../shared/ros_api; set CMDR_SHARED_ROS_API)")
    if distro == "kilted" and importlib.util.find_spec("rclpy") is None:
        pytest.skip("kilted's rclpy comes from the installed PyPI wheel, and none is installed")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "ros_api_names.py"), "--ros-api", str(ROS_API),
                          "--out", str(tmp_path), "--distro", distro], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    written = (tmp_path / f"{distro}.json").read_text(encoding="utf-8")
    stored = (REPO / "test" / "data" / "ros_api" / f"{distro}.json").read_text(encoding="utf-8")
    assert written == stored, f"run: python tools/ros_api_names.py --ros-api {ROS_API}"
