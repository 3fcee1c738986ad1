"""One ECG renderer for the whole toolkit: a 12-lead ECG drawn as a clinical printout.

Used by ``ecgqa render``, by the demo's plots (``ecgqa/serve``) and by llm-eval's image input.
The picture is physically exact: the page is laid out in millimetres of ECG paper and the figure
is ``paper_mm / 25.4`` inches at ``dpi``, so at 25 mm/s and 10 mm/mV one second is
``25 * dpi / 25.4`` pixels wide and the 1 mV calibration pulse ``10 * dpi / 25.4`` pixels tall.
:func:`layout_geometry` returns where everything sits (in mm from the top-left corner), which is
what the tests measure the decoded PNG against.

Layouts (rows x columns of leads):

- ``3x4`` (default): I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6, each column a quarter of the
  shown time, plus a full-length lead II rhythm strip below.
- ``6x2``: limb leads on the left half of the time, chest leads on the right half.
- ``12x1``: every lead over the full time.
- ``3x1``: the three-channel rhythm strip II, V1, V5 over the full time.

matplotlib's object API (``Figure``) is used, never pyplot, so figures can be rendered from
several threads at once; matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ecgqa.data.constants import LEADS

MM_PER_INCH = 25.4
#: rows of lead names per layout; the 3x4 layout adds a lead II rhythm strip (RHYTHM_LEAD) below.
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "3x4": (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6")),
    "6x2": (("I", "V1"), ("II", "V2"), ("III", "V3"), ("aVR", "V4"), ("aVL", "V5"), ("aVF", "V6")),
    "12x1": tuple((lead,) for lead in LEADS),
    "3x1": (("II",), ("V1",), ("V5",)),
}
RHYTHM_LEAD = "II"
FORMATS = ("png", "svg")

ROW_MV = 3.0  # vertical paper per row, in mV: 30 mm at 10 mm/mV
BASELINE_FRACTION = 0.6  # baseline sits 60 % down the row: QRS complexes point up more than down
CAL_SECONDS = 0.4  # left margin of each row holding the calibration pulse
CAL_START, CAL_WIDTH = 0.1, 0.2  # the pulse: 1 mV high, 0.2 s wide, 0.1 s into the margin
MARGIN_MM = (12.0, 5.0, 10.0, 5.0)  # top (title), right, bottom (speed/gain line), left
TRACE_WIDTH_MM = 0.3

_COLORS = {  # (minor grid, major grid, trace and text)
    True: ("#f7caca", "#e07b7b", "#000000"),
    False: ("#dddddd", "#9a9a9a", "#000000"),
}


@dataclass(frozen=True)
class Panel:
    """One lead's strip: time ``t0``..``t1`` (s) drawn from ``x0``..``x1`` mm around ``baseline`` mm."""

    lead: str
    t0: float
    t1: float
    x0: float
    x1: float
    top: float
    bottom: float
    baseline: float
    rhythm: bool = False


@dataclass(frozen=True)
class Geometry:
    """Where everything sits on the page, in mm from the top-left corner (y grows downwards)."""

    width: float
    height: float
    grid: tuple[float, float, float, float]  # x0, y0, x1, y1 of the gridded area
    panels: tuple[Panel, ...]
    calibrations: tuple[tuple[float, float, float], ...]  # (x_rise, x_fall, baseline) per row
    speed: float
    gain: float

    def inches(self) -> tuple[float, float]:
        return self.width / MM_PER_INCH, self.height / MM_PER_INCH

    def pixels(self, dpi: float) -> tuple[int, int]:
        """The PNG's (width, height) in pixels at ``dpi``."""
        return int(self.width * dpi / MM_PER_INCH), int(self.height * dpi / MM_PER_INCH)  # as matplotlib truncates

    def panel(self, lead: str, rhythm: bool = False) -> Panel:
        return next(p for p in self.panels if p.lead == lead and p.rhythm == rhythm)


#: Accepted ranges: seconds, paper speed (mm/s), gain (mm/mV); and the largest picture drawn (pixels).
LIMITS = {"seconds": (0.1, 120.0), "speed": (1.0, 200.0), "gain": (0.5, 100.0)}
MAX_PIXELS = 60_000_000
MAX_TITLE = 200


