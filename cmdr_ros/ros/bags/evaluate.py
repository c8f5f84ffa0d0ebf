"""Offline evaluation of a bag: ``eval_bag`` runs a detector over it, judging every part exactly as the node would,
without DDS, and scores it like ``cmdr eval``. A "chunks" model judges each cloud of the profiler's topic as one
scanned part; bags carry no per-point ground truth, so scans are scored per part (I-AUROC from the sample names)."""
from __future__ import annotations

import bisect
import csv
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.config import cross_modal
from cmdr_ros.ros.bags.read import check_type, connections, message_class, open_bag
from cmdr_ros.ros.bags.record import BagWriter
from cmdr_ros.ros.bags.tf import bag_tf_lookup, read_tf, tf_summary
from cmdr_ros.ros.stamps import stamp_ns, stamp_text
from cmdr_ros.ros.conversions.frames import input_names
from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values
from cmdr_ros.ros.node.wiring import output_keys
from cmdr_ros.ros.topics import INPUT_TYPES, MAPS, PART_ID, RECORDED, RECORDED_TYPES, output_topic, type_name

log = logging.getLogger(__name__)

class _ByStamp:
    """Values keyed by a nanosecond stamp; lookup of the nearest one (optionally only within a tolerance)."""

    def __init__(self, items: list[tuple[int, Any]]) -> None:
        items.sort(key=lambda kv: kv[0])
        self.stamps = [k for k, _ in items]
        self.values = [v for _, v in items]

    def __bool__(self) -> bool:
        return bool(self.stamps)

    def nearest(self, t: int, within: int | None = None) -> Any:
        i = bisect.bisect_left(self.stamps, t)
        near = [j for j in (i - 1, i) if 0 <= j < len(self.stamps)]
        if not near:
            return None
        j = min(near, key=lambda j: abs(self.stamps[j] - t))
        return self.values[j] if within is None or abs(self.stamps[j] - t) <= within else None


@dataclass
class _Aux:
    """The bag's companion topics, read before the inputs: camera infos (by header stamp), ground-truth masks
    (by header stamp, bool HxW; a scan's: bool N per point), sample names (by log time: std_msgs/String has no
    header) and part ids (std_msgs/Header: by its stamp, the id as frame_id; as the node takes them, whether
    recorded before or after the frame)."""

    infos: _ByStamp
    gts: _ByStamp
    samples: _ByStamp
    has_gt: bool
    part_ids: _ByStamp


def read_aux(reader: Any, topics: dict[str, str]) -> _Aux:
    from rclpy.serialization import deserialize_message

    from cmdr_ros.ros.conversions import image_to_array, pointcloud2_fields

    found: dict[str, list[tuple[int, Any]]] = {"info": [], "gt": [], "sample": [], "part_id": []}
    if topics:
        by_topic = {t: k for k, t in topics.items()}
        conns = [c for t in topics.values() for c in reader.topics[t].connections]
        classes = {t: message_class(reader.topics[t].msgtype) for t in topics.values()}
        for conn, t, raw in reader.messages(connections=conns):
            kind = by_topic[conn.topic]
            msg = deserialize_message(bytes(raw), classes[conn.topic])
            if kind == "info":
                found[kind].append((stamp_ns(msg.header), msg))
            elif kind == "gt":
                mask = image_to_array(msg)
                found[kind].append((stamp_ns(msg.header), (mask if mask.ndim == 2 else mask.any(-1)) != 0))
            elif kind == "part_id":
                found[kind].append((stamp_ns(msg), msg.frame_id))
            elif kind == "gt_points":  # a scan's labels: the intensity of its points, in their order
                found["gt"].append((stamp_ns(msg.header), pointcloud2_fields(msg, ("intensity",))["intensity"]
                                    .reshape(-1) != 0))
            else:
                found[kind].append((t, str(msg.data)))
    part_ids = list(dict(found["part_id"]).items())  # a repeated stamp: the newest id counts (as PartIds.add)
    return _Aux(_ByStamp(found["info"]), _ByStamp(found["gt"]), _ByStamp(found["sample"]),
                "gt" in topics or "gt_points" in topics, _ByStamp(part_ids))


