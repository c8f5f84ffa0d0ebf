"""The audit table: one row per decision, its columns typed, and the mapping from a ``~/result``'s values."""
from __future__ import annotations

import math
from typing import Any, Mapping

SCHEMA_VERSION = 3
TABLE = "decisions"

# column: (type: text | int | real | bool, meaning). The order is the export's column order.
COLUMNS: dict[str, tuple[str, str]] = {
    "decided_at": ("real", "wall-clock time of the decision, Unix seconds (UTC)"),
    "node": ("text", "fully qualified name of the node that decided"),
    "run_id": ("text", "one id per start of that node's process (seq restarts with it)"),
    "seq": ("int", "the result's seq: +1 per decision within a run"),
    "stamp": ("text", "header stamp of the input judged, sec.nanosec"),
    "part_id": ("text", "part id from the part_id topic, when there was one"),
    "inputs": ("text", "image+points, points, image (an orphan: one input)"),
    "frame_id_image": ("text", "frame_id of the image"),
    "frame_id_points": ("text", "frame_id of the cloud"),
    "frame_id_camera_info": ("text", "frame_id of the camera info"),
    "decision": ("text", "reject | pass | skip"),
    "judged": ("bool", "true when the model judged the part, false for an on_error fail-safe"),
    "score": ("real", "image anomaly score (judged parts)"),
    "threshold": ("real", "reject threshold in force"),
    "error": ("text", "why the part was not judged (a ~/result error kind)"),
    "reason": ("text", "the cause in words"),
    "mode": ("text", "rgbd | 3d | 2d"),
    "model_id": ("text", "content checksum prefix of the checkpoint that judged this part"),
    "latency_ms": ("real", "arrival of the set to the decision"),
    "inference_ms": ("real", "preprocessing + model time"),
    "valid_ratio": ("real", "fraction of valid pixels after preprocessing"),
    "coverage": ("real", "fraction of the map holding a measured point"),
    "alignment": ("text", "how the cloud met the image grid"),
    "transform": ("text", "where the cloud -> camera transform came from"),
    "chunks": ("int", "scans (a \"chunks\" model): the number of chunks the part was cut into"),
    "result_schema": ("text", "version of the ~/result key set the row was made from"),
    "evidence": ("text", "the part's evidence folder relative to the evidence root (docs/evidence.md), empty when "
                         "none was kept"),
    "evidence_root": ("text", "where the deciding machine keeps its evidence root (the node's evidence.location): "
                              "what another machine mounts to read the folder"),
}
# schema version -> the columns it added (a store of an older version gets them, empty for its old rows, on open)
ADDED: dict[int, tuple[str, ...]] = {2: ("chunks",), 3: ("evidence", "evidence_root")}
# ~/result key -> column, where the names differ
_RESULT_KEY = {"frame_id_image": "frame_id.image", "frame_id_points": "frame_id.points",
               "frame_id_camera_info": "frame_id.camera_info", "result_schema": "schema"}


def row_from_result(values: Mapping[str, str], *, node: str, run_id: str, decided_at: float) -> dict[str, Any]:
    """The audit row of one decision, from the string values of its ``~/result`` (so the two cannot differ)."""
    row: dict[str, Any] = {"decided_at": float(decided_at), "node": node, "run_id": run_id}
    for col, (kind, _) in COLUMNS.items():
        if col in row:
            continue
        raw = values.get(_RESULT_KEY.get(col, col))
        row[col] = None if raw is None else _typed(kind, raw)
    return row


def _typed(kind: str, raw: str) -> Any:
    if kind == "int":
        return int(raw)
    if kind == "real":
        x = float(raw)
        return x if math.isfinite(x) else None
    if kind == "bool":
        return raw == "true"
    return str(raw)


def markdown_table() -> str:
    """The README's audit table, generated from ``COLUMNS``."""
    return "\n".join(["| column | type | meaning |", "|---|---|---|"]
                     + [f"| `{c}` | {k} | {m.replace('|', '/')} |" for c, (k, m) in COLUMNS.items()])
