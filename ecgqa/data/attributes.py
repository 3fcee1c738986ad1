"""Dense attribute labels: every ECG-QA grounding class, for every ECG, from the source database's metadata.

The upperbound task (``ecgqa/data/upperbound_labels.py``) labels only the attributes that a single question
happens to ask about (a few per ECG). Every one of those attributes comes from PTB-XL's own metadata,
so this module derives all of them for every ECG: **yes (1) / no (0) / unknown (None)** per grounding
class, in the upperbound task's class list and order, one row per (ECG, lead subset). Unknown labels are
left out of a row (``label_mask`` 0 in training), exactly as the upperbound rows leave out classes
they do not label, so ``se-wrn``/``resnet-attn`` train on ``--task attributes`` unchanged.

Derivation (PTB-XL ``ptbxl_database.csv`` + ``scp_statements.csv``), one table in code and docs:

================================  ==========================================================================
source                            grounding class (row)
================================  ==========================================================================
``scp_codes`` statement           its description, lower-cased and spelled as ECG-QA spells it
                                  (:data:`SCP_CLASS`); located statements ("ischemic in inferior leads",
                                  "inferior myocardial infarction", "subendocardial injury in lateral
                                  leads") label the base class on that lead subset's row
diagnostic superclass             ``diagnostic_class`` NORM/MI/STTC/CD/HYP → normal ecg / myocardial
                                  infarction / st/t change / conduction disturbance / hypertrophy (entire)
statement kinds                   any diagnostic (diagnostic, not NORM) / any form-related (form) /
                                  any rhythm-related (rhythm, not SR) / any kind of abnormal (any of the
                                  three) symptoms (entire)
likelihood rule                   a diagnostic statement is certain at likelihood 100, *uncertain* below
                                  (0, 15, 35, 50, 80: PTB-XL's 0 means "likelihood not given");
                                  form and rhythm statements carry no likelihood (always 0) and count as
                                  certain. Uncertain → unknown (ECG-QA answers such verify questions "not
                                  sure"); a class with only uncertain evidence is unknown, not "no"
``static_noise`` …                static noise / burst noise / baseline drift / electrodes problems:
``electrodes_problems``           entire row yes when the column is filled; each single-lead row yes when
                                  the column names that lead (:func:`parse_leads`: "I-AVF" ranges in
                                  lead order, "alles" = all leads, "V2,3" = V2 V3, "V1V6", "AVL.AVF");
                                  a filled column naming no lead ("leicht" = slight) is yes on the entire
                                  row and no on every lead row, as the release answers it (ECG 211)
any kind of noises                any of the four noise columns (entire and per lead)
``heart_axis``                    MID → normal heart axis; LAD, ALAD → left axis deviation; RAD, ARAD →
                                  right axis deviation; AXL, AXR, SAG → extreme axis deviation
                                  (the other axis classes no; empty → unknown). ``release_rules``
                                  (``generate``): from the signal instead (:mod:`ecgqa.data.axis`)
``infarction_stadium1/2``         Stadium I / II / III → early / middle / old stage of myocardial
                                  infarction; "Stadium I-II", "II-III" → both stages; "unknown" → all
                                  three unknown; empty (both columns) → all three no. ``release_rules``:
                                  :func:`release_stages` (column 2 overrides, "I-II" early, "II-III" middle,
                                  old from column 2 only; stages always 0/1, "unknown" a class of its own)
``extra_beats``                   ES → extrasystoles, SVES → supraventricular extrasystoles, VES →
                                  ventricular extrasystoles (a count prefix "2ES" is ignored); any →
                                  any kind of extra systoles; empty → all no
``pacemaker``                     not a class of its own: "normal functioning artificial pacemaker" comes
                                  from the PACE statement (the column is only a cross-check)
measured intervals                "above / within / below the normal range of <interval>" by ECG-QA's own
                                  method (:mod:`ecgqa.data.features`: NeuroKit2 DWT on lead II, median
                                  over beats, :data:`ecgqa.data.features.RANGES`); not measurable →
                                  unknown. Only with signals (``prepare`` passes them)
================================  ==========================================================================

Rows: ``entire`` (every class), each of the twelve single leads (the noise classes, which the release
asks per lead), and each lead group a located statement names (:data:`LOCATED_BASES` classes).

Checked against the release: for every single-verify question of the bundled sample whose ECG has
metadata (413 noise questions) the derived label equals the answer (``tests/data/test_attributes.py``).
The bundled and shipped shards hold no single-verify scp_code / axis / stage / extra-systole question
on ECGs with metadata, so those rules follow PTB-XL's documentation and are not checked against
release answers; the release's own axis, stage and likelihood-0 rules (``release_rules``) are, on 165 harvested
release samples (``tests/generation/test_release_evidence.py``, docs/generate.md "Answer rules").
MIMIC-IV-ECG: ECG-QA does not document how its MIMIC attributes were derived from
``machine_measurements.csv`` report lines, and no MIMIC waveforms or reports are available here to
check one, so the attributes task supports PTB-XL only (a MIMIC release is refused with that reason).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgqa.data.constants import LEAD_GROUPS, LEADS

#: The noise columns of ptbxl_database.csv and their ECG-QA class.
NOISE_COLUMNS = {
    "static_noise": "static noise",
    "burst_noise": "burst noise",
    "baseline_drift": "baseline drift",
    "electrodes_problems": "electrodes problems",
}
ANY_NOISE = "any kind of noises"
#: Classes whose location moves into the lead subset (the upperbound conversion collapses them the same way).
LOCATED_BASES = ("myocardial infarction", "ischemic", "subendocardial injury")

#: PTB-XL SCP statement → (ECG-QA class, lead subset). Statements ECG-QA does not use are absent
#: (ANEUR, EL, WPW, SEHYP, RVH, 2AVB, 3AVB, PRC(S), SVARR, PSVT, TRIGU).
SCP_CLASS: dict[str, tuple[str, str]] = {
    "NDT": ("non-diagnostic t abnormalities", "entire"),
    "NST_": ("non-specific st changes", "entire"),
    "DIG": ("digitalis effect", "entire"),
    "LNGQT": ("long qt-interval", "entire"),
    "NORM": ("normal ecg", "entire"),
    "IMI": ("myocardial infarction", "inferior"),
    "ASMI": ("myocardial infarction", "anteroseptal"),
    "LVH": ("left ventricular hypertrophy", "entire"),
    "LAFB": ("left anterior fascicular block", "entire"),
    "ISC_": ("non-specific ischemic", "entire"),
    "IRBBB": ("incomplete right bundle branch block", "entire"),
    "1AVB": ("first degree av block", "entire"),
    "IVCD": ("non-specific intraventricular conduction disturbance (block)", "entire"),
    "ISCAL": ("ischemic", "anterolateral"),
    "CRBBB": ("complete right bundle branch block", "entire"),
    "CLBBB": ("complete left bundle branch block", "entire"),
    "ILMI": ("myocardial infarction", "inferolateral"),
    "LAO/LAE": ("left atrial overload/enlargement", "entire"),
    "AMI": ("myocardial infarction", "anterior"),
    "ALMI": ("myocardial infarction", "anterolateral"),
    "ISCIN": ("ischemic", "inferior"),
    "INJAS": ("subendocardial injury", "anteroseptal"),
    "LMI": ("myocardial infarction", "lateral"),
    "ISCIL": ("ischemic", "inferolateral"),
    "LPFB": ("left posterior fascicular block", "entire"),
    "ISCAS": ("ischemic", "anteroseptal"),
    "INJAL": ("subendocardial injury", "anterolateral"),
    "ISCLA": ("ischemic", "lateral"),
    "RAO/RAE": ("right atrial overload/enlargement", "entire"),
    "ILBBB": ("incomplete left bundle branch block", "entire"),
    "IPLMI": ("myocardial infarction", "inferoposterolateral"),
    "ISCAN": ("ischemic", "anterior"),
    "IPMI": ("myocardial infarction", "inferoposterior"),
    "INJIN": ("subendocardial injury", "inferior"),
    "INJLA": ("subendocardial injury", "lateral"),
    "PMI": ("myocardial infarction", "posterior"),
    "INJIL": ("subendocardial injury", "inferolateral"),
    "ABQRS": ("abnormal qrs", "entire"),
    "PVC": ("ventricular premature complex", "entire"),
    "STD_": ("non-specific st depression", "entire"),
    "VCLVH": ("voltage criteria (qrs) for left ventricular hypertrophy", "entire"),
    "QWAVE": ("q waves present", "entire"),
    "LOWT": ("low amplitude t-wave", "entire"),
    "NT_": ("non-specific t-wave changes", "entire"),
    "PAC": ("atrial premature complex", "entire"),
    "LPR": ("prolonged pr interval", "entire"),
    "INVT": ("inverted t-waves", "entire"),
    "LVOLT": ("low qrs voltages in the frontal and horizontal leads", "entire"),
    "HVOLT": ("high qrs voltage", "entire"),
    "TAB_": ("t-wave abnormality", "entire"),
    "STE_": ("non-specific st elevation", "entire"),
    "SR": ("sinus rhythm", "entire"),
    "AFIB": ("atrial fibrillation", "entire"),
    "STACH": ("sinus tachycardia", "entire"),
    "SARRH": ("sinus arrhythmia", "entire"),
    "SBRAD": ("sinus bradycardia", "entire"),
    "PACE": ("normal functioning artificial pacemaker", "entire"),
    "BIGU": ("bigeminal pattern (unknown origin, supraventricular, or ventricular)", "entire"),
    "AFLT": ("atrial flutter", "entire"),
    "SVTAC": ("supraventricular tachycardia", "entire"),
}
SUPERCLASS = {
    "NORM": "normal ecg",
    "MI": "myocardial infarction",
    "STTC": "st/t change",
    "CD": "conduction disturbance",
    "HYP": "hypertrophy",
}
KIND_CLASSES = (
    "any diagnostic symptoms",
    "any form-related symptoms",
    "any rhythm-related symptoms",
    "any kind of abnormal symptoms",
)
AXIS = {
    "MID": "normal heart axis",
    "LAD": "left axis deviation",
    "ALAD": "left axis deviation",
    "RAD": "right axis deviation",
    "ARAD": "right axis deviation",
    "AXL": "extreme axis deviation",
    "AXR": "extreme axis deviation",
    "SAG": "extreme axis deviation",
}
AXIS_CLASSES = ("normal heart axis", "left axis deviation", "right axis deviation", "extreme axis deviation")
STAGES = {
    "I": "early stage of myocardial infarction",
    "II": "middle stage of myocardial infarction",
    "III": "old stage of myocardial infarction",
}
#: the authors' "unknown" stage flag, a class under ``release_rules`` only (:func:`release_stages`)
UNKNOWN_STAGE = "unknown stage of myocardial infarction"
EXTRA = {"SVES": "supraventricular extrasystoles", "VES": "ventricular extrasystoles", "ES": "extrasystoles"}
ANY_EXTRA = "any kind of extra systoles"

#: A row's labels: grounding class → 1 yes / 0 no / None unknown.
Labels = dict[str, "int | None"]


class AttributesError(ValueError):
    """Metadata that cannot be used (wrong file, unsupported database); the message says what to do."""


# ------------------------------------------------------------------------------------------- parsing

_LEAD_UP = {lead.upper(): lead for lead in LEADS}
_TOKEN = re.compile(r"AV[RLF]|V\d{1,2}|III|II|I|\d")


def parse_leads(text: Any) -> tuple[bool, tuple[str, ...]] | None:
    """A PTB-XL noise column → (filled, leads named), leads in LEADS order; None if a part is unreadable.

    ``" , I-AVF,  "`` → all limb leads; ``"alles"`` → all twelve; ``"V2,3"`` → V2, V3; ``"V1V6"`` → V1, V6;
    ``"leicht"`` (a word, no lead) → (True, ()); empty/NaN → (False, ()).
    """
    if not isinstance(text, str):
        return False, ()
    parts = [p for p in re.split(r"[,.\s]+", text.strip()) if p]
    if not parts:
        return False, ()
    named: set[str] = set()
    prev_chest = False
    for part in parts:
        up = part.upper()
        if up == "ALLES":
            named.update(LEADS)
            continue
        if not re.fullmatch(r"[AVLRFI\d-]+", up):
            continue  # a word ("leicht"): noise present, no lead named
        if "-" in up:
            ends = up.split("-")
            if len(ends) != 2 or not all(ends):
                return None
            a = _lead(ends[0], prev_chest)
            b = _lead(ends[1], a is not None and a.startswith("V"))  # "V5-6" → V5…V6
            if a is None or b is None or LEADS.index(b) < LEADS.index(a):
                return None
            named.update(LEADS[LEADS.index(a) : LEADS.index(b) + 1])
            prev_chest = b.startswith("V")
            continue
        tokens = _TOKEN.findall(up)
        if "".join(tokens) != up:
            return None
        for tok in tokens:
            lead = _lead(tok, prev_chest)
            if lead is None:
                return None
            named.add(lead)
            prev_chest = lead.startswith("V")
    return True, tuple(lead for lead in LEADS if lead in named)


def _lead(token: str, chest_context: bool) -> str | None:
    """One token → lead name; a bare digit continues a chest list ("V2,3") or is a limb lead (1 → I)."""
    if token.isdigit():
        token = f"V{token}" if chest_context else {"1": "I", "2": "II", "3": "III"}.get(token, f"V{token}")
    return _LEAD_UP.get(token)


def parse_scp_codes(text: Any) -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` → dict; empty for NaN."""
    if not isinstance(text, str) or not text.strip():
        return {}
    value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise AttributesError(f"scp_codes is not a dict: {text!r}")
    return {str(k): float(v) for k, v in value.items()}


