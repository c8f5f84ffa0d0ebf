"""The inspection node's parameters: declarations, one validator, and the reader of ROS parameter files.

``check`` is the single rule book: the node applies it to every value at configure (what a params file or
``-p`` gave at start) exactly as to a run-time ``ros2 param set`` (``check_set``), and ``cmdr bag eval
--params-file`` reads the same file through ``read_params_file`` -> ``check``. No rclpy import at import time, so
offline tools and tests use it too (``descriptor`` imports rcl_interfaces when called).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, MutableMapping, Protocol

from cmdr_ros import CmdrError
from cmdr_ros.judge import DECISIONS

if TYPE_CHECKING:
    from rcl_interfaces.msg import ParameterDescriptor

NODE_NAME = "cmdr_inspection"
MODES = ("auto", "rgbd", "3d", "2d")
IMAGE_TRANSPORTS = ("raw", "compressed")
CLOUD_INPUTS = ("points", "depth", "compressedDepth")
PROJECTIONS = ("auto", "raw", "rectified")
OVERLOAD = ("judge_all", "newest")
RELIABILITY = ("reliable", "best_effort")

# name: (default, description, range (lo, hi) or choices)
PARAMETERS: dict[str, tuple[Any, str, Any]] = {
    "autostart": (True, "walk the lifecycle to active by itself; a failed configure/activate then exits non-zero",
                  None),
    "checkpoint": ("", "trained model file (.ckpt from `cmdr train`); set while configured: loaded, verified and "
                       "warmed up beside the running model, then swapped in between two parts, or refused with the "
                       "reason (docs/model_swap.md)", None),
    "mode": ("auto", "auto (the checkpoint's) | rgbd | 3d | 2d", MODES),
    "device": ("auto", "auto (CUDA when present) | cpu | cuda | cuda:N | onnx (the heads from the checkpoint's "
                       "exported graph CHECKPOINT.onnx in onnxruntime: `cmdr export`)", None),
    "weights_2d": ("", "pretrained 2D backbone file for paper-preset checkpoints", None),
    "weights_3d": ("", "pretrained 3D backbone file for paper-preset checkpoints", None),
    "threshold": (-1.0, "reject when score >= threshold; < 0 uses the checkpoint's calibrated one; changeable "
                        "at run time", (-1.0, 1e12)),
    "on_error": ("reject", "decision for a part that cannot be judged (malformed, unmatched, degraded, too slow, "
                           "overload): reject | pass | skip (result only, no ~/reject)", DECISIONS),
    "min_valid_ratio": (0.01, "a frame with fewer valid pixels after background removal is not judged", (0.0, 1.0)),
    "min_coverage": (0.05, "a frame whose cloud covers less of the map (before preprocessing) is not judged",
                     (0.0, 1.0)),
    "max_range": (10.0, "metres: a frame with a valid point farther than this from the cloud origin is not judged "
                        "(wrong units, corrupt data)", (1e-3, 1e6)),
    "time_budget": (5.0, "seconds from a part's arrival to its decision; past it the part gets the on_error "
                         "decision and a still-running inference marks the node stuck", (0.01, 3600.0)),
    "warmup": (True, "run one synthetic frame at configure", None),
    "input.reliability": ("reliable", "input QoS reliability: reliable | best_effort (match the publishers)",
                          RELIABILITY),
    "input.depth": (50, "input subscription queue depth (deep enough that the node, not the middleware, decides "
                        "what happens to every part)", (1, 1000)),
    "input.image_transport": ("raw", "raw: sensor_msgs/Image on `image` (rgb8, bgr8, mono, Bayer, YUV 4:2:2, ...) | "
                                     "compressed: sensor_msgs/CompressedImage on `image` (remap it to the driver's "
                                     ".../compressed topic)", IMAGE_TRANSPORTS),
    "input.cloud": ("points", "points: sensor_msgs/PointCloud2 on `points` | depth: a depth image (16UC1 mm, 32FC1 m) "
                              "on `depth`, back-projected with camera_info, which must describe it (e.g. depth "
                              "registered to the colour camera) | compressedDepth: the same as "
                              "sensor_msgs/CompressedImage on `depth` (remap it to the driver's .../compressedDepth "
                              "topic; png or rvl)", CLOUD_INPUTS),
    "sync.queue_size": (10, "approximate-time synchronizer queue per input", (1, 1000)),
    "sync.slop": (0.05, "max stamp difference (s) within a synchronized set", (1e-6, 10.0)),
    "sync.timeout": (1.0, "seconds an input waits for its partner; then it gets an 'unmatched' result",
                     (1e-3, 60.0)),
    "overload": ("judge_all", "judge_all: parts wait in a queue of worker.queue_size, when full the oldest waiting "
                              "one gets the on_error decision | newest: only the newest part waits (monitoring)",
                 OVERLOAD),
    "worker.queue_size": (8, "parts waiting for inference (overload judge_all)", (1, 1000)),
    "part_id.wait": (0.05, "seconds a decision waits for a part id with its stamp (within sync.slop) published after "
                           "the frame; its publication, and the later ones', waits that long for a part without id "
                           "(0: only ids published before the decision count)", (0.0, 10.0)),
    "part_id.trigger": (False, "trigger mode: every part id is a trigger the controller sends per part, and gets "
                               "exactly one decision: its frame's (stamps within sync.slop), or the on_error decision "
                               "no_frame when no frame took it within time_budget + sync.timeout + part_id.wait of "
                               "its arrival", None),
    "extrinsics": (None, "cloud frame -> camera frame transform x y z qx qy qz qw, used when tf2 has none; unset: "
                         "a cloud in another frame than the image without a tf2 transform is not judged "
                         "(no_transform)", None),
    "use_tf": (True, "look the cloud->camera transform up in tf2 (tf2_ros) when the frames differ", None),
    "cloud_registered": (False, "true: an organized cloud of the image's size is pixel-aligned with it whatever "
                                "its frame_id (a depth camera's registered / aligned-to-colour output); false: only "
                                "when its frame_id is the image's", None),
    "projection": ("auto", "how camera_info projects a cloud into the image: raw (K + distortion D) | rectified (P, "
                           "no distortion) | auto (P when D is all zero, else K + D); camera_info must describe the "
                           "image topic the node subscribes to", PROJECTIONS),
    "raster_resolution": (0.0, "3D-only unorganized clouds: grid cell (m); 0 = mean point spacing", (0.0, 1.0)),
    "output.heatmap": (True, "publish ~/heatmap (bgr8 overlay)", None),
    "output.anomaly_map": (True, "publish ~/anomaly_map (32FC1)", None),
    "output.anomaly_cloud": (True, "publish ~/anomaly_cloud (x y z intensity)", None),
    "output.heatmap_alpha": (0.5, "heatmap opacity", (0.0, 1.0)),
    "output.heatmap_max": (0.0, "heatmap colour-scale top; 0 = automatic", (0.0, 1e6)),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages", (0.05, 3600.0)),
    "diagnostics.stale_after": (0.0, "seconds without any input while active before /diagnostics warns that the "
                                     "inputs are stale (0: never)", (0.0, 86400.0)),
    "diagnostics.window": (60.0, "seconds a transient fault (a part not judged, a result after its fail-safe) keeps "
                                 "/diagnostics at WARN; the counters stay cumulative", (0.1, 86400.0)),
    "hardware_id": ("", "hardware_id of the node's /diagnostics statuses: the cell or sensor it inspects (empty: the "
                        "node's name)", None),
    "audit.enabled": (True, "record every decision (judged or not) in the audit store before publishing it", None),
    "audit.database": ("", "SQLite file or postgresql://user@host/db URL; empty: cmdr_audit.db in the ROS log "
                           "directory ($ROS_LOG_DIR, else $ROS_HOME/log, else ~/.ros/log)", None),
    "audit.timeout": (0.5, "seconds a decision waits for its commit; a slower or failing store does not hold the "
                           "decision back (the row stays queued and is written when the store recovers)",
                      (0.0, 10.0)),
    "audit.max_backlog": (100000, "rows kept queued while the store fails; beyond it new rows are dropped and "
                                  "counted", (1, 10_000_000)),
    "audit.spool": ("", "SQLite file holding the rows the store could not commit within audit.timeout, committed "
                        "before their decisions are published and written to the store when it is back (also after "
                        "a restart); empty: cmdr_audit_spool.db in the ROS log directory", None),
    "evidence.dir": ("", "directory where the evidence of each kept part is written (image, cloud, heatmap: "
                         "docs/evidence.md), off the decision path; empty: no evidence", None),
    "evidence.location": ("", "where another machine finds evidence.dir (e.g. nfs://host/export or a mount "
                              "point), recorded in each audit row's evidence_root; empty: evidence.dir as an "
                              "absolute path", None),
    "evidence.passes": (0.0, "fraction of the passes whose evidence is kept, evenly (0.1: every 10th pass); every "
                             "reject and every part not judged is kept", (0.0, 1.0)),
    "evidence.max_bytes": (10 * 2**30, "retention: the node's evidence is kept under this many bytes, the oldest "
                                       "parts deleted first (0: no limit)", (0, 2**62)),
}
# take effect at the next configure
READ_ONLY = {"mode", "device", "weights_2d", "weights_3d", "input.reliability", "input.depth",
             "sync.queue_size", "sync.slop", "input.image_transport", "input.cloud", "output.heatmap", "output.anomaly_map", "output.anomaly_cloud", "use_tf",
             "warmup", "diagnostics_period", "autostart", "audit.enabled", "audit.database", "audit.timeout",
             "audit.max_backlog", "audit.spool", "evidence.dir", "evidence.location"}


# rcl_interfaces/ParameterType numbers (rclpy's "Wrong parameter type, expected '3' got '4'") and what they hold
TYPE_NAMES = {0: "unset value", 1: "bool", 2: "integer", 3: "double", 4: "string", 5: "byte array",
              6: "bool array", 7: "integer array", 8: "double array", 9: "string array"}


def value_type(value: Any) -> str:
    """The ROS parameter type of a Python value, as a word (``'abc'``: string, ``[1, 2]``: integer array)."""
    def one(v: Any) -> str:
        return ("bool" if isinstance(v, bool) else "integer" if isinstance(v, int) else
                "double" if isinstance(v, float) else "string" if isinstance(v, str) else
                "byte" if isinstance(v, bytes) else type(v).__name__)
    if value is None:
        return TYPE_NAMES[0]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
        return f"{one(value[0])} array" if len(value) else "empty array"
    return one(value)


def expected_type(name: str) -> str:
    """The type parameter ``name`` takes, as a word with a hint (``threshold``: 'double (a number)')."""
    default = PARAMETERS[name][0]
    if default is None:
        return "double array (7 numbers)" if name == "extrinsics" else "value"
    return {"bool": "bool (true or false)", "double": "double (a number)",
            "integer": "integer (a whole number)"}.get(value_type(default), value_type(default))


def refusal(name: str, value: Any, reason: str) -> str:
    """What the node says when ROS itself refuses ``value`` for parameter ``name`` (at start or at run time):
    rclpy's type refusal ("Wrong parameter type, expected '3' got '4'", "Trying to set parameter ... of type
    'STRING', expecting type 'DOUBLE'") named with the parameter and both types (the given type from ``value``, or
    from the reason's type number or name when the value is unknown); a range refusal in ``check``'s words; anything
    else as ROS put it, with the parameter's name."""
    if name not in PARAMETERS:
        return reason
    if re.search(r"(?i)wrong parameter type|expecting type", reason):
        if value is not None:
            given, shown = value_type(value), f": {value!r}"
        else:
            m = re.search(r"got '(?:Type\.)?(\w+)'|of type '(\w+)'", reason)
            word = (m.group(1) or m.group(2)) if m else "?"
            given = TYPE_NAMES.get(int(word), word) if word.isdigit() else word.lower().replace("_", " ")
            shown = ""
        return f"parameter '{name}' expects type {expected_type(name)}, got type {given}{shown}"
    ours = check(name, value)
    if ours is not None:
        return ours
    return reason if name in reason else f"{name}: {reason}"


