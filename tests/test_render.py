"""The ECG printout measured in pixels: calibration height, paper speed, panels, rhythm strip.

Each test decodes the PNG that :func:`ecgqa.render.render_ecg` wrote and finds the trace's dark
pixels itself; the only thing taken from the renderer is the coarse region to look in
(:func:`ecgqa.render.layout_geometry`). Expected sizes come from the ECG paper convention
(1 mV = ``gain`` mm, 1 s = ``speed`` mm, 25.4 mm per inch), not from the renderer.
The PNGs are kept in $ECGQA_TEST_ARTIFACTS (or pytest's tmp dir) for a person to look at.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb
from PIL import Image

from ecgqa.data.constants import LEADS
from ecgqa.render import LAYOUTS, layout_geometry, render_ecg

FS = 500
DARK = 90  # a pixel is "ink" when all its channels are below this (the grid is light, the trace black)


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("ECGQA_TEST_ARTIFACTS") or tmp_path) / "render"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _ink(img: np.ndarray) -> np.ndarray:
    return (img < DARK).all(axis=2)


def _box(ink: np.ndarray, dpi: float, x0: float, x1: float, y0: float, y1: float) -> tuple[np.ndarray, int, int]:
    """The ink mask of the mm box [x0, x1] x [y0, y1] and its pixel origin."""
    k = dpi / 25.4
    c0, c1, r0, r1 = round(x0 * k), round(x1 * k), round(y0 * k), round(y1 * k)
    return ink[r0:r1, c0:c1], r0, c0


def _spikes(seconds: float, every: float, width: float, amp: float, start: float = 0.0) -> np.ndarray:
    t = np.arange(round(seconds * FS)) / FS
    return np.where(((t - start) % every < width) & (t >= start), amp, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dpi", [72, 150])
def test_page_is_physically_sized(layout, dpi):
    png = render_ecg(np.zeros((12, 10 * FS)), FS, layout=layout, dpi=dpi)
    geo = layout_geometry(layout)
    w, h = Image.open(io.BytesIO(png)).size
    assert abs(w - geo.width / 25.4 * dpi) < 1.01 and abs(h - geo.height / 25.4 * dpi) < 1.01
    # 10 s at 25 mm/s is 250 mm of trace, plus the calibration margin (0.4 s) and the page margins
    assert geo.width == pytest.approx(250 + 10 + 5 + 5)
    svg = render_ecg(np.zeros((12, 10 * FS)), FS, layout=layout, fmt="svg").decode()
    width_pt = float(re.search(r'<svg[^>]*width="([\d.]+)pt"', svg).group(1))
    assert width_pt == pytest.approx(geo.width / 25.4 * 72, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("speed,gain,dpi", [(25.0, 10.0, 300), (50.0, 20.0, 200), (25.0, 5.0, 254)])
def test_calibration_pulse_is_one_millivolt(speed, gain, dpi, artifacts):
    png = render_ecg(np.zeros((12, 10 * FS)), FS, speed=speed, gain=gain, dpi=dpi)
    (artifacts / f"calibration-{speed:g}mms-{gain:g}mmmV-{dpi}dpi.png").write_bytes(png)
    ink = _ink(_decode(png))
    geo = layout_geometry(speed=speed, gain=gain)
    px_mm = dpi / 25.4
    for x_rise, x_fall, base in geo.calibrations:
        box, _, _ = _box(ink, dpi, x_rise - 1, x_fall + 1, base - 1.5 * gain, base + 2)
        rows, cols = np.nonzero(box)
        assert rows.size
        # the pulse's top edge sits gain mm above its baseline (line centres; width cancels out)
        top = np.median(rows[cols == cols.min() + (cols.max() - cols.min()) // 2])
        bottom_rows = rows[cols == cols.min()]  # the baseline stub before the rise
        height_mm = (np.median(bottom_rows) - top) / px_mm
        assert height_mm == pytest.approx(gain, abs=0.25), height_mm
        # and it is 0.2 s wide: the two vertical edges are 0.2 * speed mm apart
        tall = np.flatnonzero(box.sum(axis=0) > 0.5 * gain * px_mm)
        edges = [tall[tall < tall.mean()].mean(), tall[tall > tall.mean()].mean()]
        assert (edges[1] - edges[0]) / px_mm == pytest.approx(0.2 * speed, abs=0.25)


@pytest.mark.parametrize("speed,dpi", [(25.0, 200), (50.0, 100)])
def test_one_second_is_speed_millimetres(speed, dpi, artifacts):
    signal = np.zeros((12, 10 * FS))
    signal[LEADS.index("II")] = _spikes(10, 1.0, 0.01, 1.0, start=0.5)  # a 1 mV, 10 ms spike every second
    png = render_ecg(signal, FS, speed=speed, dpi=dpi)
    (artifacts / f"speed-{speed:g}mms-{dpi}dpi.png").write_bytes(png)
    ink = _ink(_decode(png))
    geo = layout_geometry(speed=speed)
    strip = geo.panel("II", rhythm=True)
    # only the spikes reach above half a millivolt
    box, _, c0 = _box(ink, dpi, strip.x0, strip.x1, strip.baseline - 0.8 * geo.gain, strip.baseline - 0.5 * geo.gain)
    cols = np.flatnonzero(box.any(axis=0))
    groups = np.split(cols, np.flatnonzero(np.diff(cols) > 3) + 1)
    centres = np.array([g.mean() for g in groups]) + c0
    assert len(centres) == 10
    px_mm = dpi / 25.4
    assert np.diff(centres).mean() / px_mm == pytest.approx(speed, abs=0.1)
    assert np.abs(np.diff(centres) / px_mm - speed).max() < 0.5
    # the first spike at 0.5 s (+5 ms: the spike's centre) from the strip's start
    assert (centres[0] / px_mm - strip.x0) == pytest.approx(0.505 * speed, abs=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_lead_in_its_own_panel(layout, artifacts):
    """Lead k carries spikes of (0.2 + 0.08 k) mV: every panel's tallest excursion names its lead."""
    amps = {lead: 0.2 + 0.08 * k for k, lead in enumerate(LEADS)}
    signal = np.stack([_spikes(10, 0.3, 0.04, amps[lead]) for lead in LEADS])
    dpi = 200
    png = render_ecg(signal, FS, layout=layout, dpi=dpi)
    (artifacts / f"panels-{layout}.png").write_bytes(png)
    ink = _ink(_decode(png))
    geo = layout_geometry(layout)
    px_mm = dpi / 25.4
    expected_leads = {lead for row in LAYOUTS[layout] for lead in row}
    assert {p.lead for p in geo.panels if not p.rhythm} == expected_leads
    for p in geo.panels:
        # skip the label corner and the column separator; look between the row's top and the baseline
        box, _, _ = _box(ink, dpi, p.x0 + 8, p.x1 - 1, p.top + 0.5, p.baseline + 1)
        counts = box.sum(axis=1)
        first = np.flatnonzero(counts)[0]
        # horizontal lines (the spikes' flat tops, the baseline) have many ink pixels per row; the
        # spikes' vertical edges only a few
        rows = np.flatnonzero(counts > 0.5 * counts[first : first + 5].max())
        runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
        assert len(runs) >= 2, p  # the spikes' tops and the baseline, as separate horizontal lines
        measured = (runs[-1].mean() - runs[0].mean()) / px_mm / geo.gain  # line centre to line centre
        nearest = min(amps, key=lambda lead: abs(amps[lead] - measured))
        assert nearest == p.lead, (p, measured)
        assert measured == pytest.approx(amps[p.lead], abs=0.02)