# ---------------------------------------------------------------------------------------- derivation


@dataclass(frozen=True)
class Statements:
    """What ``scp_statements.csv`` says of each code: diagnostic / form / rhythm, diagnostic superclass."""

    diagnostic: frozenset[str]
    form: frozenset[str]
    rhythm: frozenset[str]
    superclass: Mapping[str, str]
    #: every code the file lists (a code outside it is unknown: :func:`derive` cannot place it)
    codes: frozenset[str] = frozenset()

    @classmethod
    def read(cls, path: str | Path) -> Statements:
        import pandas as pd

        df = pd.read_csv(path, index_col=0)
        missing = {"diagnostic", "form", "rhythm", "diagnostic_class"} - set(df.columns)
        if missing:
            raise AttributesError(f"{path}: not PTB-XL's scp_statements.csv (missing columns {sorted(missing)})")

        def pick(col):
            return frozenset(df.index[df[col] == 1].astype(str))

        sup = {str(k): str(v) for k, v in df["diagnostic_class"].dropna().items()}
        return cls(pick("diagnostic"), pick("form"), pick("rhythm"), sup, frozenset(df.index.astype(str)))


def _set(labels: Labels, cls: str, value: int | None) -> None:
    """Combine evidence for one class: yes beats unknown beats no."""
    old = labels.get(cls, 0)
    if old == 1 or value == 1:
        labels[cls] = 1
    elif old is None or value is None:
        labels[cls] = None
    else:
        labels[cls] = 0


