"""Rewrite the generated tables of the docs from the code: the node's parameters and ``~/result`` keys
(docs/node.md), the launch arguments that override a parameter (docs/launch.md) and the audit store's columns
(docs/audit.md). test/test_launch.py fails while a page is stale.

    python tools/doc_tables.py          # rewrite in place
    python tools/doc_tables.py --check  # exit 1 when a page differs (what the test checks)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]


def tables() -> list[tuple[Path, Callable[[], str]]]:
    """(page, generator) of every generated table; each table starts with its generator's header line."""
    from cmdr_ros.audit.schema import markdown_table as audit_table
    from cmdr_ros.ros.launch_arguments import markdown_table as launch_table
    from cmdr_ros.ros.node.outputs import result_schema_markdown
    from cmdr_ros.ros.node.parameters import markdown_table as parameter_table

    node = REPO / "docs" / "node.md"
    return [(node, parameter_table), (node, result_schema_markdown), (REPO / "docs" / "launch.md", launch_table),
            (REPO / "docs" / "audit.md", audit_table)]


def replace_table(text: str, table: str) -> str:
    """``text`` with the table that starts with ``table``'s header line replaced by ``table``."""
    header = table.split("\n", 1)[0]
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line == header), None)
    if start is None:
        raise SystemExit(f"no table with the header {header!r}: add one where it belongs")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + table.split("\n") + lines[end:])


def main(argv: list[str]) -> int:
    stale = []
    pages: dict[Path, str] = {}
    for page, make in tables():
        pages[page] = replace_table(pages.get(page, page.read_text()), make())
    for page, text in pages.items():
        if text != page.read_text():
            stale.append(page.relative_to(REPO))
            if "--check" not in argv:
                page.write_text(text)
    if stale:
        print(("stale: " if "--check" in argv else "rewritten: ") + ", ".join(map(str, stale)))
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
