"""`ecgqa prepare`: what a prepared directory holds, checked against wfdb and the release CSVs (the bundled
sample, hand-made question types, the MIMIC-IV-ECG layout, the question tokenizer)."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import wfdb

from ecgqa.data.constants import LEADS
from ecgqa.data.prepare import prepare
from ecgqa.data.prepared import PreparedData
from mapping.mapper import map_release
from tests.data.prepare_helpers import (
    load_samples,
    make_release,
    noise_question,
    qa,
    read_rdsamp,
    reference_encoding,
    tiny_mapped,
)

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


# ------------------------------------------------------------------------------------ bundled sample


@pytest.mark.slow
def test_every_stored_signal_equals_wfdb_rdsamp(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    assert data.signals.dtype == np.float16 and data.signals.shape == (len(data.ecg_ids), 12, 5000)
    for row, ecg_id in enumerate(data.ecg_ids):
        ref = read_rdsamp(sample_paths.ptbxl_records / "records500" / "00000" / f"{int(ecg_id):05d}_hr")
        np.testing.assert_allclose(data.signals[row].astype(np.float32), ref, rtol=1e-3, atol=2e-3)


def test_unique_ecgs_stored_once(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    ids = set()
    for split in ("train", "valid"):
        for s in load_samples(sample_paths.ptbxl_release / "template" / split):
            ids.update(s["ecg_id"])
    assert data.meta["n_ecgs"] == len(ids) == len(data.ecg_ids) == 198
    assert sorted(ids) == data.ecg_ids.tolist()


def test_labels_match_an_independent_computation(prepared_qa, sample_paths):
    data = PreparedData(prepared_qa)
    classes, encode = reference_encoding(sample_paths.ptbxl_release)
    assert data.classes == classes and len(classes) == 103
    attributes = data.meta["attributes"]
    for split in ("train", "valid"):
        samples = {s["sample_id"]: s for s in load_samples(sample_paths.ptbxl_release / "template" / split)}
        table = data.split(split)
        assert len(table) == len(samples) == data.meta["splits"][split]
        for row in table:
            s = samples[row["sample_id"]]
            answer, valid, codes = encode(s)
            assert row["answer"] == answer and row["valid_classes"] == valid
            assert (row["qt1"], row["qt2"], row["qt3"]) == codes
            assert row["ecg_id"] == s["ecg_id"] and row["question"] == s["question"]
            assert [int(data.ecg_ids[r]) for r in row["ecg_rows"]] == s["ecg_id"]
            assert row["attribute"] == (s["attribute"] or [])
            assert [attributes[i] for i in row["attribute_ids"]] == row["attribute"]


def test_meta_describes_the_build(prepared_qa, mapped_sample):
    meta = PreparedData(prepared_qa).meta
    assert (meta["version"], meta["variant"], meta["task"], meta["rate"], meta["signal_length"]) == (
        "ptbxl",
        "template",
        "qa",
        500,
        5000,
    )
    assert meta["splits"] == {"train": 413, "valid": 38}
    assert meta["attributes"] == sorted(meta["attributes"])
    src = {s["path"]: s for s in meta["sources"]}
    shard = mapped_sample / "template" / "train" / "120000.json"
    assert src["template/train/120000.json"]["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert src["template/train/120000.json"]["bytes"] == shard.stat().st_size


def test_upperbound_build_of_the_sample(prepared_upperbound, sample_paths):
    data = PreparedData(prepared_upperbound)
    with (sample_paths.grounding / "ptbxl" / "grounding_class.csv").open(newline="") as f:
        grounding = [r["class"] for r in csv.DictReader(f)]
    assert data.classes == data.meta["grounding_classes"] == grounding and len(grounding) == 83
    assert len(data.meta["answer_classes"]) == 103
    # every train question is "Does this ECG show <noise>[ in lead X]?" → one label on lead X (or the entire ECG)
    samples = {s["sample_id"]: s for s in load_samples(sample_paths.ptbxl_release / "template" / "train")}
    rows = list(data.split("train"))
    seen = set()
    for row in rows:
        s = samples[row["sample_id"]]
        parts = s["question"].rstrip("?").split(" in lead ")
        lead = parts[1] if len(parts) == 2 else "entire"
        assert row["lead_group"] == lead and row["ecg_id"] == s["ecg_id"]
        assert [grounding[c] for c in row["label_classes"]] == s["attribute"]
        assert row["label_values"] == [int(s["answer"] == ["yes"])]
        assert int(data.ecg_ids[row["ecg_rows"][0]]) == s["ecg_id"][0]
        seen.add((s["ecg_id"][0], lead, s["attribute"][0]))
    assert len(rows) == len(seen)  # no (ecg, subset, attribute) twice
    assert data.meta["splits"]["valid"] == 0  # comparison questions have no upperbound samples


def test_handmade_question_types_are_encoded(handmade):
    release, records, _, out, samples = handmade
    data = PreparedData(out)
    classes, encode = reference_encoding(release)
    rows = {r["sample_id"]: r for r in data.split("train")}
    for s in samples:
        answer, valid, codes = encode(s)
        r = rows[s["sample_id"]]
        assert (r["answer"], r["valid_classes"], (r["qt1"], r["qt2"], r["qt3"])) == (answer, valid, codes)
    # spelled out from docs/benchmark.md for the cases the issue names
    assert [classes[i] for i in rows[1]["valid_classes"]] == ["above the normal range", "within the normal range"]
    assert [classes[i] for i in rows[1]["answer"]] == ["within the normal range"]
    assert [classes[i] for i in rows[2]["valid_classes"]] == ["left axis deviation", "normal heart axis"]
    assert rows[4]["answer"] == [] and len(rows[4]["valid_classes"]) == 3  # none → all-zero; template 24 minus none
    assert (rows[5]["qt1"], rows[5]["qt2"], rows[5]["qt3"]) == (1, 3, 18)
    assert rows[5]["attribute"] == [] and rows[5]["attribute_ids"] == []
    assert [int(data.ecg_ids[i]) for i in rows[5]["ecg_rows"]] == [2, 5]
    np.testing.assert_allclose(
        data.signals[data.row_of(5)].astype(np.float32),
        read_rdsamp(records / "records500/00000/00005_hr"),
        rtol=1e-3,
        atol=2e-3,
    )


# ------------------------------------------------------------------------------------------- MIMIC


def test_mimic_layout_lead_order_and_upperbound(tmp_path, sample_paths):
    """No MIMIC waveforms are public: small WFDB records in the MIMIC layout (aVF stored before aVL)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "mimic"
    rows, signals = [], {}
    for subject, study in ((10000032, 40689238), (10000033, 40689239)):
        rel = f"files/p1000/p{subject}/s{study}/{study}"
        (root / rel).parent.mkdir(parents=True)
        sig = np.round(rng.normal(size=(5000, 12)), 3)
        wfdb.wrsamp(
            str(study),
            fs=500,
            units=["mV"] * 12,
            sig_name=MIMIC_ORDER,
            p_signal=sig,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str((root / rel).parent),
        )
        rows.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": "", "path": rel})
        signals[study] = sig.T
    with (root / "record_list.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    samples = [
        qa(
            1,
            4,
            "single-verify",
            "scp_code",
            "Does this ECG show symptoms of myocardial infarction in anterior leads?",
            ["yes"],
            [40689238],
            ["Myocardial infarction in anterior leads"],
        ),
        qa(
            2,
            26,
            "single-verify",
            "noise",
            "Does this ECG show broad R wave in lateral leads?",
            ["no"],
            [40689239],
            ["Broad R wave in lateral leads"],
        ),
    ]
    samples[0]["template_id"] = samples[1]["template_id"] = 1  # valid_classes of template 1: no / not sure / yes
    release = make_release(tmp_path / "release", sample_paths.mimic_release, {"test": samples})
    mapped = tmp_path / "mapped"
    map_release("mimic-iv-ecg", release, root, mapped, progress=False)

    qa_out = tmp_path / "qa"
    meta = prepare(mapped, qa_out, progress=False)
    data = PreparedData(qa_out)
    assert meta["version"] == "mimic-iv-ecg" and len(data.classes) == 187
    for study, sig in signals.items():
        stored = data.signals[data.row_of(study)].astype(np.float32)
        by_name = sig[[MIMIC_ORDER.index(lead) for lead in LEADS]]  # reorder by name, not position
        np.testing.assert_allclose(stored, by_name, rtol=1e-3, atol=2e-3)
        assert not np.allclose(stored[4], sig[4], atol=0.1)  # stored aVL is not the header's 5th channel

    ub = tmp_path / "ub"
    meta = prepare(mapped, ub, task="upperbound", progress=False)
    data = PreparedData(ub)
    assert len(data.classes) == 164
    rows = {r["sample_id"]: r for r in data.split("test")}
    assert rows[1]["lead_group"] == "anterior"
    assert [data.classes[c] for c in rows[1]["label_classes"]] == ["Myocardial infarction"]
    assert rows[1]["label_values"] == [1]
    assert rows[2]["lead_group"] == "lateral"  # the class names its leads (U1, as upstream)
    assert [data.classes[c] for c in rows[2]["label_classes"]] == ["Broad R wave in lateral leads"]


