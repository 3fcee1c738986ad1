"""Helpers of the `ecgqa prepare` tests: hand-made releases on real bundled records, and independent
references (wfdb, csv) to check a prepared directory against."""

from __future__ import annotations

import ast
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import wfdb

from ecgqa.data.constants import LEADS
from mapping.mapper import map_release


def read_rdsamp(record: Path) -> np.ndarray:
    """(12, T) in LEADS order, straight from wfdb (no ecgqa code); PTB-XL headers spell AVR/AVL/AVF."""
    sig, fields = wfdb.rdsamp(str(record))
    names = [n.upper() for n in fields["sig_name"]]
    return sig.T[[names.index(lead.upper()) for lead in LEADS]]


def reference_encoding(release: Path):
    """Answer classes and template classes read with csv/ast, to re-derive every label in the test."""
    with (release / "answers.csv").open(newline="") as f:
        classes = [r["class"] for r in csv.DictReader(f) if r["class"] != "none"]
    with (release / "answers_for_each_template.csv").open(newline="") as f:
        templates = {int(r["template_id"]): ast.literal_eval(r["classes"]) for r in csv.DictReader(f)}
    index = {c: i for i, c in enumerate(classes)}

    def encode(sample):
        answer = sorted(index[a] for a in sample["answer"] if a != "none")
        if sample["question_type"].endswith("choose"):
            names = [a if a in index else a.split(" of ")[0] for a in sample["attribute"]]
        else:
            names = [c for c in templates[sample["template_id"]] if c != "none"]
        valid = sorted({index[n] for n in names})
        scope, kind = sample["question_type"].split("-")
        qt1 = ["single", "comparison_consecutive", "comparison_irrelevant"].index(scope)
        qt2 = 3 * qt1 + ["verify", "choose", "query"].index(kind)
        atypes = ["scp_code", "noise", "stage_of_infarction", "extra_systole", "heart_axis", "numeric_feature"]
        qt3 = 6 * qt2 + atypes.index(sample["attribute_type"])
        return answer, valid, (qt1, qt2, qt3)

    return classes, encode


def load_samples(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.json")):
        out.extend(json.loads(path.read_text()))
    return out


def make_release(dest: Path, src: Path, shards: dict[str, list[dict]]) -> Path:
    """A release folder: the CSVs of ``src`` plus hand-made template shards {split: samples}."""
    dest.mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv"):
        shutil.copy(src / name, dest / name)
    for split, samples in shards.items():
        (dest / "template" / split).mkdir(parents=True)
        (dest / "template" / split / "0.json").write_text(json.dumps(samples))
    return dest


def copy_ptbxl_records(dest: Path, src_root: Path, ids: list[int]) -> Path:
    folder = dest / "records500" / "00000"
    folder.mkdir(parents=True)
    for i in ids:
        for ext in (".hea", ".dat"):
            shutil.copy(src_root / "records500" / "00000" / f"{i:05d}_hr{ext}", folder / f"{i:05d}_hr{ext}")
    return dest


def qa(sid, tid, qtype, atype, question, answer, ecg_id, attribute):
    return {
        "template_id": tid,
        "question_id": tid * 10,
        "sample_id": sid,
        "question_type": qtype,
        "attribute_type": atype,
        "question": question,
        "answer": answer,
        "ecg_id": ecg_id,
        "attribute": attribute,
    }


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path → its bytes (folders implied)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tiny_mapped(tmp_path: Path, sample_paths, samples_by_split: dict[str, list[dict]], ids=(2, 5)) -> Path:
    release = make_release(tmp_path / "release", sample_paths.ptbxl_release, samples_by_split)
    records = copy_ptbxl_records(tmp_path / "ptbxl", sample_paths.ptbxl_records, list(ids))
    mapped = tmp_path / "mapped"
    map_release("ptbxl", release, records, mapped, progress=False)
    return mapped


def noise_question(sid, ecg, lead="I", answer="no"):
    return qa(
        sid,
        26,
        "single-verify",
        "noise",
        f"Does this ECG show static noise in lead {lead}?",
        [answer],
        [ecg],
        ["static noise"],
    )
