"""config/diagnostic_aggregator.yaml against what the node publishes: every analyzer is a valid GenericAnalyzer (a
path and at least one way of matching, as diagnostic_aggregator's GenericAnalyzer::init demands), and each status
of the node ('<node>: node', '<node>: audit', '<node>: evidence', ``node_status.status_name``) is matched by exactly
one of them, so none lands in the aggregator's "Other"."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cmdr_ros.ros.node.status import status_name
from cmdr_ros.ros.node.parameters import NODE_NAME

CONFIG = Path(__file__).resolve().parents[1] / "config" / "diagnostic_aggregator.yaml"
MATCHERS = ("expected", "name", "startswith", "contains", "regex", "find_and_remove_prefix")


def _generic_analyzers(analyzers: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every GenericAnalyzer, by its place in the tree (AnalyzerGroups opened)."""
    found = []
    for key, spec in analyzers.items():
        if not isinstance(spec, dict):
            continue
        assert "type" in spec and "path" in spec, (where + key, spec)
        if spec["type"] == "diagnostic_aggregator/AnalyzerGroup":
            found += _generic_analyzers(spec["analyzers"], f"{where}{key}.")
        else:
            assert spec["type"] == "diagnostic_aggregator/GenericAnalyzer", spec
            found.append((where + key, spec))
    return found


def _matches(spec: dict[str, Any], name: str) -> bool:
    """GenericAnalyzer::match: regex (whole name), expected / name (equal), startswith (and find_and_remove_prefix),
    contains."""
    values = {k: [spec[k]] if isinstance(spec.get(k), str) else spec.get(k, []) for k in MATCHERS}
    return (any(re.fullmatch(r, name) for r in values["regex"]) or name in values["expected"] + values["name"]
            or any(name.startswith(p) for p in values["startswith"] + values["find_and_remove_prefix"])
            or any(c in name for c in values["contains"]))


def test_every_status_of_the_node_has_one_analyzer():
    doc = yaml.safe_load(CONFIG.read_text())
    params = doc["analyzers"]["ros__parameters"]
    analyzers = _generic_analyzers({k: v for k, v in params.items() if isinstance(v, dict)})
    assert len(analyzers) == 3, analyzers
    for key, spec in analyzers:
        assert any(spec.get(k) for k in MATCHERS), f"{key}: no way of matching (GenericAnalyzer refuses it)"
        assert float(spec.get("timeout", 5.0)) > 0
    for task in ("node", "audit", "evidence"):
        name = status_name(f"/{NODE_NAME}", task)
        owners = [key for key, spec in analyzers if _matches(spec, name)]
        assert owners == [f"inspection.{task}"], (name, owners)
    assert not any(_matches(spec, "camera_driver: status") for _, spec in analyzers)  # others stay out
