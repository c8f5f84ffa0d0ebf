"""The decision a controller subscribes to: ``~/decision`` (vision_msgs/Classification, stamped with the judged input's
header) and the pipeline's description ``~/vision_info`` (vision_msgs/VisionInfo, latched), as ROS perception users
expect them (docs/controller_decisions.md).

``class_id`` is the action the line takes (``class_of``): ``reject`` or ``pass`` for a judged part and for a part not
judged whose fail-safe (parameter on_error) is reject or pass; ``not_judged`` only when the node takes no action
(on_error skip: no ``~/reject`` either). ``score`` is the image anomaly score of a judged part and NaN for a part not
judged (``~/result`` says why). So a controller acts on ``class_id`` alone, whatever on_error is.

vision_msgs comes from the ROS distribution (rosdep key vision_msgs) or, in a pip-only venv, from
``tools/build_vision_msgs.py`` (``make setup``). Without it both outputs are off (``AVAILABLE`` False,
``UNAVAILABLE`` says why): the node logs that once, reports it on /diagnostics and publishes everything else.
"""
from __future__ import annotations

import math
from typing import Any

try:
    from vision_msgs.msg import Classification, ObjectHypothesis, VisionInfo
except ImportError as e:  # a pip-only venv without the built messages: the typed outputs are off
    Classification = ObjectHypothesis = VisionInfo = None
    AVAILABLE = False
    UNAVAILABLE = (f"vision_msgs is not installed ({e}): ~/decision and ~/vision_info are off (ROS install: "
                   "rosdep install; pip-only venv: make setup, or .venv/bin/python tools/build_vision_msgs.py)")
else:
    AVAILABLE, UNAVAILABLE = True, ""

# the /diagnostics value decision_topic
STATUS = "vision_msgs/Classification" if AVAILABLE else "off: vision_msgs is not installed"
REJECT, PASS, NOT_JUDGED = "reject", "pass", "not_judged"
CLASS_IDS = (REJECT, PASS, NOT_JUDGED)
METHOD = "cmdr-iad"
# output name -> message type (empty without vision_msgs)
TYPES: dict[str, Any] = {"decision": Classification, "vision_info": VisionInfo} if AVAILABLE else {}

# The three definitions field for field (vision_msgs on humble, jazzy and kilted), for bag writers whose type store
# lacks vision_msgs (rosbags); tools/vision_msgs/msg holds the same fields and test_typed_decision.py pins both to
# the RIHS01 hashes of a real vision_msgs install.
MSG_DEFINITIONS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/Classification": "std_msgs/Header header\nvision_msgs/ObjectHypothesis[] results\n",
    "vision_msgs/msg/VisionInfo": "std_msgs/Header header\nstring method\nstring database_location\n"
                                  "int32 database_version\n",
}


def class_of(verdict: Any) -> str:
    """The action of a decision (``judge.Verdict``): reject | pass | not_judged (not judged and on_error skip)."""
    if verdict.decision == "skip":
        return NOT_JUDGED
    return REJECT if verdict.reject else PASS


def classification(header: Any, verdict: Any) -> Any:
    """The ``~/decision`` of one decision: ``header`` (the judged input's; none for an input without one), one
    hypothesis with ``class_of(verdict)`` and the score (NaN when not judged). None without vision_msgs."""
    if not AVAILABLE:
        return None
    score = float(verdict.score) if verdict.judged and verdict.score is not None else math.nan
    msg = Classification(results=[ObjectHypothesis(class_id=class_of(verdict), score=score)])
    if header is not None:
        msg.header = header
    return msg


def model_version(model_id: str) -> int:
    """The model id (a hex checksum prefix) as VisionInfo.database_version, an int32: its first 7 hex digits (0:
    not hex)."""
    try:
        return int(str(model_id)[:7], 16)
    except ValueError:
        return 0


def vision_info(stamp: Any, mode: str, model_id: str, checkpoint: str, backbones: str = "") -> Any:
    """The ``~/vision_info`` of a configured node: method ``cmdr-iad <mode> [<backbones>] model <model_id>`` (the
    full model id), database_location the checkpoint, database_version ``model_version``. None without vision_msgs."""
    if not AVAILABLE:
        return None
    method = " ".join(x for x in (METHOD, mode, backbones, f"model {model_id}") if x)
    msg = VisionInfo(method=method, database_location=str(checkpoint), database_version=model_version(model_id))
    msg.header.stamp = stamp
    return msg


def register_types(typestore: Any) -> None:
    """Add the vision_msgs definitions to a rosbags type store that lacks them (bags of ``~/decision``)."""
    from rosbags.typesys import get_types_from_msg

    types: dict[str, Any] = {}
    for name, text in MSG_DEFINITIONS.items():
        if name not in typestore.types:
            types.update(get_types_from_msg(text, name))
    if types:
        typestore.register(types)