class _Evaluation:
    """Per matched set: the node's ``FrameJudge`` (same parameters, same alignment, same decision), the node's
    outputs into the results bag, a CSV row, a heatmap PNG, and (with ground truth) the inputs of
    ``compute_metrics`` exactly as ``cmdr eval`` gathers them. Every input that never matched gets a not-judged
    'unmatched' row and result, like on the node."""

    def __init__(self, judge: Any, params: dict[str, Any], inputs: list[str], aux: _Aux, slop_ns: int,
                 results: BagWriter, heatmaps: Path | None) -> None:
        self.judge, self.params, self.inputs, self.aux, self.slop_ns = judge, params, inputs, aux, slop_ns
        self.det = judge.detector
        self.results, self.heatmaps = results, heatmaps
        self.outputs = set(output_keys(params))  # what the node publishes with these parameters
        self.seq = 0
        self.rows: list[dict[str, Any]] = []
        self.kind = judge.pipeline  # the detector's pipeline kind: its truth, rows and metric sink
        self.sink = self.kind.metrics(truth=aux.has_gt)
        self.latencies: list[float] = []

    def __call__(self, msgs: dict[str, Any]) -> None:
        header = (msgs["image"] if "image" in msgs else msgs["points"]).header
        stamp = stamp_ns(header)
        sample = self.aux.samples.nearest(stamp, self.slop_ns)
        t0 = time.perf_counter()
        frame, verdict = self.judge.judge(msgs, self.aux.infos.nearest(stamp) if cross_modal(self.judge.mode) else None)
        latency_ms = (time.perf_counter() - t0) * 1e3
        label = self._truth(stamp, sample, verdict.prediction) if verdict.judged else None
        if verdict.judged:
            self.latencies.append(latency_ms)
        self._write(header, stamp, sample, "+".join(msgs), frame, verdict, latency_ms,
                    {k: m.header.frame_id for k, m in msgs.items()}, label)

    def orphan(self, index: int, msg: Any, why: str) -> None:
        """An input without partner (the synchronizer dropped it, or it still waited at the end of the bag)."""
        from cmdr_ros.ros.node.frame_judge import unmatched_reason

        name = self.inputs[index]
        verdict = self.judge.not_judged(*unmatched_reason(name, self.inputs, why,
                                                                 float(self.params["sync.timeout"])))
        stamp = stamp_ns(msg.header)
        self._write(msg.header, stamp, self.aux.samples.nearest(stamp, self.slop_ns), name, None, verdict, None,
                    {name: msg.header.frame_id}, None)

    def _write(self, header: Any, stamp: int, sample: str | None, inputs: str, frame: Any, verdict: Any,
               latency_ms: float | None, frame_ids: dict[str, str], label: int | None) -> None:
        """The node's messages of one decision into the results bag (``outputs.decision_messages``: result,
        decision, reject, score and the maps its output switches enable), the heatmap PNG and the CSV row."""
        self.seq += 1
        part_id = self.aux.part_ids.nearest(stamp, self.slop_ns)  # the node's rule: nearest stamp within sync.slop
        extra = {k: v for k, v in (("part_id", part_id), ("sample", sample)) if v is not None and v != ""}
        values = result_values(header, verdict, frame, seq=self.seq, mode=self.judge.mode,
                               model_id=self.judge.model_id, inputs=inputs, latency_ms=latency_ms,
                               frame_ids=frame_ids, extra=extra or None)
        maps = self._maps(verdict, frame, inputs)
        if self.heatmaps is not None and "heatmap" in maps:
            self._write_png(maps["heatmap"], stamp, sample)
        for key, msg in decision_messages(header, verdict, values,
                                          {k: m for k, m in maps.items() if k in self.outputs}).items():
            self.results.write(output_topic(key), msg, stamp)
        self.rows.append({"stamp": stamp_text(header), "sample": sample or "",
                          "inputs": inputs, "score": verdict.score if verdict.judged else "",
                          "threshold": verdict.threshold, "decision": verdict.decision,
                          "reject": int(verdict.reject), "label": "" if label is None else label,
                          "latency_ms": round(latency_ms, 3) if latency_ms is not None else "",
                          "error": "" if verdict.judged else f"{verdict.kind}: {verdict.reason}"})
        self.rows[-1].update(self.kind.row(verdict.prediction, frame.points if frame is not None else None))

    def _maps(self, verdict: Any, frame: Any, inputs: str) -> dict[str, Any]:
        """``outputs.map_messages`` of the maps the output switches enable (and the heatmap when PNGs are written);
        a map that cannot be drawn costs the part no decision, as on the node (logged)."""
        wanted = self.outputs | ({"heatmap"} if self.heatmaps is not None else set())
        try:
            return map_messages(verdict, frame, wanted, float(self.params["output.heatmap_alpha"]),
                                float(self.params["output.heatmap_max"]))
        except Exception as e:  # noqa: BLE001 - the node's rule (engine.decide)
            log.warning("output maps of part %s not built: %s: %s", inputs, type(e).__name__, e)
            return {}

    def _write_png(self, heatmap: Any, stamp: int, sample: str | None) -> None:
        """The heatmap (the ``~/heatmap`` message's bgr8 pixels) as ``heatmaps/<sample>.png`` (else by stamp)."""
        import cv2

        from cmdr_ros.ros.conversions import image_to_array

        name = sample.replace("/", "_") if sample else stamp_text(stamp)
        path = self.heatmaps / f"{name}.png"
        if not cv2.imwrite(str(path), image_to_array(heatmap)):
            raise CmdrError(f"{path}: OpenCV could not write the heatmap")

    def _truth(self, stamp: int, sample: str | None, pred: Any) -> int | None:
        """The part's label (the sample's defect folder, else its recorded ground truth: a frame's mask, a scan's
        per-point labels); a labelled part goes to the metric sink with its truth, as ``cmdr eval`` gathers it."""
        label = None if sample is None else int(sample.split("/")[0] != "good")
        recorded = self.aux.gts.nearest(stamp, self.slop_ns) if self.aux.has_gt else None
        truth = self.kind.truth(pred, recorded, self.aux.has_gt, f"stamp {stamp}")
        if label is None and truth is not None:
            label = int(truth.any())
        if label is not None:
            self.sink.add(pred, label, sample.split("/")[0] if sample else ("good" if label == 0 else "defect"), truth)
        return label

    def metrics(self) -> dict[str, Any] | None:
        """The metric sink's summary of the labelled parts (as ``cmdr eval`` reports them), None without any."""
        out = self.sink.summary()
        if out is not None:
            out["latency_ms_mean"] = float(np.mean(self.latencies))
        return out


