"""The dashboard's pictures, drawn on the station (matplotlib's Agg canvas, PNG): one per cell, its score
distribution against the threshold over time (drift) above its latency."""
from __future__ import annotations

import io
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateFormatter, AutoDateLocator, date2num
from matplotlib.figure import Figure

BINS = 60


def _binned(t: np.ndarray, values: np.ndarray, bins: int, qs: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Bin centres (those holding a value) and the percentiles ``qs`` of ``values`` in each time bin."""
    ok = np.isfinite(t) & np.isfinite(values)
    t, values = t[ok], values[ok]
    if t.size == 0:
        return np.empty(0), np.empty((0, len(qs)))
    edges = np.linspace(t.min(), t.max() + 1e-6, bins + 1)
    which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    centres, stats = [], []
    order = np.argsort(which, kind="stable")
    splits = np.split(values[order], np.flatnonzero(np.diff(which[order])) + 1)
    for b, chunk in zip(np.unique(which), splits):
        centres.append((edges[b] + edges[b + 1]) / 2)
        stats.append(np.percentile(chunk, qs))
    return np.asarray(centres), np.asarray(stats)


def _dates(seconds: np.ndarray) -> np.ndarray:
    """Unix seconds as matplotlib's dates (UTC)."""
    return date2num((np.asarray(seconds, dtype=np.float64) * 1e3).astype("datetime64[ms]"))


def drift_png(series: dict[str, np.ndarray], node: str, bins: int = BINS) -> bytes:
    """PNG: the cell's score (median and 5-95 % band per time bin, every reject as a dot) against its threshold,
    and its latency (median and 95th percentile per bin), over the window."""
    fig = Figure(figsize=(9, 4.6), dpi=90)  # a fixed layout: constrained layout would double the drawing time
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.08, hspace=0.08)
    FigureCanvasAgg(fig)
    ax_s, ax_l = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    t, score, thr, lat = series["t"], series["score"], series["threshold"], series["latency_ms"]
    centres, q = _binned(t, score, bins, (5, 50, 95))
    if centres.size:
        x = _dates(centres)
        ax_s.fill_between(x, q[:, 0], q[:, 2], color="#9ecae1", alpha=0.7, label="score 5-95 %")
        ax_s.plot(x, q[:, 1], color="#08519c", lw=1.5, label="score median")
    tc, tq = _binned(t, thr, bins, (50,))
    if tc.size:
        ax_s.step(_dates(tc), tq[:, 0], where="mid", color="#cb181d", lw=1.5, label="threshold")
    over = np.isfinite(score) & np.isfinite(thr) & (score > thr)
    if over.any():
        ax_s.plot(_dates(t[over]), score[over], ".", color="#cb181d", ms=3, alpha=0.5, label="above threshold")
    ax_s.margins(y=0.1)
    ax_s.set_ylabel("score")
    fig.suptitle(f"{node}: score against threshold over time (UTC)", fontsize=10, x=0.08, ha="left")
    if ax_s.has_data():  # above the axes: never over the data
        ax_s.legend(loc="lower left", bbox_to_anchor=(0, 1), fontsize=7, ncols=4, frameon=False)
    lc, lq = _binned(t, lat, bins, (50, 95))
    if lc.size:
        x = _dates(lc)
        ax_l.plot(x, lq[:, 0], color="#238b45", lw=1.2, label="latency median")
        ax_l.plot(x, lq[:, 1], color="#74c476", lw=1, ls="--", label="latency p95")
        ax_l.legend(loc="upper left", fontsize=7, ncols=2, framealpha=0.6)
    ax_l.set_ylabel("latency ms")
    locator = AutoDateLocator()
    ax_l.xaxis.set_major_locator(locator)
    ax_l.xaxis.set_major_formatter(AutoDateFormatter(locator))
    for ax in (ax_s, ax_l):
        ax.grid(alpha=0.3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no values in this window", ha="center", va="center", transform=ax.transAxes)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()
