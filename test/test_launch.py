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
import yaml

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
    from cmdr_ros.ros.node.inspection_node import PARAMETERS

    declared, actions = _launch(REPO / "launch" / "inspection.launch.py")
    assert {"mode", "checkpoint", "params_file", "device", "threshold", "namespace", "image", "points",
            "camera_info", "use_rviz", "fixed_frame"} <= set(declared)
    (node,) = actions  # no RViz by default
    assert type(node).__name__ == "LifecycleNode"
    assert node.kwargs["executable"] == "inspection_node" and node.kwargs["name"] == "cmdr_inspection"
    assert "inspection_node = cmdr_ros.ros.node.inspection_node:main" in (REPO / "setup.py").read_text()
    params_file, overrides = node.kwargs["parameters"]
    assert params_file.endswith("config/inspection.yaml")
    assert overrides == {}, "a launch argument the user did not give overrides the cell's params file"
    assert dict(node.kwargs["remappings"]) == {"image": "image", "points": "points", "depth": "depth",
                                               "camera_info": "camera_info", "part_id": "part_id"}
    assert node.kwargs["ros_arguments"] == ["--log-level", "info"] and node.kwargs["respawn"] is False
    assert node.kwargs["sigterm_timeout"] == "15.0"

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
                                               "camera_info": "/camera/camera_info", "depth": "depth",
                                               "part_id": "part_id"}
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


def test_inspection_launch_arguments_for_every_input_and_choice(fake_launch, tmp_path):
    """depth and part_id remaps, image transport, cloud input, node name, namespace, log level, respawn."""
    from cmdr_ros.ros.node.parameters import read_params_file

    declared, (node,) = _launch(
        REPO / "launch" / "inspection.launch.py", depth="/cam/depth/image_rect_raw", part_id="/plc/part",
        image="/cam/color/image_raw/compressed", image_transport="compressed", cloud="depth",
        node_name="cell_a_inspection", namespace="cell_a", log_level="debug", respawn="true", respawn_delay="5",
        sigterm_timeout="30",
        audit_database="/var/cmdr/audit.db", hardware_id="cell_a")
    assert {"depth", "part_id", "image_transport", "cloud", "node_name", "log_level", "respawn", "respawn_delay",
            "sigterm_timeout", "audit_database", "hardware_id"} <= set(declared)
    kw = node.kwargs
    assert kw["name"] == "cell_a_inspection" and kw["namespace"] == "cell_a"
    assert dict(kw["remappings"])["depth"] == "/cam/depth/image_rect_raw"
    assert dict(kw["remappings"])["part_id"] == "/plc/part"
    assert kw["ros_arguments"] == ["--log-level", "debug"]
    assert kw["respawn"] is True and kw["respawn_delay"] == 5.0 and kw["sigterm_timeout"] == "30.0"
    params_file, overrides = kw["parameters"]
    assert overrides == {"input.image_transport": "compressed", "input.cloud": "depth",
                         "audit.database": "/var/cmdr/audit.db", "hardware_id": "cell_a"}
    # the package's params file is keyed /**/cmdr_inspection: renamed, the node still gets it, under its own name
    assert read_params_file(params_file, "cell_a_inspection") == read_params_file(
        REPO / "config" / "inspection.yaml")
    cell = tmp_path / "cell.yaml"
    cell.write_text("/**:\n  ros__parameters:\n    threshold: 2.0\n"
                    "cmdr_inspection:\n  ros__parameters:\n    time_budget: 3.0\n"
                    "/other_node:\n  ros__parameters:\n    x: 1\n")
    _, (node,) = _launch(REPO / "launch" / "inspection.launch.py", params_file=str(cell), node_name="insp_b")
    renamed = yaml.safe_load(Path(node.kwargs["parameters"][0]).read_text())
    assert renamed == {"/**": {"ros__parameters": {"threshold": 2.0}},
                       "insp_b": {"ros__parameters": {"time_budget": 3.0}},
                       "/other_node": {"ros__parameters": {"x": 1}}}
    _, (node,) = _launch(REPO / "launch" / "inspection.launch.py", params_file=str(cell))
    assert node.kwargs["parameters"][0] == str(cell)  # the default name: the file itself
    _, (node,) = _launch(REPO / "launch" / "inspection.launch.py", log_level="")
    assert node.kwargs["ros_arguments"] is None
    for bad in (dict(respawn="sometimes"), dict(respawn_delay="soon"), dict(sigterm_timeout="never")):
        with pytest.raises(ValueError, match="launch argument"):
            _launch(REPO / "launch" / "inspection.launch.py", **bad)


