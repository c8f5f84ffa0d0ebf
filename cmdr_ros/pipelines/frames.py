"""Organized frames (pipeline "frame"): an RGB image and/or an organized xyz map, MVTec 3D-AD style, judged as one
``model.detector.Prediction`` each; scored by the pixel metrics of MVTec 3D-AD (``FrameMetrics``)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.judge import NotJudgeable, check_plausible, coverage_of
from cmdr_ros.metrics import METRIC_KEYS, compute_metrics, image_auroc
from cmdr_ros.pipelines.base import MetricSink, Pipeline, TestPart, TrainingData, View

if TYPE_CHECKING:
    from cmdr_ros.judge import JudgeSettings
    from cmdr_ros.model.detector import CMDRDetector, Prediction


class FrameMetrics(MetricSink):
    """The metrics of ``cmdr eval`` / ``cmdr bag eval`` of frames: I-AUROC, P-AUROC and AUPRO (``METRIC_KEYS``) per
    class and per defect. ``resolution`` "model": on the model's square map grid, the masks padded and resized to
    it; "full": at each frame's own resolution, the normalised maps brought back to the input. A part without a
    mask (truth None: a confirmed defect of ``cmdr dataset from-review``, a bag without a mask topic) counts in
    ``i_auroc`` only; the pixel metrics are over the parts that have a mask (NaN when none has)."""

    keys = METRIC_KEYS

    def __init__(self, resolution: str = "model") -> None:
        if resolution not in ("model", "full"):
            raise CmdrError(f"unknown resolution {resolution!r}: model or full")
        super().__init__()
        self.resolution = resolution
        self.gts: list[np.ndarray | None] = []
        self.pix: list[np.ndarray | None] = []
        self.pro: list[np.ndarray | None] = []

    def add(self, pred: Prediction, label: int, defect: str, truth: np.ndarray | None) -> None:
        from cmdr_ros.data.preprocess import SquareFrame, resize_mask

        frame = None if truth is None else SquareFrame.of(*truth.shape)  # the frame's geometry (ModelInput.frame)
        if frame is None:
            self.gts.append(None)
            self.pix.append(None)
            self.pro.append(None)
        elif self.resolution == "full":
            self.gts.append(truth)
            self.pix.append(pred.anomaly_map)
            self.pro.append(frame.to_input(pred.pro_map()).astype(np.float32))
        else:
            pix = pred.pixel_map()
            self.gts.append(resize_mask(frame.pad_edge(truth), pix.shape[-1]))  # the model's map size
            self.pix.append(pix)
            self.pro.append(pred.pro_map())
        super().add(pred, label, defect, truth)

    def masked(self, sel: Sequence[int]) -> list[int]:
        """The parts of ``sel`` that have a mask."""
        return [i for i in sel if self.gts[i] is not None]

    def of(self, sel: list[int], whole: bool = False) -> dict[str, Any]:
        """``metrics.compute_metrics`` of the parts ``sel`` that have a mask; ``i_auroc`` over all of them."""
        known = self.masked(sel)
        out = (compute_metrics([self.gts[i] for i in known], [self.pix[i] for i in known],
                               [self.labels[i] for i in known], [self.scores[i] for i in known],
                               [self.pro[i] for i in known]) if known else {k: float("nan") for k in self.keys})
        if len(known) < len(sel):
            out["i_auroc"] = image_auroc([self.labels[i] for i in sel], [self.scores[i] for i in sel])
        return out


class FramePipeline(Pipeline):
    """Organized frames: a class folder of MVTec 3D-AD samples, a prepared ``ModelInput`` per frame."""

    name = "frame"
    unit = "sample"
    parts = "organized frames"
    score_files = "anomaly_maps"
    score_name = "anomaly_map"
    suffix = ".tiff"
    roc_title = "Image-level ROC"

    def _split(self, data_dir: str | Path, detector: CMDRDetector, split: str, cache_dir: str | None,
               no_cache: bool, progress: bool) -> Iterator[Any]:
        from cmdr_ros.data.mvtec3d import MVTec3DClass
        from cmdr_ros.data.samples import iter_split, make_cache

        return iter_split(MVTec3DClass(data_dir), split, detector.config,
                          make_cache(detector.config, cache_dir, no_cache), progress)

    def training_data(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                      progress: bool) -> TrainingData:
        from cmdr_ros.data.mvtec3d import MVTec3DClass

        data = MVTec3DClass(data_dir)
        train = [ls.inp for ls in self._split(data_dir, detector, "train", cache_dir, no_cache, progress)]
        has_val = (data.root / "validation").is_dir() and data.samples("validation")
        val = ([ls.inp for ls in self._split(data_dir, detector, "validation", cache_dir, no_cache, progress)]
               if has_val else [])
        return TrainingData(train, train, val, {"train_samples": len(train), "validation_samples": len(val)})

    def validation(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> list[Any]:
        return [ls.inp for ls in self._split(data_dir, detector, "validation", cache_dir, no_cache, progress)]

    def test_parts(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> tuple[str, Iterator[TestPart]]:
        from cmdr_ros.data.mvtec3d import MVTec3DClass

        parts = (TestPart(ls.sample.defect, ls.sample.sample_id, ls.sample.label, ls.inp, ls.mask, (ls.rgb, ls.xyz),
                          ls.inp.valid_input)
                 for ls in self._split(data_dir, detector, "test", cache_dir, no_cache, progress))
        return MVTec3DClass(data_dir).name, parts

    def read_sample(self, args: Any, detector: CMDRDetector) -> tuple[tuple[Any, ...], dict[str, Any]]:
        from cmdr_ros.data.mvtec3d import load_rgb, load_xyz

        cfg = detector.config
        if getattr(args, "scan", None):
            raise CmdrError("--scan needs a paper3d/lite3d model (pipeline 'chunks'); this one judges frames: "
                            "give --rgb / --xyz")
        if cfg.uses_2d and not args.rgb:
            raise CmdrError(f"the model's mode '{cfg.mode}' needs --rgb")
        if cfg.uses_3d and not args.xyz:
            raise CmdrError(f"the model's mode '{cfg.mode}' needs --xyz")
        rgb = load_rgb(args.rgb) if args.rgb else None
        xyz = load_xyz(args.xyz) if args.xyz else None
        return (rgb, xyz), {"rgb": args.rgb, "xyz": args.xyz}

    def predict(self, detector: CMDRDetector, sample: Any) -> Prediction:
        from cmdr_ros.data.model_input import ModelInput

        if not isinstance(sample, ModelInput):
            raise CmdrError(f"a frame model takes prepared frames (ModelInput), not {type(sample).__name__}")
        return detector.predict_input(sample)

    def checked_predict(self, detector: Any, settings: JudgeSettings, seen: dict[str, Any], rgb: np.ndarray | None,
                        xyz: np.ndarray | None, coverage: float | None = None) -> Prediction:
        """A frame: RGB and/or organized xyz (only the modalities the model uses are read). ``coverage``: the
        fraction of the map that holds a point as the caller measured it (e.g. after projection); default:
        measured on ``xyz``. Refused below ``min_coverage``, beyond ``max_range`` and, after preprocessing, below
        ``min_valid_ratio``."""
        cfg = detector.config
        rgb, xyz = (rgb if cfg.uses_2d else None), (xyz if cfg.uses_3d else None)
        seen["coverage"] = coverage
        if xyz is None:
            return detector.predict(rgb, None)
        cloud = np.asarray(xyz)
        cov = seen["coverage"] = coverage if coverage is not None else (coverage_of(cloud) if cloud.ndim == 3 else 0.0)
        if cov < settings.min_coverage:
            raise NotJudgeable("degraded", f"the cloud covers {cov:.2%} of the map, below min_coverage "
                                           f"{settings.min_coverage:.2%}")
        if cloud.ndim == 3 and cloud.shape[-1] == 3:
            check_plausible(cloud, settings.max_range)
        pred = detector.predict(rgb, cloud)
        if pred.valid_ratio < settings.min_valid_ratio:
            raise NotJudgeable("degraded", f"{pred.valid_ratio:.2%} of the pixels are valid after preprocessing, "
                                           f"below min_valid_ratio {settings.min_valid_ratio:.2%}")
        return pred

    def metrics(self, resolution: str = "model", truth: bool = True) -> FrameMetrics:
        return FrameMetrics(resolution)

    def truth(self, pred: Prediction, recorded: np.ndarray | None, has_topic: bool, where: str) -> np.ndarray | None:
        """The recorded mask; an all-good one when the bag has masks but none for this frame (as ``cmdr eval`` reads
        a sample without a mask file); None without a mask topic."""
        if not has_topic:
            return None
        shape = pred.anomaly_map.shape
        mask = np.zeros(shape, bool) if recorded is None else recorded
        if mask.shape != shape:
            raise CmdrError(f"ground-truth mask at {where} is {mask.shape[1]}x{mask.shape[0]}, the input is "
                            f"{shape[1]}x{shape[0]}")
        return mask

    def scores(self, pred: Prediction) -> np.ndarray:
        return pred.anomaly_map.astype(np.float32)

    def write_scores(self, path: Path, scores: np.ndarray) -> None:
        import tifffile

        tifffile.imwrite(path, scores)

    def read_scores(self, path: Path) -> np.ndarray:
        import tifffile

        return tifffile.imread(path)

    def view(self, raw: Any, scores: np.ndarray, valid: np.ndarray | None, truth: Any) -> View:
        rgb, xyz = raw
        return rgb, xyz, scores, valid, truth

    def scale_of(self, pred: Prediction, resolution: str) -> np.ndarray:
        return pred.anomaly_map if resolution == "full" else pred.pixel_map()

    def row(self, pred: Any, points: np.ndarray | None) -> dict[str, Any]:
        return {}

    def result(self, pred: Prediction) -> dict[str, Any]:
        return {"latency_ms": pred.latency_ms, "valid_ratio": pred.valid_ratio}

    def describe(self, pred: Prediction, overlay: Path, scores: Path) -> str:
        return f"({pred.latency_ms:.0f} ms); heatmap: {overlay}"

    def warm_up(self, detector: CMDRDetector) -> None:
        """A frame of the simulated cell."""
        from cmdr_ros.data.synthetic import CellConfig, render_part

        part = render_part(np.random.default_rng(0), CellConfig())
        cfg = detector.config
        detector.predict(part.rgb if cfg.uses_2d else None, part.xyz if cfg.uses_3d else None)

    def plot(self, out: Path, name: str, metrics: dict[str, Any], sink: FrameMetrics) -> None:
        """The PRO curve."""
        from cmdr_ros.metrics import pro_curve
        from cmdr_ros.visualization import plot_curves

        known = sink.masked(range(len(sink.gts)))
        if not known:  # no part has a mask: no PRO curve
            return
        fprs, pros = pro_curve([sink.gts[i] for i in known], [sink.pro[i] for i in known])
        plot_curves(out / "pro_curve.png", {f"{name} (AUPRO@0.3 {metrics['aupro@0.3']:.3f})": (fprs, pros)},
                    "false positive rate", "per-region overlap", "PRO curve", xlim=0.3)
