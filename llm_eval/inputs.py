"""What the LLM is shown about a question's ECG(s): ``--input`` and the per-ECG caches behind it.

- ``classifier``: an upperbound classifier's findings as text (the paper's protocol, :mod:`llm_eval.grounding`);
- ``image``: the ECG drawn as a 12-lead paper printout by ``ecgqa.render.render_ecg`` and sent as an
  ``image_url`` part holding a base64 PNG data URL (the format OpenAI-compatible vision servers accept);
- ``features``: measured intervals, axes and amplitudes from ``ecgqa.data.measure.measure_ecg``, as text; the
  intervals (RR, P, PR, QRS, QT, QTc) are ECG-QA's own method (``ecgqa.data.features``), the one the
  benchmark's numeric answers were computed with;
- ``none``: the question and its options only (the blind baseline).

Inputs combine (``image,classifier``); ``none`` stands alone. Every ECG is rendered and measured once:
the PNGs and the measurements are cached on disk beside the grounding cache, keyed by the prepared
data's content hash, the rendering options and the code that made them (``ecgqa/render.py`` or
``ecgqa/data/measure.py`` and ``ecgqa/data/features.py`` sources, matplotlib's version), so a re-run (or a
resumed run) renders and measures nothing and sends byte-identical prompts, and a changed renderer never
serves old pictures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ecgqa.files import atomic_write

INPUTS = ("image", "features", "classifier", "none")  # also the order their parts appear in a prompt
IMAGE_DETAILS = ("auto", "low", "high")


def parse_inputs(text: str) -> tuple[str, ...]:
    """``"image,classifier"`` → ``("image", "classifier")`` in :data:`INPUTS` order; errors name the option."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    unknown = sorted(set(names) - set(INPUTS))
    if unknown or not names:
        raise ValueError(f"--input {text!r}: expected one or more of {', '.join(INPUTS)} separated by commas")
    if "none" in names and len(set(names)) > 1:
        raise ValueError(f"--input {text!r}: 'none' (question and options only) cannot be combined with other inputs")
    return tuple(n for n in INPUTS if n in names)


def input_name(inputs: tuple[str, ...]) -> str:
    """How reports, transcripts and tables name an input combination: ``image+classifier``."""
    return "+".join(inputs)