def coerce(name: str, value: Any) -> Any:
    """A whole number given for a float parameter as the float (``threshold:=3``, ``ros2 param set ... 3``, YAML
    ``[0, 0, 0, 0, 0, 0, 1]``); anything else unchanged (``check`` judges it)."""
    default = PARAMETERS.get(name, (None,))[0]
    whole = (lambda v: isinstance(v, int) and not isinstance(v, bool))
    if isinstance(default, float) and whole(value):
        return float(value)
    if default is None and isinstance(value, (list, tuple)) and value and all(whole(v) for v in value):
        return [float(v) for v in value]
    return value


class NamedValue(Protocol):
    """What a set carries per parameter (``rclpy.parameter.Parameter``)."""

    name: str
    value: Any


def coerce_parameter(p: Any) -> Any:
    """``coerce`` applied to one ``rclpy.parameter.Parameter`` (the same one when nothing changes; else a new one of
    the same class, its type taken from the coerced value)."""
    if p.name not in PARAMETERS:
        return p
    value = coerce(p.name, p.value)
    return p if value is p.value else type(p)(p.name, value=value)


def coerce_parameters(params: Iterable[Any]) -> list[Any]:
    """Before a run-time set (``ros2 param set /cmdr_inspection threshold 3``): a whole number for a float parameter
    becomes the float (rclpy would refuse the integer)."""
    return [coerce_parameter(p) for p in params]


