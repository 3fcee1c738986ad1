"""`ecgqa export hub PREPARED`: the folder `datasets.load_dataset` reads, row for row the prepared folder."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest
import wfdb
import yaml

from ecgqa.cli import main
from ecgqa.data.constants import LEADS
from ecgqa.data.prepared import PreparedData
from ecgqa.distribution.hub_dataset import MARKER, QUESTION_COLUMNS, ExportError, export_dataset
from ecgqa.evaluation.paper_sample import PAPER_SAMPLE_SHA256, ids_sha256, paper_sample_ids


def _load(folder, config, cache):
    return datasets.load_dataset(str(folder), config, cache_dir=str(cache))


@pytest.fixture(scope="module")
def hub(tmp_path_factory, prepared_qa):
    out = tmp_path_factory.mktemp("hub") / "ecgqa-ptbxl"
    summary = export_dataset([prepared_qa], out, signal_shard_rows=100, progress=False)  # train: 2 shards
    assert len(list((out / "data" / "ptbxl-signals").glob("train-*.parquet"))) == 2
    return out, summary


def test_questions_round_trip_through_load_dataset(hub, prepared_qa, mapped_sample, tmp_path):
    out, summary = hub
    data = PreparedData(prepared_qa)
    classes = data.info.answer_classes
    loaded = _load(out, "ptbxl-template", tmp_path)
    assert set(loaded) == set(data.splits) == {"train", "valid"}
    release = {}  # the mapped release's own samples, an independent source of the answers
    for shard in (mapped_sample / "template").rglob("*.json"):
        release.update({(shard.parent.name, s["sample_id"]): s for s in json.loads(shard.read_text())})
    for split in data.splits:
        ours, theirs = loaded[split], data.split(split)
        assert len(ours) == len(theirs) == summary["configs"]["ptbxl-template"]["splits"][split]
        assert list(ours.column_names) == list(QUESTION_COLUMNS)
        for got, want in zip(ours, theirs, strict=True):
            for key in ("sample_id", "template_id", "question_id", "question", "question_type", "attribute_type"):
                assert got[key] == want[key]
            for key in ("qt1", "qt2", "qt3", "ecg_id", "attribute"):
                assert got[key] == list(want[key]) if isinstance(want[key], list) else got[key] == want[key]
            assert got["answer"] == ([classes[c] for c in want["answer"]] or ["none"])
            assert got["valid_classes"] == [classes[c] for c in want["valid_classes"]]
            assert got["ecg_source"] == "ptbxl"
            assert got["ecg_record"] == [f"records500/{i // 1000 * 1000:05d}/{i:05d}_hr" for i in want["ecg_id"]]
            src = release[(split, got["sample_id"])]
            assert set(got["answer"]) == set(src["answer"]) and got["question"] == src["question"]


def test_signals_round_trip_and_match_the_records(hub, prepared_qa, sample_paths, tmp_path):
    out, summary = hub
    data = PreparedData(prepared_qa)
    signals = _load(out, "ptbxl-signals", tmp_path).with_format("numpy")
    questions = _load(out, "ptbxl-template", tmp_path)
    for split in ("train", "valid"):
        wanted = sorted({e for ids in questions[split]["ecg_id"] for e in ids})
        got = signals[split]
        assert list(got["ecg_id"]) == wanted
        block = np.asarray(got["signal"])
        assert block.shape == (len(wanted), 12, data.signal_length)
        for k, ecg_id in enumerate(wanted):
            np.testing.assert_array_equal(block[k].astype(np.float16), data.signals[data.row_of(ecg_id)])
    # the embedded signal is the record itself (LEADS order, mV), read independently with wfdb
    ecg_id = int(signals["valid"]["ecg_id"][0])
    raw, fields = wfdb.rdsamp(str(sample_paths.ptbxl_records / f"records500/00000/{ecg_id:05d}_hr"))
    names = [n.upper() for n in fields["sig_name"]]
    first = np.asarray(signals["valid"]["signal"][0], dtype=np.float32)
    for i, lead in enumerate(LEADS):
        np.testing.assert_allclose(first[i], raw[:, names.index(lead.upper())], atol=2e-3)


def test_card_lists_configs_licence_protocol_and_paper_sample(hub, tmp_path):
    out, summary = hub
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "cc-by-4.0"
    names = [c["config_name"] for c in front["configs"]]
    assert names == ["ptbxl-template", "ptbxl-signals", "paper-llm-sample-ids"]
    assert [c for c in front["configs"] if c.get("default")][0]["config_name"] == "ptbxl-template"
    for needle in ("exact-match", "valid_classes", "macro average over question types", "Comparable", "@inproceedings"):
        assert needle in text
    assert json.loads((out / MARKER).read_text())["kind"] == "ecgqa-hub-dataset"
    ids = _load(out, "paper-llm-sample-ids", tmp_path)["test"]["sample_id"]
    assert ids == paper_sample_ids() and len(ids) == 8154
    assert ids_sha256(ids) == PAPER_SAMPLE_SHA256  # the published list, byte for byte
    assert datasets.load_dataset(str(out), cache_dir=str(tmp_path))["train"].column_names == list(QUESTION_COLUMNS)


def test_paper_sample_config_holds_the_test_questions_of_the_published_ids(mapped_sample, tmp_path):
    """A test split (the sample's valid shard, whose ids 60009.. overlap the published test ids) gets its own config."""
    from ecgqa.data.prepare import prepare

    mapped = tmp_path / "mapped"
    shutil.copytree(mapped_sample, mapped)
    shutil.rmtree(mapped / "paraphrased")
    shutil.rmtree(mapped / "template" / "train")
    (mapped / "template" / "valid").rename(mapped / "template" / "test")
    prepare(mapped, tmp_path / "prepared", variant="template", task="qa", rate=100, progress=False)
    hub = tmp_path / "hub"
    summary = export_dataset([tmp_path / "prepared"], hub, signals="none", question_shard_rows=10, progress=False)
    shards = sorted(p.name for p in (hub / "data" / "ptbxl-template").iterdir())
    assert shards == [f"test-{k:05d}-of-00004.parquet" for k in range(4)]  # 38 rows, 10 a shard
    whole = _load(hub, "ptbxl-template", tmp_path / "cache")["test"]
    assert whole["sample_id"] == PreparedData(tmp_path / "prepared").split("test")["sample_id"]
    paper = set(paper_sample_ids())
    test = PreparedData(tmp_path / "prepared").split("test")
    expected = [s for s in test["sample_id"] if s in paper]
    assert 0 < len(expected) < len(test)
    got = _load(tmp_path / "hub", "ptbxl-template-paper-llm-sample", tmp_path / "cache")["test"]
    assert got["sample_id"] == expected
    assert summary["configs"]["ptbxl-template-paper-llm-sample"]["splits"] == {"test": len(expected)}
    assert not (tmp_path / "hub" / "data" / "ptbxl-signals").exists()  # --signals none


def test_mimic_signals_are_refused_and_references_exported(tmp_path, sample_paths, capsys):
    from ecgqa.data.prepare import prepare
    from mapping.mapper import map_release
    from tests.data.test_mimic import build_mimic_release, build_mimic_root

    build_mimic_root(tmp_path / "mimic")
    build_mimic_release(tmp_path / "ecgqa" / "mimic-iv-ecg", sample_paths)
    mapped = tmp_path / "mapped"
    map_release("mimic-iv-ecg", tmp_path / "ecgqa", tmp_path / "mimic", mapped, skip_missing=True, progress=False)
    prepare(tmp_path / "mapped", tmp_path / "prepared", variant="template", task="qa", progress=False)

    with pytest.raises(ExportError, match="refusing to embed mimic-iv-ecg signals.*PhysioNet.*--signals none"):
        export_dataset([tmp_path / "prepared"], tmp_path / "hub", progress=False)
    assert not (tmp_path / "hub").exists()  # nothing written
    assert main(["export", "hub", str(tmp_path / "prepared"), "--out", str(tmp_path / "hub"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "PhysioNet" in err and "Traceback" not in err

    assert main(["export", "hub", str(tmp_path / "prepared"), "--out", str(tmp_path / "hub"), "--signals", "none"]) == 0
    front = yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---\n")[1])
    assert [c["config_name"] for c in front["configs"]] == ["mimic-iv-ecg-template"]  # no signals, no paper ids
    rows = _load(tmp_path / "hub", "mimic-iv-ecg-template", tmp_path / "cache")["train"]
    assert rows["sample_id"] == [0, 1]
    assert rows["ecg_id"] == [[40689238], [41256771, 45090959]]
    assert rows["answer"] == [["yes"], ["no"]] and rows["ecg_source"] == ["mimic-iv-ecg"] * 2
    assert rows["ecg_record"] == [None, None]
    assert not list((tmp_path / "hub").rglob("*signals*"))


def test_refuses_foreign_out_and_non_qa_inputs(tmp_path, prepared_qa, prepared_upperbound):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="will not be replaced"):
        export_dataset([prepared_qa], foreign, signals="none", progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="task 'upperbound'"):
        export_dataset([prepared_upperbound], tmp_path / "x", progress=False)
    with pytest.raises(ExportError, match="both ptbxl-template"):
        export_dataset([prepared_qa, prepared_qa], tmp_path / "x", progress=False)
    with pytest.raises(ExportError, match="not a complete prepared directory"):
        export_dataset([tmp_path], tmp_path / "x", progress=False)
