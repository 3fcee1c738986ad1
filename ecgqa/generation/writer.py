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
release or, after a failure, the previous one. The engine writes each template's samples to part files
inside the staging folder (``PARTS``) as it draws them; :func:`write_release` merges them into the shards one
shard at a time (memory does not grow with the number of samples) and the parts are removed before the
swap. For datasets other than PTB-XL every sample carries ``ecg_path`` (as ``ecgqa map`` writes it), so
``prepare`` reads the folder directly.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecgqa import __version__
from ecgqa.files import atomic_write_json, claim_output_dir, recover_output, staging_dir, swap_dir
from ecgqa.generation.sampling import SPLITS
from ecgqa.generation.source import GenerationInput
from ecgqa.generation.templates import DATA

MARKER = "generation.json"
SHARD = 10_000
PARTS = ".parts"  # the engine's per-template sample files, inside the staging folder (not in the release)


def _is_ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("generator") == "ecgqa generate"
    except (OSError, ValueError, AttributeError):
        return False


def _shard_name(first: int, total: int) -> str:
    return f"{first:0{max(5, len(str(max(total - 1, 0))))}d}.json"


@contextmanager
def staged_release(out: str | Path) -> Iterator[Path]:
    """Claim ``out`` (absent, empty, or an earlier ``generate`` output), give a staging folder beside it to
    build the release in, and swap that in whole when the block ends without an error (``ecgqa.files``)."""
    out = Path(out)
    recover_output(out)
    claim_output_dir(out, marker=MARKER, what="generated ECG-QA release", is_ours=_is_ours)
    staging = staging_dir(out)
    try:
        yield staging
        shutil.rmtree(staging / PARTS, ignore_errors=True)
        swap_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_release(
    inp: GenerationInput,
    result: dict[str, Any],
    staging: str | Path,
    *,
    seed: int,
    caps: str,
    balanced: bool,
    version: str = "ptbxl",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the release into ``staging`` (from :func:`staged_release`): the samples :func:`engine.run` left
    in ``staging/PARTS``, merged into shards one shard at a time, and the other files. Returns the report
    (``generation.json``)."""
    from ecgqa.generation.engine import GENERATOR_VERSION, read_parts

    staging = Path(staging)
    para = result["paraphrases"]
    n_samples = {s: sum(n[s] for n in result["n"].values()) for s in SPLITS}
    n_para = 0
    for split in SPLITS:
        for variant in ("template", "paraphrased"):
            folder = staging / variant / split
            folder.mkdir(parents=True, exist_ok=True)
            shard: list[str] = []
            first = 0
            for text in read_parts(result, split, variant):
                shard.append(text)
                if len(shard) == SHARD:
                    (folder / _shard_name(first, n_samples[split])).write_text("[" + ", ".join(shard) + "]")
                    first += len(shard)
                    shard = []
            if shard:
                (folder / _shard_name(first, n_samples[split])).write_text("[" + ", ".join(shard) + "]")
                first += len(shard)
            if variant == "paraphrased":
                n_para += first
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
        "generator_version": GENERATOR_VERSION,
        "dataset": inp.dataset,
        "release_version": version,
        "seed": seed,
        "caps": caps,
        "balanced": balanced,
        "sources": inp.sources,
        "n_ecgs": {s: len(result["ids_of"][s]) for s in SPLITS},
        "n_samples": n_samples,
        "n_paraphrased": n_para,
        "n_questions_considered": result["n_questions"],
        "counts": result["counts"],
        "skipped_templates": result["skipped"],
        "paraphrased_templates": sorted(para),
        "paraphrase_test_pool_borrowed": sorted(t for t, pools in para.items() if "test" not in pools),
        "templates_without_paraphrase": sorted(set(result["templates"]) - set(para)),
        "ecgs_outside_split": result["outside_split"][:100],
        "left_out": result.get("left_out", {}),
    }
    if inp.mapped:
        report["record_names"] = {str(int(e)): str(n) for e, n in inp.ecgs["record_name"].items()}
    atomic_write_json(staging / MARKER, report)
    return report
