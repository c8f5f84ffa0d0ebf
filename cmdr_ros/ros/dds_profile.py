"""The Fast DDS profile cmdr processes speak with: camera-sized messages whole through shared memory.

Measured on loopback with the PyPI Fast DDS 3.2.3: when one participant publishes a 480 KB image and then a 1.9 MB
cloud (a 400x400 frame), the image reaches a subscriber late, median 0.5-1.6 s and up to 4.6 s, with ROS 2's default
transports: the cloud does not fit Fast DDS's default 512 KB shared-memory segment and goes out as UDP fragments, and
the image waits behind it. With the 16 MB segment of ``fastdds_large_messages.xml`` the image arrives in 3-4 ms and
the cloud in 7-8 ms (p50), also when only the publisher uses the file. The publisher's participant decides: the node's
outputs need it in the node, the inputs in the camera driver (``cmdr dds-profile`` prints the file's path).

``FASTDDS_BUILTIN_TRANSPORTS`` is no substitute on ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: rmw_fastrtps then sets
its own transports and the variable is ignored (no TCP socket opens for ``LARGE_DATA``). On other ranges it works
(``LARGE_DATA``: 3 and 8 ms), so a user who set it keeps it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import MutableMapping

PROFILE = Path(__file__).with_name("fastdds_large_messages.xml")
SEGMENT_BYTES = 16 * 2**20  # the profile's segment_size
SHM_DIR = "/dev/shm"
FASTDDS_RMWS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")  # "": ROS 2's default RMW, Fast DDS


def use_large_message_profile(environ: MutableMapping[str, str] | None = None, shm_dir: str = SHM_DIR) -> str:
    """Point Fast DDS at :data:`PROFILE` (``FASTDDS_DEFAULT_PROFILES_FILE`` in ``environ``, default ``os.environ``)
    unless the user configured DDS otherwise; call it before the process's first ``rclpy.init`` (Fast DDS reads its
    profiles once). Returns what was decided, one line for the log."""
    env = os.environ if environ is None else environ
    if env.get("CMDR_FASTDDS_PROFILE", "").lower() in ("0", "off", "false", "no"):
        return "Fast DDS profile: not set (CMDR_FASTDDS_PROFILE=off)"
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        if env.get(var):
            return f"Fast DDS profile: {env[var]} ({var}, the user's)"
    if env.get("RMW_IMPLEMENTATION", "") not in FASTDDS_RMWS:
        return f"Fast DDS profile: not set (RMW_IMPLEMENTATION={env['RMW_IMPLEMENTATION']})"
    builtin = env.get("FASTDDS_BUILTIN_TRANSPORTS", "")
    localhost = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "") == "LOCALHOST"
    if builtin and not localhost:  # e.g. LARGE_DATA: TCP + shared memory, which delivers large frames too
        return f"Fast DDS profile: not set (FASTDDS_BUILTIN_TRANSPORTS={builtin}, the user's)"
    if Path("DEFAULT_FASTDDS_PROFILES.xml").is_file():
        return "Fast DDS profile: ./DEFAULT_FASTDDS_PROFILES.xml (the working folder's)"
    try:
        free = shutil.disk_usage(shm_dir).free
    except OSError:
        free = 0
    if free < 4 * SEGMENT_BYTES:  # a segment per participant: leave room for the others on this host
        return (f"Fast DDS profile: not set ({shm_dir} has {free / 2**20:.0f} MB free, less than 4 segments of "
                f"{SEGMENT_BYTES / 2**20:.0f} MB): messages over 512 KB take UDP and may arrive late")
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    ignored = f"; FASTDDS_BUILTIN_TRANSPORTS={builtin} has no effect on a LOCALHOST discovery range" if builtin else ""
    return f"Fast DDS profile: {PROFILE} (shared-memory segment {SEGMENT_BYTES / 2**20:.0f} MB){ignored}"
