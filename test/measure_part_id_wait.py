"""What the part-id wait costs (docs/controller.md): a real node on the simulated cell, parts published one at a time,
the time from publishing a part to its ~/result arriving (the test side's clock), with the id published before the
frame, without any id, and without id with ``part_id.wait`` 0. The wait's cost shows in "decision -> ~/result
received" (the rest of the time to the result minus the node's ``latency_ms``: delivery, publication and the wait),
which a loaded machine disturbs far less than the end-to-end time. Not a test: run it by hand.

    cd REPO && PYTHONPATH=$PWD:test ROS_DOMAIN_ID=N python test/measure_part_id_wait.py [PARTS]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy.duration
from std_msgs.msg import Header

from cmdr_ros.ros.conversions import xyz_to_pointcloud2
from node_harness import RosSide, cell_frame, start_node, train_cell_model


def run(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="part_id_wait_"))
    model = train_cell_model(tmp / "data", "rgbd", tmp / "rgbd.ckpt")
    ros = RosSide(int(os.environ.get("ROS_DOMAIN_ID", "0")))
    parts = [cell_frame(i) for i in range(4)]
    gen = start_node(ros, tmp, {"checkpoint": model["checkpoint"], "output.heatmap": False,
                                "output.anomaly_map": False, "output.anomaly_cloud": False},
                     (ros.image_pub, ros.points_pub, ros.part_pub))
    next(gen)
    try:
        for case, wait in (("id before the frame", 0.05), ("no id", 0.05), ("no id", 0.0),
                           ("id before the frame", 0.05)):
            assert ros.set_parameter("part_id.wait", wait)[0]
            e2e, node_ms = [], []
            for i in range(n + 2):  # the first two warm the case up
                part = parts[i % len(parts)]
                stamp = ros.next_stamp()
                if case.startswith("id"):  # the id first, delivered: the clock starts with the frame
                    ros.part_pub.publish(Header(stamp=stamp, frame_id=f"P{i}"))
                    ros.part_pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5))
                t0 = time.monotonic()
                ros.publish_set(stamp, part.rgb, xyz_to_pointcloud2(part.xyz, Header(frame_id="camera")))
                v = ros.result(stamp)
                if i >= 2:
                    e2e.append((time.monotonic() - t0) * 1e3)
                    node_ms.append(float(v["latency_ms"]))
            after = np.array(e2e) - np.array(node_ms)  # delivery both ways + the wait: what the id wait adds to
            print(f"{case:<20} part_id.wait {wait:<5g}: publish -> ~/result median {np.median(e2e):6.1f} ms; "
                  f"arrival -> decision (latency_ms) {np.median(node_ms):6.1f} ms; decision -> ~/result received "
                  f"median {np.median(after):5.1f} ms (p90 {np.percentile(after, 90):5.1f}), n={n}", flush=True)
    finally:
        gen.close()
        ros.close()


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