def layout_geometry(layout: str = "3x4", *, seconds: float = 10.0, speed: float = 25.0, gain: float = 10.0) -> Geometry:
    """The page for ``layout`` showing ``seconds`` of signal at ``speed`` mm/s and ``gain`` mm/mV."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    for name, value, (low, high) in (
        ("seconds", seconds, LIMITS["seconds"]),
        ("speed", speed, LIMITS["speed"]),
        ("gain", gain, LIMITS["gain"]),
    ):
        if not (np.isfinite(value) and low <= value <= high):
            raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    rows = LAYOUTS[layout]
    n_cols = len(rows[0])
    rhythm = layout == "3x4"
    row_mm = ROW_MV * gain
    top, right, bottom, left = MARGIN_MM
    cal_mm = CAL_SECONDS * speed
    trace_x0 = left + cal_mm
    col_s = seconds / n_cols
    width = trace_x0 + seconds * speed + right
    n_rows = len(rows) + (1 if rhythm else 0)
    height = top + n_rows * row_mm + bottom
    panels, cals = [], []
    for r in range(n_rows):
        row_top = top + r * row_mm
        base = row_top + BASELINE_FRACTION * row_mm
        cals.append((left + CAL_START * speed, left + (CAL_START + CAL_WIDTH) * speed, base))
        leads = rows[r] if r < len(rows) else (RHYTHM_LEAD,)
        span = col_s if r < len(rows) else seconds
        for c, lead in enumerate(leads):
            panels.append(
                Panel(
                    lead,
                    c * span,
                    (c + 1) * span,
                    trace_x0 + c * span * speed,
                    trace_x0 + (c + 1) * span * speed,
                    row_top,
                    row_top + row_mm,
                    base,
                    r >= len(rows),
                )
            )
    return Geometry(width, height, (left, top, width - right, height - bottom), tuple(panels), tuple(cals), speed, gain)


def render_ecg(
    signal: np.ndarray,
    fs: float,
    *,
    layout: str = "3x4",
    speed: float = 25.0,
    gain: float = 10.0,
    dpi: int = 100,
    color: bool = True,
    fmt: str = "png",
    title: str | None = None,
    seconds: float = 10.0,
) -> bytes:
    """The printout of ``signal`` (12, T) in mV, LEADS order, sampled at ``fs`` Hz, as PNG or SVG bytes.

    ``seconds`` of paper are drawn (10 s, as printed ECGs are); a shorter record leaves the rest
    blank and a longer one shows its first ``seconds``.
    """
    # here, not at the top: the CLI's parser reads LAYOUTS and FORMATS from this module; matplotlib loads to draw
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != len(LEADS):
        raise ValueError(f"expected a (12, T) signal in lead order {', '.join(LEADS)}; got shape {signal.shape}")
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"sampling rate must be a positive number, got {fs!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (isinstance(dpi, (int, float)) and 10 <= dpi <= 1200):
        raise ValueError(f"dpi must be between 10 and 1200, got {dpi!r}")
    geo = layout_geometry(layout, seconds=seconds, speed=speed, gain=gain)
    w_px, h_px = (round(mm / MM_PER_INCH * dpi) for mm in (geo.width, geo.height))
    if w_px * h_px > MAX_PIXELS:
        raise ValueError(
            f"a {w_px}x{h_px}-pixel picture is too large (at most {MAX_PIXELS:,} pixels): "
            "lower --dpi, --seconds, --speed or --gain"
        )
    if title is not None and len(title) > MAX_TITLE:
        raise ValueError(f"title is {len(title)} characters long; at most {MAX_TITLE}")
    minor, major, ink = _COLORS[bool(color)]
    pt_per_mm = 72 / MM_PER_INCH

    fig = Figure(figsize=geo.inches(), dpi=dpi, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, geo.width)
    ax.set_ylim(geo.height, 0)  # y in mm from the top, like the geometry
    ax.set_axis_off()

    gx0, gy0, gx1, gy1 = geo.grid
    for step, colour, lw in ((1.0, minor, 0.1), (5.0, major, 0.25)):
        xs = np.arange(gx0, gx1 + 1e-6, step)
        ys = np.arange(gy0, gy1 + 1e-6, step)
        segs = [((x, gy0), (x, gy1)) for x in xs] + [((gx0, y), (gx1, y)) for y in ys]
        ax.add_collection(LineCollection(segs, colors=colour, linewidths=lw * pt_per_mm, zorder=1 + step / 5))

    traces = []
    for x_rise, x_fall, base in geo.calibrations:
        x_start = x_rise - CAL_START * speed / 2
        traces.append(
            [
                (x_start, base),
                (x_rise, base),
                (x_rise, base - gain),
                (x_fall, base - gain),
                (x_fall, base),
                (x_fall + CAL_START * speed / 2, base),
            ]
        )
    label = {"fontsize": 9, "fontweight": "bold", "ha": "left", "va": "top", "color": ink, "zorder": 4}
    for p in geo.panels:
        y = signal[LEADS.index(p.lead)]
        a, b = round(p.t0 * fs), round(p.t1 * fs)
        seg = y[a : min(b + 1, y.size)]  # one sample past the end joins the columns seamlessly
        if seg.size:
            t = (a + np.arange(seg.size)) / fs
            xs = p.x0 + (t - p.t0) * speed
            traces.append(np.column_stack([xs, p.baseline - seg * gain]))
        ax.text(p.x0 + 1.0, p.top + 1.0, p.lead, **label)
        if p.x0 > geo.panels[0].x0 and not p.rhythm:  # the short separator printed between columns
            traces.append([(p.x0, p.baseline - 0.25 * gain), (p.x0, p.baseline + 0.25 * gain)])
    ax.add_collection(
        LineCollection(
            traces, colors=ink, linewidths=TRACE_WIDTH_MM * pt_per_mm, zorder=3, capstyle="butt", joinstyle="round"
        )
    )
    small = {"fontsize": 8, "color": ink, "zorder": 4}
    ax.text(gx1, geo.height - 2.0, f"{speed:g} mm/s   {gain:g} mm/mV   {fs:g} Hz", ha="right", va="bottom", **small)
    if title:
        ax.text(
            gx0, 2.0, title, ha="left", va="top", fontsize=11, color=ink, zorder=4, parse_math=False
        )  # a title is plain text: "$...$" must not run matplotlib's math parser
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------- ecgqa render
