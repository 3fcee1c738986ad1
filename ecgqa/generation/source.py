"""The one input every ``ecgqa generate`` reader produces, whatever the dataset.

A reader (``ecgqa/generation/ptbxl.py`` for PTB-XL, ``ecgqa/generation/datasets.py`` for PhysioNet
Challenge headers, CODE-15% and generic tables) turns a dataset into a :class:`GenerationInput`;
:func:`ecgqa.generation.engine.generate` turns that into an ECG-QA release folder. The generator never
looks at a dataset's own files: everything it needs is here.

Contract with the CLI (``ecgqa/cli/generate.py``): ``ecgqa generate physionet|code15|table`` calls
``ecgqa.generation.datasets.read(args) -> (GenerationInput, left_out)`` where ``args`` is the parsed
namespace (``args.dataset``, ``args.records`` / ``args.table`` / ``args.label_map``, ``args.quiet``) and
``left_out`` is ``{reason: [ecg_id, …]}`` (or ``{reason: {code: [ecg_id, …] or count}}`` for codes a reader
could not use; written to generation.json, one stderr line each). ``generate`` then measures every
record whose labels lack the numeric classes (:func:`ecgqa.generation.engine.add_signal_labels`: numeric
features and, unless the dataset labels it, the heart axis, through ``measure_records``, ``--num-proc``
processes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas

#: A row's labels, as :func:`ecgqa.data.attributes.derive` returns them: class → 1 yes / 0 no / None not sure.
Labels = dict[str, "int | None"]

DATASETS = ("ptbxl", "physionet", "code15", "table")


@dataclass
class GenerationInput:
    """A dataset ready for question generation.

    ``ecgs``: one row per ECG, index ``ecg_id`` (int, unique, > 0); columns ``patient_id`` (int or str),
    ``recorded_at`` (pandas Timestamp; orders a patient's ECGs for the consecutive-comparison templates;
    NaT → the ECG takes part in no consecutive pair), ``record`` (path of the WFDB record without extension,
    as ``ecgqa map`` writes ``ecg_path``), ``record_name`` (the dataset's own name for the ECG), ``fs`` (Hz).

    ``labels``: ecg_id → {row → {class → 1/0/None}}, rows shaped as :func:`ecgqa.data.attributes.derive`
    returns them (``"entire"``, the twelve single leads, the located lead groups). Numeric classes
    ("within the normal range of qt interval", …) and signal-derived classes (heart axis, when the dataset
    has no axis label) may be absent here: ``generate`` adds them from
    :func:`ecgqa.data.attributes.measure_record` (unless ``measure=False`` / ``--no-measure``). Class names
    are ECG-QA's, located statements in full ("myocardial infarction in inferior leads" is read from the
    row ``"inferior"``, class ``"myocardial infarction"``, as ``derive`` lays it out).

    ``classes``: the classes this dataset labels exhaustively (a missing label means "no"). Only these
    are asked; a template whose options contain none of them is skipped (and listed in generation.json).

    ``has_likelihood``: False → no answer is "not sure" (an unknown label is an error), and the templates
    "including / excluding uncertain symptoms" ask the same thing.

    ``lead_labels``: whether the dataset says in which leads a finding is (PTB-XL: noise columns and
    report text); False → the lead templates (17–19, 26, 28, 31, 33, 34) are not asked.

    ``sources``: input file → sha256 (written to generation.json).

    ``mapped``: True for datasets whose record names are not PTB-XL ids: every written sample carries
    ``ecg_path`` (as ``ecgqa map`` writes it) and generation.json maps ecg_id → record_name.
    """

    dataset: str
    ecgs: pandas.DataFrame
    labels: dict[int, dict[str, Labels]]
    classes: frozenset[str]
    has_likelihood: bool = True
    lead_labels: bool = True
    sources: dict[str, str] = field(default_factory=dict)
    mapped: bool = False
    #: The release's own split (ecg_id → "train"/"valid"/"test"), when ``*_ecgs.tsv`` files were given.
    split_of: dict[int, str] | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        missing = {"patient_id", "recorded_at", "record", "record_name", "fs"} - set(self.ecgs.columns)
        if missing:
            raise ValueError(f"GenerationInput.ecgs lacks columns {sorted(missing)}")
        if self.ecgs.index.has_duplicates:
            dup = self.ecgs.index[self.ecgs.index.duplicated()][0]
            raise ValueError(f"GenerationInput.ecgs: ecg_id {dup} appears more than once")
        unlabelled = [i for i in self.ecgs.index if int(i) not in self.labels]
        if unlabelled:
            raise ValueError(f"GenerationInput: ECG {unlabelled[0]} has no labels ({len(unlabelled)} such ECGs)")


class RowPool:
    """Shares equal label rows between ECGs: ``labels[e] = pool(derive(...))`` replaces each row dict of one
    ECG by the first equal row seen (most lead rows of most ECGs are equal), in place, and returns it. A
    reader that passes every ECG's labels through one pool keeps a few KB per ECG instead of ~8 (PTB-XL:
    22 rows, ~150 entries). Shared rows must not be changed afterwards."""

    def __init__(self) -> None:
        self._rows: dict[tuple, dict] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __call__(self, rows: dict[str, Labels]) -> dict[str, Labels]:
        for name, row in rows.items():
            try:
                rows[name] = self._rows.setdefault((name, *row.items()), row)
            except TypeError:  # an unhashable label value: this row stays its own
                pass
        return rows