def derive(
    record: Mapping[str, Any],
    statements: Statements,
    measurements: Any = None,
    *,
    release_rules: bool = False,
) -> dict[str, Labels]:
    """All labels of one ECG (a ``ptbxl_database.csv`` row) → {lead subset: {class: 1/0/None}}.

    ``measurements`` (an :class:`ecgqa.data.measure.Measurements`) adds the normal-range classes; without it
    they are absent (unknown). Classes are named as ECG-QA names them; :func:`rows` orders them.

    ``release_rules`` (``ecgqa generate``): the ECG-QA authors' generator's rules where they differ from
    PTB-XL's documentation (docs/generate.md, "Answer rules"): a diagnostic statement of likelihood 0 is
    certain (as 100); the heart axis comes from the signal (``measurements.qrs_axis``, which
    :func:`measure_record` measures by ECG-QA's method: normal [−30°, 90°), left [−90°, −30°), right
    [90°, 180°], extreme otherwise; unknown when not measurable) instead of the ``heart_axis`` column; the
    stage of infarction follows :func:`release_stages` (column 2 overrides column 1, "I-II" = early,
    "II-III" = middle, old only from column 2; the stages are always known, and the authors' "unknown" flag is
    the class :data:`UNKNOWN_STAGE`).
    """
    entire: Labels = {}
    located: dict[str, Labels] = {}
    codes = parse_scp_codes(record.get("scp_codes"))

    # statements: every ECG-QA statement class starts as "no"
    for cls, group in set(SCP_CLASS.values()):
        if group == "entire":
            _set(entire, cls, 0)
    for base in LOCATED_BASES:
        _set(entire, base, 0)
    for cls in (*SUPERCLASS.values(), *KIND_CLASSES):
        _set(entire, cls, 0)
    groups_named = {g for _, g in SCP_CLASS.values() if g != "entire"}
    for g in groups_named:
        located[g] = {base: 0 for base in LOCATED_BASES}

    for code, likelihood in codes.items():
        certain = code not in statements.diagnostic or likelihood >= 100 or (release_rules and likelihood == 0)
        value = 1 if certain else None
        if code in SCP_CLASS:
            cls, group = SCP_CLASS[code]
            if group == "entire":
                _set(entire, cls, value)
            else:
                _set(located[group], cls, value)
                _set(entire, cls, value)  # the entire ECG shows what one of its lead groups shows
        if code in statements.superclass and statements.superclass[code] in SUPERCLASS:
            _set(entire, SUPERCLASS[statements.superclass[code]], value)
        kinds = []
        if code in statements.diagnostic and code != "NORM":
            kinds.append("any diagnostic symptoms")
        if code in statements.form:
            kinds.append("any form-related symptoms")
        if code in statements.rhythm and code != "SR":
            kinds.append("any rhythm-related symptoms")
        for cls in kinds:
            _set(entire, cls, value)
        if kinds:
            _set(entire, "any kind of abnormal symptoms", value)

    # noise columns
    per_lead: dict[str, Labels] = {lead: {} for lead in LEADS}
    any_noise = 0
    lead_any = dict.fromkeys(LEADS, 0)
    for column, cls in NOISE_COLUMNS.items():
        parsed = parse_leads(record.get(column))
        if parsed is None:
            entire[cls] = None
            for lead in LEADS:
                per_lead[lead][cls] = None
            continue
        filled, leads = parsed
        entire[cls] = int(filled)
        any_noise |= int(filled)
        for lead in LEADS:
            per_lead[lead][cls] = int(lead in leads)
            lead_any[lead] |= int(lead in leads)
    entire[ANY_NOISE] = any_noise
    for lead in LEADS:
        per_lead[lead][ANY_NOISE] = lead_any[lead]

    # heart axis
    axis = record.get("heart_axis")
    if release_rules:
        degrees = getattr(measurements, "qrs_axis", None)
        if measurements is not None:
            for cls in AXIS_CLASSES:
                entire[cls] = None if degrees is None else int(axis_class(degrees) == cls)
    elif isinstance(axis, str) and axis.strip() in AXIS:
        for cls in AXIS_CLASSES:
            entire[cls] = int(AXIS[axis.strip()] == cls)

    # stage of infarction
    entire.update(release_stages(record) if release_rules else _ptbxl_stages(record))

    # extra beats
    extra = record.get("extra_beats")
    extra_values = dict.fromkeys((*EXTRA.values(), ANY_EXTRA), 0)
    if isinstance(extra, str) and extra.strip():
        extra_values[ANY_EXTRA] = 1
        for part in re.split(r"[,\s]+", extra.strip()):
            kind = re.sub(r"^\d+", "", part.upper())
            if kind in EXTRA:
                extra_values[EXTRA[kind]] = 1
    entire.update(extra_values)

    # measured intervals
    if measurements is not None:
        for name, label in measurements.ranges().items():
            for where in ("above", "within", "below"):
                entire[f"{where} the normal range of {name}"] = None if label is None else int(label == where)

    out = {"entire": entire, **{lead: per_lead[lead] for lead in LEADS}}
    out.update(located)
    return out


