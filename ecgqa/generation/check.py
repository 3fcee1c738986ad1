"""``ecgqa generate check``: recompute release answers from (template, ECG ids, attribute) and compare.

For every release sample (``template/`` variant) whose ECGs all have a metadata row and a record, the
slot values are read back from the question text (choose questions: from ``attribute``, which gives the
true order even where the text carries the template-37 word-swap quirk), the answer is recomputed with
:func:`ecgqa.generation.answers.answer` over the labels :func:`ecgqa.data.attributes.derive` gives
(``release_rules=True``), and compared as a set with the release's answer. The question text is compared
too (the text the generator would write for those values), and so is the ``attribute`` field (what the
generator writes for those values, :func:`ecgqa.generation.templates.attribute_of`). Results per template
and per attribute type, with the disagreeing sample ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ecgqa.data.attributes import Statements, derive, measure_records, read_metadata
from ecgqa.data.release import find_version_dir, load_shard, shards
from ecgqa.generation import answers as A
from ecgqa.generation.ptbxl import check_num_proc, ptbxl_sources
from ecgqa.generation.templates import Template, attribute_of, load_templates, swap_words
from mapping.sources import ptbxl_record_path

MAX_IDS = 50


def slot_values(t: Template, sample: dict[str, Any]) -> tuple[tuple[str, ...], str | None] | None:
    """(values, lead) of a release sample, or None when its text does not fit the template."""
    attribute = sample.get("attribute") or []
    m = t.pattern().match(sample["question"])
    lead = None
    found: dict[str, str] = {}
    if m is not None:
        for tok, g in zip(t.tokens, m.groups(), strict=True):
            found[tok] = g
        lead = found.get("${lead}")
    if t.kind == "choose":
        if len(attribute) != 2:
            return None
        if t.id == 40:  # the release writes "<range> of <feature>"
            feature = found.get("${feature}")
            if feature is None:
                return None
            suffix = f" of {feature}"
            ranges = tuple(a[: -len(suffix)] if a.endswith(suffix) else a for a in attribute)
            return (feature, *ranges), lead
        if t.has_lead and lead is None:
            lm = re.search(r"in (lead \w+)", sample["question"])
            lead = lm.group(1) if lm else None
        return tuple(attribute), lead
    if m is None:
        return None
    return tuple(v for tok, v in found.items() if tok != "${lead}"), lead


def expected_texts(t: Template, values: tuple[str, ...], lead: str | None) -> set[str]:
    """The texts the release can write for these values (a choose question in either order)."""
    if t.kind != "choose":
        return {t.fill(values, lead)}
    head, (a, b) = values[:-2], values[-2:]
    return {t.fill((*head, a, b), lead), swap_words(t.fill((*head, b, a), lead), b, a)}


def check_release(
    release_dir: str | Path,
    records: str | Path,
    metadata: str | Path | None = None,
    *,
    measure: bool = True,
    progress: bool = True,
    version: str = "ptbxl",
    num_proc: int = 1,
) -> dict[str, Any]:
    """Agreement of the generator's answers and texts with a release, per template and attribute type.

    The records are measured in ``num_proc`` processes (:func:`ecgqa.data.attributes.measure_records`).
    """
    check_num_proc(num_proc)
    records = Path(records)
    metadata, statements_path = ptbxl_sources(records, metadata)
    version_dir = find_version_dir(release_dir, version)
    templates = load_templates(version)
    db = read_metadata(metadata)
    statements = Statements.read(statements_path)
    have = {int(e) for e in db.index if (records / ptbxl_record_path(int(e))).with_suffix(".hea").is_file()}
    samples = []
    for path in shards(version_dir, variants=("template",)):
        samples.extend(s for s in load_shard(path) if all(int(e) in have for e in s["ecg_id"]))
    need_signal = {
        int(e)
        for s in samples
        if templates[s["template_id"]].attribute_type in ("numeric_feature", "heart_axis")
        for e in s["ecg_id"]
    }
    labels: dict[int, Any] = {}
    ecgs = sorted({int(e) for s in samples for e in s["ecg_id"]})
    to_measure = [e for e in ecgs if e in need_signal] if measure else []
    paths = [records / ptbxl_record_path(e) for e in to_measure]
    measured = dict(zip(to_measure, measure_records(paths, num_proc, progress), strict=True))
    for e in tqdm(ecgs, desc="labels", unit="ECG", disable=not progress):
        labels[e] = derive(db.loc[e].to_dict() | {"ecg_id": e}, statements, measured.get(e), release_rules=True)
    per_template: dict[int, dict[str, Any]] = {}
    for s in tqdm(samples, desc="check", unit="sample", disable=not progress):
        t = templates[s["template_id"]]
        row = per_template.setdefault(
            t.id,
            {
                "template_id": t.id,
                "attribute_type": t.attribute_type,
                "checked": 0,
                "agree": 0,
                "not_askable": 0,
                "error": 0,
                "text_agree": 0,
                "attribute_agree": 0,
                "disagree_ids": [],
                "attribute_disagree_ids": [],
                "errors": [],
            },
        )
        row["checked"] += 1
        got = slot_values(t, s)
        if got is None:
            row["error"] += 1
            row["errors"].append((s["sample_id"], "text does not fit the template"))
            continue
        values, lead = got
        if s["question"] in expected_texts(t, values, lead):
            row["text_agree"] += 1
        if attribute_of(t, values) == s.get("attribute"):
            row["attribute_agree"] += 1
        elif len(row["attribute_disagree_ids"]) < MAX_IDS:
            row["attribute_disagree_ids"].append(s["sample_id"])
        try:
            ans = A.answer(t, values, lead, [labels[int(e)] for e in s["ecg_id"]], ecgs=s["ecg_id"])
        except A.AnswerError as err:
            row["error"] += 1
            if len(row["errors"]) < MAX_IDS:
                row["errors"].append((s["sample_id"], str(err)))
            continue
        if ans is None:
            row["not_askable"] += 1
            if len(row["disagree_ids"]) < MAX_IDS:
                row["disagree_ids"].append(s["sample_id"])
        elif set(ans) == set(s["answer"]):
            row["agree"] += 1
        elif len(row["disagree_ids"]) < MAX_IDS:
            row["disagree_ids"].append(s["sample_id"])
    by_type: dict[str, dict[str, int]] = {}
    for row in per_template.values():
        agg = by_type.setdefault(
            row["attribute_type"], {"checked": 0, "agree": 0, "text_agree": 0, "attribute_agree": 0}
        )
        for k in agg:
            agg[k] += row[k]
    return {
        "release": str(version_dir),
        "records": str(records),
        "metadata": str(metadata),
        "samples_checked": len(samples),
        "ecgs": len(ecgs),
        "per_template": [per_template[k] for k in sorted(per_template)],
        "per_attribute_type": by_type,
    }


def table(report: dict[str, Any]) -> str:
    """The agreement table as Markdown."""
    lines = [
        "| template | attribute type | checked | answer agrees | not askable | error | text agrees "
        "| attribute agrees |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(a: int, n: int) -> str:
        return f"{a} ({100 * a / n:.1f} %)" if n else "0"

    for r in report["per_template"]:
        lines.append(
            f"| {r['template_id']} | {r['attribute_type']} | {r['checked']} | {pct(r['agree'], r['checked'])} | "
            f"{r['not_askable']} | {r['error']} | {pct(r['text_agree'], r['checked'])} | "
            f"{pct(r['attribute_agree'], r['checked'])} |"
        )
    for name, r in sorted(report["per_attribute_type"].items()):
        lines.append(
            f"| all | {name} | {r['checked']} | {pct(r['agree'], r['checked'])} | | | "
            f"{pct(r['text_agree'], r['checked'])} | {pct(r['attribute_agree'], r['checked'])} |"
        )
    return "\n".join(lines)


def disagreements(report: dict[str, Any]) -> Iterable[str]:
    for r in report["per_template"]:
        if r["disagree_ids"]:
            yield f"template {r['template_id']}: disagreeing sample ids {r['disagree_ids']}"
        if r["attribute_disagree_ids"]:
            yield f"template {r['template_id']}: attribute disagrees in sample ids {r['attribute_disagree_ids']}"
        for sid, why in r["errors"][:5]:
            yield f"template {r['template_id']}: sample {sid}: {why}"
