"""Messages in -> (Frame, Verdict) out: decoding and alignment as the model's pipeline kind takes its parts
(``cmdr_ros.ros.kinds``: ``frames.assemble_frame``, pixel-aligned, projected with tf2 / the ``extrinsics`` parameter
when set, never a guessed transform, or rasterized; with a "chunks" model, the paper's cutting-cell pipeline, each
cloud is one scanned part: ``frames.assemble_scan`` keeps its points in message order) followed by the pure judge
(``cmdr_ros.judge``).

The node and ``cmdr bag eval`` / ``to-dataset`` build a :class:`FrameJudge` from the same parameter values, so a
part is judged the same way on the cell and offline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from cmdr_ros import CmdrError
from cmdr_ros.geometry import make_transform
from cmdr_ros.judge import Judge, JudgeSettings, Verdict
from cmdr_ros.pipelines import pipeline_for
from cmdr_ros.ros.conversions.frames import Frame, TransformLookup
from cmdr_ros.ros.kinds import ROS_KINDS, ros_kind

if TYPE_CHECKING:
    from sensor_msgs.msg import CameraInfo

    from cmdr_ros.model.detector import CMDRDetector
    from cmdr_ros.pipelines import Pipeline
    from cmdr_ros.ros.node.queues import InputMessage
    from cmdr_ros.ros.node.parameters import NamedValue

JUDGE_PARAMS = ("on_error", "min_valid_ratio", "min_coverage", "max_range")  # JudgeSettings, changeable at run time


def extrinsics_transform(values: Sequence[float] | None) -> np.ndarray | None:
    """The ``extrinsics`` parameter [x y z qx qy qz qw] as a 4x4 cloud -> camera transform (None: unset)."""
    if values is None:
        return None
    vals = [float(v) for v in values]
    return make_transform(vals[:3], vals[3:])


def warm_up(detector: CMDRDetector) -> None:
    """Run the model once on a synthetic part of its kind (``Pipeline.warm_up``), so the first part does not pay for
    the first inference; CmdrError when it does not fit."""
    pipeline_for(detector).warm_up(detector)


def free_gpu(detector: CMDRDetector | None) -> None:
    """Give the CUDA memory the caching allocator holds back (deactivate, a model change, cleanup)."""
    if detector is not None and detector.device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def error_kind(e: CmdrError) -> str:
    """The not-judged cause of a CmdrError: its class name (ConversionError, ...) or 'bad_input'."""
    return getattr(e, "kind", None) or (type(e).__name__ if type(e) is not CmdrError else "bad_input")


def unmatched_reason(name: str, inputs: list[str], why: str, sync_timeout: float) -> tuple[str, str]:
    """Kind and reason of an input that left the synchronizer without partner (``why``: timeout | evicted |
    duplicate | shutdown), worded the same on the node and in ``cmdr bag eval``."""
    others = " + ".join(n for n in inputs if n != name)
    reasons = {"timeout": f"no {others} within sync.slop of this {name} after sync.timeout {sync_timeout:g} s",
               "evicted": f"no {others} matched this {name} before sync.queue_size newer ones arrived",
               "duplicate": f"another {name} with the same stamp replaced this one",
               "shutdown": f"the node stopped while this {name} waited for its {others}"}
    return ("shutdown" if why == "shutdown" else "unmatched"), reasons.get(why, f"no {others} matched ({why})")


class FrameJudge:
    """Judge synchronized message sets: ``judge({'image': Image, 'points': PointCloud2}, camera_info)``.

    ``kind``: the pipeline kind whose parts the sets are (``cmdr_ros.ros.kinds``; "chunks": each cloud is a scanned
    part, judged point by point); default: the judge's detector's."""

    def __init__(self, judge: Judge | None, mode: str, *, raster_resolution: float = 0.0,
                 extrinsics: Sequence[float] | None = None,
                 tf_lookup: TransformLookup | None = None, registered: bool = False,
                 projection: str = "auto", kind: str | None = None) -> None:
        self._judge = judge
        self.mode = mode
        self.kind = ros_kind(getattr(judge, "detector", None)) if kind is None else ROS_KINDS[kind]
        self.raster_resolution = float(raster_resolution)
        self.extrinsics = extrinsics_transform(extrinsics)
        self.tf_lookup = tf_lookup
        self.registered = bool(registered)
        self.projection = projection

    @classmethod
    def from_params(cls, detector: CMDRDetector, params: Mapping[str, Any],
                    tf_lookup: TransformLookup | None = None) -> FrameJudge:
        """From the node's parameter values (see ``cmdr_ros.ros.node.parameters``)."""
        judge = Judge(detector, JudgeSettings.from_params(params), params.get("threshold", -1.0))
        return cls(judge, detector.config.mode, raster_resolution=params.get("raster_resolution", 0.0),
                   extrinsics=params.get("extrinsics"), tf_lookup=tf_lookup,
                   registered=params.get("cloud_registered", False), projection=params.get("projection", "auto"))

    @classmethod
    def aligner(cls, mode: str, params: Mapping[str, Any], kind: str = "frame") -> FrameJudge:
        """Decoding and alignment only (``assemble``) of parts of ``kind``, e.g. to turn a recording into training
        samples."""
        return cls(None, mode, raster_resolution=params.get("raster_resolution", 0.0),
                   extrinsics=params.get("extrinsics"), registered=params.get("cloud_registered", False),
                   projection=params.get("projection", "auto"), kind=kind)

    @property
    def threshold(self) -> float:
        return self._judge.threshold

    @property
    def detector(self) -> CMDRDetector | None:
        """The model this judge judges with (None for an ``aligner``)."""
        return getattr(self._judge, "detector", None)

    @property
    def pipeline(self) -> Pipeline:
        """The model's pipeline kind (``cmdr_ros.pipelines``): how its parts are scored, their truth and metrics."""
        return self._judge.pipeline

    @property
    def settings(self) -> JudgeSettings:
        """What makes a frame judgeable and what an unjudgeable one gets (``on_error`` ...)."""
        return self._judge.settings

    def resolve_threshold(self, value: float | None) -> float:
        """The threshold a set of parameter ``threshold`` to ``value`` would give (``Judge.resolve_threshold``)."""
        return self._judge.resolve_threshold(value)

    def not_judged(self, kind: str, reason: str) -> Verdict:
        """The fail-safe verdict (``on_error``) of a part not judged, for ``kind`` (see ``cmdr_ros.judge``)."""
        return self._judge.not_judged(kind, reason)

    @property
    def model_id(self) -> str:
        """The id of the model this judge judges with (its checkpoint's content checksum prefix; "" without one):
        every decision carries the id of the model that judged it, also across a model swap."""
        return str(getattr(self.detector, "model_id", None) or "")

    def apply(self, params: Iterable[NamedValue]) -> None:
        """Apply run-time parameter changes (already validated, ``parameters.check_set``): threshold, the judge's
        settings, extrinsics, raster_resolution and cloud_registered; others are read elsewhere or at configure."""
        judge = self._judge
        settings = {k: getattr(judge.settings, k) for k in JUDGE_PARAMS}
        for p in params:
            if p.name == "threshold":
                judge.set_threshold(p.value)
            elif p.name in JUDGE_PARAMS:
                settings[p.name] = p.value
            elif p.name == "extrinsics":
                self.extrinsics = extrinsics_transform(p.value)
            elif p.name == "raster_resolution":
                self.raster_resolution = float(p.value)
            elif p.name == "cloud_registered":
                self.registered = bool(p.value)
        judge.settings = JudgeSettings(**settings)

    def assemble(self, msgs: Mapping[str, InputMessage], info: CameraInfo | None = None) -> Frame:
        """Decode and align one set as its kind does (CmdrError when it cannot be)."""
        return self.kind.assemble(self, msgs, info)

    def judge(self, msgs: Mapping[str, InputMessage],
              info: CameraInfo | None = None) -> tuple[Frame | None, Verdict]:
        """The frame (None when it could not be decoded) and its verdict."""
        if self._judge is None:
            raise CmdrError("this FrameJudge only aligns frames (built without a model)")
        try:
            frame = self.assemble(msgs, info)
        except CmdrError as e:
            return None, self._judge.not_judged(error_kind(e), str(e))
        return frame, self._judge.judge(*self.kind.sample(frame))
