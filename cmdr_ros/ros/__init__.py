"""ROS 2 side of cmdr_ros: the inspection node and its rclpy helpers (input synchronization, message conversion).

Everything that imports rclpy or ROS message packages lives in this sub-package; ``cmdr_ros`` proper stays ROS-free.
"""
