"""Settle ECG-QA's unverified answer rules (docs/generate.md, "Answer rules") against real release samples.

The evidence is ``tests/generation/data/release_evidence.jsonl``: samples of templates 20–25 (heart axis, stage
of infarction) and of template 1 on "non-specific st changes" (likelihood 0) read from a public copy of the
ECG-QA PTB-XL release, kept only where the ECG's PTB-XL row is at hand
(``tests/generation/data/release_evidence_ptbxl_rows.csv``; provenance in
``tests/generation/data/SOURCE.md``). For each rule the alternatives are evaluated with the project's own
functions (:func:`ecgqa.data.attributes.derive`, :func:`ecgqa.generation.answers.answer`, and the slot reading
of :mod:`ecgqa.generation.check`), so "agrees" means what ``ecgqa generate check`` counts as agreement:

- heart axis (ECGs with a record only, for the two signal rules): ``release`` (the axis
  :func:`ecgqa.data.attributes.measure_record` gives, by ECG-QA's method: :mod:`ecgqa.data.axis`) vs ``area``
  (:mod:`ecgqa.data.measure`'s net-QRS-area axis, binned the same way) vs ``column`` (PTB-XL's ``heart_axis``
  column, as ``derive`` maps it without release rules);
- infarction stage: ``derive`` (what ``derive(release_rules=True)`` does now:
  :func:`ecgqa.data.attributes.release_stages`, the 2023 flags as labels, template 25 answering those that
  are 1) vs ``ptbxl`` (PTB-XL's meaning, the rule before:
  "Stadium I-II" = early and middle, "II-III" = middle and old, both columns read, "unknown" = all stages
  unknown) vs ``2023`` (the authors' 2023 code, fairseq-signals ``encode_ptbxl.py``, verbatim: stage flags,
  column 2 first, "I-II" = early, "II-III" = middle, old only from column 2 (column 1 is tested for the
  misspelt "Staidum III"); "unknown" in column 1 is a flag of its own; template 25 answers the flags set and
  is not asked of an ECG with none; 23/24 answer from the three stage flags, so "no" / "none" for an ECG
  without one);
- likelihood 0 of a diagnostic statement (template 1): ``certain`` (``derive(release_rules=True)``: as 100,
  "yes") vs ``uncertain`` (``derive`` without release rules: PTB-XL's "not given", "not sure").

Usage (the records give the signal axis; the bundled sample has 198 of PTB-XL's first 500)::

    python scripts/release_evidence.py [--records ROOT] [--write-release DIR]

``--write-release`` also writes the samples as a release-shaped folder (``DIR/ecgqa/ptbxl/template/...``) that
``ecgqa generate check --release DIR --records ROOT --metadata tests/generation/data/release_evidence_ptbxl_rows.csv``
reads.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "generation" / "data"
EVIDENCE = DATA / "release_evidence.jsonl"
ROWS = DATA / "release_evidence_ptbxl_rows.csv"
RELEASE_KEYS = (
    "template_id", "question_id", "sample_id", "question_type", "attribute_type", "question", "answer", "ecg_id",
    "attribute",
)  # fmt: skip

NONE_MI = "none of myocardial infarction"
UNKNOWN_MI = "unknown stage of myocardial infarction"
EARLY, MIDDLE, OLD = (f"{s} stage of myocardial infarction" for s in ("early", "middle", "old"))
AXIS_RULES = ("release", "area", "column")
STAGE_RULES = ("derive", "ptbxl", "2023")
LIKELIHOOD_RULES = ("certain", "uncertain")


def load_evidence(path: str | Path = EVIDENCE) -> list[dict[str, Any]]:
    """The harvested release samples (release keys plus ``release_file``, the shard they were read from)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _text(v: Any) -> str:
    return v.strip() if isinstance(v, str) else ""


def stage_flags_2023(record: Mapping[str, Any]) -> dict[str, bool]:
    """Template 25's five options → present, by the authors' 2023 code (its "Staidum III" typo included)."""
    s1, s2 = _text(record.get("infarction_stadium1")), _text(record.get("infarction_stadium2"))

    def stage(*names: str) -> bool:
        return s2 in names or (s1 in names and not s2)

    return {
        NONE_MI: not s1 and not s2,
        UNKNOWN_MI: s1 == "unknown",
        EARLY: stage("Stadium I", "Stadium I-II"),
        MIDDLE: stage("Stadium II", "Stadium II-III"),
        OLD: s2 == "Stadium III",
    }


