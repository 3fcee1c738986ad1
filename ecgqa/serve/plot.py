"""The printed 12-lead layout clinicians read every day: 3×4 panels of 2.5 s plus a lead II rhythm strip.

Drawn on ECG paper (25 mm/s, 10 mm/mV; 1 mm minor and 5 mm major grid) with matplotlib's Agg
canvas directly, not pyplot, so figures can be rendered from several worker threads at once.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ecgqa.constants import LEADS

#: The standard print layout: rows of four 2.5 s panels (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6).
PANEL_ROWS: tuple[tuple[str, ...], ...] = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
PANEL_SECONDS = 2.5
ROW_MV = 3.0  # vertical space per row: 30 mm of paper
CAL_SECONDS = 0.4  # left margin holding the 1 mV calibration pulse

_MINOR_COLOR = "#f6c9c9"
_MAJOR_COLOR = "#e58c8c"
_TRACE_COLOR = "#111111"


def _grid(ax, x0: float, x1: float, y0: float, y1: float) -> None:
    """ECG paper: 0.04 s × 0.1 mV minor squares, 0.2 s × 0.5 mV major squares."""
    for step, color, width in ((0.04, _MINOR_COLOR, 0.35), (0.2, _MAJOR_COLOR, 0.7)):
        xs = np.arange(x0, x1 + 1e-9, step)
        ys = np.arange(y0, y1 + 1e-9, step * 2.5)
        segs = [((x, y0), (x, y1)) for x in xs] + [((x0, y), (x1, y)) for y in ys]
        ax.add_collection(LineCollection(segs, colors=color, linewidths=width, zorder=1 if step < 0.1 else 2))


def render_12lead(signal: np.ndarray, fs: int, title: str | None = None, dpi: int = 100) -> bytes:
    """A PNG of ``signal`` (12, T) in LEADS order, mV, sampled at ``fs`` Hz.

    Records shorter than 10 s leave the rest of the paper blank; longer ones show the first 10 s.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(LEADS):
        raise ValueError(f"expected a (12, T) signal in lead order {LEADS}, got shape {signal.shape}")
    n_rows = len(PANEL_ROWS) + 1
    width_s = 4 * PANEL_SECONDS
    x0, x1 = -CAL_SECONDS, width_s
    y0, y1 = 0.0, n_rows * ROW_MV
    # 25 mm/s and 10 mm/mV: one second is 2.5× as wide as one millivolt is tall, so squares stay square.
    mm_w, mm_h = (x1 - x0) * 25, (y1 - y0) * 10
    fig = Figure(figsize=(mm_w / 20, mm_h / 20 + (0.35 if title else 0)), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, mm_h / (mm_h + (7 if title else 0))))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_axis_off()
    _grid(ax, x0, x1, y0, y1)

    t_panel = round(PANEL_SECONDS * fs)
    traces = []
    label_kw = {"fontsize": 10, "fontweight": "bold", "va": "bottom", "ha": "left", "zorder": 4, "color": "#222"}
    for r in range(n_rows):
        base = y1 - (r + 0.55) * ROW_MV
        # Calibration pulse: 1 mV high, 0.2 s wide.
        cx = -CAL_SECONDS + 0.08
        traces.append([(cx, base), (cx + 0.04, base), (cx + 0.04, base + 1), (cx + 0.24, base + 1),
                       (cx + 0.24, base), (cx + 0.3, base)])
        if r < len(PANEL_ROWS):
            panels = [(lead, c * PANEL_SECONDS, c * t_panel, (c + 1) * t_panel) for c, lead in enumerate(PANEL_ROWS[r])]
        else:
            panels = [(RHYTHM_LEAD, 0.0, 0, 4 * t_panel)]
        for lead, start_s, a, b in panels:
            y = signal[LEADS.index(lead), a:b]
            if y.size:
                t = start_s + np.arange(y.size) / fs
                traces.append(np.column_stack([t, base + y]))
            ax.text(start_s + 0.05, base + 0.9, lead, **label_kw)
            if start_s > 0 and r < len(PANEL_ROWS):  # the short separator printed between panels
                ax.plot([start_s, start_s], [base - 0.25, base + 0.25], color=_TRACE_COLOR, lw=1.0, zorder=3)
    ax.add_collection(LineCollection(traces, colors=_TRACE_COLOR, linewidths=0.8, zorder=3))
    ax.text(x1 - 0.05, y0 + 0.08, f"25 mm/s   10 mm/mV   {fs} Hz", fontsize=8, ha="right", va="bottom",
            color="#555", zorder=4)
    if title:
        fig.text(0.005, 0.995, title, fontsize=11, ha="left", va="top", color="#222")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()
