"""``cmdr bench``: latency of the judge path per stage, on synthetic or recorded frames.

One run (preset, mode, device) judges frames the way the node does: messages -> ``FrameJudge.judge`` (decode,
align, checks, ``CMDRDetector.predict``) -> the messages the node publishes. The real functions run; the bench
only wraps them with clocks (``StageClock``), so the stages add up to the whole path and no step is re-implemented
(``encode_outputs`` builds the messages with the node's own ``outputs`` functions). The end-to-end figures come
from the same frames judged again without the wrappers. ROS message modules are imported when a run starts, never
at import.

The heads are untrained (random init): timing does not depend on weights. The paper preset gets random-init
backbones of the paper's architectures (ViT-B/8, Point-MAE), the lite preset identity feature statistics; the
threshold is fixed, so decisions mean nothing.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import resource
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cmdr_ros import CmdrError
from cmdr_ros.config import uses

STAGES = {
    "decode": "Image / PointCloud2 -> numpy (frames.decode_*)",
    "align": "FrameJudge.assemble without decoding: pixel alignment, points, coverage",
    "checks": "the judge's coverage / plausibility / valid-ratio / finite checks",
    "background": "background removal (plane + largest cluster)",
    "prepare": "square padding, resizing, tensors to the device (scans: cutting and scaling the chunks)",
    "backbone_2d": "2D backbone: native features + per-pixel grid",
    "backbone_3d": "3D backbone: native features + per-pixel grid",
    "heads": "feature standardisation + the CMDR heads",
    "fusion": "distance maps, fusion, image score, map back to the input (scans: stitching the point scores)",
    "outputs": "~/result, ~/anomaly_map, ~/heatmap and ~/anomaly_cloud messages",
}
THRESHOLD = 1.0  # fixed: the heads are untrained, decisions mean nothing
# the paper's backbone architectures with random weights (as test_paper_preset.py builds them)
PAPER_2D = dict(rgb_size=224, embed_dim=768, depth=12, num_heads=12)
PAPER_3D = dict(trans_dim=384, depth=12, num_heads=6, num_group=1024, group_size=128, encoder_dims=384,
                fetch_idx=(3, 7, 11))


# ------------------------------------------------------------------------------------------------ frames
def synthetic_frames(size: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` simulated parts (rgb uint8, organized xyz float32) of ``size`` x ``size`` pixels."""
    from cmdr_ros.data.synthetic import CellConfig, render_part

    cfg = CellConfig(image_size=size)
    return [(f.rgb, f.xyz) for f in (render_part(np.random.default_rng(seed), cfg) for seed in range(n))]