def coerce_overrides(overrides: MutableMapping[str, Any] | None) -> None:
    """The same for the start values (``-p threshold:=3`` or a YAML ``3``; rclpy keeps them in the node's
    ``_parameter_overrides``), in place: else rclpy refuses the integer and the node ends at start."""
    if isinstance(overrides, MutableMapping):
        for name, p in list(overrides.items()):
            if name in PARAMETERS:
                overrides[name] = coerce_parameter(p)


def descriptor(name: str) -> ParameterDescriptor:
    """The ROS descriptor of parameter ``name``: its description, and its range or choices."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    default, text, rng = PARAMETERS[name]
    d = ParameterDescriptor(name=name, description=text)
    if isinstance(rng, tuple) and len(rng) == 2 and not isinstance(rng[0], str):
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
    elif isinstance(rng, tuple):
        d.additional_constraints = "one of: " + ", ".join(rng)
    return d


@dataclass
class SetCheck:
    """The answer to a run-time set: ``problem`` (why it is refused, None: accepted) and ``notes`` to log."""

    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_set(params: Iterable[NamedValue], *, configured: bool,
              resolve_threshold: Callable[[float], Any] | None = None) -> SetCheck:
    """What the node answers to a run-time set of ``params`` (already coerced): the first bad value refuses the
    whole set. ``resolve_threshold`` (the judge's, when there is one) raises CmdrError for a threshold the model
    cannot use. A parameter read at configure is accepted while ``configured``, with a note that it takes effect at
    the next configure. Names that are not the node's (rclpy's own, e.g. use_sim_time) are left alone."""
    params = list(params)
    for p in params:
        if p.name not in PARAMETERS:
            continue
        value = list(p.value) if p.name == "extrinsics" and p.value is not None else p.value
        problem = check(p.name, value)
        if problem is None and p.name == "threshold" and resolve_threshold is not None:
            try:
                resolve_threshold(p.value)
            except CmdrError as e:
                problem = str(e)
        if problem is not None:
            return SetCheck(problem)
    return SetCheck(notes=[f"parameter '{p.name}' takes effect at the next configure" for p in params
                           if p.name in READ_ONLY and configured])


def defaults() -> dict[str, Any]:
    """Every parameter at its default value."""
    return {name: (list(d) if isinstance(d, list) else d) for name, (d, _, _) in PARAMETERS.items()}


def check(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for parameter ``name`` (None when it is). Types follow the default's type
    (an integer is accepted for a float parameter, as ROS does for YAML numbers)."""
    if name not in PARAMETERS:
        return f"unknown parameter '{name}'"
    default, _, rng = PARAMETERS[name]
    if default is None:  # optional (no default): unset is fine
        return None if value is None else _check_extrinsics(value)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be an integer, got {value!r}"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r}"
    elif isinstance(default, str):
        if not isinstance(value, str):
            return f"{name} must be a string, got {value!r}"
    if isinstance(rng, tuple) and rng and isinstance(rng[0], str):
        if value not in rng:
            return f"{name} must be one of {', '.join(rng)}, got {value!r}"
    elif isinstance(rng, tuple) and not isinstance(default, bool):
        lo, hi = rng
        if not lo <= value <= hi:
            return f"{name} must be within [{lo:g}, {hi:g}], got {value!r}"
    if name == "device" and not (value in ("auto", "cpu", "cuda", "onnx") or
                                 (value.startswith("cuda:") and value[5:].isdigit())):
        return f"device must be auto, cpu, cuda, cuda:N or onnx, got {value!r}"
    if name == "audit.database" and "://" in value and not value.startswith(("postgresql://", "postgres://")):
        return f"audit.database must be a file path or a postgresql:// URL, got {value!r}"
    if name == "audit.spool" and "://" in value:
        return f"audit.spool must be a file path (a local SQLite file), got {value!r}"
    if name == "evidence.dir" and "://" in value:
        return f"evidence.dir must be a directory path (mount a remote one), got {value!r}"
    return None