def _trace_mv(ink: np.ndarray, dpi: float, panel, gain: float, skip_mm: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """The drawn trace of ``panel``: mean ink row per pixel column, as mV; and each column's x in mm."""
    box, r0, c0 = _box(ink, dpi, panel.x0 + skip_mm, panel.x1 - 0.5, panel.top + 5, panel.bottom)
    px_mm = dpi / 25.4
    counts = box.sum(axis=0)
    rows = (box * np.arange(box.shape[0])[:, None]).sum(axis=0) / np.maximum(counts, 1) + r0
    keep = counts > 0
    x_mm = (np.arange(box.shape[1]) + c0 + 0.5) / px_mm
    return (panel.baseline - rows[keep] / px_mm) / gain, x_mm[keep]


@pytest.mark.slow
def test_rhythm_strip_is_lead_two_of_a_real_record(sample_paths, artifacts):
    """A real bundled record: the strip's pixels follow lead II's samples (read with wfdb here)."""
    hea = min(Path(sample_paths.ptbxl_records).rglob("*.hea"))
    rec = wfdb.rdrecord(str(hea.with_suffix("")))
    names = [n.upper() for n in rec.sig_name]
    signal = np.stack([rec.p_signal[:, names.index(lead.upper())] for lead in LEADS])
    dpi = 200
    png = render_ecg(signal, rec.fs, dpi=dpi, title=f"PTB-XL {hea.stem}")
    (artifacts / f"real-{hea.stem}-3x4.png").write_bytes(png)
    for layout in ("6x2", "12x1", "3x1"):
        (artifacts / f"real-{hea.stem}-{layout}.png").write_bytes(render_ecg(signal, rec.fs, layout=layout, dpi=dpi))
    ink = _ink(_decode(png))
    geo = layout_geometry()
    strip = geo.panel("II", rhythm=True)
    drawn, x_mm = _trace_mv(ink, dpi, strip, geo.gain)
    t = (x_mm - strip.x0) / geo.speed
    samples = np.round(t * rec.fs).astype(int)
    corr = {lead: np.corrcoef(drawn, signal[i, samples])[0, 1] for i, lead in enumerate(LEADS)}
    assert corr["II"] > 0.95, corr
    # in millivolts, not just in shape: the median column sits within 0.05 mV of lead II's sample, and
    # every other lead (aVF correlates with II in shape) is at least twice as far off
    error = {lead: np.median(np.abs(drawn - signal[i, samples])) for i, lead in enumerate(LEADS)}
    assert error["II"] < 0.05, error
    assert min(e for lead, e in error.items() if lead != "II") > 2 * error["II"], error
    # the lead II panel of the first rows shows the same samples as the strip's first 2.5 s
    panel = geo.panel("II")
    top_drawn, top_x = _trace_mv(ink, dpi, panel, geo.gain)
    top_samples = np.round((top_x - panel.x0) / geo.speed * rec.fs).astype(int)
    assert np.corrcoef(top_drawn, signal[1, top_samples])[0, 1] > 0.95


def test_greyscale_has_no_colour():
    img = _decode(render_ecg(np.zeros((12, 10 * FS)), FS, color=False))
    assert (img.max(axis=2).astype(int) - img.min(axis=2)).max() <= 2
    coloured = _decode(render_ecg(np.zeros((12, 10 * FS)), FS))
    assert (coloured.max(axis=2).astype(int) - coloured.min(axis=2)).max() > 40


def test_grid_is_one_and_five_millimetres():
    dpi = 254  # 10 px per mm
    img = _decode(render_ecg(np.zeros((12, 10 * FS)), FS, dpi=dpi))
    geo = layout_geometry()
    gx0, _, gx1, _ = geo.grid
    # a horizontal line through a blank part of the first row (between the label and the baseline)
    row = img[round((geo.panels[0].top + 8.5) * 10), round(gx0 * 10) : round(gx1 * 10)].astype(int)
    redness = row[:, 0] - row[:, 2]  # grid lines are red/pink, paper white
    minor = np.flatnonzero(redness > 20)
    centres = np.array([g.mean() for g in np.split(minor, np.flatnonzero(np.diff(minor) > 1) + 1)])
    assert np.median(np.diff(centres)) == pytest.approx(10, abs=0.5)  # 1 mm
    major = np.flatnonzero(redness > 80)
    centres = np.array([g.mean() for g in np.split(major, np.flatnonzero(np.diff(major) > 1) + 1)])
    assert np.median(np.diff(centres)) == pytest.approx(50, abs=0.5)  # 5 mm


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(12, T\)"):
        render_ecg(np.zeros((10, 100)), FS)
    with pytest.raises(ValueError, match="layout"):
        render_ecg(np.zeros((12, 100)), FS, layout="4x3")
    with pytest.raises(ValueError, match="format"):
        render_ecg(np.zeros((12, 100)), FS, fmt="jpg")
    with pytest.raises(ValueError, match="speed"):
        render_ecg(np.zeros((12, 100)), FS, speed=0)


@pytest.mark.slow
def test_cli_renders_a_record_and_prepared_data(sample_paths, prepared_qa, tmp_path):
    hea = min(Path(sample_paths.ptbxl_records).rglob("*.hea"))
    out = tmp_path / "rec.png"
    cmd = [
        sys.executable,
        "-m",
        "ecgqa",
        "render",
        str(hea.with_suffix("")),
        "--out",
        str(out),
        "--dpi",
        "50",
        "--layout",
        "12x1",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    assert Image.open(out).size == layout_geometry("12x1").pixels(50)
    ecg_id = int(hea.stem.split("_")[0])
    out2 = tmp_path / "prep.svg"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ecgqa",
            "render",
            "--data",
            str(prepared_qa),
            "--ecg-id",
            str(ecg_id),
            "--out",
            str(out2),
        ],
        check=True,
        capture_output=True,
    )
    assert out2.read_text().lstrip().startswith("<?xml")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecgqa",
            "render",
            "--data",
            str(prepared_qa),
            "--ecg-id",
            "999999999",
            "--out",
            str(tmp_path / "x.png"),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "999999999" in bad.stderr and "Traceback" not in bad.stderr


def test_titles_are_plain_text_and_sizes_are_bounded():
    """Probe N8/N9: "$...$" in a title ran matplotlib's math parser; huge gain/seconds leaked its errors."""
    signal = np.zeros((12, 1000))
    for title in ("x$" + "{" * 150 + "$", "$\\frac{a}{" * 15, "cost: $5 and $6"):
        png = render_ecg(signal, 100, dpi=20, title=title)
        assert png.startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="at most 200"):
        render_ecg(signal, 100, title="t" * 201)
    for kw, match in (
        ({"gain": 1e308}, "gain must be between"),
        ({"seconds": 1e5}, "seconds must be between"),
        ({"speed": 0.0}, "speed must be between"),
        ({"seconds": 120, "speed": 200, "dpi": 1200}, "too large"),
    ):
        with pytest.raises(ValueError, match=match):
            render_ecg(signal, 100, **kw)
