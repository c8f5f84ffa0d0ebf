"""The judge: one part (a frame: RGB and/or organized xyz; a scan of a "chunks" model: its points) in, one
:class:`Verdict` out, failing closed.

This module owns the decision rule (``reject when score >= threshold``, :func:`is_reject`), the checks that make
a part judgeable (applied by each pipeline kind to its parts, ``cmdr_ros.pipelines``), and the fail-safe: whatever cannot be judged gets ``settings.on_error`` as its decision, never a
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
from cmdr_ros.geometry import valid_mask

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
    prediction: Any = None  # a judged part's cmdr_ros.pipelines.Prediction
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
    """Judges parts with one detector and threshold under ``settings``, as the detector's pipeline kind takes them.

    ``threshold``: None or < 0 uses the checkpoint's calibrated one; a model without a finite threshold is refused.
    """

    def __init__(self, detector: Any, settings: JudgeSettings | None = None, threshold: float | None = None) -> None:
        from cmdr_ros.pipelines import pipeline_for  # the kinds check parts with this module's rules

        self.detector = detector
        self.pipeline = pipeline_for(detector)
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

    def judge(self, *sample: Any, **kw: Any) -> Verdict:
        """Judge one part as the detector's pipeline kind takes it (``cmdr_ros.pipelines``): a frame
        ``judge(rgb, xyz, coverage=None)`` (only the modalities the model uses are read; ``coverage``: the fraction
        of the map that holds a point as the caller measured it, e.g. after projection; default: measured on
        ``xyz``), a scan of a "chunks" model ``judge(points)`` (Nx3 in the sensor's order; its coverage is the
        fraction of measured points). The kind's checks, then the model, then the decision rule."""
        return self._verdict(lambda seen: self.pipeline.checked_predict(self.detector, self.settings, seen, *sample,
                                                                        **kw))

    def _verdict(self, predict: Callable[[dict[str, Any]], Any]) -> Verdict:
        """Run ``predict`` (checks, then the model; it notes the coverage it measured) and decide, failing closed on
        every refusal (NotJudgeable, CmdrError) and on non-finite scores."""
        s, threshold = self.settings, self.threshold
        seen: dict[str, Any] = {"coverage": None}
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