def predict(
    sample: Mapping[str, Any],
    record: Mapping[str, Any],
    statements: Any,
    measurements: Any = None,
    *,
    axis: str = "release",
    stage: str = "derive",
    likelihood: str = "certain",
) -> list[str] | None:
    """The answer the generator gives ``sample`` under one choice of rules (None: the ECG is not asked it).
    ``measurements`` are those of the axis rule (:func:`measure_all`); None for ``column``.

    Raises :class:`ecgqa.generation.answers.AnswerError` where the labels lack what the template needs (e.g.
    a signal axis without a record, the ``column`` axis where the column is empty)."""
    from ecgqa.data.attributes import AXIS_CLASSES, derive
    from ecgqa.generation import answers as A
    from ecgqa.generation.check import slot_values
    from ecgqa.generation.templates import load_templates

    t = load_templates("ptbxl")[sample["template_id"]]
    ecg = int(sample["ecg_id"][0])
    row = dict(record) | {"ecg_id": ecg}
    labels = derive(row, statements, measurements, release_rules=True)
    if likelihood == "uncertain" and t.id not in (20, 21, 22, 23, 24, 25):
        labels = derive(row, statements, measurements, release_rules=False)
    elif likelihood not in LIKELIHOOD_RULES:
        raise ValueError(f"likelihood rule {likelihood!r}: expected one of {LIKELIHOOD_RULES}")
    if axis == "column":
        col = derive(row, statements, None, release_rules=False)["entire"]
        for cls in AXIS_CLASSES:
            labels["entire"].pop(cls, None)
            if cls in col:
                labels["entire"][cls] = col[cls]
    elif axis not in AXIS_RULES:
        raise ValueError(f"axis rule {axis!r}: expected one of {AXIS_RULES}")
    if stage == "2023":
        flags = stage_flags_2023(record)
        if t.id == 25:  # "unknown" is an answer of its own here, which no early/middle/old label can express
            return [o for o in t.options if flags.get(o)] or None
        labels["entire"].update({s: int(flags[s]) for s in (EARLY, MIDDLE, OLD)})
    elif stage == "ptbxl":
        ptbxl = derive(row, statements, None, release_rules=False)["entire"]
        if t.id == 25:  # the rule before: the stages that are 1, else "unknown" when all unknown, else "none"
            vals = [ptbxl[s] for s in (EARLY, OLD, MIDDLE)]
            got = [s for s, v in zip((EARLY, OLD, MIDDLE), vals, strict=True) if v == 1]
            if got or all(v is None for v in vals):
                return got or [UNKNOWN_MI]
            return None if None in vals else [NONE_MI]
        labels["entire"].update({s: ptbxl[s] for s in (EARLY, MIDDLE, OLD)})
    elif stage != "derive":
        raise ValueError(f"stage rule {stage!r}: expected one of {STAGE_RULES}")
    got = slot_values(t, sample)
    if got is None:
        raise A.AnswerError(f"sample {sample['sample_id']}: its text does not fit template {t.id}")
    values, lead = got
    return A.answer(t, values, lead, [labels], ecgs=sample["ecg_id"])


def evaluate(
    samples: Iterable[Mapping[str, Any]],
    db: Any,
    statements: Any,
    measurements: Mapping[int, Any] | None = None,
    *,
    axis: str = "release",
    stage: str = "derive",
    likelihood: str = "certain",
) -> dict[int, dict[str, Any]]:
    """Per template: samples checked, agreeing (same answer set), not asked, errors, and the disagreeing ids.

    ``measurements`` (ecg_id → measurements of the axis rule) is needed for the signal axes; samples of axis
    templates whose ECG has none are left out under those rules (counted in ``no_record``)."""
    from ecgqa.generation.answers import AnswerError

    out: dict[int, dict[str, Any]] = {}
    for s in samples:
        tid, ecg = s["template_id"], int(s["ecg_id"][0])
        row = out.setdefault(
            tid, {"checked": 0, "agree": 0, "not_asked": 0, "error": 0, "no_record": 0, "disagree_ids": []}
        )
        m = (measurements or {}).get(ecg)
        if tid in (20, 21, 22) and axis != "column" and m is None:
            row["no_record"] += 1
            continue
        row["checked"] += 1
        try:
            ans = predict(s, db.loc[ecg].to_dict(), statements, m, axis=axis, stage=stage, likelihood=likelihood)
        except AnswerError:
            row["error"] += 1
            row["disagree_ids"].append(s["sample_id"])
            continue
        if ans is None:
            row["not_asked"] += 1
            row["disagree_ids"].append(s["sample_id"])
        elif set(ans) == set(s["answer"]):
            row["agree"] += 1
        else:
            row["disagree_ids"].append(s["sample_id"])
    return dict(sorted(out.items()))


