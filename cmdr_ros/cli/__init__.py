"""The ``cmdr`` command-line verbs. Importing them imports nothing of ROS: the verbs that speak ROS (`cmdr node`,
`cmdr bag`, `cmdr bench node`, `cmdr demo`) import rclpy when they run."""