def _camera_display(actions) -> dict:
    doc = _rviz_config(actions)
    return next(d for d in doc["Visualization Manager"]["Displays"] if d["Name"] == "Camera image")


def test_rviz_camera_display_follows_input_qos_and_transport(fake_launch, tmp_path):
    """A best-effort driver: the display subscribes best effort (a reliable reader never matches it); from the launch
    argument or from the params file. A compressed input: shown through RViz's compressed transport (topic ending in
    /compressed) or, under any other name, not subscribed as a raw Image (a type mismatch)."""
    path = REPO / "launch" / "inspection.launch.py"
    assert _camera_display(_launch(path, use_rviz="true")[1])["Topic"]["Reliability Policy"] == "Reliable"
    display = _camera_display(_launch(path, use_rviz="true", input_reliability="best_effort")[1])
    assert display["Topic"]["Reliability Policy"] == "Best Effort"
    cell = tmp_path / "cell.yaml"
    cell.write_text("/**/cmdr_inspection:\n  ros__parameters:\n    input:\n      reliability: best_effort\n"
                    "      image_transport: compressed\n")
    for name in ("cmdr_inspection", "cell_b"):  # the file's section for the node, renamed or not
        display = _camera_display(_launch(path, use_rviz="true", params_file=str(cell), node_name=name,
                                          image="/cam/image_raw/compressed")[1])
        assert display["Topic"]["Reliability Policy"] == "Best Effort"
        assert display["Topic"]["Value"] == "/cam/image_raw/compressed" and display["Enabled"] is True
    display = _camera_display(_launch(path, use_rviz="true", image_transport="compressed", image="/cam/jpeg")[1])
    assert display["Enabled"] is False and display["Value"] is False
    _, actions = _launch(path, use_rviz="true", node_name="cell_b", namespace="line2")
    topics = {d["Name"]: d["Topic"]["Value"] for d in _rviz_config(actions)["Visualization Manager"]["Displays"]
              if "Topic" in d}
    assert topics["Anomaly heatmap"] == "/line2/cell_b/heatmap"
    assert topics["Anomaly cloud"] == "/line2/cell_b/anomaly_cloud"


def test_two_cameras_launch_two_nodes_two_namespaces_one_audit_store(fake_launch):
    path = REPO / "launch" / "two_cameras.launch.py"
    declared, actions = _launch(path, checkpoint="/cell/m.ckpt", checkpoint_b="/cell/side.ckpt",
                                audit_database="/cell/audit.db", image_b="/side/color/image_raw",
                                input_reliability="best_effort", hardware_id_a="top")
    assert {"namespace_a", "namespace_b", "checkpoint_a", "checkpoint_b", "image_a", "depth_b", "part_id_a",
            "audit_database", "params_file", "log_level"} <= set(declared)
    assert not {"namespace", "image", "points", "depth", "camera_info", "part_id", "hardware_id"} & set(declared)
    a, b = actions
    assert [n.kwargs["namespace"] for n in actions] == ["cam_a", "cam_b"]
    assert a.kwargs["name"] == b.kwargs["name"] == "cmdr_inspection"
    (_, over_a), (_, over_b) = a.kwargs["parameters"], b.kwargs["parameters"]
    assert over_a == {"checkpoint": "/cell/m.ckpt", "audit.database": "/cell/audit.db", "hardware_id": "top",
                      "input.reliability": "best_effort"}
    assert over_b == {"checkpoint": "/cell/side.ckpt", "audit.database": "/cell/audit.db",
                      "input.reliability": "best_effort"}
    assert dict(a.kwargs["remappings"])["image"] == "image"  # relative: /cam_a/image
    assert dict(b.kwargs["remappings"])["image"] == "/side/color/image_raw"
    with pytest.raises(ValueError, match="different namespaces"):
        _launch(path, namespace_a="cell", namespace_b="/cell/")
    with pytest.raises(ValueError, match="namespace_b"):
        _launch(path, namespace_b="")


def test_params_file_matches_node_parameters():
    pytest.importorskip("rclpy")
    import yaml

    from cmdr_ros.ros.node.inspection_node import PARAMETERS

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

