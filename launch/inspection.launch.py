"""Launch the CMDR-IAD inspection node (and optionally RViz).

    ros2 launch cmdr_ros inspection.launch.py checkpoint:=/path/model.ckpt
    ros2 launch cmdr_ros inspection.launch.py checkpoint:=model.ckpt mode:=3d points:=/profiler/points use_rviz:=true

The node is a managed (lifecycle) node; with autostart:=true (default) it configures and activates itself.
Set autostart:=false to drive it with a lifecycle manager (`ros2 lifecycle set /cmdr_inspection configure`).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

ARGS = {
    "checkpoint": ("", "trained model file (.ckpt from `cmdr train`)"),
    "mode": ("auto", "auto (the checkpoint's) | rgbd | 3d | 2d"),
    "device": ("auto", "auto (CUDA when present) | cpu | cuda | cuda:N"),
    "threshold": ("-1.0", "reject threshold; < 0 uses the checkpoint's calibrated one"),
    "autostart": ("true", "configure and activate the lifecycle node by itself"),
    "input_reliability": ("reliable", "input QoS: reliable | best_effort (must match the sensor drivers)"),
    "namespace": ("", "namespace of the node and its relative topics"),
    "image": ("image", "RGB image topic (sensor_msgs/Image)"),
    "points": ("points", "point cloud topic (sensor_msgs/PointCloud2)"),
    "camera_info": ("camera_info", "camera calibration topic (sensor_msgs/CameraInfo)"),
    "use_rviz": ("false", "start RViz with config/inspection.rviz"),
}


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGS.items()]
    args.append(DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "inspection.yaml"),
                                      description="node parameters YAML (defaults: config/inspection.yaml)"))
    lc = LaunchConfiguration
    node = LifecycleNode(
        package="cmdr_ros",
        executable="inspection_node",
        name="cmdr_inspection",
        namespace=lc("namespace"),
        output="screen",
        parameters=[lc("params_file"), {
            "checkpoint": lc("checkpoint"),
            "mode": lc("mode"),
            "device": lc("device"),
            "threshold": lc("threshold"),
            "autostart": lc("autostart"),
            "input.reliability": lc("input_reliability"),
        }],
        remappings=[("image", lc("image")), ("points", lc("points")), ("camera_info", lc("camera_info"))],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "config", "inspection.rviz")],
        condition=IfCondition(lc("use_rviz")),
        output="log",
    )
    return LaunchDescription(args + [node, rviz])