def _ptbxl_stages(record: Mapping[str, Any]) -> Labels:
    """PTB-XL's meaning: both columns read, "Stadium I-II" = early and middle, "unknown" = every stage unknown."""
    stages = [record.get("infarction_stadium1"), record.get("infarction_stadium2")]
    stages = [s.strip() for s in stages if isinstance(s, str) and s.strip()]
    stage_values: Labels = dict.fromkeys(STAGES.values(), 0)
    for text in stages:
        m = re.fullmatch(r"Stadium (I{1,3})(?:-(I{1,3}))?", text)
        if m is None:  # "unknown"
            stage_values = dict.fromkeys(STAGES.values(), None) | {k: v for k, v in stage_values.items() if v}
            continue
        lo, hi = len(m.group(1)), len(m.group(2) or m.group(1))
        for n in range(lo, hi + 1):
            stage_values[STAGES["I" * n]] = 1
    return stage_values


def release_stages(record: Mapping[str, Any]) -> Labels:
    """The release's stage of infarction (templates 23–25): the ECG-QA authors' 2023 rule, which the release's
    answers follow (docs/generate.md, "Answer rules": 95 of 95 harvested samples, and the size of the release's
    "old" pool), as the three stage classes and :data:`UNKNOWN_STAGE`.

    A filled ``infarction_stadium2`` overrides column 1; "Stadium I" and "Stadium I-II" are early only,
    "Stadium II" and "Stadium II-III" middle only; old is column 2's "Stadium III" only (the 2023 code tests
    column 1 for "Staidum III", a typo that never matches, and the release kept it). The three stages are
    always known (1 / 0): the release asks 23/24 of every ECG and answers "no" / "none" where no stage is set.
    :data:`UNKNOWN_STAGE` is the authors' "unknown" flag: 1 when column 1 says "unknown"; 0 when some flag is
    set (a stage, or "none": both columns empty); None when the ECG has no flag at all (column 1 "Stadium III"
    alone, or an unrecognised text), which template 25 — answering the flags set — then does not ask, as the
    release does not.
    """

    def text(col: str) -> str:
        v = record.get(col)
        return v.strip() if isinstance(v, str) else ""

    s1, s2 = text("infarction_stadium1"), text("infarction_stadium2")
    stage = {"Stadium I": "I", "Stadium I-II": "I", "Stadium II": "II", "Stadium II-III": "II"}
    if s2:
        stage["Stadium III"] = "III"
    source = s2 or s1
    out: Labels = dict.fromkeys(STAGES.values(), 0)
    if source in stage:
        out[STAGES[stage[source]]] = 1
    flagged = not source or source in stage or s1 == "unknown"  # "none", a stage, or "unknown"
    out[UNKNOWN_STAGE] = int(s1 == "unknown") if flagged else None
    return out


