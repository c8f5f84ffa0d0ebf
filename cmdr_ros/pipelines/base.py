"""What every pipeline kind provides (``Pipeline``) and the one ``Prediction`` interface both kinds' results share."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Protocol, Sequence

import numpy as np

from cmdr_ros.metrics import metrics_by_defect

if TYPE_CHECKING:
    from cmdr_ros.data.model_input import ModelInput
    from cmdr_ros.judge import JudgeSettings
    from cmdr_ros.model.detector import CMDRDetector


#: what ``visualization.save_overlay`` draws of a part: (rgb, xyz, map, valid, ground-truth outline)
View = tuple["np.ndarray | None", "np.ndarray | None", np.ndarray, np.ndarray, "np.ndarray | None"]


class Prediction(Protocol):
    """The result of one part, whichever its kind (``model.detector.Prediction`` of a frame,
    ``model.scan.ScanPrediction`` of a scan): what the judge decides on and the outputs report."""

    score: float  # the part's anomaly score (decided against the threshold)
    latency_ms: float

    @property
    def anomaly_map(self) -> np.ndarray:
        """The part's scores (a frame: its HxW map; a scan: its measured points' scores): all must be finite."""

    @property
    def valid_ratio(self) -> float:
        """The fraction of the part the model could read (a frame: valid pixels after preprocessing; a scan: 1)."""

    @property
    def valid_mask(self) -> np.ndarray:
        """Where the part has scores (a frame: its valid pixels, HxW; a scan: its measured points, N)."""


class MetricSink(ABC):
    """Collects the predictions of labelled parts and reports the metrics of ``cmdr eval`` / ``cmdr bag eval``: the
    metrics of all parts and, per defect kind, of its parts with the good ones (``metrics.metrics_by_defect``)."""

    keys: tuple[str, ...] = ()  # the metrics of the report's table

    def __init__(self) -> None:
        self.labels: list[int] = []
        self.scores: list[float] = []
        self.defects: list[str] = []

    def add(self, pred: Any, label: int, defect: str, truth: Any) -> None:
        """One part: its prediction, label (0 good, 1 defect), defect kind and ground truth (None: none known)."""
        self.labels.append(label)
        self.scores.append(pred.score)
        self.defects.append(defect)

    def summary(self) -> dict[str, Any] | None:
        """The metrics of the parts added, with per-defect ones; None when none was added."""
        if not self.scores:
            return None
        return metrics_by_defect(self.labels, self.defects, self.of(list(range(len(self.scores))), True), self.of)

    @abstractmethod
    def of(self, sel: list[int], whole: bool = False) -> dict[str, Any]:
        """The metrics of the parts at the indices ``sel`` (``whole``: all of them, else a defect kind's)."""


@dataclass
class TrainingData:
    """What ``cmdr train`` reads from a class folder: the model inputs to fit, and the good samples to calibrate on
    (``validation``; ``train``: the fallback when there are none)."""

    inputs: list[ModelInput]
    train: Sequence[Any]
    validation: Sequence[Any]
    summary: dict[str, Any] = field(default_factory=dict)  # counts for the training summary


@dataclass
class TestPart:
    """One part of a test split: where it came from, its label, the sample the kind predicts on, its ground truth,
    and what its overlay is drawn over (``raw``: the part as ``Judge.judge`` takes it, a frame's (rgb, xyz), a scan's
    (points,), its cloud last; ``valid``: a frame's valid pixels)."""

    defect: str
    sample_id: str
    label: int
    sample: Any
    truth: Any
    raw: Any
    valid: np.ndarray | None = None


class Pipeline(ABC):
    """One kind of input a model judges, chosen once from the config (``pipelines.pipeline_for``)."""

    name: ClassVar[str] = ""  # ModelConfig.pipeline
    unit: ClassVar[str] = ""  # a sample of this kind, in words (progress bars)
    parts: ClassVar[str] = ""  # what a model of this kind judges, in words
    resolution: ClassVar[str | None] = None  # cmdr eval's report: where the scores are judged (None: as asked)
    score_files: ClassVar[str] = ""  # cmdr eval's folder of per-part score files
    score_name: ClassVar[str] = ""  # cmdr predict's score file
    suffix: ClassVar[str] = ""  # the score files' suffix
    roc_title: ClassVar[str] = ""  # cmdr eval's ROC plot

    @abstractmethod
    def training_data(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                      progress: bool) -> TrainingData:
        """The train and validation splits of a class folder of this kind."""

    @abstractmethod
    def validation(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> list[Any]:
        """The good validation samples of a class folder (``cmdr calibrate``); CmdrError when there are none."""

    @abstractmethod
    def test_parts(self, data_dir: str | Path, detector: CMDRDetector, cache_dir: str | None, no_cache: bool,
                   progress: bool) -> tuple[str, Iterator[TestPart]]:
        """The class name and the parts of the test split (``cmdr eval``), loaded one at a time."""

    @abstractmethod
    def read_sample(self, args: Any, detector: CMDRDetector) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``cmdr predict``: the raw part named by the command line (the arguments of ``Judge.judge``) and the
        inputs the result names."""

    @abstractmethod
    def predict(self, detector: CMDRDetector, sample: Any) -> Prediction:
        """The model's prediction of one prepared sample of this kind (a training or test split's)."""

    @abstractmethod
    def checked_predict(self, detector: Any, settings: JudgeSettings, seen: dict[str, Any], *sample: Any,
                        **kw: Any) -> Prediction:
        """The judge's checks of one raw part (``judge.NotJudgeable`` for one that must not be judged, noting the
        coverage it measured in ``seen``), then the model's prediction."""

    @abstractmethod
    def metrics(self, resolution: str = "model", truth: bool = True) -> MetricSink:
        """A new metric sink (``resolution``: where frames' pixel metrics are computed; ``truth``: whether the
        parts may come with ground truth beyond their label)."""

    @abstractmethod
    def truth(self, pred: Any, recorded: Any, has_topic: bool, where: str) -> Any:
        """A part's ground truth as recorded in a bag (``recorded``: the nearest one, None: none; ``has_topic``:
        whether the bag has a truth topic), checked against the prediction; None when there is none to score."""

    @abstractmethod
    def scores(self, pred: Any) -> np.ndarray:
        """A part's scores as written to disk (a frame's HxW map, a scan's per-point scores)."""

    def save_scores(self, path: Path, pred: Any) -> Path:
        """Write ``scores(pred)`` to ``path`` plus the kind's ``suffix``; returns the file written."""
        path = path.with_name(path.name + self.suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write_scores(path, self.scores(pred))
        return path

    def load_scores(self, path: Path) -> np.ndarray:
        """Read back what ``save_scores`` wrote (``path`` without the suffix)."""
        return self.read_scores(path.with_name(path.name + self.suffix))

    @abstractmethod
    def write_scores(self, path: Path, scores: np.ndarray) -> None:
        """Write a part's scores to the file ``path`` in the kind's format."""

    @abstractmethod
    def read_scores(self, path: Path) -> np.ndarray:
        """Read the file ``write_scores`` wrote."""

    @abstractmethod
    def view(self, raw: Any, scores: np.ndarray, valid: np.ndarray | None, truth: Any) -> View:
        """What ``visualization.save_overlay`` draws of a part: (rgb, xyz, map, valid, gt outline)."""

    @abstractmethod
    def scale_of(self, pred: Any, resolution: str) -> np.ndarray:
        """The scores of a part that set the common colour scale of ``cmdr eval``'s overlays."""

    @abstractmethod
    def row(self, pred: Any, points: np.ndarray | None) -> dict[str, Any]:
        """The kind's own columns of a part's row in scores.csv / results.csv, from its prediction (None: not
        judged) and its cloud's points (None: none decoded); {} for frames."""

    @abstractmethod
    def result(self, pred: Any) -> dict[str, Any]:
        """The kind's own fields of ``cmdr predict``'s result.json for a judged part."""

    @abstractmethod
    def describe(self, pred: Any, overlay: Path, scores: Path) -> str:
        """The end of ``cmdr predict``'s line for a judged part: the timing and the file to look at."""

    @abstractmethod
    def warm_up(self, detector: CMDRDetector) -> None:
        """Run the model once on a synthetic part of this kind (the node, before its first part)."""

    def plot(self, out: Path, name: str, metrics: dict[str, Any], sink: MetricSink) -> None:
        """The kind's curves beyond the ROC (``cmdr eval``); none by default."""
