"""The frame judge: one frame (RGB and/or organized xyz) in, one :class:`Verdict` out, failing closed.

This module owns the decision rule (``reject when score >= threshold``, :func:`is_reject`), the checks that make
a frame judgeable, and the fail-safe: whatever cannot be judged gets ``settings.on_error`` as its decision, never a
pass out of doubt. The node, ``cmdr bag eval``, ``cmdr bag to-dataset`` and ``cmdr predict`` all judge through it
(the ROS side adds message decoding and alignment in ``cmdr_ros.ros.node.frame_judge``).

Not-judged causes (``Verdict.kind``): ``bad_input`` (refused by preprocessing or the model), ``ConversionError``
(malformed message), ``degraded`` (coverage or valid ratio below the minimum), ``implausible`` (coordinates beyond
``max_range``), ``non_finite`` (score or threshold not a finite number), and those only the node sees:
``unmatched``, ``overload``, ``superseded``, ``timeout``, ``internal``, ``shutdown``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry import finite_rows, valid_mask

DECISIONS = ("reject", "pass", "skip")


class NotJudgeable(CmdrError):
    """A frame that must not be judged; ``kind`` names the cause (see the module docstring)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def is_reject(score: float, threshold: float) -> bool:
    """THE decision rule: reject when ``score >= threshold``. A non-finite score or threshold raises
    :class:`NotJudgeable` (a NaN compares false and would pass)."""
    if threshold is None or not math.isfinite(threshold):
        raise NotJudgeable("non_finite", f"the threshold is {threshold}: no decision can be made")
    if score is None or not math.isfinite(score):
        raise NotJudgeable("non_finite", f"the anomaly score is {score}: no decision can be made")
    return bool(score >= threshold)


def reject_flag(score: float, threshold: float | None) -> int | str:
    """The decision rule as a table column (``cmdr eval``): 1/0, 1 for a non-finite score (fail-safe), '' when the
    model has no threshold."""
    if threshold is None:
        return ""
    try:
        return int(is_reject(score, threshold))
    except NotJudgeable:
        return 1