def axis_class(degrees: float) -> str:
    """A frontal QRS axis in degrees → its ECG-QA class, binned as the authors' generator bins it."""
    d = (float(degrees) + 180.0) % 360.0 - 180.0  # (−180, 180]
    if d == -180.0:
        d = 180.0
    if -30.0 <= d < 90.0:
        return "normal heart axis"
    if -90.0 <= d < -30.0:
        return "left axis deviation"
    if 90.0 <= d <= 180.0:
        return "right axis deviation"
    return "extreme axis deviation"


def rows(ecg_id: int, labels: Mapping[str, Labels], classes: list[str]) -> Iterator[dict[str, Any]]:
    """Prepared-table rows for one ECG (``upperbound`` schema): only classes in ``classes``, unknown left out.

    ``sample_id`` = ecg_id * 100 + the lead subset's index in LEAD_GROUPS (stable, unique per row).
    """
    index = {c: i for i, c in enumerate(classes)}
    order = list(LEAD_GROUPS)
    for group, labs in labels.items():
        known = sorted((index[c], v) for c, v in labs.items() if c in index and v is not None)
        if not known:
            continue
        yield {
            "sample_id": int(ecg_id) * 100 + order.index(group),
            "ecg_id": [int(ecg_id)],
            "lead_group": group,
            "label_classes": [c for c, _ in known],
            "label_values": [int(v) for _, v in known],
            "question_type": "attributes",
            "attribute_type": "metadata",
        }


