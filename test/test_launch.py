"""The launch files agree with the node and the package: argument names, executables, parameter names.

`launch`/`launch_ros` are not on PyPI, so they are replaced by recording stand-ins; in a ROS install
`ros2 launch` runs the same generate_launch_description().
"""
import importlib.util
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
    kinds = {n: _kind(n) for n in ("LaunchDescription", "DeclareLaunchArgument", "ExecuteProcess",
                                   "IncludeLaunchDescription", "PythonLaunchDescriptionSource", "IfCondition",
                                   "UnlessCondition", "LaunchConfiguration", "LifecycleNode", "Node")}
    mods = {
        "launch": {"LaunchDescription": kinds["LaunchDescription"]},
        "launch.actions": {k: kinds[k] for k in ("DeclareLaunchArgument", "ExecuteProcess",
                                                 "IncludeLaunchDescription")},
        "launch.conditions": {k: kinds[k] for k in ("IfCondition", "UnlessCondition")},
        "launch.substitutions": {"LaunchConfiguration": kinds["LaunchConfiguration"]},
        "launch.launch_description_sources": {"PythonLaunchDescriptionSource": kinds["PythonLaunchDescriptionSource"]},
        "launch_ros": {},
        "launch_ros.actions": {k: kinds[k] for k in ("LifecycleNode", "Node")},
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
    return {m.args[0] for m in made if type(m).__name__ == "DeclareLaunchArgument"}


def test_inspection_launch(fake_launch):
    pytest.importorskip("rclpy")
    from cmdr_ros.ros.inspection_node import PARAMETERS

    made = _generate(REPO / "launch" / "inspection.launch.py")
    assert {"mode", "checkpoint", "params_file", "device", "namespace", "image", "points", "camera_info",
            "use_rviz"} <= _declared(made)
    node = next(m for m in made if type(m).__name__ == "LifecycleNode")
    assert node.kwargs["executable"] == "inspection_node" and node.kwargs["name"] == "cmdr_inspection"
    assert "inspection_node = cmdr_ros.ros.inspection_node:main" in (REPO / "setup.py").read_text()
    overrides = next(p for p in node.kwargs["parameters"] if isinstance(p, dict))
    assert set(overrides) <= set(PARAMETERS)
    assert {old for old, _ in node.kwargs["remappings"]} == {"image", "points", "camera_info"}
    rviz = next(m for m in made if type(m).__name__ == "Node")
    assert (REPO / rviz.kwargs["arguments"][1]).is_file()  # config/inspection.rviz exists


def test_replay_launch(fake_launch):
    made = _generate(REPO / "launch" / "replay.launch.py")
    assert {"bag", "checkpoint", "rate", "loop", "use_rviz"} <= _declared(made)
    include = next(m for m in made if type(m).__name__ == "IncludeLaunchDescription")
    assert include.args[0].args[0].endswith("launch/inspection.launch.py")
    plays = [m for m in made if type(m).__name__ == "ExecuteProcess"]
    assert len(plays) == 2 and all(p.kwargs["cmd"][:3] == ["ros2", "bag", "play"] for p in plays)


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
    assert set(values) == set(PARAMETERS)
    for name, value in values.items():
        default = PARAMETERS[name][0]
        assert type(value) is type(default) or (isinstance(default, float) and isinstance(value, float)), name
        assert value == default, f"{name}: yaml {value!r} != node default {default!r}"


def test_readme_tables_are_generated_from_the_code():
    """The parameter and ~/result tables of the README are exactly what the declarations generate."""
    pytest.importorskip("rclpy")
    from cmdr_ros.ros.outputs import result_schema_markdown
    from cmdr_ros.ros.parameters import markdown_table

    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme, "README parameter table is stale: paste markdown_table()"
    assert result_schema_markdown() in readme, "README ~/result table is stale: paste result_schema_markdown()"
    from cmdr_ros.audit.schema import markdown_table as audit_table

    assert audit_table() in readme, "README audit table is stale: paste cmdr_ros.audit.schema.markdown_table()"