def folder_frames(folder: str | Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``n`` frames of an MVTec 3D-AD style folder: every ``xyz/NAME.tiff`` with its ``rgb/NAME.png``."""
    from cmdr_ros.data.mvtec3d import load_rgb, load_xyz

    pairs = [(x.parent.parent / "rgb" / f"{x.stem}.png", x) for x in sorted(Path(folder).rglob("xyz/*.tiff"))]
    pairs = [(r, x) for r, x in pairs if r.is_file()][:n]
    if not pairs:
        raise CmdrError(f"{folder}: no xyz/*.tiff with its rgb/*.png partner found")
    return [(load_rgb(r), load_xyz(x)) for r, x in pairs]


def synthetic_scans(n: int) -> list[tuple[None, np.ndarray]]:
    """``n`` simulated profilometer scans (Nx3, the sensor's order, ~50k points) for the "chunks" presets."""
    from cmdr_ros.data.synthetic import CellConfig, render_profilometer_cloud

    return [(None, render_profilometer_cloud(np.random.default_rng(seed), CellConfig(), shuffle=False)[0])
            for seed in range(n)]


def folder_scans(folder: str | Path, n: int) -> list[tuple[None, np.ndarray]]:
    """The first ``n`` scans of a scan class folder (``cmdr_ros.data.scans`` layout), test split first."""
    from cmdr_ros.data.scans import ScanDataset

    data = ScanDataset(folder)
    scans = [s for split in ("test", "validation", "train") for s in data.scans(split)][:n]
    if not scans:
        raise CmdrError(f"{folder}: no scans found (expected <split>/<defect>/points/NNN.npy|ply|pcd)")
    return [(None, s.load()[0]) for s in scans]


def frame_parts(data: str | None, n: int, size: int) -> tuple[list[tuple[Any, np.ndarray]], str]:
    """The frames a frame preset is timed on (``data``'s first ``n``, else ``n`` simulated ones of ``size`` pixels)
    and where they come from, in words."""
    if data:
        frames = folder_frames(data, n)
        return frames, f"{data} ({len(frames)} frames)"
    return synthetic_frames(size, n), f"synthetic {size}x{size} (render_part, {n} parts)"


def scan_parts(data: str | None, n: int, size: int) -> tuple[list[tuple[Any, np.ndarray]], str]:
    """The scans a "chunks" preset is timed on (``data``'s first ``n``, else ``n`` simulated profilometer scans) and
    where they come from, in words."""
    if data:
        scans = folder_scans(data, n)
        return scans, f"{data} ({len(scans)} scans)"
    return synthetic_scans(n), f"synthetic profilometer scans (render_profilometer_cloud, {n} parts, sensor order)"


#: per pipeline kind (``cmdr_ros.pipelines``): the parts to time, and a part's size in words
BENCH_PARTS: dict[str, tuple[Callable[..., Any], Callable[[np.ndarray], str]]] = {
    "frame": (frame_parts, lambda xyz: "x".join(map(str, xyz.shape[:2]))),
    "chunks": (scan_parts, lambda points: f"{len(points)} points"),
}


def frame_messages(rgb: np.ndarray | None, xyz: np.ndarray, mode: str, stamp_ns: int = 0) -> dict[str, Any]:
    """The node's inputs for ``mode``: an rgb8 Image and/or a PointCloud2 (organized from HxWx3, a scan from Nx3),
    same frame and stamp."""
    from cmdr_ros.ros.conversions import array_to_image, make_header, xyz_to_pointcloud2

    header = make_header(stamp_ns, "camera")
    msgs: dict[str, Any] = {}
    if uses(mode, "2d"):
        msgs["image"] = array_to_image(rgb, "rgb8", header)
    if uses(mode, "3d"):
        msgs["points"] = xyz_to_pointcloud2(xyz, header)
    return msgs


def encode_outputs(frame: Any, verdict: Any, mode: str, inputs: str) -> list[Any]:
    """The messages the node publishes for one decision, built by the node's own functions (``outputs``), every
    output subscribed."""
    from cmdr_ros.ros.node.outputs import decision_messages, map_messages, result_values
    from cmdr_ros.ros.topics import MAPS

    header = frame.header if frame else None
    values = result_values(header, verdict, frame, seq=1, mode=mode, model_id="bench", inputs=inputs)
    return list(decision_messages(header, verdict, values, map_messages(verdict, frame, MAPS)).values())


# ------------------------------------------------------------------------------------------------ model
def build_detector(preset_name: str, mode: str, device: str) -> Any:
    """An untrained detector of the preset, ready to judge (see the module docstring)."""
    from cmdr_ros.config import preset
    from cmdr_ros.model.backbones import RandomPointMAE, RandomViT
    from cmdr_ros.model.detector import CMDRDetector

    config = preset(preset_name, mode)
    onnx, device = device == "onnx", ("cpu" if device == "onnx" else device)
    kw = {}
    if preset_name == "paper":
        kw = {"backbone_2d": RandomViT(**PAPER_2D) if config.uses_2d else None,
              "backbone_3d": RandomPointMAE(**PAPER_3D) if config.uses_3d else None}
    elif preset_name == "paper3d":  # the preset's groups (96 x 32 points per chunk), per-frame BatchNorm
        kw = {"backbone_3d": RandomPointMAE(bn=config.backbone_3d.bn, **{**PAPER_3D, **config.backbone_3d.options})}
    det = CMDRDetector(config, device=device, **kw)
    if config.standardize_features:
        det.feature_stats = {m: torch.stack([torch.zeros(bb.out_dim), torch.ones(bb.out_dim)])
                             for m, bb in det.backbones.items()}
    if config.memory_bank:  # a bank of the preset's size (its cost does not depend on what it holds)
        gen = torch.Generator().manual_seed(0)
        det.memory_bank = {m: torch.randn(config.memory_bank, bb.out_dim, generator=gen).to(det.device)
                           for m, bb in det.backbones.items()}
    det.threshold = THRESHOLD
    if onnx:  # the heads and scoring exported and run by onnxruntime, as device onnx serves a checkpoint
        import tempfile

        from cmdr_ros.model.export import attach_onnx, export_onnx

        det.model_id = f"bench-{preset_name}-{mode}"
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(det, Path(tmp) / "bench.onnx")
            attach_onnx(det, Path(tmp) / "bench.onnx")  # the sessions hold the graphs
    return det


# ------------------------------------------------------------------------------------------------ clocks
class StageClock:
    """Exclusive seconds per stage of wrapped, possibly nested calls: a call's time minus the wrapped calls inside
    it. ``sync`` runs before every clock reading (CUDA: the device has finished)."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open call: seconds spent in wrapped calls inside it

    def wrap(self, stage: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            t0 = time.perf_counter()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                dt = time.perf_counter() - t0
                self.totals[stage] += dt - self._inner.pop()
                if self._inner:
                    self._inner[-1] += dt
        return timed

    def take(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out


@contextlib.contextmanager
def instrumented(clock: StageClock, frame_judge: Any, det: Any) -> Iterator[None]:
    """Wrap the functions of the judge path with ``clock`` for the duration (restored afterwards)."""
    from cmdr_ros.data import model_input
    from cmdr_ros.judge import Judge
    from cmdr_ros.model import scan
    from cmdr_ros.ros.conversions import frames

    targets = [(frames, "decode_image", "decode"), (frames, "decode_cloud", "decode"),
               (frame_judge, "assemble", "align"), (Judge, "judge", "checks"),
               (model_input, "remove_background", "background"), (det, "prepare", "prepare"),
               (det, "extract_many", "prepare"), (det, "grid_features", "heads"), (det.heads, "forward", "heads"),
               (det, "predict_inputs", "fusion"), (frames, "scan_points", "decode"),
               (scan, "chunk_inputs", "prepare"), (scan, "stitch", "fusion")]
    for m, bb in det.backbones.items():
        targets += [(bb, "extract", f"backbone_{m}"), (bb, "to_grid", f"backbone_{m}")]
        if m == "2d":
            targets.append((bb, "extract_batch", "backbone_2d"))
    if det.scoring is not None:  # device onnx: the graph runs heads and distance maps together (counted as heads)
        targets.append((det.scoring, "run", "heads"))
    with contextlib.ExitStack() as stack:
        for obj, name, stage in targets:
            original = getattr(obj, name)
            own = name in vars(obj)  # a module's function; else a method, shadowed by an instance attribute
            setattr(obj, name, clock.wrap(stage, original))
            if own:
                stack.callback(setattr, obj, name, original)
            else:
                stack.callback(delattr, obj, name)
        yield


# ------------------------------------------------------------------------------------------------ memory
def proc_status_mb(key: str, pid: int | str = "self") -> float | None:
    """A ``/proc/PID/status`` memory line (VmRSS, VmHWM) in MB; None without /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``5 > /proc/self/clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def summary(values_ms: list[float]) -> dict[str, float]:
    """Median and 95th percentile of milliseconds."""
    p50, p95 = np.percentile(values_ms, (50, 95))
    return {"median_ms": float(p50), "p95_ms": float(p95)}


# ------------------------------------------------------------------------------------------------ one run
def bench_run(preset_name: str, mode: str, device: str, frames: list[tuple[np.ndarray, np.ndarray]],
              warmup: int, repeat: int, plain: bool = False) -> dict[str, Any]:
    """Judge ``warmup`` frames, then ``repeat`` times a frame per stage and the same frame end to end. ``plain``:
    without the fast paths (``bench_compare.plain_paths``); ``outcomes_by_frame`` keeps what each frame gave."""
    from cmdr_ros.judge import Judge
    from cmdr_ros.pipelines import pipeline_for
    from cmdr_ros.ros.bench.compare import outcome, plain_paths
    from cmdr_ros.ros.node.frame_judge import FrameJudge

    det = build_detector(preset_name, mode, device)
    stack = contextlib.ExitStack()
    if plain:
        stack.enter_context(plain_paths(det))
    fj = FrameJudge(Judge(det), mode)
    sets = [frame_messages(rgb, xyz, mode, i) for i, (rgb, xyz) in enumerate(frames)]
    inputs = "+".join(sets[0])
    dev = det.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def judge_one(i: int, judge: Callable = fj.judge, encode: Callable = encode_outputs) -> Any:
        frame, verdict = judge(sets[i % len(sets)])
        encode(frame, verdict, mode, inputs)
        return verdict

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    peak_per_run = _reset_peak_rss()
    for i in range(warmup):
        judge_one(i)
    clock = StageClock(sync)
    stages: dict[str, list[float]] = defaultdict(list)
    totals, e2e, outcomes, by_frame = [], [], Counter(), [None] * min(len(sets), repeat)
    for i in range(repeat):  # interleaved: a busy machine slows both kinds of frame alike
        with instrumented(clock, fj, det):
            verdict = judge_one(i, clock.wrap("checks", fj.judge), clock.wrap("outputs", encode_outputs))
        took = clock.take()
        for stage, s in took.items():
            stages[stage].append(s * 1e3)
        totals.append(sum(took.values()) * 1e3)
        outcomes["judged" if verdict.judged else verdict.kind] += 1
        sync()
        t0 = time.perf_counter()
        verdict = judge_one(i)
        sync()
        e2e.append((time.perf_counter() - t0) * 1e3)
        if i < len(by_frame):
            by_frame[i] = outcome(verdict)
    stack.close()
    memory = {"rss_mb": proc_status_mb("VmRSS"),
              "peak_rss_mb": proc_status_mb("VmHWM") if peak_per_run else
              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "peak_rss_scope": "run" if peak_per_run else "process",
              "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}
    shape = BENCH_PARTS[pipeline_for(det).name][1](frames[0][1])
    del det, fj
    gc.collect()
    return {"preset": preset_name, "mode": mode, "device": "onnx" if device == "onnx" else str(dev), "timed": repeat,
            "input": shape, "plain": plain, "outcomes_by_frame": by_frame,
            "stages": {s: summary(stages[s]) for s in STAGES if stages.get(s)}, "stages_total": summary(totals),
            "end_to_end": {**summary(e2e), "frames_per_s": len(e2e) / (sum(e2e) / 1e3)},
            "outcomes": dict(outcomes), "memory": memory}


def devices(choice: str) -> list[str]:
    """``all``: the CPU, onnx, and CUDA when present."""
    if choice != "all":
        return [choice]
    return ["cpu", "onnx"] + (["cuda"] if torch.cuda.is_available() else [])


def run_bench(presets: list[str], modes: list[str], device_choice: str, size: int, data: str | None,
              warmup: int, repeat: int, threads: int, compare: bool = False) -> dict[str, Any]:
    """Every (preset, mode, device) run with ``threads`` torch threads (restored afterwards); ``compare``: each
    followed by its plain run (``bench_compare``) and the differences between the two."""
    from cmdr_ros.config import preset
    from cmdr_ros.pipelines import pipeline_for
    from cmdr_ros.ros.bench.compare import PLAIN, differences

    n = max(1, min(warmup + repeat, 5))
    kinds = {pipeline_for(preset(p, "3d")).name if p.endswith("3d") else "frame" for p in presets}
    if len(kinds) > 1:
        raise CmdrError("time frame presets and scan presets (paper3d, lite3d) in separate runs")
    frames, source = BENCH_PARTS[kinds.pop()][0](data, n, size)
    before, load = torch.get_num_threads(), os.getloadavg()[0]
    torch.set_num_threads(threads)
    try:
        runs = []
        for p in presets:
            for m in modes:
                for d in devices(device_choice):
                    runs.append(bench_run(p, m, d, frames, warmup, repeat))
                    if compare:
                        runs.append(bench_run(p, m, d, frames, warmup, repeat, plain=True))
                        fast, slow = runs[-2], runs[-1]
                        fast["versus_plain"] = {
                            "speed_up": slow["end_to_end"]["median_ms"] / fast["end_to_end"]["median_ms"],
                            **differences(fast["outcomes_by_frame"], slow["outcomes_by_frame"])}
    finally:
        torch.set_num_threads(before)
    for r in runs:
        del r["outcomes_by_frame"]  # arrays: not for the report
    return {"frames": source, "warmup": warmup, "repeat": repeat, "threads": threads, "cpus": os.cpu_count(),
            "load_average_1min": {"start": load, "end": os.getloadavg()[0]}, "torch": torch.__version__,
            "stages": STAGES,
            "notes": ["heads untrained (random init), threshold fixed at %g: decisions mean nothing, the work is the "
                      "same" % THRESHOLD,
                      "paper presets: random-init ViT-B/8 and Point-MAE backbones (timing does not depend on weights)",
                      "lite preset: identity feature statistics (the standardisation still runs)",
                      "onnx: heads and distance maps in one onnxruntime graph, timed as 'heads'",
                      "stages: exclusive time of the real functions, wrapped; they add up to one judged frame; "
                      "end to end: the same frame again without the wrappers",
                      *(["plain (--compare): " + "; ".join(PLAIN)] if compare else [])],
            "runs": runs}


def format_table(report: dict[str, Any]) -> str:
    """The report as text: one column per run, ``median / p95`` milliseconds per stage."""
    runs = report["runs"]

    def ms(d: dict[str, float] | None) -> str:
        return f"{d['median_ms']:.1f} / {d['p95_ms']:.1f}" if d else "-"

    mem = [r["memory"] for r in runs]
    rows = [("ms median / p95", [f"{r['preset']} {r['mode']} {r['device']}{' plain' if r['plain'] else ''}"
                                 for r in runs]),
            *((s, [ms(r["stages"].get(s)) for r in runs]) for s in STAGES),
            ("sum of stages", [ms(r["stages_total"]) for r in runs]),
            ("end to end", [ms(r["end_to_end"]) for r in runs]),
            ("frames/s", [f"{r['end_to_end']['frames_per_s']:.3g}" for r in runs]),
            ("peak RSS MB" + ("" if all(m["peak_rss_scope"] == "run" for m in mem) else " (process)"),
             [f"{m['peak_rss_mb']:.0f}" for m in mem])]
    if any(m["cuda_max_allocated_mb"] is not None for m in mem):
        rows.append(("CUDA max MB", [f"{m['cuda_max_allocated_mb'] or 0:.0f}" for m in mem]))
    rows.append(("judged", [f"{r['outcomes'].get('judged', 0)}/{r['timed']}" for r in runs]))
    if any("versus_plain" in r for r in runs):
        vs = [r.get("versus_plain") for r in runs]
        rows += [("speed-up vs plain", [f"{v['speed_up']:.2f}x" if v else "" for v in vs]),
                 ("map diff (rel)", [f"{v['max_map_rel_diff']:.1e}" if v and "max_map_rel_diff" in v else ""
                                     for v in vs]),
                 ("score diff (rel)", [f"{v['max_score_rel_diff']:.1e}" if v and "max_score_rel_diff" in v else ""
                                       for v in vs]),
                 ("foreground IoU", [f"{v['min_foreground_iou']:.4f}" if v and "min_foreground_iou" in v else ""
                                     for v in vs])]
    width = max(len(c) for _, cells in rows for c in cells) + 2
    load = report["load_average_1min"]
    return "\n".join([
        f"cmdr bench: {report['frames']}; {report['warmup']} warm-up + {report['repeat']} timed frames per stage and "
        f"{report['repeat']} end to end; torch {report['torch']} with {report['threads']} CPU thread(s) "
        f"({report['cpus']} CPUs), load average {load['start']:.1f} at the start, {load['end']:.1f} at the end",
        *(f"  {n}" for n in report["notes"]), "",
        *(f"{label:<20}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in rows), "",
        *(f"{s:<20}{t}" for s, t in STAGES.items())])
