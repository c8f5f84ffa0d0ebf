"""Launch the CMDR-IAD inspection node (and optionally RViz).

    ros2 launch cmdr_ros inspection.launch.py checkpoint:=/path/model.ckpt
    ros2 launch cmdr_ros inspection.launch.py params_file:=/cell/inspection.yaml threshold:=3
    ros2 launch cmdr_ros inspection.launch.py checkpoint:=model.ckpt mode:=3d points:=/profiler/points use_rviz:=true

Parameters come from ``params_file`` (default: the package's config/inspection.yaml); a launch argument overrides
the file only when it is given (an empty argument, the default, leaves the file's value). Values are typed here
(``threshold:=3`` is the double 3.0), so rclpy never refuses them. The node is a managed (lifecycle) node; with
autostart true (the default) it configures and activates itself. RViz (``use_rviz:=true``; rviz2 is an optional
dependency) shows the node's topics under its namespace, the image topic given, in ``fixed_frame``.
"""
import os
import tempfile
from typing import Any

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction

from cmdr_ros.ros.topics import NODE_NAME

# launch argument: (node parameter, type, description). Empty = not given: the params file decides.
OVERRIDES = {
    "checkpoint": ("checkpoint", str, "trained model file (.ckpt from `cmdr train`)"),
    "mode": ("mode", str, "auto (the checkpoint's) | rgbd | 3d | 2d"),
    "device": ("device", str, "auto (CUDA when present) | cpu | cuda | cuda:N"),
    "threshold": ("threshold", float, "reject threshold; < 0 uses the checkpoint's calibrated one"),
    "autostart": ("autostart", bool, "configure and activate the lifecycle node by itself"),
    "input_reliability": ("input.reliability", str, "input QoS: reliable | best_effort (match the sensor drivers)"),
    "use_sim_time": ("use_sim_time", bool, "follow /clock (replaying a bag with --clock)"),
}
ARGS = {
    "namespace": ("", "namespace of the node and its relative topics"),
    "image": ("image", "RGB image topic (sensor_msgs/Image)"),
    "points": ("points", "point cloud topic (sensor_msgs/PointCloud2)"),
    "camera_info": ("camera_info", "camera calibration topic (sensor_msgs/CameraInfo)"),
    "use_rviz": ("false", "start RViz with config/inspection.rviz, following namespace, image and fixed_frame"),
    "fixed_frame": ("camera", "RViz fixed frame (the camera's optical frame on your cell)"),
}


def parameter_overrides(values: dict) -> dict:
    """The node parameters given as launch arguments, typed; the ones left empty are not overridden."""
    out: dict[str, Any] = {}
    for arg, (param, kind, _) in OVERRIDES.items():
        raw = str(values.get(arg, "")).strip()
        if raw == "":
            continue
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"launch argument {arg}:={raw}: expected true or false")
            out[param] = raw.lower() in ("true", "1")
        elif kind is float:
            try:
                out[param] = float(raw)
            except ValueError:
                raise ValueError(f"launch argument {arg}:={raw}: expected a number") from None
        else:
            out[param] = raw
    return out


def resolve(topic: str, namespace: str) -> str:
    """A topic name as the node resolves it (relative names go under its namespace)."""
    if topic.startswith("/"):
        return topic
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{topic}"


def rviz_config(text: str, namespace: str, image: str, fixed_frame: str) -> str:
    """The RViz config with the node's output topics under ``namespace``, the camera display on ``image`` and the
    fixed frame ``fixed_frame``."""
    import yaml

    doc = yaml.safe_load(text)
    manager = doc["Visualization Manager"]
    manager["Global Options"]["Fixed Frame"] = fixed_frame
    node = resolve(NODE_NAME, namespace)
    for display in manager["Displays"]:
        topic = display.get("Topic")
        if not isinstance(topic, dict):
            continue
        if topic["Value"].startswith("/cmdr_inspection/"):
            topic["Value"] = node + topic["Value"][len("/cmdr_inspection"):]
        else:  # the camera image
            topic["Value"] = resolve(image, namespace)
    return yaml.safe_dump(doc, sort_keys=False)


def node_actions(values: dict, share: str) -> list:
    """The lifecycle node (and RViz when asked) for these launch argument values."""
    from launch_ros.actions import LifecycleNode, Node

    node = LifecycleNode(
        package="cmdr_ros",
        executable="inspection_node",
        name=NODE_NAME,
        namespace=values.get("namespace", ""),
        output="screen",
        parameters=[values["params_file"], parameter_overrides(values)],
        remappings=[(name, values.get(name, name)) for name in ("image", "points", "camera_info")],
    )
    actions = [node]
    if str(values.get("use_rviz", "false")).lower() in ("true", "1"):
        with open(os.path.join(share, "config", "inspection.rviz")) as f:
            text = rviz_config(f.read(), values.get("namespace", ""), values.get("image", "image"),
                               values.get("fixed_frame", "camera"))
        path = os.path.join(tempfile.mkdtemp(prefix="cmdr_rviz_"), "inspection.rviz")
        with open(path, "w") as f:
            f.write(text)
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", path],
                            output="log"))
    return actions


def declare_arguments(share: str, own: dict | None = None) -> list:
    """A DeclareLaunchArgument per launch argument: ``own`` {name: (default, description)} first (replay.launch.py
    adds its own and overrides defaults of ARGS with them), then the parameter overrides (empty: the params file's
    value), ARGS and params_file."""
    own = own or {}
    table = {name: ("", f"{text} (empty: the params file's value)") for name, (_, _, text) in OVERRIDES.items()}
    table.update(ARGS)
    table["params_file"] = (os.path.join(share, "config", "inspection.yaml"),
                            "node parameters YAML (defaults: config/inspection.yaml)")
    table = {**own, **{name: value for name, value in table.items() if name not in own}}
    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in table.items()]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    return LaunchDescription(declare_arguments(share) + [OpaqueFunction(
        function=lambda context: node_actions(dict(context.launch_configurations), share))])
