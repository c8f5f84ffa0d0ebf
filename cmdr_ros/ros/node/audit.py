"""The inspection node's audit store: opened at configure, closed at cleanup (``cmdr_ros.audit.store.AuditStore``).

A store that cannot be opened or written is a fault the node reports (log, ``/diagnostics``), never a reason to stop
deciding. How each decision's row is recorded before it is published: ``queues.DecisionOutbox``. A row the store
cannot commit within ``audit.timeout`` is committed to the durable spool (``audit.spool``, ``cmdr_ros.audit.spool``)
first, and written to the store when it is back, also by the next start of a node that was killed meanwhile.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from cmdr_ros.audit.spool import SPOOL_FILE, Spool
from cmdr_ros.audit.store import AuditStore


def audit_default_path(name: str = "cmdr_audit.db") -> str:
    """``name`` in the ROS log directory (ROS_LOG_DIR, else ROS_HOME/log, else ~/.ros/log)."""
    from pathlib import Path

    from rclpy.logging import get_logging_directory

    return str(Path(get_logging_directory()) / name)


def open_audit(values: Mapping[str, Any], logger: Any, warn: Callable[..., None]) -> AuditStore | None:
    """Start the audit writer of the node's parameter ``values`` (None: audit.enabled false); its faults go to
    ``warn`` (the node's throttled log, as errors), its recovery to ``logger``."""
    if not values["audit.enabled"]:
        logger.warning("audit store disabled (audit.enabled false): decisions are not recorded")
        return None

    def on_fault(level: str, msg: str) -> None:
        if level == "info":
            logger.info(msg)
        else:
            warn("audit", msg, "error")

    target = values["audit.database"] or audit_default_path()
    spool = Spool(values["audit.spool"] or audit_default_path(SPOOL_FILE))
    audit = AuditStore(target, timeout_s=float(values["audit.timeout"]), max_backlog=int(values["audit.max_backlog"]),
                       on_fault=on_fault, spool=spool)
    logger.info(f"audit store: {audit.health()['target']} (spool: {spool.path})")
    return audit


def close_audit(audit: AuditStore | None, logger: Any) -> None:
    """Write what is queued (within 5 s) and say how many decisions were written, and lost."""
    if audit is not None:
        lost = audit.close(5.0)
        h = audit.health()
        logger.info(f"audit store closed: {h['written']} decision(s) written"
                    + (f", {h['spool_backlog']} in the spool {h['spool']} (written at the next start)"
                       if h["spool_backlog"] else "")
                    + (f", {lost} NOT written ({h['last_error']})" if lost else ""))
