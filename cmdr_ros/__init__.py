"""cmdr_ros: CMDR-IAD 2D+3D industrial anomaly detection and its ROS 2 inspection node.

The package root and its sub-packages ``model``, ``data``, ``cli`` plus ``geometry`` and ``metrics``
import no ROS module; everything rclpy lives in ``cmdr_ros.ros``.
"""

__version__ = "0.1.0"


class CmdrError(Exception):
    """A user-facing error: bad input, missing file, incompatible checkpoint.

    The CLI prints it as one line (no traceback) and exits non-zero; the node logs it.
    """