def _check_extrinsics(value: Any) -> str | None:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return f"extrinsics must be 7 numbers x y z qx qy qz qw, got {value!r}"
    if len(vals) != 7 or not all(math.isfinite(v) for v in vals):
        return f"extrinsics must be 7 finite numbers x y z qx qy qz qw, got {value!r}"
    norm = math.sqrt(sum(v * v for v in vals[3:]))
    if abs(norm - 1.0) > 1e-3:
        return f"extrinsics quaternion (qx qy qz qw) must have unit norm, has {norm:.6g}"
    return None


def check_all(values: Mapping[str, Any]) -> list[str]:
    """Every problem of a full or partial parameter set, one message each."""
    return [msg for name, value in values.items() if (msg := check(name, value)) is not None]


def node_params(values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete, validated parameter set: defaults, then ``values`` (e.g. a params file), then the ``overrides``
    that are not None (command-line options). CmdrError naming every bad value."""
    given = {**(values or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    params = {**defaults(), **{k: coerce(k, v) for k, v in given.items()}}
    problems = check_all(params)
    if problems:
        raise CmdrError("; ".join(problems))
    return params


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not prefix and k == "qos_overrides":  # rclpy's own QoS override parameters: not the node's
            continue
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The node's parameters from a ROS 2 parameters YAML (``config/inspection.yaml``): defaults overlaid with
    every section that applies to ``node_name`` (``/**``, ``/**/NAME``, ``NAME``, ``/NAME``), validated with
    ``check``. CmdrError for an unreadable file, an unknown name or a bad value."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CmdrError(f"{path}: cannot read the parameters file ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, Mapping):
        raise CmdrError(f"{path}: not a ROS parameters file (expected NODE: {{ros__parameters: ...}})")
    given: dict[str, Any] = {}
    found = False
    for key in ("/**", f"/**/{node_name}", node_name, f"/{node_name}"):
        section = doc.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("ros__parameters"), Mapping):
            given.update(_flatten(section["ros__parameters"]))
            found = True
    if not found:
        raise CmdrError(f"{path}: no ros__parameters section for node '{node_name}' "
                        f"(sections: {', '.join(map(str, doc)) or 'none'})")
    try:
        return node_params(given)
    except CmdrError as e:
        raise CmdrError(f"{path}: {e}") from None


def markdown_table() -> str:
    """The README's parameter table, generated from the declarations (a test keeps the README in step)."""
    rows = ["| parameter | default | what it does |", "|---|---|---|"]
    for name, (default, text, _) in PARAMETERS.items():
        shown = '`""`' if default == "" else "unset" if default is None else f"`{default}`"
        note = " (read at configure)" if name in READ_ONLY else ""
        rows.append(f"| `{name}` | {shown} | {text.replace('|', '/')}{note} |")
    return "\n".join(rows)