def code_hash(module_name: str) -> str:
    """Hash of a module's source: a cache made by other code (a changed renderer or measure) is not reused."""
    import importlib

    from ecgqa.files import sha256_file

    return sha256_file(importlib.import_module(module_name).__file__)[:16]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class ImageCache:
    """Each ECG rendered once (``ecgqa.render.render_ecg``) and kept as ``<dir>/<ecg_id>.png``.

    ``dir`` is specific to the prepared data and the rendering options, so a different layout or dpi
    never reuses a picture drawn for another one.
    """

    def __init__(
        self,
        root: str | Path,
        signal_of: Callable[[int], np.ndarray],
        fs: float,
        data_hash: str,
        *,
        layout: str = "3x4",
        dpi: int = 100,
    ):
        from ecgqa.render import layout_geometry

        layout_geometry(layout)  # an unknown layout fails here, before anything is drawn
        if dpi < 10 or dpi > 600:
            raise ValueError(f"--dpi {dpi}: expected 10..600")
        self.layout, self.dpi, self.fs = layout, int(dpi), float(fs)
        self.signal_of = signal_of
        import matplotlib

        made_by = [code_hash("ecgqa.render"), matplotlib.__version__]
        key = hashlib.sha256(json.dumps([data_hash, layout, dpi, fs, made_by]).encode()).hexdigest()[:16]
        self.dir = Path(root) / "images" / f"{layout}-{dpi}dpi-{key}"
        self.n_rendered = 0
        self.render_s = 0.0
        self._by_sha: dict[str, Path] = {}
        self.sizes: dict[str, tuple[int, int]] = {}  # sha256 → (width, height) in pixels

    def path(self, ecg_id: int) -> Path:
        return self.dir / f"{int(ecg_id)}.png"

    def ref(self, ecg_id: int) -> str:
        """``sha256:<hex>``: how a prompt names this ECG's picture until it is sent (:meth:`expand`)."""
        png = self.png(ecg_id)
        sha = hashlib.sha256(png).hexdigest()
        self._by_sha[sha] = self.path(ecg_id)
        self.sizes[sha] = png_size(png)
        return f"sha256:{sha}"

    def expand(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages exactly as sent: every ``sha256:`` image reference as its PNG's base64 data URL."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                content = [self._expand_part(p) for p in content]
            out.append({**m, "content": content})
        return out

    def _expand_part(self, part: dict[str, Any]) -> dict[str, Any]:
        url = part.get("image_url", {}).get("url", "") if part.get("type") == "image_url" else ""
        if not url.startswith("sha256:"):
            return part
        png = self._by_sha[url.removeprefix("sha256:")].read_bytes()
        return {**part, "image_url": {**part["image_url"], "url": data_url(png)}}

    def png(self, ecg_id: int) -> bytes:
        path = self.path(ecg_id)
        if path.is_file():
            return path.read_bytes()
        import time

        from ecgqa.render import render_ecg

        t0 = time.perf_counter()
        png = render_ecg(
            np.asarray(self.signal_of(ecg_id), dtype=np.float32), self.fs, layout=self.layout, dpi=self.dpi
        )
        self.render_s += time.perf_counter() - t0
        self.n_rendered += 1
        atomic_write(path, png)
        return png


def _measurements_type() -> Any:
    from ecgqa.data.measure import Measurements

    return Measurements


class FeatureCache:
    """Each ECG measured once (``ecgqa.data.measure.measure_ecg``); the values kept in one JSON-lines file.

    What is kept is ``Measurements.as_dict()`` (rounded), and the prompt text is always made from that
    kept form, so a run that measured and a run that read the cache write the same prompt.
    A torn last line (a kill mid-write) is skipped and measured again.
    """

    KIND = "ecgqa-feature-cache"

    def __init__(self, root: str | Path, signal_of: Callable[[int], np.ndarray], fs: float, data_hash: str):
        self.signal_of, self.fs = signal_of, float(fs)
        code = [code_hash("ecgqa.data.measure"), code_hash("ecgqa.data.features")]
        key = hashlib.sha256(json.dumps([data_hash, fs, *code]).encode()).hexdigest()[:16]
        self.path = Path(root) / "features" / f"{key}.jsonl"
        self.values: dict[int, dict[str, Any]] = {}
        self.n_measured = 0
        self.measure_s = 0.0
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.values[int(rec["ecg_id"])] = rec["values"]
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue

    def measure(self, ecg_ids: list[int]) -> None:
        """Measure every ECG not cached yet and append them (fsync'd) to the cache file."""
        import time

        from ecgqa.data.measure import measure_ecg

        todo = [e for e in dict.fromkeys(int(e) for e in ecg_ids) if e not in self.values]
        if not todo:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            if f.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a torn line so the next record starts on its own
            for ecg_id in todo:
                t0 = time.perf_counter()
                values = measure_ecg(np.asarray(self.signal_of(ecg_id), dtype=np.float64), self.fs).as_dict()
                self.measure_s += time.perf_counter() - t0
                values = json.loads(json.dumps(values))  # exactly what the file keeps
                self.values[ecg_id] = values
                self.n_measured += 1
                f.write(json.dumps({"ecg_id": ecg_id, "values": values}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def text(self, ecg_id: int) -> str:
        """The measurement lines an LLM prompt shows (``Measurements.as_text``; None → "not measurable")."""
        m = _measurements_type()
        values = self.values[int(ecg_id)]
        fields = set(m.__dataclass_fields__)
        return m(**{k: v for k, v in values.items() if k in fields}).as_text()


def image_tokens(width: int, height: int, detail: str) -> int:
    """Estimated prompt tokens of one image, by OpenAI's published rule for GPT-4o-class models.

    ``low``: 85 tokens. ``high`` (and ``auto``, counted as high: an upper bound): the image is scaled to
    fit 2048 x 2048, then so that its shorter side is at most 768 px; each 512 px tile costs 170 tokens,
    plus 85. Other servers count differently (vLLM/Qwen-VL: about one token per 28 x 28 px patch); the
    estimate is for planning, the report's usage is what the server counted.
    """
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    import struct

    return struct.unpack(">II", png[16:24])