def read_metadata(path: str | Path, ecg_ids: Iterable[int] | None = None):
    """``ptbxl_database.csv`` (indexed by ecg_id), optionally only ``ecg_ids``; refuses other tables.

    Every problem is one ``AttributesError`` naming the file (and the line where there is one): a bad id
    or ``scp_codes`` cell must never turn into an empty or silently smaller dataset.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise AttributesError(f"--metadata {path}: no such file; pass PTB-XL's ptbxl_database.csv")
    if not path.is_file():
        raise AttributesError(f"--metadata {path}: not a regular file; pass PTB-XL's ptbxl_database.csv")
    needed = {"ecg_id", "scp_codes", *NOISE_COLUMNS, "heart_axis", "extra_beats"}
    expected = f"expected PTB-XL's ptbxl_database.csv (columns {', '.join(sorted(needed))}, ...)"
    try:
        head = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        raise AttributesError(f"{path} is empty: {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise AttributesError(f"{path}: cannot be read as a CSV ({e}); {expected}") from None
    if not needed <= set(head):
        if "study_id" in head or path.name == "machine_measurements.csv":
            raise AttributesError(
                f"{path}: MIMIC-IV-ECG metadata. ECG-QA does not document how its MIMIC attributes were "
                "derived from machine_measurements.csv, so --task attributes supports PTB-XL only"
            )
        raise AttributesError(f"{path}: not PTB-XL's ptbxl_database.csv (missing columns {sorted(needed - set(head))})")
    try:
        db = pd.read_csv(path, dtype={"ecg_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise AttributesError(f"{path}: cannot be read as a CSV ({e}); {expected}") from None
    ids = pd.to_numeric(db["ecg_id"], errors="coerce")
    bad = ids.isna() | (ids != ids.round()) | (ids < 1)
    if bad.any():
        first = int(bad.to_numpy().nonzero()[0][0])
        raise AttributesError(
            f"{path}, line {first + 2}: ecg_id {db['ecg_id'].iloc[first]!r} is not a positive "
            f"integer id ({int(bad.sum())} such rows)"
        )
    db.index = pd.Index(ids.astype("int64"), name="ecg_id")
    db = db.drop(columns="ecg_id")
    if db.index.has_duplicates:
        dup = int(db.index[db.index.duplicated()][0])
        raise AttributesError(f"{path}: ecg_id {dup} appears more than once")
    if ecg_ids is not None:
        db = db.loc[db.index.intersection(sorted({int(i) for i in ecg_ids}))]
    for _line, (ecg_id, text) in enumerate(db["scp_codes"].items()):
        try:
            parse_scp_codes(text)
        except (ValueError, SyntaxError, TypeError, AttributesError) as e:
            raise AttributesError(
                f"{path}: ecg_id {ecg_id}: scp_codes {str(text)[:80]!r} is not a "
                f"{{code: likelihood}} dict literal ({type(e).__name__})"
            ) from None
    return db


#: ``--num-proc`` of ``ecgqa prepare`` and ``ecgqa generate``: processes reading / measuring records.
NUM_PROC_RANGE = (1, 256)


def num_proc_ok(num_proc: Any) -> bool:
    """Whether ``num_proc`` is a whole number (not a bool) in :data:`NUM_PROC_RANGE` (each command words its
    own error)."""
    return (
        not isinstance(num_proc, bool)
        and isinstance(num_proc, int)
        and NUM_PROC_RANGE[0] <= num_proc <= NUM_PROC_RANGE[1]
    )


def measure_record(path: str | Path, release_axis: bool = True) -> Any:
    """Measurements of a record at its own rate (``ecgqa.data.measure``; intervals and their normal-range
    status by ECG-QA's method, ``ecgqa.data.features``); None when the record cannot be read.

    ``release_axis`` (``ecgqa generate``, ``generate check``): ``qrs_axis`` by ECG-QA's method
    (:func:`ecgqa.data.axis.release_qrs_axis`: the axis the release's answers follow, which
    ``ecgqa.data.measure``'s area axis does not; two more NeuroKit2 delineations, ~40 ms an ECG). False keeps
    ``ecgqa.data.measure``'s own axis: for callers that do not read the axis from the signal (``prepare
    --task attributes`` takes it from PTB-XL's ``heart_axis`` column)."""
    from dataclasses import replace

    from ecgqa.data.axis import release_qrs_axis
    from ecgqa.data.measure import measure_ecg
    from ecgqa.data.records import RecordError, read_record

    try:
        rec = read_record(path)
    except RecordError:
        return None
    m = measure_ecg(rec.signal, rec.fs)
    return replace(m, qrs_axis=release_qrs_axis(rec.signal, rec.fs)) if release_axis else m


def measure_records(
    paths: Iterable[str | Path],
    num_proc: int = 1,
    progress: bool = True,
    *,
    desc: str = "measure",
    release_axis: bool = True,
) -> list[Any]:
    """:func:`measure_record` of every path, in order (``None`` where a record cannot be read).

    ``num_proc`` > 1 measures in that many worker processes (``multiprocessing`` pool, ``imap`` in order,
    chunks of up to 16 records, as ``ecgqa prepare`` reads records); the results are those of one process.
    A tqdm bar (``desc``) unless ``progress`` is false. ``release_axis``: as :func:`measure_record`.
    """
    import functools
    import multiprocessing
    import sys

    from tqdm.auto import tqdm

    paths = [str(p) for p in paths]
    measure = functools.partial(measure_record, release_axis=release_axis)
    out: list[Any] = []
    bar = tqdm(total=len(paths), desc=desc, unit="ECG", disable=not progress)
    try:
        if num_proc > 1 and len(paths) > 1:
            from ecgqa.data import features

            features._delineator_module()  # import NeuroKit2 once, before the workers fork
            features.lean_available()
            ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else None)
            n = min(num_proc, len(paths))
            with ctx.Pool(n) as pool:
                chunk = max(1, min(16, len(paths) // (n * 8)))
                for m in pool.imap(measure, paths, chunksize=chunk):
                    out.append(m)
                    bar.update()
        else:
            for path in paths:
                out.append(measure(path))
                bar.update()
    finally:
        bar.close()
    return out


def verify_answer(labels: Mapping[str, Labels], sample: Mapping[str, Any], classes: Iterable[str]) -> tuple[str, str]:
    """The (lead subset, class) a single-verify question asks about, as the upperbound conversion reads it."""
    from ecgqa.data.leads import question_lead_group
    from ecgqa.data.upperbound_labels import split_location

    base, where = split_location(sample["attribute"][0], set(classes))
    group = question_lead_group(sample["question"]) or where
    return group, base


def derived_answer(labels: Mapping[str, Labels], group: str, cls: str) -> str | None:
    """ "yes" / "no" / "not sure" (unknown) for a (lead subset, class); None when the class is not derived."""
    row = labels.get(group, {})
    if cls not in row:
        return None
    value = row[cls]
    return "not sure" if value is None else ("yes" if value else "no")


def check_release(
    samples: Iterable[Mapping[str, Any]], metadata, statements: Statements, classes: list[str]
) -> dict[str, Any]:
    """Compare derived labels with every single-verify answer whose ECG has metadata.

    Returns counts and the disagreements (sample id, ECG, lead subset, class, release answer, derived).
    """
    checked = 0
    disagreements = []
    not_derived = []
    cache: dict[int, dict[str, Labels]] = {}
    for s in samples:
        if s["question_type"] != "single-verify" or int(s["ecg_id"][0]) not in metadata.index:
            continue
        if " the normal range" in s["question"]:
            continue  # measured, not metadata: see benchmarks/attributes.py
        ecg = int(s["ecg_id"][0])
        if ecg not in cache:
            cache[ecg] = derive(metadata.loc[ecg].to_dict() | {"ecg_id": ecg}, statements)
        group, cls = verify_answer(cache[ecg], s, classes)
        got = derived_answer(cache[ecg], group, cls)
        if got is None:
            not_derived.append((s["sample_id"], cls))
            continue
        checked += 1
        if got != s["answer"][0]:
            disagreements.append(
                {
                    "sample_id": s["sample_id"],
                    "ecg_id": ecg,
                    "lead_group": group,
                    "class": cls,
                    "release": s["answer"][0],
                    "derived": got,
                }
            )
    return {"checked": checked, "disagreements": disagreements, "not_derived": not_derived}
