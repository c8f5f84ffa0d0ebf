"""Inspection-run reports (the demo's): the per-part table, decision quality at the threshold, and a one-page HTML
report. (The audit store's statistics: ``cmdr_ros.audit.report``.)"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sklearn.metrics import roc_auc_score


@dataclass
class PartRow:
    part: str  # e.g. "tear/003"
    truth: int  # 0 good, 1 defective
    score: float  # nan when the part was not judged
    reject: bool
    latency_ms: float
    heatmap: str = ""  # PNG path relative to the report


def summarize(rows: Sequence[PartRow], threshold: float) -> dict[str, float]:
    """I-AUROC over judged parts, reject precision/recall at the threshold, latency p50/p95."""
    judged = [r for r in rows if np.isfinite(r.score)]
    labels = {r.truth for r in judged}
    auroc = roc_auc_score([r.truth for r in judged], [r.score for r in judged]) if len(labels) == 2 else float("nan")
    tp = sum(r.reject and r.truth for r in rows)
    fp = sum(r.reject and not r.truth for r in rows)
    fn = sum((not r.reject) and r.truth for r in rows)
    lat = np.array([r.latency_ms for r in judged]) if judged else np.zeros(1)
    return {
        "parts": len(rows), "judged": len(judged), "threshold": threshold, "i_auroc": float(auroc),
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "false_rejects": fp, "missed": fn, "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p95_ms": float(np.percentile(lat, 95)),
    }


def format_rows(rows: Sequence[PartRow]) -> str:
    lines = [f"{'part':<22}{'score':>9}  {'decision':<9}{'truth':<10}{'latency':>9}", "-" * 61]
    for r in rows:
        ok = "" if r.reject == bool(r.truth) else "  <- wrong"
        lines.append(f"{r.part:<22}{r.score:>9.3f}  {'REJECT' if r.reject else 'pass':<9}"
                     f"{'defect' if r.truth else 'good':<10}{r.latency_ms:>7.0f} ms{ok}")
    return "\n".join(lines)


def format_summary(s: dict[str, float]) -> str:
    return (f"I-AUROC {s['i_auroc']:.3f} over {s['judged']}/{s['parts']} judged parts; at threshold "
            f"{s['threshold']:.3f}: reject precision {s['precision']:.3f}, recall {s['recall']:.3f} "
            f"({s['false_rejects']} good parts rejected, {s['missed']} defects missed); latency p50 "
            f"{s['latency_p50_ms']:.0f} ms, p95 {s['latency_p95_ms']:.0f} ms")


def write_html(path: str | Path, title: str,
               sections: Sequence[tuple[str, dict[str, float], Sequence[PartRow], str]]) -> Path:
    """A single self-contained page (images referenced relative to it); per (heading, summary, rows, note)
    section: the note, the summary, the per-part table with heatmaps."""
    e = html.escape
    parts = []
    for heading, summary, rows, note in sections:
        head = "".join(f"<tr><th>{e(k)}</th><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                       f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in summary.items())
        body = []
        for r in rows:
            wrong = r.reject != bool(r.truth)
            img = f'<img src="{e(r.heatmap)}" alt="{e(r.part)}">' if r.heatmap else ""
            body.append(f'<tr class="{"wrong" if wrong else ""}"><td>{e(r.part)}</td><td>{r.score:.3f}</td>'
                        f'<td>{"REJECT" if r.reject else "pass"}</td><td>{"defect" if r.truth else "good"}</td>'
                        f"<td>{r.latency_ms:.0f} ms</td><td>{img}</td></tr>")
        parts.append(f"""<h2>{e(heading)}</h2><p>{e(note)}</p><h3>Summary</h3><table>{head}</table>
<h3>Parts</h3><table><tr><th>part</th><th>score</th><th>decision</th><th>truth</th><th>latency</th>
<th>heatmap</th></tr>{''.join(body)}</table>""")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>
body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}} img{{height:128px}}
tr.wrong td{{background:#fde2e2}} th{{background:#f4f4f4}}</style></head><body>
<h1>{e(title)}</h1>{''.join(parts)}</body></html>"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
