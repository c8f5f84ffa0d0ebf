"""``cmdr bench node``: the inspection node as it runs on the cell, timed from outside.

``python -m cmdr_ros.ros.node.inspection_node`` runs as a subprocess on a ROS domain of its own (ROS_DOMAIN_ID when the
environment sets one), LOCALHOST discovery, the Fast DDS profile of :mod:`cmdr_ros.ros.dds_profile` unless the
environment names another, its logs and audit store in a temporary folder. Once it is active and matched, parts are
published (reliable) at a fixed rate; every ``~/result`` is recorded and matched to its part by stamp.

Two options play a camera driver the node does not start: ``publisher_profile=False`` publishes the parts from a
participant with Fast DDS's defaults (the node keeps the profile), ``image_transport="compressed"`` publishes the
image as a JPEG ``sensor_msgs/CompressedImage`` (what compressed_image_transport sends) to a node with
``input.image_transport:=compressed``.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from cmdr_ros import CmdrError
from cmdr_ros.ros.bench.judge_path import folder_frames, frame_messages, proc_status_mb, synthetic_frames
from cmdr_ros.ros.compat import publisher_count
from cmdr_ros.ros.stamps import set_stamp, stamp_ns
from cmdr_ros.ros.dds_profile import use_large_message_profile
from cmdr_ros.ros.topics import DIAGNOSTICS, MAPS, OUTPUT_TYPES, output_topic

OUTPUTS = {name: OUTPUT_TYPES[name] for name in MAPS}  # counted when the bench subscribes to the maps
QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
START_S = 120.0  # the node loads torch and the model: minutes on a busy machine at worst
DRAIN_S = 30.0  # after the last part: how long its results may take


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ for the duration (DDS reads them when the participant is created)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _without(names: tuple[str, ...]) -> Iterator[None]:
    """``names`` out of os.environ for the duration (a participant created meanwhile reads no profile file)."""
    saved = {k: os.environ.pop(k) for k in names if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def compressed_image(msg: Image) -> CompressedImage:
    """An rgb8 Image as compressed_image_transport sends it: converted to bgr8, JPEG (OpenCV's default quality 95),
    format 'rgb8; jpeg compressed bgr8'."""
    import cv2

    rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise CmdrError("cannot encode the bench image as JPEG")
    return CompressedImage(header=msg.header, format="rgb8; jpeg compressed bgr8", data=buf.tobytes())


def dds_environment() -> dict[str, str]:
    """The DDS settings shared by the bench and the node (the Fast DDS profile: ``use_large_message_profile``)."""
    return {"ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(random.SystemRandom().randint(1, 101)),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def train_tiny_model(folder: Path, mode: str, size: int) -> str:
    """A lite model, 1 epoch on 2 synthetic parts of ``size`` pixels, calibrated on 2 more (timing does not depend on
    training); its checkpoint path."""
    from cmdr_ros.model.training import train_model
    from cmdr_ros.config import preset
    from cmdr_ros.data.synthetic import CellConfig, generate_dataset

    data = generate_dataset(folder / "data", "block", n_train=2, n_val=2, n_test_good=0, n_test_per_defect=0,
                            cfg=CellConfig(image_size=size))
    config = preset("lite", mode)
    config.train.epochs = 1
    return train_model(data, config, folder / f"bench_{mode}.ckpt", device="cpu", no_cache=True,
                       progress=False)["checkpoint"]


def checkpoint_mode(path: str) -> str:
    from cmdr_ros.model.checkpoint import read_checkpoint

    return read_checkpoint(path, require_threshold=False)["config"]["mode"]


class Recorder:
    """The bench's rclpy node: input publishers, and the node's ~/result (and outputs) recorded as they arrive."""

    def __init__(self, domain_id: int, inputs: dict[str, type], outputs: bool) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("cmdr_bench", context=self.context)
        self.cond = threading.Condition()
        self.results: list[tuple[float, int, dict[str, str]]] = []  # (received, stamp ns, values)
        self.outputs: Counter = Counter()
        self.subs = [self.node.create_subscription(DiagnosticArray, output_topic("result"), self._on_result, QOS)]
        if outputs:  # raw: counted, never deserialized (the bench shares the CPUs with the node)
            self.subs += [self.node.create_subscription(t, output_topic(k), lambda _, k=k: self.outputs.update([k]),
                                                        QOS, raw=True) for k, t in OUTPUTS.items()]
        # last: a /diagnostics message from the node shows its writers matched every reader above (announced first)
        self.diagnostics = threading.Event()
        self.late_inputs: dict[str, str] = {}  # the node's last late.* diagnostics values (which input came late)
        self.subs.append(self.node.create_subscription(DiagnosticArray, DIAGNOSTICS, self._on_diagnostics, QOS))
        self.pubs = {name: self.node.create_publisher(msg_type, f"/{name}", QOS)  # the node's relative input, no namespace
                     for name, msg_type in inputs.items()}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.endswith(": node"):
                late = {kv.key: kv.value for kv in st.values if kv.key.startswith("late.")}
                with self.cond:
                    self.late_inputs = late or self.late_inputs
        self.diagnostics.set()

    def _on_result(self, msg: DiagnosticArray) -> None:
        now = time.monotonic()
        values = {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}
        with self.cond:
            self.results.append((now, stamp_ns(msg.header), values))
            self.cond.notify_all()

    def matched(self) -> bool:
        """Every input reaches the node and ~/result comes back (the maps only when the node publishes them: a
        node run with an output switched off, e.g. -p output.anomaly_cloud:=false, has no such publisher). Matching
        is seen from one side at a time, and a result published before the node's writer matched this reader would
        be lost: the node's /diagnostics arriving here shows its writers have matched."""
        return (all(p.get_subscription_count() >= 1 for p in self.pubs.values())
                and publisher_count(self.node, self.subs[0]) >= 1 and self.diagnostics.is_set())

    def wait_results(self, stamps: set[int], timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(lambda: stamps <= {s for _, s, _ in self.results}, timeout)

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


class NodeProcess:
    """``python -m cmdr_ros.ros.node.inspection_node``, its output in ``folder``."""

    def __init__(self, folder: Path, env: dict[str, str], params: list[str]) -> None:
        args = [sys.executable, "-m", "cmdr_ros.ros.node.inspection_node", "--ros-args"]
        for p in params:
            args += ["-p", p]
        self.log = folder / "node.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={
                **os.environ, **env, "ROS_LOG_DIR": str(folder / "ros_log"), "PYTHONUNBUFFERED": "1",
                "RCUTILS_COLORIZED_OUTPUT": "0"})

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def wait_active(self, recorder: Recorder) -> float:
        """Seconds until the node logged 'active' and every topic matched; CmdrError if it exits or never does."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_S:
            if self.proc.poll() is not None:
                raise CmdrError(f"the node exited with {self.proc.returncode} before it was active:\n{self.tail()}")
            if "active: subscribed" in self.log.read_text(errors="replace") and recorder.matched():
                return time.monotonic() - t0
            time.sleep(0.1)
        raise CmdrError(f"the node was not active and matched after {START_S:g} s:\n{self.tail()}")

    def memory_mb(self, key: str) -> float | None:
        return proc_status_mb(key, self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (the node decides what it holds, then exits); killed after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {k: float(v) for k, v in zip(("p50", "p95", "p99", "max"), np.percentile(values, (50, 95, 99, 100)))}


def publish_parts(recorder: Recorder, sets: list[dict[str, Any]], rate: float, seconds: float) -> dict[int, float]:
    """Publish ``rate`` parts per second for ``seconds``, each with a fresh wall-clock stamp; stamp -> publish time
    (``time.monotonic`` just before its first message is published)."""
    published: dict[int, float] = {}
    t0 = time.monotonic()
    for i in range(max(1, round(rate * seconds))):
        time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        stamp = time.time_ns()
        msgs = sets[i % len(sets)]
        for msg in msgs.values():
            set_stamp(msg.header.stamp, stamp)
        published[stamp] = time.monotonic()
        for name, msg in msgs.items():
            recorder.pubs[name].publish(msg)
    return published


def summarise(published: dict[int, float], results: list[tuple[float, int, dict[str, str]]]) -> dict[str, Any]:
    """Throughput, publish -> result latency, outcomes of the parts published (first result of each stamp)."""
    first: dict[int, tuple[float, dict[str, str]]] = {}
    for t, stamp, values in results:
        if stamp in published:
            first.setdefault(stamp, (t, values))
    answered = [(published[s], t, v) for s, (t, v) in first.items()]
    judged = [v for _, _, v in answered if v.get("judged") == "true"]
    span = max(t for _, t, _ in answered) - min(published.values()) if answered else 0.0
    return {
        "published": len(published), "results": len(first), "missing": len(published) - len(first),
        "extra_results": len(results) - len(first), "judged": len(judged),
        "not_judged": dict(Counter(v.get("error", "?") for _, _, v in answered if v.get("judged") != "true")),
        "decisions": dict(Counter(v.get("decision", "?") for _, _, v in answered)),
        "throughput_hz": len(first) / span if span > 0 else 0.0,
        "latency_ms": _percentiles([(t - p) * 1e3 for p, t, _ in answered]),
        "node_latency_ms": _percentiles([float(v["latency_ms"]) for _, _, v in answered if "latency_ms" in v]),
        "inference_ms": _percentiles([float(v["inference_ms"]) for v in judged if "inference_ms" in v]),
    }


def run_node_bench(checkpoint: str | None, mode: str, rate: float, seconds: float, size: int, device: str,
                   params: list[str], outputs: bool = True, data: str | None = None, publisher_profile: bool = True,
                   image_transport: str = "raw") -> dict[str, Any]:
    """Start the node, feed it parts at ``rate`` for ``seconds`` (synthetic ones of ``size`` pixels, or the first
    10 frames of the MVTec 3D-AD style folder ``data`` in turn), stop it; the figures. ``publisher_profile``
    False: the parts leave a participant with Fast DDS's defaults; ``image_transport`` compressed: the image as
    JPEG (the node told so)."""
    env, load = dds_environment(), os.getloadavg()[0]
    dds_profile = use_large_message_profile()  # in os.environ: this process and the node's
    frames = folder_frames(data, 10) if data else synthetic_frames(size, 5)
    with tempfile.TemporaryDirectory(prefix="cmdr_bench_") as tmp:
        folder = Path(tmp)
        trained = checkpoint is None
        if trained:
            checkpoint = train_tiny_model(folder, mode, size)
        else:
            mode = checkpoint_mode(checkpoint)
        sets = [frame_messages(rgb, xyz, mode) for rgb, xyz in frames]
        if image_transport == "compressed" and "image" in sets[0]:
            sets = [{**msgs, "image": compressed_image(msgs["image"])} for msgs in sets]
            params = [*params, "input.image_transport:=compressed"]
        with _environ(env), _without(() if publisher_profile else PROFILE_VARS):
            recorder = Recorder(int(env["ROS_DOMAIN_ID"]), {k: type(m) for k, m in sets[0].items()}, outputs)
        node = None
        try:
            node = NodeProcess(folder, env, [f"checkpoint:={checkpoint}", f"device:={device}", *params])
            startup_s = node.wait_active(recorder)
            rss_start = node.memory_mb("VmRSS")
            published = publish_parts(recorder, sets, rate, seconds)
            recorder.wait_results(set(published), DRAIN_S)
            rss_end, rss_peak = node.memory_mb("VmRSS"), node.memory_mb("VmHWM")
            exit_code = node.stop()
            with recorder.cond:
                results, output_counts = list(recorder.results), dict(recorder.outputs)
                late_inputs = dict(recorder.late_inputs)
        finally:
            if node is not None:
                node.stop()
            recorder.close()
    shape = "x".join(str(n) for n in frames[0][1].shape[:2])
    source = f"{data} ({len(frames)} frames of {shape})" if data else f"{shape} synthetic parts"
    return {"mode": mode, "size": size, "source": source, "rate_hz": rate, "seconds": seconds, "device": device,
            "params": params,
            "checkpoint": None if trained else checkpoint,
            "model": "lite, trained here: 1 epoch on 2 synthetic parts" if trained else "given",
            "outputs_received": output_counts if outputs else None,
            "dds": {**env, "profile": dds_profile if publisher_profile else
                    f"node: {dds_profile}; publisher: Fast DDS defaults (no profile)"},
            "image_transport": image_transport, "late_inputs": late_inputs,
            "load_average_1min": {"start": load, "end": os.getloadavg()[0]},
            "startup_s": startup_s,
            **summarise(published, results),
            "node_rss_mb": {"start": rss_start, "end": rss_end, "peak": rss_peak}, "node_exit_code": exit_code}


def format_report(r: dict[str, Any]) -> str:
    """The report as text."""
    def ms(d: dict[str, float]) -> str:
        return " / ".join(f"{d[k]:.1f}" for k in ("p50", "p95", "p99", "max")) if d else "-"

    mem = {k: "?" if v is None else f"{v:.0f}" for k, v in r["node_rss_mb"].items()}
    outs = r["outputs_received"]
    rows = [
        ("parts published", r["published"]),
        ("results", f"{r['results']} ({r['missing']} missing, {r['extra_results']} extra)"),
        ("judged", r["judged"]),
        ("fail-safe", ", ".join(f"{k} {n}" for k, n in sorted(r["not_judged"].items())) or "none"),
        ("decisions", ", ".join(f"{k} {n}" for k, n in sorted(r["decisions"].items()))),
        ("outputs received", "not subscribed" if outs is None else
         ", ".join(f"{k} {outs.get(k, 0)}" for k in OUTPUTS)),
        ("throughput", f"{r['throughput_hz']:.2f} results/s"),
        ("latency ms", "p50 / p95 / p99 / max"),
        ("  publish -> result", ms(r["latency_ms"])),
        ("  node: in -> decided", ms(r["node_latency_ms"])),
        ("  node: inference", ms(r["inference_ms"])),
        ("late inputs ms", ", ".join(f"{k[5:]} {v}" for k, v in sorted(r["late_inputs"].items())
                                     if not k.endswith("_sets")) or "-"),
        ("node RSS MB", f"start {mem['start']}, end {mem['end']}, peak {mem['peak']}"),
        ("node exit code", f"{r['node_exit_code']} (after SIGINT)"),
    ]
    head = (f"cmdr bench node: {r['mode']} {r['source']} at {r['rate_hz']:g} Hz for "
            f"{r['seconds']:g} s, device {r['device']}, model: {r['checkpoint'] or r['model']}\n"
            f"  DDS domain {r['dds']['ROS_DOMAIN_ID']}; {r['dds']['profile']}\n"
            f"  node active after {r['startup_s']:.1f} s; load average {r['load_average_1min']['start']:.1f} at the "
            f"start, "
            f"{r['load_average_1min']['end']:.1f} at the end"
            + (f"; -p {' -p '.join(r['params'])}" if r["params"] else ""))
    return "\n".join([head, *(f"{k:<24}{v}" for k, v in rows)])
