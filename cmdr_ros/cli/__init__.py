"""The ``cmdr`` command-line verbs (no ROS imports, except `cmdr node` and `cmdr bag` which load them lazily)."""
