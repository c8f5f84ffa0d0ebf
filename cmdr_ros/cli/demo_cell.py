"""The demo's cell: the real inspection node in its own process, bags replayed into it over DDS and what it publishes
recorded (``CellNode``), and the per-part report of a replay (``report``)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

from cmdr_ros import CmdrError
from cmdr_ros.run_report import PartRow, format_rows, format_summary, summarize
from cmdr_ros.ros.topics import CAMERA, RECORDED


def _start_node(checkpoint: Path, device: str, log_path: Path, remaps: dict[str, str],
                params: dict[str, object] | None = None) -> subprocess.Popen:
    """The inspection node in its own process: ``params`` as -p NAME:=VALUE, ``remaps`` as -r FROM:=TO."""
    # the cell defaults judge every part; sync.timeout is raised because Fast DDS on loopback was measured to deliver
    # a large image 1-3 s late at times: with the default 1 s such a part would get the fail-safe 'unmatched' reject
    params = {"checkpoint": checkpoint, "device": device, "sync.timeout": 5.0, **(params or {})}
    cmd = [sys.executable, "-m", "cmdr_ros.ros.node.inspection_node", "--ros-args"]
    cmd += [a for k, v in params.items() for a in ("-p", f"{k}:={v}")]
    cmd += [a for k, v in remaps.items() for a in ("-r", f"{k}:={v}")]
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the node process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


class CellNode:
    """The node (inputs remapped to the bag topics ``remaps``, extra ``params``) started on entering, stopped on
    leaving; ``replay`` plays a bag into it and returns what it decided. It keeps running between replays, so a
    model can be swapped into it in between (``cmdr promote --node /cmdr_inspection``)."""

    def __init__(self, checkpoint: Path, out: Path, device: str = "auto", remaps: dict[str, str] = CAMERA,
                 params: dict[str, object] | None = None, log_name: str = "node.log"):
        self.remaps, self.log = remaps, out / log_name
        self._args = (checkpoint, device, self.log, remaps, params)

    def __enter__(self) -> CellNode:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        from cmdr_ros.ros.recorder import ResultRecorder

        self.proc = _start_node(*self._args)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node("cmdr_demo", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        try:
            self.recorder = ResultRecorder(self.node)
            threading.Thread(target=self.executor.spin, daemon=True).start()
            deadline = time.monotonic() + 180
            # the node subscribes once configured and active; its outputs must reach the recorder from the first part
            while self.node.count_subscribers(self.remaps["points"]) == 0 or not self.recorder.matched():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise CmdrError(f"the inspection node did not come up; see {self.log}")
                time.sleep(0.2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def replay(self, bag: Path, timeout: float = 90.0) -> tuple[dict, dict[int, str]]:
        """Play the ``remaps`` topics of ``bag`` into the node; (results by stamp, sample names by stamp) of its
        parts."""
        from cmdr_ros.ros.bags import play_bag, read_messages

        samples = {stamp: msg.data for _, stamp, msg in read_messages(bag, [RECORDED["sample"]])}
        played = play_bag(bag, node=self.node, topics=list(self.remaps.values()), wait=30)
        print(f"      replayed {played} messages")
        if not self.recorder.wait_for(set(samples), timeout):
            print(f"      warning: {len(set(samples) - set(self.recorder.results))} parts got no result in "
                  f"{timeout:.0f} s")
        return {s: r for s, r in self.recorder.results.items() if s in samples}, samples

    def __exit__(self, *exc) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def replay_through_node(bag: Path, checkpoint: Path, out: Path, device: str = "auto", timeout: float = 90.0,
                        remaps: dict[str, str] = CAMERA, params: dict[str, object] | None = None,
                        log_name: str = "node.log") -> tuple[dict, dict[int, str]]:
    """Start the node, play the bag into it, stop it: (results by stamp, sample names by stamp)."""
    with CellNode(checkpoint, out, device, remaps, params, log_name) as cell:
        return cell.replay(bag, timeout)


def report(results: dict, samples: dict[int, str], report_dir: Path, prefix: str,
           threshold: float) -> tuple[list[PartRow], dict[str, float]]:
    """Print and return one row per replayed part (sorted by name) and their summary; heatmaps are written as
    report_dir/heatmaps/<prefix><name>.png."""
    rows = []
    for stamp, name in sorted(samples.items(), key=lambda kv: kv[1]):
        r = results.get(stamp)
        png = ""
        if r is not None and r.heatmap is not None:
            png = f"heatmaps/{prefix}{name.replace('/', '_')}.png"
            cv2.imwrite(str(report_dir / png), r.heatmap)
        judged = r is not None and r.judged
        rows.append(PartRow(name, int(not name.startswith("good/")), r.score if judged else float("nan"),
                            bool(r.reject) if r is not None else False,
                            float(r.values.get("latency_ms", "nan")) if judged else float("nan"), png))
    summary = summarize(rows, threshold)
    print(format_rows(rows))
    print(format_summary(summary))
    return rows, summary