# -------------------------------------------------------------------------------- question tokenizer


def test_default_tokenizer_is_bert_base_uncased(prepared_qa):
    from ecgqa.data.vocab import BERT_VOCAB

    lines = BERT_VOCAB.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30522 and BERT_VOCAB.stat().st_size == 231508
    assert hashlib.sha256(BERT_VOCAB.read_bytes()).hexdigest() == (
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    )
    assert [lines[i] for i in (0, 100, 101, 102, 103)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (lines[1996], lines[7592], lines[2088], lines[1037]) == ("the", "hello", "world", "a")
    data = PreparedData(prepared_qa)
    tok = data.tokenizer
    assert len(tok) == 30522 and tok.pad_token_id == 0 and tok.unk_token_id == 100
    assert tok.tokenize("ECG") == ["ec", "##g"]
    assert tok("Does this ECG show sinus rhythm?")["input_ids"] == [
        101,
        2515,
        2023,
        14925,
        2290,
        2265,
        8254,
        2271,
        6348,
        1029,
        102,
    ]
    info = data.info.tokenizer
    assert (info.kind, info.vocab_size) == ("bert-base-uncased", 30522)
    assert info.vocab_sha256 == hashlib.sha256(BERT_VOCAB.read_bytes()).hexdigest()


def test_trained_tokenizer_sees_the_train_split_only(tmp_path, sample_paths):
    train = [noise_question(1, 2), noise_question(2, 5, lead="II")]
    valid = [
        qa(
            3,
            26,
            "single-verify",
            "noise",
            "Does this electrocardiogram show baseline drift?",
            ["no"],
            [5],
            ["baseline drift"],
        )
    ]
    mapped = tiny_mapped(tmp_path, sample_paths, {"train": train, "valid": valid})
    out = tmp_path / "prep"
    prepare(mapped, out, tokenizer="trained", progress=False)
    data = PreparedData(out)
    vocab = data.tokenizer.get_vocab()
    assert data.info.tokenizer.kind == "trained" and data.meta["splits"] == {"train": 2, "valid": 1}
    for word in ("does", "static", "noise", "lead"):
        assert word in vocab  # whole words of the train questions
    for word in ("electrocardiogram", "baseline", "drift"):
        assert word not in vocab  # only in valid: spelled from characters, never a whole token
    assert data.tokenizer.tokenize("dish") == ["d", "##i", "##s", "##h"]  # unseen word, seen characters
    assert data.tokenizer.tokenize("drift") == ["[UNK]"]  # "r" and "f" occur in no train question
