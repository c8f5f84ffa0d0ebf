"""The launch files agree with the node and the package: argument names, executables, parameter names.

`launch`/`launch_ros` are not on PyPI, so they are replaced by recording stand-ins; in a ROS install
`ros2 launch` runs the same generate_launch_description().
"""
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class _Recorded:
    made: list = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        _Recorded.made.append(self)


def _kind(name):
    return type(name, (_Recorded,), {})


@pytest.fixture
def fake_launch(monkeypatch):
    _Recorded.made = []
    kinds = {n: _kind(n) for n in ("LaunchDescription", "DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction",
                                   "RegisterEventHandler", "OnStateTransition", "LifecycleNode", "Node")}
    mods = {
        "launch": {"LaunchDescription": kinds["LaunchDescription"]},
        "launch.actions": {k: kinds[k] for k in ("DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction",
                                                 "RegisterEventHandler")},
        "launch_ros": {},
        "launch_ros.actions": {k: kinds[k] for k in ("LifecycleNode", "Node")},
        "launch_ros.event_handlers": {"OnStateTransition": kinds["OnStateTransition"]},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: str(REPO)},
    }
    for name, attrs in mods.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    return kinds


def _generate(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.generate_launch_description()
    return _Recorded.made


def _declared(made):
    return {m.args[0]: m.kwargs.get("default_value") for m in made if type(m).__name__ == "DeclareLaunchArgument"}


def _launch(path, **given):
    """Generate the launch file and run its OpaqueFunction as `ros2 launch FILE given...` would: the declared
    defaults, overridden by what was given. Returns (declared, actions)."""
    declared = _declared(_generate(path))
    assert set(given) <= set(declared), set(given) - set(declared)
    opaque = next(m for m in _Recorded.made if type(m).__name__ == "OpaqueFunction")
    context = types.SimpleNamespace(launch_configurations={**declared, **given})
    return declared, opaque.kwargs["function"](context)


def test_inspection_launch_leaves_the_params_file_alone(fake_launch):
    pytest.importorskip("rclpy")
    from cmdr_ros.ros.inspection_node import PARAMETERS

    declared, actions = _launch(REPO / "launch" / "inspection.launch.py")
    assert {"mode", "checkpoint", "params_file", "device", "threshold", "namespace", "image", "points",
            "camera_info", "use_rviz", "fixed_frame"} <= set(declared)
    (node,) = actions  # no RViz by default
    assert type(node).__name__ == "LifecycleNode"
    assert node.kwargs["executable"] == "inspection_node" and node.kwargs["name"] == "cmdr_inspection"
    assert "inspection_node = cmdr_ros.ros.inspection_node:main" in (REPO / "setup.py").read_text()
    params_file, overrides = node.kwargs["parameters"]
    assert params_file.endswith("config/inspection.yaml")
    assert overrides == {}, "a launch argument the user did not give overrides the cell's params file"
    assert {old for old, _ in node.kwargs["remappings"]} == {"image", "points", "camera_info"}

    _, (node,) = _launch(REPO / "launch" / "inspection.launch.py", params_file="/cell/params.yaml", threshold="3",
                         autostart="False", checkpoint="/m.ckpt", input_reliability="best_effort")
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == "/cell/params.yaml"
    assert overrides == {"threshold": 3.0, "autostart": False, "checkpoint": "/m.ckpt",
                         "input.reliability": "best_effort"}
    assert type(overrides["threshold"]) is float  # rclpy refuses an int for a double parameter
    assert set(overrides) <= set(PARAMETERS)
    for bad in (dict(threshold="three"), dict(autostart="maybe")):
        with pytest.raises(ValueError, match="launch argument"):
            _launch(REPO / "launch" / "inspection.launch.py", **bad)


def _rviz_config(actions) -> dict:
    """The RViz config the launch wrote (read, then its temporary folder removed)."""
    import shutil

    import yaml

    path = Path(next(a for a in actions if type(a).__name__ == "Node").kwargs["arguments"][1])
    try:
        return yaml.safe_load(path.read_text())
    finally:
        shutil.rmtree(path.parent)


def test_rviz_follows_namespace_image_and_fixed_frame(fake_launch):
    _, actions = _launch(REPO / "launch" / "inspection.launch.py", use_rviz="true", namespace="cell_a",
                         image="color/image_raw", fixed_frame="cam_optical")
    doc = _rviz_config(actions)
    manager = doc["Visualization Manager"]
    topics = {d["Name"]: d["Topic"]["Value"] for d in manager["Displays"] if "Topic" in d}
    assert topics == {"Camera image": "/cell_a/color/image_raw", "Anomaly heatmap": "/cell_a/cmdr_inspection/heatmap",
                      "Anomaly cloud": "/cell_a/cmdr_inspection/anomaly_cloud"}
    assert manager["Global Options"]["Fixed Frame"] == "cam_optical"
    _, actions = _launch(REPO / "launch" / "inspection.launch.py", use_rviz="true", image="/abs/image")
    doc = _rviz_config(actions)
    assert {d["Topic"]["Value"] for d in doc["Visualization Manager"]["Displays"] if "Topic" in d} == {
        "/abs/image", "/cmdr_inspection/heatmap", "/cmdr_inspection/anomaly_cloud"}


def test_replay_launch_plays_when_the_node_is_active_on_sim_time(fake_launch):
    declared, actions = _launch(REPO / "launch" / "replay.launch.py", bag="/bags/cell", rate="2.0",
                                namespace="cell_a", input_reliability="best_effort", use_rviz="false",
                                params_file="/cell/params.yaml")
    assert {"bag", "checkpoint", "rate", "loop", "use_rviz", "params_file", "namespace", "input_reliability"} \
        <= set(declared)
    node, handler = actions
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == "/cell/params.yaml" and node.kwargs["namespace"] == "cell_a"
    assert overrides == {"use_sim_time": True, "input.reliability": "best_effort"}
    assert dict(node.kwargs["remappings"]) == {"image": "/camera/image", "points": "/camera/points",
                                               "camera_info": "/camera/camera_info"}
    assert type(handler).__name__ == "RegisterEventHandler"
    on_active = handler.args[0]
    assert on_active.kwargs["target_lifecycle_node"] is node and on_active.kwargs["goal_state"] == "active"
    (play,) = on_active.kwargs["entities"]
    assert play.kwargs["cmd"] == ["ros2", "bag", "play", "/bags/cell", "--rate", "2.0", "--clock"]
    # the player publishes image and cloud from one process: the Fast DDS profile goes with it (the test process
    # has it from conftest, or its user's own)
    profile = {k: os.environ[k] for k in ("FASTDDS_DEFAULT_PROFILES_FILE",) if k in os.environ}
    assert play.kwargs["additional_env"] == profile
    _, actions = _launch(REPO / "launch" / "replay.launch.py", bag="/b", loop="true", use_rviz="false")
    assert actions[-1].args[0].kwargs["entities"][0].kwargs["cmd"][-1] == "--loop"
    with pytest.raises(ValueError, match="bag"):
        _launch(REPO / "launch" / "replay.launch.py")


def test_params_file_matches_node_parameters():
    pytest.importorskip("rclpy")
    import yaml

    from cmdr_ros.ros.inspection_node import PARAMETERS

    doc = yaml.safe_load((REPO / "config" / "inspection.yaml").read_text())
    params = doc["/**/cmdr_inspection"]["ros__parameters"]

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    values = dict(flat(params))
    optional = {name for name, (default, _, _) in PARAMETERS.items() if default is None}  # unset unless given
    assert set(values) == set(PARAMETERS) - optional
    text = (REPO / "config" / "inspection.yaml").read_text()
    assert all(f"# {name.split('.')[-1]}:" in text for name in optional), "an optional parameter is not shown"
    for name, value in values.items():
        default = PARAMETERS[name][0]
        assert type(value) is type(default) or (isinstance(default, float) and isinstance(value, float)), name
        assert value == default, f"{name}: yaml {value!r} != node default {default!r}"


def test_documented_tables_are_generated_from_the_code():
    """The parameter and ~/result tables of docs/node.md and the audit table of docs/audit.md are exactly what the
    declarations generate (`python tools/doc_tables.py` rewrites them)."""
    pytest.importorskip("rclpy")
    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "tools" / "doc_tables.py")
    doc_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc_tables)
    for page, make in doc_tables.tables():
        table = make()
        assert table in page.read_text(), f"{page.name}: a generated table is stale: run python tools/doc_tables.py"
        # the rewriter finds and replaces each table (and leaves a current page as it is)
        assert doc_tables.replace_table(page.read_text(), table) == page.read_text()


def test_cmdr_node_hands_the_ros_arguments_after_double_dash_to_ros(tmp_path):
    """`cmdr node --checkpoint m.ckpt -- -p threshold:=3.0` (the README's usage): rclpy stops reading ROS arguments
    at a `--`, so it must not reach the node's argv."""
    from cmdr_ros.cli.main import build_parser, node_argv

    parser = build_parser()
    cell = tmp_path / "cell.yaml"
    cell.write_text("/**:\n  ros__parameters:\n    threshold: 2.0\n")
    for tail in (["--", "-p", "threshold:=3.0"], ["--", "--ros-args", "-p", "threshold:=3.0"]):
        argv = node_argv(parser.parse_args(["node", "--params-file", str(cell), "--checkpoint", "m.ckpt", *tail]))
        assert argv == ["cmdr_node", "--ros-args", "--params-file", str(cell), "-p", "checkpoint:=m.ckpt",
                        "-p", "threshold:=3.0"]
    pytest.importorskip("rclpy")
    from rclpy.utilities import remove_ros_args

    assert remove_ros_args(argv) == ["cmdr_node"]  # every argument is read by ROS, none is left behind

