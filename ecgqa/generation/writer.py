"""Write generated samples in the ECG-QA release's own layout, plus ``generation.json``.

::

    OUT/template/<split>/NNNNN.json     10,000 samples a shard, named by the first sample_id (zero-padded)
    OUT/paraphrased/<split>/NNNNN.json  the samples whose template has a harvested paraphrase, same ids
    OUT/answers.csv                     the release's answer space (``index,class``)
    OUT/answers_for_each_template.csv   the options of each generated template
    OUT/<split>_ecgs.tsv                ``index<TAB>ecg_id`` of each split
    OUT/generation.json                 version, seed, caps, sources + sha256, counts per template × answer,
                                        what was skipped and why; for mapped datasets ecg_id → record name

The folder is built in a staging sibling and swapped in whole (``ecgqa.files``), so OUT holds this run's
release or, after a failure, the previous one. For datasets other than PTB-XL every sample carries
``ecg_path`` (as ``ecgqa map`` writes it), so ``prepare`` reads the folder directly.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from ecgqa import __version__
from ecgqa.files import atomic_write_json, claim_output_dir, recover_output, staging_dir, swap_dir
from ecgqa.generation.sampling import SPLITS
from ecgqa.generation.source import GenerationInput
from ecgqa.generation.templates import DATA, paraphrases

MARKER = "generation.json"
SHARD = 10_000


def _is_ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("generator") == "ecgqa generate"
    except (OSError, ValueError, AttributeError):
        return False


def _shard_name(first: int, total: int) -> str:
    return f"{first:0{max(5, len(str(max(total - 1, 0))))}d}.json"


def write_release(
    inp: GenerationInput,
    result: dict[str, Any],
    out: str | Path,
    *,
    seed: int,
    caps: str,
    balanced: bool,
    version: str = "ptbxl",
    progress: bool = True,
) -> dict[str, Any]:
    out = Path(out)
    recover_output(out)
    claim_output_dir(out, marker=MARKER, what="generated ECG-QA release", is_ours=_is_ours)
    staging = staging_dir(out)
    try:
        para = paraphrases() if version == "ptbxl" else {}
        rng = random.Random(seed + 1)
        n_para = 0
        for split in SPLITS:
            rows = result["samples"][split]
            if inp.mapped:
                for s in rows:
                    s["ecg_path"] = [os.path.abspath(inp.ecgs.at[e, "record"]) for e in s["ecg_id"]]
            para_rows = []
            for s in rows:
                patterns = para.get(s["template_id"])
                if not patterns:
                    continue
                t = result["templates"][s["template_id"]]
                values, lead = _slot_values(t, s)
                para_rows.append({**s, "question": t.fill(values, lead, text=rng.choice(patterns))})
            n_para += len(para_rows)
            for variant, items in (("template", rows), ("paraphrased", para_rows)):
                folder = staging / variant / split
                folder.mkdir(parents=True, exist_ok=True)
                for first in range(0, len(items), SHARD):
                    (folder / _shard_name(first, len(rows))).write_text(json.dumps(items[first : first + SHARD]))
            ids = result["ids_of"][split]
            (staging / f"{split}_ecgs.tsv").write_text("".join(f"{i}\t{e}\n" for i, e in enumerate(ids)))
        shutil.copyfile(DATA / f"{version}_answers.csv", staging / "answers.csv")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["template_id", "classes"])
        for tid, t in result["templates"].items():
            opts = [o for o in t.options if inp.has_likelihood or o != "not sure"]
            w.writerow([tid, str(sorted(opts))])
        (staging / "answers_for_each_template.csv").write_text(buf.getvalue())
        report = {
            "generator": "ecgqa generate",
            "ecgqa_version": __version__,
            "format_version": 1,
            "dataset": inp.dataset,
            "release_version": version,
            "seed": seed,
            "caps": caps,
            "balanced": balanced,
            "sources": inp.sources,
            "n_ecgs": {s: len(result["ids_of"][s]) for s in SPLITS},
            "n_samples": {s: len(result["samples"][s]) for s in SPLITS},
            "n_paraphrased": n_para,
            "n_questions_considered": result["n_questions"],
            "counts": result["counts"],
            "skipped_templates": result["skipped"],
            "paraphrased_templates": sorted(para),
            "templates_without_paraphrase": sorted(set(result["templates"]) - set(para)),
            "ecgs_outside_split": result["outside_split"][:100],
            "left_out": result.get("left_out", {}),
        }
        if inp.mapped:
            report["record_names"] = {str(int(e)): str(n) for e, n in inp.ecgs["record_name"].items()}
        atomic_write_json(staging / MARKER, report)
        swap_dir(staging, out)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _slot_values(t, s: dict) -> tuple[tuple[str, ...], str | None]:
    """The (values, lead) a generated sample was filled with, read back from its template text."""
    m = t.pattern().match(s["question"])
    if m is None or t.kind == "choose":  # a choose text may hold the word-swap quirk: the attribute is the truth
        values = tuple(s["attribute"] or ())
        lead = m.groups()[-1] if (m and t.has_lead) else None
        return values, lead
    lead = None
    values = []
    for tok, g in zip(t.tokens, m.groups(), strict=True):
        if tok == "${lead}":
            lead = g
        else:
            values.append(g)
    return tuple(values), lead