def measure_all(samples: Iterable[Mapping[str, Any]], records: str | Path, axis: str = "release") -> dict[int, Any]:
    """ecg_id → measurements for the axis samples' ECGs with a record under ``records``: ``release``, the
    generator's (:func:`ecgqa.data.attributes.measure_record`); ``area``, :mod:`ecgqa.data.measure`'s own."""
    from ecgqa.data.attributes import measure_record
    from ecgqa.data.measure import measure_ecg
    from ecgqa.data.records import read_record
    from mapping.sources import ptbxl_record_path

    if axis not in ("release", "area"):
        raise ValueError(f"axis rule {axis!r}: only 'release' and 'area' are measured")
    out = {}
    for e in sorted({int(s["ecg_id"][0]) for s in samples if s["template_id"] in (20, 21, 22)}):
        path = Path(records) / ptbxl_record_path(e)
        if path.with_name(path.name + ".hea").is_file():
            if axis == "release":
                out[e] = measure_record(path)
            else:
                rec = read_record(path)
                out[e] = measure_ecg(rec.signal, rec.fs)
    return out


def write_release(samples: Iterable[Mapping[str, Any]], out: str | Path, answers_csv: str | Path) -> Path:
    """The samples as a release folder (``out/ecgqa/ptbxl``: ``answers.csv`` + ``template/<split>/<shard>.json``)."""
    version = Path(out) / "ecgqa" / "ptbxl"
    shards: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        shards.setdefault(s["release_file"].removeprefix("ecgqa/ptbxl/"), []).append({k: s[k] for k in RELEASE_KEYS})
    for rel, items in shards.items():
        path = version / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(items, indent=1))
    shutil.copyfile(answers_csv, version / "answers.csv")
    return version


def table(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> str:
    """{rule name: evaluate(...)} → one Markdown table, a row per (template, rule)."""
    lines = [
        "| template | rule | checked | agree | not asked | error | disagreeing sample ids |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    tids = sorted({t for r in results.values() for t in r})
    for tid in tids:
        for name, res in results.items():
            r = res.get(tid)
            if r is None or not r["checked"]:
                continue
            ids = r["disagree_ids"]
            shown = ", ".join(map(str, ids[:12])) + (f" … (+{len(ids) - 12})" if len(ids) > 12 else "")
            lines.append(
                f"| {tid} | {name} | {r['checked']} | {r['agree']} | {r['not_asked']} | {r['error']} | {shown} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ecgqa.data.attributes import Statements, read_metadata
    from ecgqa.sample import paths

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=Path, default=paths().ptbxl_records, help="PTB-XL root with records500/")
    p.add_argument("--evidence", type=Path, default=EVIDENCE)
    p.add_argument("--metadata", type=Path, default=ROWS)
    p.add_argument("--write-release", type=Path, help="also write the samples as a release folder here")
    args = p.parse_args(argv)
    samples = load_evidence(args.evidence)
    db = read_metadata(args.metadata)
    statements = Statements.read(paths().ptbxl_records / "scp_statements.csv")
    m = {r: measure_all(samples, args.records, r) for r in ("release", "area")}
    axis_samples = [s for s in samples if s["template_id"] in (20, 21, 22)]
    stage_samples = [s for s in samples if s["template_id"] in (23, 24, 25)]
    scp_samples = [s for s in samples if s["template_id"] == 1]
    n_ecgs = len({s["ecg_id"][0] for s in samples})
    print(f"{len(samples)} samples over {n_ecgs} ECGs; {len(m['release'])} axis ECGs with records")
    print("\nheart axis\n")
    print(table({r: evaluate(axis_samples, db, statements, m.get(r), axis=r) for r in AXIS_RULES}))
    print("\nstage of infarction\n")
    print(table({r: evaluate(stage_samples, db, statements, stage=r) for r in STAGE_RULES}))
    print("\nlikelihood 0 (template 1)\n")
    print(table({r: evaluate(scp_samples, db, statements, likelihood=r) for r in LIKELIHOOD_RULES}))
    if args.write_release:
        v = write_release(samples, args.write_release, paths().ptbxl_release / "answers.csv")
        print(f"\nrelease folder: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
