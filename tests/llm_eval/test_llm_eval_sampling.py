"""The LLM harness's question sample, offline: the paper's stratified draw (checked against an independent
re-implementation of the original script on the real sample release), its sizes per key, and --ids-file."""

from __future__ import annotations

import glob
import itertools
import json
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from llm_eval import sampling

# The original harness's qt3 keys: product(scope, kind, attribute type), in its spelling and order.
_UPSTREAM_KEYS = list(
    itertools.product(
        ["single", "comparison_consecutive", "comparison_irrelevant"],
        ["verify", "choose", "query"],
        ["scp_code", "noise", "stage_of_infarction", "extra_systole", "heart_axis", "numeric_feature"],
    )
)


def upstream_draw(manifest: list[dict], seed: int = 42) -> set[int]:
    """An independent re-implementation of ecg-qa llm_modeling/random_sample.py's draw over raw samples."""
    key_of = {k: i for i, k in enumerate(_UPSTREAM_KEYS)}
    candidates: dict[int, list[int]] = {i: [] for i in range(len(_UPSTREAM_KEYS))}
    for s in manifest:
        scope, kind = s["question_type"].split("-")
        candidates[key_of[(scope, kind, s["attribute_type"])]].append(s["sample_id"])
    random.seed(seed)
    sampled = {k: random.sample(v, round(len(v) / 10)) for k, v in candidates.items()}
    return {i for ids in sampled.values() for i in ids}


def _manifest(release, variant: str, split: str) -> list[dict]:
    out = []
    for f in sorted(glob.glob(str(release / variant / split / "*.json"))):  # the original's shard order
        out += json.loads(Path(f).read_text())
    return out


@pytest.mark.slow  # builds the prepared sample (shared with the end-to-end tests)
def test_default_sample_is_the_papers_draw(sample_paths, prepared_qa, tmp_path):
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(prepared_qa)
    for split in ("train", "valid"):
        want = upstream_draw(_manifest(sample_paths.ptbxl_release, "template", split))
        got = [q.sample_id for q in sampling.stratified_sample(sampling.questions_from_prepared(data, split))]
        assert set(got) == want and len(got) == len(want) > 0, split
        # the paraphrased questions: the same sample ids
        para = sampling.stratified_sample(
            sampling.questions_from_release(sample_paths.ptbxl_release, split, "paraphrased")
        )
        assert {q.sample_id for q in para} == want
        assert upstream_draw(_manifest(sample_paths.ptbxl_release, "paraphrased", split)) == want
    # the draw depends on manifest order and on the seed (as the original's does)
    qs = sampling.questions_from_prepared(data, "train")
    assert {q.sample_id for q in sampling.stratified_sample(qs, seed=7)} != set(got)
    assert {q.sample_id for q in sampling.stratified_sample(list(reversed(qs)))} != upstream_draw(
        _manifest(sample_paths.ptbxl_release, "template", "train")
    )
    # several shards, whose name order is not their numeric order: the original sorts names as strings
    rows = _manifest(sample_paths.ptbxl_release, "template", "train")
    for name, part in (("9.json", rows[:150]), ("10.json", rows[150:300]), ("200.json", rows[300:])):
        (tmp_path / "template" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "template" / "train" / name).write_text(json.dumps(part))
    manifest = _manifest(tmp_path, "template", "train")
    assert [s["sample_id"] for s in manifest] != [s["sample_id"] for s in rows]
    by_id = {q.sample_id: q for q in qs}
    ordered = [by_id[s["sample_id"]] for s in manifest]
    assert {q.sample_id for q in sampling.stratified_sample(ordered)} == upstream_draw(manifest)


def test_sample_sizes_per_key_and_fraction(train_questions):
    counts = Counter(q.qt3 for q in train_questions)
    got = Counter(q.qt3 for q in sampling.stratified_sample(train_questions))
    assert got == Counter({k: round(n / 10) for k, n in counts.items() if round(n / 10)})
    assert len(sampling.stratified_sample(train_questions, fraction=1.0)) == len(train_questions)
    # exact decimal arithmetic: round(n * 0.3) as round(3n / 10), half to even
    got = Counter(q.qt3 for q in sampling.stratified_sample(train_questions, fraction=0.3))
    assert got == Counter({k: round(Fraction(3 * n, 10)) for k, n in counts.items() if round(Fraction(3 * n, 10))})


def test_ids_file_in_the_original_sampled_manifest_format(tmp_path, train_questions):
    """The original harness's <split>_sampled.tsv: a folder line, then '<manifest index>.mat<TAB>sizes'."""
    picks = [7, 0, 123]
    (tmp_path / "train_sampled.tsv").write_text(
        "/data/ecgqa/train\n" + "".join(f"{i}.mat\t5000\t{12 + i % 5}\n" for i in picks)
    )
    ids = sampling.read_ids_file(tmp_path / "train_sampled.tsv")
    assert ids.kind == "manifest_index" and ids.values == picks
    chosen = sampling.select(train_questions, ids=ids)
    assert [q.sample_id for q in chosen] == sorted(train_questions[i].sample_id for i in picks)
    (tmp_path / "ids.csv").write_text(f"{train_questions[3].sample_id}, {train_questions[4].sample_id}\n")
    assert sampling.read_ids_file(tmp_path / "ids.csv").values == [
        train_questions[3].sample_id,
        train_questions[4].sample_id,
    ]
    (tmp_path / "far.tsv").write_text("/x\n99999.mat\t5000\t9\n")
    with pytest.raises(ValueError, match="99999"):
        sampling.select(train_questions, ids=sampling.read_ids_file(tmp_path / "far.tsv"))


def test_ids_file_selects_exactly_those(tmp_path, train_questions):
    ids = [train_questions[5].sample_id, train_questions[1].sample_id, train_questions[5].sample_id]
    (tmp_path / "ids.txt").write_text(f"# picked\n{ids[0]}\n{ids[1]}  # second\n\n{ids[2]}\n")
    read = sampling.read_ids_file(tmp_path / "ids.txt")
    assert read.values == ids and read.kind == "sample_id"
    chosen = sampling.select(train_questions, ids=read)
    assert [q.sample_id for q in chosen] == sorted(set(ids))
    (tmp_path / "ids.json").write_text(json.dumps(ids[:2]))
    assert sampling.read_ids_file(tmp_path / "ids.json").values == ids[:2]
    with pytest.raises(ValueError, match="123456789"):
        sampling.select(train_questions, ids=[123456789], where="x: ")
