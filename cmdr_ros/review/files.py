"""A part's evidence files (``cmdr_ros/evidence.py``'s layout) as the station may serve them: only the pictures, and
only from inside the evidence root (a folder name in the database cannot lead out of it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cmdr_ros.evidence import HEATMAP, IMAGE

PICTURES = (IMAGE, HEATMAP)


def evidence_root(configured: str | None, part: dict[str, Any]) -> Path | None:
    """Where this part's evidence folder is relative to: the station's ``--evidence`` root, else the root the
    writing node recorded when that exists on this machine (None: no root)."""
    if configured:
        return Path(configured)
    recorded = part.get("evidence_root")
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def picture(configured: str | None, part: dict[str, Any], name: str) -> Path | None:
    """The file ``name`` of the part's evidence, when it is a picture that exists inside the root (else None)."""
    root, rel = evidence_root(configured, part), part.get("evidence")
    if name not in PICTURES or root is None or not rel:
        return None
    root = root.resolve()
    path = (root / rel / name).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def pictures(configured: str | None, part: dict[str, Any]) -> list[str]:
    """The names of the part's pictures that can be served."""
    return [name for name in PICTURES if picture(configured, part, name) is not None]
