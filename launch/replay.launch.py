"""Replay a recorded bag into the inspection node and watch it in RViz (a real ROS 2 install).

    ros2 launch cmdr_ros replay.launch.py bag:=demo_out/cell_bag checkpoint:=demo_out/model.ckpt

Bags written by `cmdr bag from-dataset` (or the demo) carry /camera/image, /camera/points and
/camera/camera_info; the node's inputs are remapped onto them (override with image:=, points:=, camera_info:=).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.conditions import IfCondition, UnlessCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cmdr_ros")
    lc = LaunchConfiguration
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 folder to play"),
        DeclareLaunchArgument("checkpoint", description="trained model file (.ckpt)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate"),
        DeclareLaunchArgument("loop", default_value="false", description="replay forever"),
        DeclareLaunchArgument("image", default_value="/camera/image"),
        DeclareLaunchArgument("points", default_value="/camera/points"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info"),
        DeclareLaunchArgument("use_rviz", default_value="true"),
    ]
    inspection = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "inspection.launch.py")),
        launch_arguments={"checkpoint": lc("checkpoint"), "image": lc("image"), "points": lc("points"),
                          "camera_info": lc("camera_info"), "use_rviz": lc("use_rviz")}.items(),
    )
    # --delay lets the node configure and subscribe before the first part arrives
    play = ExecuteProcess(cmd=["ros2", "bag", "play", lc("bag"), "--rate", lc("rate"), "--delay", "5.0"],
                          output="screen", condition=UnlessCondition(lc("loop")))
    play_loop = ExecuteProcess(cmd=["ros2", "bag", "play", lc("bag"), "--rate", lc("rate"), "--delay", "5.0",
                                    "--loop"], output="screen", condition=IfCondition(lc("loop")))
    return LaunchDescription(args + [inspection, play, play_loop])
