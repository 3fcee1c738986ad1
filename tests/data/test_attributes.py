"""Dense attribute labels (ecgqa/data/attributes.py): lead parsing, the derivation rules, and agreement with
every single-verify answer of the release whose ECG has metadata."""

from __future__ import annotations

import ast
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ecgqa.data import attributes as A
from ecgqa.data.constants import LEADS
from ecgqa.data.release import load_shard, shards
from ecgqa.data.upperbound_labels import bundled_grounding_classes, read_grounding_classes

SHARED = Path("/work/shared/data")  # optional: the shipped shards, when this machine has them


@pytest.fixture(scope="module")
def classes() -> list[str]:
    return read_grounding_classes(bundled_grounding_classes("ptbxl"))


@pytest.fixture(scope="module")
def statements(sample_paths) -> A.Statements:
    return A.Statements.read(sample_paths.ptbxl_records / "scp_statements.csv")


LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")


@pytest.mark.parametrize(
    "text,expected",
    [
        (" , I-AVF,  ", (True, LIMB)),
        (" , alles,  ", (True, LEADS)),
        ("V2,3", (True, ("V2", "V3"))),
        (" , V3,5,6", (True, ("V3", "V5", "V6"))),
        ("v5-6,  ", (True, ("V5", "V6"))),
        (" , V1V6", (True, ("V1", "V6"))),
        (" , I,II,AVR,AVL.AVF,V1,  ", (True, ("I", "II", "aVR", "aVL", "aVF", "V1"))),
        (" , I,III-AVR,  ", (True, ("I", "III", "aVR"))),
        (" , III,V3-V6", (True, ("III", "V3", "V4", "V5", "V6"))),
        (" , II,III,AVF-V6", (True, ("II", "III", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"))),
        (" , leicht,  ", (True, ())),
        (float("nan"), (False, ())),
        ("  ", (False, ())),
        ("V6-I", None),  # a backwards range is unreadable, not guessed
    ],
)
def test_parse_leads(text, expected):
    assert A.parse_leads(text) == expected


def test_every_noise_value_of_the_bundled_metadata_parses(sample_paths):
    db = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv")
    for column in A.NOISE_COLUMNS:
        for value in db[column].dropna().unique():
            assert A.parse_leads(value) is not None, (column, value)


def _record(**kw) -> dict:
    base = {
        "scp_codes": "{'SR': 0.0}",
        "heart_axis": float("nan"),
        "infarction_stadium1": float("nan"),
        "infarction_stadium2": float("nan"),
        "extra_beats": float("nan"),
        "pacemaker": float("nan"),
        **{c: float("nan") for c in A.NOISE_COLUMNS},
    }
    return base | kw


def test_likelihood_rule_and_superclasses(statements):
    labels = A.derive(
        _record(scp_codes="{'IMI': 100.0, 'NST_': 50.0, 'ABQRS': 0.0, 'SR': 0.0, 'LVH': 0.0}"), statements
    )
    e = labels["entire"]
    assert e["myocardial infarction"] == 1 and labels["inferior"]["myocardial infarction"] == 1
    assert labels["anterior"]["myocardial infarction"] == 0
    assert e["non-specific st changes"] is None  # diagnostic at 50: uncertain → unknown ("not sure")
    assert e["left ventricular hypertrophy"] is None  # diagnostic with likelihood 0 = not given: uncertain
    assert e["st/t change"] is None and e["hypertrophy"] is None  # only uncertain evidence
    assert e["abnormal qrs"] == 1  # form statement: no likelihood, certain
    assert e["sinus rhythm"] == 1 and e["any rhythm-related symptoms"] == 0 and e["any form-related symptoms"] == 1
    assert e["any diagnostic symptoms"] == 1 and e["any kind of abnormal symptoms"] == 1
    assert e["normal ecg"] == 0 and e["atrial fibrillation"] == 0


def test_axis_stage_extra_beats_noise(statements):
    labels = A.derive(
        _record(
            heart_axis="ALAD",
            infarction_stadium1="Stadium II-III",
            extra_beats="2SVES",
            burst_noise="V2,3",
            static_noise=" , leicht,  ",
        ),
        statements,
    )
    e = labels["entire"]
    assert [e[c] for c in A.AXIS_CLASSES] == [0, 1, 0, 0]
    assert (
        e["early stage of myocardial infarction"],
        e["middle stage of myocardial infarction"],
        e["old stage of myocardial infarction"],
    ) == (0, 1, 1)
    assert e["supraventricular extrasystoles"] == 1 and e["ventricular extrasystoles"] == 0
    assert e["any kind of extra systoles"] == 1
    assert e["burst noise"] == 1 and e["static noise"] == 1 and e["any kind of noises"] == 1
    assert labels["V2"]["burst noise"] == 1 and labels["V4"]["burst noise"] == 0
    assert labels["V2"]["static noise"] == 0  # "leicht" names no lead (release: ECG 211, lead V2 → "no")
    assert labels["V3"]["any kind of noises"] == 1 and labels["I"]["any kind of noises"] == 0
    unknown = A.derive(_record(infarction_stadium1="unknown"), statements)["entire"]
    assert unknown["early stage of myocardial infarction"] is None
    assert "normal heart axis" not in A.derive(_record(), statements)["entire"]  # no heart_axis → unknown


def test_rows_follow_the_grounding_class_order(statements, classes):
    labels = A.derive(
        _record(scp_codes="{'NORM': 100.0, 'SR': 0.0}", heart_axis="MID", baseline_drift=" , V6"), statements
    )
    rows = list(A.rows(7, labels, classes))
    groups = [r["lead_group"] for r in rows]
    assert groups[0] == "entire" and set(LEADS) <= set(groups) and "inferior" in groups
    assert len({r["sample_id"] for r in rows}) == len(rows)
    entire = rows[0]
    assert entire["label_classes"] == sorted(entire["label_classes"])
    named = dict(zip((classes[i] for i in entire["label_classes"]), entire["label_values"], strict=False))
    assert named["normal ecg"] == 1 and named["normal heart axis"] == 1 and named["baseline drift"] == 1
    assert "within the normal range of qt interval" not in named  # no measurements given → unknown
    v6 = next(r for r in rows if r["lead_group"] == "V6")
    assert dict(zip((classes[i] for i in v6["label_classes"]), v6["label_values"], strict=False))["baseline drift"] == 1


def test_measurements_add_range_classes(statements, classes):
    from ecgqa.data.measure import Measurements

    status = {"rr interval": "above", "pr interval": "within", "qrs duration": None}
    m = Measurements(status=status | {"qt interval": "within", "qt corrected": "within", "p duration": "within"})
    e = A.derive(_record(), statements, m)["entire"]
    assert e["above the normal range of rr interval"] == 1 and e["within the normal range of rr interval"] == 0
    assert e["within the normal range of pr interval"] == 1 and e["above the normal range of qrs duration"] is None


def _release_samples(root: Path) -> list[dict]:
    return [s for shard in shards(root, variants=("template",)) for s in load_shard(shard)]


def test_derivation_matches_every_single_verify_answer(sample_paths, statements, classes):
    """Every single-verify question of the bundled sample whose ECG has metadata: derived label == answer."""
    db = A.read_metadata(sample_paths.ptbxl_records / "ptbxl_database.csv")
    result = A.check_release(_release_samples(sample_paths.ptbxl_release), db, statements, classes)
    assert result["checked"] == 413 and not result["not_derived"]
    assert result["disagreements"] == [], json.dumps(result["disagreements"][:20], indent=1)


@pytest.mark.skipif(not (SHARED / "ecgqa" / "ptbxl").is_dir(), reason="shipped shards not on this machine")
def test_derivation_matches_the_shipped_shards():
    statements = A.Statements.read(SHARED / "ptbxl" / "scp_statements.csv")
    classes = read_grounding_classes(SHARED / "ecgqa" / "grounding" / "ptbxl" / "grounding_class.csv")
    db = A.read_metadata(SHARED / "ptbxl" / "ptbxl_database.csv")
    result = A.check_release(_release_samples(SHARED / "ecgqa" / "ptbxl"), db, statements, classes)
    assert result["checked"] >= 413
    assert result["disagreements"] == [], json.dumps(result["disagreements"][:20], indent=1)


def test_mimic_metadata_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "machine_measurements.csv"
    path.write_text("subject_id,study_id,report_0\n1,2,Sinus rhythm\n")
    with pytest.raises(A.AttributesError, match="PTB-XL only"):
        A.read_metadata(path)
    with pytest.raises(A.AttributesError, match="no such file"):
        A.read_metadata(tmp_path / "absent.csv")


# ------------------------------------------------------------------------------- prepare --task attributes


@pytest.fixture(scope="module")
def prepared_attributes(tmp_path_factory, mapped_sample, sample_paths) -> Path:
    from ecgqa.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "attributes"
    prepare(
        mapped_sample,
        out,
        task="attributes",
        rate=100,
        metadata=sample_paths.ptbxl_records / "ptbxl_database.csv",
        progress=False,
    )
    return out


@pytest.mark.slow  # measures 198 records (~15 s) and trains
def test_prepare_attributes_is_upperbound_compatible(prepared_attributes, sample_paths, statements, classes):
    from ecgqa.data.prepared import PreparedData

    data = PreparedData(prepared_attributes)
    assert data.task == "upperbound" and data.classes == classes and data.rate == 100
    assert data.info.task_stats["label_source"] == "attributes" and data.info.task_stats["ecgs"] == 198
    db = A.read_metadata(sample_paths.ptbxl_records / "ptbxl_database.csv")
    train = data.split("train")
    entire = [r for r in train if r["lead_group"] == "entire"]
    assert len(entire) == len({r["ecg_id"][0] for r in train})  # one entire row per ECG
    row = entire[0]
    ecg = row["ecg_id"][0]
    assert data.ecg_ids[row["ecg_rows"][0]] == ecg
    # the row holds exactly what derive() gives for that ECG's metadata (plus its measured ranges)
    derived = A.derive(db.loc[ecg].to_dict(), statements)["entire"]
    got = dict(zip((classes[i] for i in row["label_classes"]), row["label_values"], strict=False))
    for cls, value in derived.items():
        if cls in got:
            assert got[cls] == value, cls
        else:
            assert value is None or cls not in classes, cls
    assert sum(" the normal range of " in c for c in got) >= 6  # measured ranges are there too
    # every ECG's entire row against the metadata CSV read here with pandas (not through attributes.py)
    csv = pd.read_csv(sample_paths.ptbxl_records / "ptbxl_database.csv", index_col="ecg_id")
    noise = {"static_noise": "static noise", "burst_noise": "burst noise", "baseline_drift": "baseline drift"}
    seen = Counter()
    for row in entire:
        got = dict(zip((classes[i] for i in row["label_classes"]), row["label_values"], strict=True))
        meta = csv.loc[row["ecg_id"][0]]
        for column, cls in noise.items():
            filled = isinstance(meta[column], str) and meta[column].strip() != ""
            assert got[cls] == int(filled), (row["ecg_id"], cls)
            seen[cls] += filled
        assert got["any kind of extra systoles"] == int(isinstance(meta["extra_beats"], str))
        norm = ast.literal_eval(meta["scp_codes"]).get("NORM")
        if norm is None:  # absent: no; at 100 %: yes; below 100 % (0 = not given): unknown, left out of the row
            assert got["normal ecg"] == 0
        elif norm == 100:
            assert got["normal ecg"] == 1
        else:
            assert "normal ecg" not in got
        seen["normal ecg"] += norm == 100
    assert len(entire) > 100 and min(seen.values()) > 5, seen  # each rule met both answers


@pytest.mark.slow  # measures 198 records (~15 s) and trains
def test_an_upperbound_model_trains_on_attributes_unchanged(prepared_attributes, tmp_path, classes):
    import math

    import numpy as np

    import ecgqa
    from ecgqa.data.prepared import PreparedData
    from ecgqa.training.train import TrainConfig, train

    ckpt = train(
        TrainConfig(
            data=prepared_attributes,
            model="se-wrn-test",
            out=tmp_path / "ckpt",
            max_steps=2,
            batch_size=8,
            eval_split=None,
            logging_steps=1,
            quiet=True,
        )
    )
    logged = [json.loads(line) for line in (ckpt / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses), logged  # masked BCE, not NaN
    predictor = ecgqa.load(ckpt)
    assert predictor.task == "upperbound" and predictor.classes == classes and predictor.rate == 100
    signals = np.asarray(PreparedData(prepared_attributes).signals[:3], dtype=np.float32)
    probs = predictor.classify(signals)
    assert probs.shape == (3, len(classes)) and ((probs >= 0) & (probs <= 1)).all()


def test_prepare_attributes_needs_metadata(mapped_sample, tmp_path):
    from ecgqa.data.prepare import PrepareError, prepare

    with pytest.raises(PrepareError, match="--metadata"):
        prepare(mapped_sample, tmp_path / "x", task="attributes", progress=False)


def _metadata_copy(sample_paths, tmp_path, edit) -> Path:
    """The bundled ptbxl_database.csv with one change, beside a copy of scp_statements.csv."""
    lines = (sample_paths.ptbxl_records / "ptbxl_database.csv").read_text().splitlines(keepends=True)
    path = tmp_path / "ptbxl_database.csv"
    path.write_text("".join(edit(lines)))
    (tmp_path / "scp_statements.csv").write_text((sample_paths.ptbxl_records / "scp_statements.csv").read_text())
    return path


def test_a_bad_ecg_id_cell_is_an_error_naming_file_and_line(sample_paths, mapped_sample, tmp_path):
    """One non-integer id used to turn the id column into strings and silently empty the dataset."""
    from ecgqa.data.prepare import PrepareError, prepare

    def bad_id(lines):
        return [lines[0], lines[1], "abc" + lines[2][lines[2].index(",") :], *lines[3:]]

    path = _metadata_copy(sample_paths, tmp_path, bad_id)
    with pytest.raises(A.AttributesError, match=r"line 3: ecg_id 'abc' is not a positive integer id"):
        A.read_metadata(path)
    with pytest.raises(PrepareError, match="ptbxl_database.csv, line 3"):
        prepare(mapped_sample, tmp_path / "out", task="attributes", metadata=path, progress=False)
    assert not (tmp_path / "out").exists()


def test_metadata_of_other_ecgs_is_refused(sample_paths, mapped_sample, tmp_path):
    from ecgqa.data.prepare import PrepareError, prepare

    def shift_ids(lines):
        return [lines[0], *(str(100000 + i) + line[line.index(",") :] for i, line in enumerate(lines[1:]))]

    path = _metadata_copy(sample_paths, tmp_path, shift_ids)
    with pytest.raises(PrepareError, match=r"none of the \d+ ECGs the questions use has a row"):
        prepare(mapped_sample, tmp_path / "out", task="attributes", metadata=path, progress=False)


@pytest.mark.parametrize("kind", ["call", "quote", "empty", "devnull", "columns"])
def test_unreadable_metadata_is_one_clear_error(sample_paths, tmp_path, kind):
    if kind == "devnull":
        path, match = Path("/dev/null"), "not a regular file"
    elif kind == "empty":
        path, match = tmp_path / "ptbxl_database.csv", "is empty: expected PTB-XL's ptbxl_database.csv"
        path.write_text("")
    elif kind == "columns":
        path, match = tmp_path / "ptbxl_database.csv", r"missing columns \['baseline_drift'"
        path.write_text("ecg_id,scp_codes\n1,\"{'NORM': 100.0}\"\n")
    elif kind == "call":

        def evil(lines):
            return [
                lines[0],
                lines[1].replace(
                    lines[1][lines[1].index('"{') : lines[1].index('}"') + 2], "\"__import__('os').getcwd()\""
                ),
                *lines[2:],
            ]

        path, match = (
            _metadata_copy(sample_paths, tmp_path, evil),
            r"ecg_id \d+: scp_codes .*__import__.* is not a \{code: likelihood\} dict literal",
        )
    else:

        def quote(lines):
            return [*lines[:5], lines[5].rstrip("\n") + ',"unterminated\n', *lines[6:]]

        path, match = _metadata_copy(sample_paths, tmp_path, quote), "cannot be read as a CSV"
    with pytest.raises(A.AttributesError, match=match) as e:
        A.read_metadata(path)
    assert str(path) in str(e.value)


def test_measuring_shows_a_progress_bar(tmp_path, mapped_sample, sample_paths, capfd):
    """Measuring is the long step of --task attributes (~20 min on all of PTB-XL): it shows a bar per split."""
    from ecgqa.data.prepare import prepare

    metadata = sample_paths.ptbxl_records / "ptbxl_database.csv"
    prepare(mapped_sample, tmp_path / "out", task="attributes", splits=["valid"], metadata=metadata, progress=True)
    assert "measure ECGs (valid)" in capfd.readouterr().err


def test_measure_record_adds_the_release_axis_only_when_asked(sample_paths):
    from dataclasses import replace

    from ecgqa.data.axis import release_qrs_axis
    from ecgqa.data.measure import measure_ecg
    from ecgqa.data.records import read_record

    path = sorted((sample_paths.ptbxl_records / "records500" / "00000").glob("*_hr.hea"))[0].with_suffix("")
    rec = read_record(path)
    plain = measure_ecg(rec.signal, rec.fs)
    assert A.measure_record(path, release_axis=False) == plain  # ecgqa.data.measure's own, axis included
    assert A.measure_record(path) == replace(plain, qrs_axis=release_qrs_axis(rec.signal, rec.fs))
    assert A.measure_records([path], release_axis=False, progress=False) == [plain]


def test_prepare_attributes_does_not_measure_the_release_axis(tmp_path, mapped_sample, sample_paths, monkeypatch):
    """``prepare --task attributes`` takes the axis from the ``heart_axis`` column: the signal axis by ECG-QA's
    method (two more delineations an ECG) is never computed there."""
    from ecgqa.data import axis
    from ecgqa.data.prepare import prepare

    def refuse(*_):
        raise AssertionError("prepare --task attributes measured the release axis")

    monkeypatch.setattr(axis, "release_qrs_axis", refuse)
    metadata = sample_paths.ptbxl_records / "ptbxl_database.csv"
    prepare(mapped_sample, tmp_path / "out", task="attributes", splits=["valid"], metadata=metadata, progress=False)
    assert (tmp_path / "out").is_dir()
