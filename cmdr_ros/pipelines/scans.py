"""Unorganized scans (pipeline "chunks", the paper's 3D-only cutting-cell pipeline): a whole scan, Nx3 in the
sensor's order, cut in chunks and judged as one ``model.scan.ScanPrediction``; scored per part, per chunk and per
point (``ScanMetrics``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from cmdr_ros import CmdrError
from cmdr_ros.geometry import finite_rows
from cmdr_ros.judge import NotJudgeable, check_plausible
from cmdr_ros.metrics import SCAN_METRIC_KEYS, scan_metrics
from cmdr_ros.pipelines.base import MetricSink, Pipeline, TestPart, TrainingData, View

if TYPE_CHECKING:
    from cmdr_ros.judge import JudgeSettings
    from cmdr_ros.model.detector import CMDRDetector
    from cmdr_ros.model.scan import ScanPrediction

NO_SCANS = "no scans found (expected <defect>/points/NNN.npy|ply|pcd)"


class ScanMetrics(MetricSink):
    """The metrics of ``cmdr eval`` / ``cmdr bag eval`` of scans (``SCAN_METRIC_KEYS``): part-level I-AUROC overall
    and per defect; with per-point ground truth (``truth``) chunk-level I-AUROC (the reference's 0.25 % chunk
    label) and P-AUROC over the measured points, else only the part-level I-AUROC (``keys``)."""

    def __init__(self, truth: bool = True) -> None:
        super().__init__()
        self.keys = SCAN_METRIC_KEYS if truth else ("i_auroc",)
        self.chunk_y: list[bool] = []
        self.chunk_s: list[float] = []
        self.point_y: list[np.ndarray] = []
        self.point_s: list[np.ndarray] = []

    def add(self, pred: ScanPrediction, label: int, defect: str, truth: np.ndarray | None) -> None:
        if truth is not None:
            chunk_y, chunk_s, point_y, point_s = pred.scored_truth(truth)
            self.chunk_y += chunk_y.tolist()
            self.chunk_s += chunk_s.tolist()
            self.point_y.append(point_y)
            self.point_s.append(point_s)
        super().add(pred, label, defect, truth)

    def of(self, sel: list[int], whole: bool = False) -> dict[str, Any]:
        """``metrics.scan_metrics`` of all parts, with their chunks and points; of a defect kind's parts with the
        good ones, the part-level I-AUROC."""
        if whole:
            return scan_metrics(self.labels, self.scores, self.chunk_y, self.chunk_s, self.point_y, self.point_s)
        parts = scan_metrics([self.labels[i] for i in sel], [self.scores[i] for i in sel], [], [], [], [])
        return {"i_auroc": parts["i_auroc"]}


def _load(scans: Sequence[Any], split: str, progress: bool) -> list[np.ndarray]:
    return [s.load()[0] for s in tqdm(scans, desc=split, disable=not progress, unit="scan", leave=False)]


class ScanPipeline(Pipeline):
    """Unorganized scans: a class folder of scans (``data.scans.ScanDataset``), the points of each as its sample."""

    name = "chunks"
    unit = "scan"
    parts = "unorganized scans (a 'chunks' model)"
    resolution = "points"
    score_files = "point_scores"
    score_name = "point_scores"
    suffix = ".npy"
    roc_title = "Part-level ROC"

    def training_data(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                      progress: bool) -> TrainingData:
        """The chunk inputs of the train scans to fit; the good validation scans (and the train scans) to calibrate
        on, as whole parts."""
        from cmdr_ros.data.scans import ScanDataset
        from cmdr_ros.model.scan import scan_inputs

        data = ScanDataset(data_dir)
        train = data.scans("train")
        if not train:
            raise CmdrError(f"{data.root / 'train'}: {NO_SCANS}")
        train_scans = _load(train, "train", progress)
        val_scans = _load(data.good_scans("validation"), "validation", progress)
        inputs = scan_inputs(train_scans, detector)
        return TrainingData(inputs, train_scans, val_scans,
                            {"train_samples": len(train_scans), "validation_samples": len(val_scans),
                             "train_chunks": len(inputs)})

    def validation(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> list[Any]:
        from cmdr_ros.data.scans import ScanDataset

        scans = ScanDataset(data_dir).good_scans("validation")
        if not scans:
            raise CmdrError(f"{data_dir}/validation: no good scans found")
        return [s.load()[0] for s in scans]

    def test_parts(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> tuple[str, Iterator[TestPart]]:
        from cmdr_ros.data.scans import ScanDataset

        data = ScanDataset(data_dir)
        scans = data.scans("test")
        if not scans:
            raise CmdrError(f"{data.root / 'test'}: {NO_SCANS}")

        def parts() -> Iterator[TestPart]:
            for scan in tqdm(scans, desc="test", disable=not progress, unit="scan", leave=False):
                points, labels = scan.load()
                yield TestPart(scan.defect, scan.sample_id, scan.label, points, labels, (points,))

        return data.root.name, parts()

    def read_sample(self, args: Any, detector: CMDRDetector) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from cmdr_ros.data.scans import read_scan

        if not getattr(args, "scan", None):
            raise CmdrError("this model judges unorganized scans: give --scan FILE (.npy/.ply/.pcd, Nx3)")
        points = read_scan(args.scan)
        return (points,), {"scan": args.scan, "points": len(points)}

    def predict(self, detector: CMDRDetector, sample: Any) -> ScanPrediction:
        return detector.predict_scan(sample)

    def checked_predict(self, detector: Any, settings: JudgeSettings, seen: dict[str, Any],
                        points: np.ndarray) -> ScanPrediction:
        """A scan, Nx3 in the sensor's order. ``coverage`` is the fraction of measured (finite) points, refused
        below ``min_coverage``; ``max_range`` applies to every measured point."""
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[-1] != 3:
            raise CmdrError(f"a scan must be Nx3 points, got shape {pts.shape}")
        cov = seen["coverage"] = float(finite_rows(pts).mean()) if len(pts) else 0.0
        if cov < settings.min_coverage:
            raise NotJudgeable("degraded", f"{cov:.2%} of the scan's points are measured, below min_coverage "
                                           f"{settings.min_coverage:.2%}")
        check_plausible(pts, settings.max_range)
        return detector.predict_scan(pts)

    def metrics(self, resolution: str = "model", truth: bool = True) -> ScanMetrics:
        return ScanMetrics(truth)

    def truth(self, pred: ScanPrediction, recorded: np.ndarray | None, has_topic: bool, where: str
              ) -> np.ndarray | None:
        """The recorded per-point labels (None when there are none), one per point of the scan."""
        if recorded is not None and recorded.shape != pred.point_scores.shape:
            raise CmdrError(f"point ground truth at {where} has {recorded.size} labels for a scan of "
                            f"{pred.point_scores.size} points")
        return recorded

    def scores(self, pred: ScanPrediction) -> np.ndarray:
        return pred.point_scores

    def write_scores(self, path: Path, scores: np.ndarray) -> None:
        np.save(path, scores)

    def read_scores(self, path: Path) -> np.ndarray:
        return np.load(path)

    def view(self, raw: Any, scores: np.ndarray, valid: np.ndarray | None, truth: Any) -> View:
        """The scan (``raw``: (points,)) seen from above (``visualization.scan_maps`` of its scored points:
        ``valid``, default the finite scores), coloured by the highest point score per cell."""
        from cmdr_ros.visualization import scan_maps

        points, = raw
        m = np.isfinite(scores) if valid is None else valid
        xyz, amap, filled, gt = scan_maps(points[m], scores[m], None if truth is None else truth[m])
        return None, xyz, amap, filled, gt

    def scale_of(self, pred: ScanPrediction, resolution: str) -> np.ndarray:
        return pred.point_scores

    def row(self, pred: ScanPrediction | None, points: np.ndarray | None) -> dict[str, Any]:
        return {"points": "" if points is None else len(points), "chunks": "" if pred is None else len(pred.chunks)}

    def result(self, pred: ScanPrediction) -> dict[str, Any]:
        return {"latency_ms": pred.latency_ms, "chunks": len(pred.chunks), "chunk_scores": pred.chunk_scores.tolist()}

    def describe(self, pred: ScanPrediction, overlay: Path, scores: Path) -> str:
        return f"({len(pred.chunks)} chunks, {pred.latency_ms:.0f} ms); point scores: {scores}"

    def warm_up(self, detector: CMDRDetector) -> None:
        """A scan of one chunk plus a tail."""
        n = detector.config.chunk_points
        t = np.arange(n + n // 2, dtype=np.float32)
        detector.predict_scan(np.stack([t % 64 * 1e-3, t // 64 * 1e-3, 1e-4 * np.sin(t)], 1))