def eval_bag(bag: str | Path, detector: Any, out: str | Path, *, params: dict[str, Any] | None = None,
             image_topic: str = RECORDED["image"], points_topic: str | None = None,
             info_topic: str = RECORDED["camera_info"], gt_topic: str | None = None,
             sample_topic: str = RECORDED["sample"], part_id_topic: str = PART_ID,
             slop: float | None = None, threshold: float | None = None, maps: Collection[str] | None = None,
             checkpoint: str = "", write_images: bool = True, progress: bool = False) -> dict[str, Any]:
    """Run ``detector`` over a bag offline, judging every part exactly as the node would, without DDS.

    ``params``: the node's parameter values (``cmdr_ros.ros.node.parameters.read_params_file``; default: the node's
    defaults): the same ``FrameJudge`` (alignment with the bag's own /tf and /tf_static at the cloud's stamp when
    ``use_tf`` is on, as the node's tf2 listener hears them, else ``extrinsics``; ``raster_resolution``, ``on_error``,
    minimum coverage / valid ratio, ``max_range``, threshold) and the synchronizer's ``sync.queue_size`` /
    ``sync.slop``; ``slop`` and ``threshold`` override theirs. Inputs are matched with the node's
    ``ApproximateTimePolicy``; each set gets the nearest camera_info. Writes ``out/results_bag`` (mcap, replaced
    if present): every message the node publishes for each decision, made by the node's own
    ``outputs.decision_messages`` / ``map_messages`` and stamped with the input stamps (``~/result``, ``~/decision``
    where vision_msgs is installed, ``~/reject``, ``~/score`` and the maps the ``output.heatmap`` /
    ``output.anomaly_map`` / ``output.anomaly_cloud`` switches enable, drawn with ``output.heatmap_alpha`` /
    ``output.heatmap_max``; ``maps``, names of ``topics.MAPS``, overrides the switches); ``out/results.csv`` and
    ``out/heatmaps/*.png`` (the ``~/heatmap`` pixels, also when that output is off); with a ground-truth topic also
    ``out/metrics.json`` (the metrics of ``cmdr eval``). Returns the report (``table`` holds the printable metrics
    table when there are metrics).

    The model's kind (``cmdr_ros.ros.kinds``) sets the default topics, the truth and the metrics. A "chunks" model
    (``FrameJudge.kind``): every cloud on ``points_topic`` (default: the profiler's, else the camera's) is one
    scanned part, judged point by point as on the node (its maps: the scan's top view, and its own points with
    their scores as the anomaly cloud); ``results.csv`` also holds its points and chunks; with sample names ``metrics.json`` holds the
    part-level I-AUROC, and with per-point ground truth (``gt_topic``, default ``/cmdr/gt_points``: the scan's
    points with their labels as intensity, as ``bag_from_dataset`` writes a scan class) also the chunk-level
    I-AUROC and the P-AUROC over the points. ``gt_topic`` default for frames: ``/camera/gt_mask``.

    Part ids (``part_id_topic``, std_msgs/Header, when the bag has it): each result carries the id whose stamp is
    nearest its own within ``sync.slop``, as on the node, whether the id was recorded before or after the frame.
    """
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from cmdr_ros.metrics import format_table
    from cmdr_ros.ros.kinds import ros_kind
    from cmdr_ros.ros.node.frame_judge import FrameJudge
    from cmdr_ros.ros.node.parameters import node_params
    from cmdr_ros.ros.node.sync import ApproximateTimePolicy

    bag, out = Path(bag), Path(out)
    if maps is not None and set(maps) - set(MAPS):
        raise CmdrError(f"unknown maps {sorted(set(maps) - set(MAPS))}: choose from {', '.join(MAPS)}")
    switches = {f"output.{k}": k in maps for k in MAPS} if maps is not None else {}
    params = node_params(params, {"sync.slop": slop, "threshold": threshold, **switches})
    mode, kind = detector.config.mode, ros_kind(detector)
    points_topic = kind.points_topic if points_topic is None else points_topic
    gt_kind, gt_topic = kind.truth[0], kind.truth[1] if gt_topic is None else gt_topic
    inputs = [(name, {"image": image_topic, "points": points_topic}[name]) for name in input_names(mode)]
    types = {kind: type_name(t) for kind, t in
             {**RECORDED_TYPES, "info": RECORDED_TYPES["camera_info"], "part_id": INPUT_TYPES["part_id"]}.items()}
    t_start = time.perf_counter()
    with open_bag(bag) as reader:
        in_conns = connections(reader, bag, [t for _, t in inputs])
        aux_topics = {k: t for k, t in (("info", info_topic), (gt_kind, gt_topic), ("sample", sample_topic),
                                        ("part_id", part_id_topic))
                      if t in reader.topics and (k != "info" or cross_modal(mode))}
        for kind, topic in [*inputs, *aux_topics.items()]:
            check_type(reader, bag, topic, types[kind])
        transforms = read_tf(reader, bag) if params["use_tf"] else []
        judge = FrameJudge.from_params(detector, params, bag_tf_lookup(transforms))
        aux = read_aux(reader, aux_topics)
        custom = getattr(getattr(reader.storage, "metadata", None), "custom", None) or {}
        class_name = custom.get("cmdr_ros.class") or bag.name
        results_dir = out / "results_bag"
        if results_dir.exists():
            if not (results_dir / "metadata.yaml").is_file():
                raise CmdrError(f"{results_dir}: exists and is not a bag; remove it or choose another --out")
            shutil.rmtree(results_dir)
        heatmaps = out / "heatmaps" if write_images else None
        if heatmaps is not None:
            heatmaps.mkdir(parents=True, exist_ok=True)
        index = {t: i for i, (_, t) in enumerate(inputs)}
        classes = {t: message_class(types[k]) for k, t in inputs}
        events: list[tuple[str, tuple[Any, ...]]] = []  # matched sets and orphans, in the order they happen
        policy = ApproximateTimePolicy(len(inputs), int(params["sync.queue_size"]), float(params["sync.slop"]),
                                       lambda *msgs: events.append(("set", msgs)),
                                       on_drop=lambda i, msg, why: events.append(("orphan", (i, msg, why))))
        with BagWriter(results_dir, "mcap", {"cmdr_ros.source": str(bag)}) as results:
            evaluation = _Evaluation(judge, params, [k for k, _ in inputs], aux, policy.slop_ns, results, heatmaps)

            def handle() -> None:
                while events:
                    what, item = events.pop(0)
                    if what == "set":
                        evaluation(dict(zip([k for k, _ in inputs], item)))
                        bar.update(1)
                    else:
                        evaluation.orphan(*item)

            with tqdm(total=reader.topics[inputs[0][1]].msgcount, disable=not progress, unit="frame",
                      leave=False) as bar:
                for conn, _, raw in reader.messages(connections=in_conns):
                    policy.add(index[conn.topic], deserialize_message(bytes(raw), classes[conn.topic]))
                    handle()
                policy.flush("timeout")  # still waiting at the end of the bag: on the node it would time out
                handle()
    full = "+".join(k for k, _ in inputs)
    judged = [r for r in evaluation.rows if r["inputs"] == full]
    if not judged:
        raise CmdrError(f"{bag}: no {' + '.join(t for _, t in inputs)} set matched within the slop of "
                        f"{params['sync.slop']:g} s")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(evaluation.rows[0]))
        w.writeheader()
        w.writerows(evaluation.rows)
    unmatched = Counter(r["inputs"] for r in evaluation.rows if r["inputs"] != full)
    report: dict[str, Any] = {
        "bag": str(bag), "checkpoint": str(checkpoint), "model_id": detector.model_id, "mode": mode,
        "grid": detector.config.grid, "map_size": detector.config.map_size, "threshold": judge.threshold,
        "device": str(detector.device), "frames": len(judged),
        "not_judged": sum(bool(r["error"]) for r in judged), "rejects": sum(r["reject"] for r in judged),
        "unmatched": {t: unmatched[k] for k, t in inputs}, "tf": tf_summary(transforms, params["use_tf"]),
        "results_bag": str(results_dir), "seconds": time.perf_counter() - t_start}
    metrics = evaluation.metrics()
    if metrics is not None:
        classes_m = {class_name: metrics}
        report["classes"] = classes_m
        keys = evaluation.sink.keys
        report["mean"] = {k: float(metrics[k]) for k in keys}
        (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=True))
        report["table"] = format_table(classes_m, report["mean"], keys)
    return report