@dataclass(frozen=True)
class JudgeSettings:
    """What makes a frame judgeable and what an unjudgeable one gets (the node's parameters of the same names)."""

    on_error: str = "reject"
    min_valid_ratio: float = 0.01
    min_coverage: float = 0.05
    max_range: float = 10.0

    def __post_init__(self) -> None:
        if self.on_error not in DECISIONS:
            raise CmdrError(f"on_error must be one of {', '.join(DECISIONS)}, got {self.on_error!r}")
        for name in ("min_valid_ratio", "min_coverage", "max_range"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise CmdrError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> JudgeSettings:
        """From the node's parameter values (``cmdr_ros.ros.node.parameters``); absent names keep their defaults."""
        return cls(**{k: params[k] for k in ("on_error", "min_valid_ratio", "min_coverage", "max_range")
                      if k in params})


@dataclass
class Verdict:
    """The decision on one part. ``judged`` False: ``kind``/``reason`` say why, ``decision`` is the fail-safe."""

    judged: bool
    decision: str  # reject | pass | skip (skip: not judged, on_error 'skip')
    threshold: float | None
    score: float | None = None
    kind: str = ""
    reason: str = ""
    prediction: Any = None  # cmdr_ros.model.detector.Prediction of a judged frame (model.scan.ScanPrediction: scan)
    coverage: float | None = None

    @property
    def reject(self) -> bool:
        return self.decision == "reject"


def coverage_of(xyz: np.ndarray) -> float:
    """Fraction of the map's pixels that hold a measured point (finite, not the all-zero marker)."""
    return float(valid_mask(xyz).mean()) if xyz.size else 0.0


def check_plausible(xyz: np.ndarray, max_range: float) -> None:
    """NotJudgeable('implausible') when a measured point lies farther than ``max_range`` metres from the origin."""
    xyz = np.asarray(xyz)
    measured = valid_mask(xyz)
    if measured.any():  # squared distances a channel at a time (see finite_rows), in float64, the farthest one's root
        squared = sum(xyz[..., i].astype(np.float64) ** 2 for i in range(xyz.shape[-1]))
        far = float(np.sqrt(np.where(measured, squared, 0.0).max()))
        if far > max_range:
            raise NotJudgeable("implausible", f"a point lies {far:.6g} m from the sensor, beyond max_range "
                                              f"{max_range:g} m (wrong units or corrupt data?)")


class Judge:
    """Judges frames with one detector and threshold under ``settings``.

    ``threshold``: None or < 0 uses the checkpoint's calibrated one; a model without a finite threshold is refused.
    """

    def __init__(self, detector: Any, settings: JudgeSettings | None = None, threshold: float | None = None) -> None:
        self.detector = detector
        self.settings = settings or JudgeSettings()
        self.threshold = self.resolve_threshold(threshold)

    def resolve_threshold(self, value: float | None) -> float:
        """``value`` when >= 0, else the checkpoint's; CmdrError when the result is not a finite number."""
        thr = self.detector.threshold if value is None or value < 0 else value
        if thr is None or not math.isfinite(thr):
            raise CmdrError(f"no usable reject threshold ({thr}): the model has no calibrated threshold "
                            "(run `cmdr calibrate`) and none was given")
        return float(thr)

    def set_threshold(self, value: float | None) -> None:
        self.threshold = self.resolve_threshold(value)

    def not_judged(self, kind: str, reason: str, coverage: float | None = None) -> Verdict:
        """The fail-safe verdict: ``settings.on_error`` as decision, the cause kept."""
        return Verdict(False, self.settings.on_error, self.threshold, kind=kind, reason=reason, coverage=coverage)

    def judge(self, rgb: np.ndarray | None, xyz: np.ndarray | None, coverage: float | None = None) -> Verdict:
        """Judge one frame (only the modalities the model uses are read). ``coverage``: the fraction of the map
        that holds a point as the caller measured it (e.g. after projection); default: measured on ``xyz``."""
        det, s = self.detector, self.settings
        cfg = det.config
        rgb, xyz = (rgb if cfg.uses_2d else None), (xyz if cfg.uses_3d else None)

        def predict(seen: dict[str, Any]) -> Any:
            if xyz is None:
                return det.predict(rgb, None)
            cloud = np.asarray(xyz)
            cov = seen["coverage"] = coverage if coverage is not None else (
                coverage_of(cloud) if cloud.ndim == 3 else 0.0)
            if cov < s.min_coverage:
                raise NotJudgeable("degraded", f"the cloud covers {cov:.2%} of the map, below min_coverage "
                                               f"{s.min_coverage:.2%}")
            if cloud.ndim == 3 and cloud.shape[-1] == 3:
                check_plausible(cloud, s.max_range)
            pred = det.predict(rgb, cloud)
            if pred.valid_ratio < s.min_valid_ratio:
                raise NotJudgeable("degraded", f"{pred.valid_ratio:.2%} of the pixels are valid after preprocessing, "
                                               f"below min_valid_ratio {s.min_valid_ratio:.2%}")
            return pred

        return self._verdict(predict, coverage)

    def judge_scan(self, points: np.ndarray) -> Verdict:
        """Judge an unorganized scan, Nx3 in the sensor's order, with a "chunks" model (``cmdr_ros.model.scan``):
        the same decision rule and fail-safe as ``judge``. ``coverage`` is the fraction of measured (finite)
        points; ``max_range`` applies to every measured point."""
        s = self.settings

        def predict(seen: dict[str, Any]) -> Any:
            pts = np.asarray(points)
            if pts.ndim != 2 or pts.shape[-1] != 3:
                raise CmdrError(f"a scan must be Nx3 points, got shape {pts.shape}")
            cov = seen["coverage"] = float(finite_rows(pts).mean()) if len(pts) else 0.0
            if cov < s.min_coverage:
                raise NotJudgeable("degraded", f"{cov:.2%} of the scan's points are measured, below min_coverage "
                                               f"{s.min_coverage:.2%}")
            check_plausible(pts, s.max_range)
            return self.detector.predict_scan(pts)

        return self._verdict(predict)

    def _verdict(self, predict: Callable[[dict[str, Any]], Any], coverage: float | None = None) -> Verdict:
        """Run ``predict`` (checks, then the model; it may note the coverage it measured) and decide, failing
        closed on every refusal (NotJudgeable, CmdrError) and on non-finite scores."""
        s, threshold = self.settings, self.threshold
        seen: dict[str, Any] = {"coverage": coverage}
        try:
            pred = predict(seen)
            if not np.isfinite(pred.anomaly_map).all():
                raise NotJudgeable("non_finite", "the anomaly map holds non-finite values")
            reject = is_reject(pred.score, threshold)
        except NotJudgeable as e:
            return Verdict(False, s.on_error, threshold, kind=e.kind, reason=str(e), coverage=seen["coverage"])
        except CmdrError as e:
            kind = type(e).__name__ if type(e) is not CmdrError else "bad_input"
            return Verdict(False, s.on_error, threshold, kind=kind, reason=str(e), coverage=seen["coverage"])
        return Verdict(True, "reject" if reject else "pass", threshold, score=float(pred.score), prediction=pred,
                       coverage=seen["coverage"])
