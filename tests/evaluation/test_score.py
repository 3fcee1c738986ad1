"""``ecgqa score``: answer files scored against truths read straight from the bundled release (JSON shards and
CSVs), never from the prepared data the scorer reads; every bad line is one error naming file and line."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import ecgqa
from ecgqa.cli import main


def _release(sample_paths, split: str) -> list[dict]:
    shard = {"train": "train/120000.json", "valid": "valid/60000.json"}[split]
    return json.loads((sample_paths.ptbxl_release / "template" / shard).read_text())


def _valid_classes(sample_paths) -> dict[int, set[str]]:
    """template_id -> valid classes (the template's classes without none), from the release CSV alone."""
    with (sample_paths.ptbxl_release / "answers_for_each_template.csv").open(newline="") as f:
        return {int(r["template_id"]): set(ast.literal_eval(r["classes"])) - {"none"} for r in csv.DictReader(f)}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _expected(samples: list[dict], given: dict[int, set[str]], valid: dict[int, set[str]]) -> dict:
    """EM overall and per question / attribute type of class-set answers, counted here by hand."""
    hits = {
        s["sample_id"]: (given[s["sample_id"]] & valid[s["template_id"]])
        == (set(s["answer"]) - {"none"}) & valid[s["template_id"]]
        for s in samples
    }
    by_qt, by_at = defaultdict(list), defaultdict(list)
    for s in samples:
        by_qt[s["question_type"]].append(hits[s["sample_id"]])
        by_at[s["attribute_type"]].append(hits[s["sample_id"]])
    return {
        "n": len(hits),
        "em": sum(hits.values()) / len(hits),
        "hits": hits,
        "per_question_type": {k: sum(v) / len(v) for k, v in by_qt.items()},
        "per_attribute_type": {k: sum(v) / len(v) for k, v in by_at.items()},
    }


def _assert_em(report: dict, expected: dict) -> None:
    assert report["n"] == expected["n"]
    assert report["em"] == pytest.approx(expected["em"])
    for key in ("per_question_type", "per_attribute_type"):
        assert {k: v["em"] for k, v in report[key].items()} == pytest.approx(expected[key])


def test_perfect_answers_score_100_api(prepared_qa, sample_paths):
    samples = _release(sample_paths, "train")
    report = ecgqa.score(prepared_qa, "train", [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in samples])
    assert report["em"] == 1.0 and report["n"] == len(samples) == 413 and report["n_missing"] == 0
    assert report["per_question_type"] == {"single-verify": {"n": 413, "em": 1.0}}


@pytest.mark.slow  # the CLI end to end: parser, charts (matplotlib) and report read-back, ~5 s cold
def test_perfect_answers_score_100(prepared_qa, sample_paths, tmp_path, capsys):
    split = "valid"
    samples = _release(sample_paths, split)
    answers = _write(
        tmp_path / "perfect.jsonl", [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in samples]
    )
    out = tmp_path / "report"
    assert (
        main(["score", "--data", str(prepared_qa), "--split", split, "--answers", str(answers), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert f"EM 100.0 % over {len(samples)} questions" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "answers" and report["model"] == "perfect" and report["split"] == split
    assert report["em"] == 1.0 and report["n"] == report["n_questions"] == report["n_answers"] == len(samples)
    assert all(b["em"] == 1.0 for b in report["per_question_type"].values())
    assert report["answers_sha256"] == hashlib.sha256(answers.read_bytes()).hexdigest()
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["sample_id"] for x in lines) == sorted(s["sample_id"] for s in samples)
    assert all(x["correct"] and x["status"] == "ok" for x in lines)
    for chart in report["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Answers scored" in (out / "report.md").read_text()
    # `ecgqa report` reads it like any other report
    assert main(["report", str(out)]) == 0
    assert f"**100.0** (n={len(samples)})" in capsys.readouterr().out


@pytest.mark.parametrize("split", ["train", "valid"])
def test_shuffled_answers_score_what_an_independent_count_gives(prepared_qa, sample_paths, tmp_path, split):
    """Each question gets the true answer of a question drawn at random (seeded; now and then itself): the EM
    is the share of questions whose borrowed answer happens to equal their own over their valid classes."""
    samples = _release(sample_paths, split)
    valid = _valid_classes(sample_paths)
    rng = random.Random(7)
    donors = [rng.randrange(len(samples)) for _ in samples]
    given = {s["sample_id"]: set(samples[d]["answer"]) - {"none"} for s, d in zip(samples, donors, strict=True)}
    rows = [{"sample_id": sid, "answer": sorted(a)} for sid, a in given.items()]
    report = ecgqa.score(prepared_qa, split, _write(tmp_path / "shuffled.jsonl", rows))
    expected = _expected(samples, given, valid)
    assert 0 < expected["em"] < 1  # the permutation is neither all right nor all wrong
    _assert_em(report, expected)
    # classes of another template that are not this question's options are ignored, and counted
    outside = sum(bool(given[s["sample_id"]] - valid[s["template_id"]]) for s in samples)
    assert report["n_outside_options"] == outside


def test_free_text_replies_are_parsed_with_the_paper_rule(prepared_qa, sample_paths, tmp_path):
    """Replies written here with a known verdict each: named options in any case, 'none', prose, contradictions."""
    train = _release(sample_paths, "train")[:6]  # single-verify: options no / yes
    valid = _release(sample_paths, "valid")[:6]  # comparison_irrelevant-query numeric features, with None
    v = _valid_classes(sample_paths)
    assert {s["question_type"] for s in train} == {"single-verify"}
    wrong_verify = {"yes": "no", "no": "yes"}
    replies = [  # (sample, reply, correct, status)
        (train[0], f"{train[0]['answer'][0].upper()}.", True, "ok"),
        (train[1], f"The answer is: {wrong_verify[train[1]['answer'][0]]}", False, "ok"),
        (train[2], "I cannot tell from these findings.", False, "no-match"),
        (train[3], f"{train[3]['answer'][0]} — noise is present", True, "ok"),  # "noise" is not "no"
        (valid[0], ", ".join(valid[0]["answer"]), True, "ok"),
        (valid[1], ", ".join(valid[1]["answer"][:-1]), False, "ok"),  # one class short
        (valid[2], "None", False, "ok"),  # the truth is not none
        (valid[3], f"None, {valid[3]['answer'][0]}", False, "ok"),  # contradicts itself: wrong, as in the paper
        (valid[4], "\n".join(f"- {a.upper()}" for a in valid[4]["answer"]), True, "ok"),
    ]
    assert all(s["answer"] != ["none"] for s, *_ in replies[4:])
    for s in train[:4]:
        assert v[s["template_id"]] == {"no", "yes"}
    for split, part in (("train", replies[:4]), ("valid", replies[4:])):
        for s, reply, correct, status in part:  # each reply alone: its verdict and status
            one = ecgqa.score(prepared_qa, split, [{"sample_id": s["sample_id"], "reply": reply}], missing="skip")
            assert (one["em"] == 1, "no-match" if one["n_no_match"] else "ok") == (correct, status), reply
        path = _write(tmp_path / f"{split}.jsonl", [{"sample_id": s["sample_id"], "reply": r} for s, r, *_ in part])
        report = ecgqa.score(prepared_qa, split, path, missing="skip")
        assert report["n"] == len(part) and report["n_replies"] == len(part)
        assert report["em"] == pytest.approx(np.mean([c for _, _, c, _ in part]))
        assert report["n_no_match"] == sum(st == "no-match" for *_, st in part)
        assert report["n_missing"] == report["n_questions"] - len(part) > 0


def test_rescoring_its_own_predictions_round_trips(prepared_qa, sample_paths, tmp_path):
    """Also replies whose parsed set is right but which were scored wrong: "None" next to the right options
    (a contradiction) and replies naming nothing; the rescored line stays wrong."""
    samples = _release(sample_paths, "valid")

    def reply(k: int, answer: list[str]) -> str:
        return {0: "None, " + ", ".join(answer), 1: "I am not sure."}.get(k % 5, ", ".join(answer[: 1 + k % 4]))

    rows = [{"sample_id": s["sample_id"], "reply": reply(k, s["answer"])} for k, s in enumerate(samples)]
    first = ecgqa.score(prepared_qa, "valid", _write(tmp_path / "a.jsonl", rows), tmp_path / "one")
    lines = [json.loads(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    contradictions = [x for x in lines if x["reply"].startswith("None, ") and x["true"]]
    assert contradictions and all(x["predicted"] == x["true"] and not x["correct"] for x in contradictions)
    assert first["n_no_match"] == len([k for k in range(len(samples)) if k % 5 == 1])
    again = ecgqa.score(prepared_qa, "valid", tmp_path / "one" / "predictions.jsonl")
    assert again["model"] == "one"  # a predictions.jsonl is named after its folder
    for key in (
        "n",
        "em",
        "em_macro_all",
        "per_question_type",
        "per_attribute_type",
        "per_question_attribute_type",
        "n_no_match",
    ):
        assert again[key] == first[key], key
    assert 0 < first["em"] < 1
    # a line marked correct is not taken on trust: its set decides
    forged = [{**x, "predicted": [], "correct": True} for x in lines]
    assert ecgqa.score(prepared_qa, "valid", forged)["em"] == pytest.approx(np.mean([not x["true"] for x in lines]))


@pytest.mark.slow  # trains a checkpoint fixture
def test_score_round_trips_evaluate_predictions(qa_checkpoint, prepared_qa, tmp_path, capsys):
    """`ecgqa evaluate`'s predictions.jsonl, given to `ecgqa score` as it is, gives the same report."""
    ev = tmp_path / "evaluate"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(qa_checkpoint),
                "--data",
                str(prepared_qa),
                "--split",
                "valid",
                "--out",
                str(ev),
                "-q",
            ]
        )
        == 0
    )
    sc = tmp_path / "score"
    assert (
        main(
            [
                "score",
                "--data",
                str(prepared_qa),
                "--split",
                "valid",
                "--answers",
                str(ev / "predictions.jsonl"),
                "--out",
                str(sc),
            ]
        )
        == 0
    )
    a, b = (json.loads((d / "report.json").read_text()) for d in (ev, sc))
    for key in (
        "n",
        "em",
        "em_macro_single",
        "em_macro_all",
        "per_question_type",
        "per_attribute_type",
        "per_question_attribute_type",
    ):
        assert b[key] == a[key], key
    pa, pb = (
        {x["sample_id"]: x for x in map(json.loads, (d / "predictions.jsonl").read_text().splitlines())}
        for d in (ev, sc)
    )
    assert {k: (x["predicted"], x["correct"]) for k, x in pa.items()} == {
        k: (x["predicted"], x["correct"]) for k, x in pb.items()
    }
    # the same charts, but for the controls' (evaluate ran its controls; this score run was given none)
    assert [c.split("/")[-1] for c in b["charts"]] == [
        c.split("/")[-1] for c in a["charts"] if not c.split("/")[-1].startswith("controls_")
    ]
    assert a["controls"] and b["controls"] is None and "--control" in b["controls_note"]


# ------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def valid_ids(sample_paths) -> list[int]:
    return [s["sample_id"] for s in _release(sample_paths, "valid")]


def _bad_lines(ids: list[int]) -> list[tuple[list, int, str]]:
    """(file lines, line at fault, text the error must contain); line 1 is always good."""
    good = {"sample_id": ids[0], "answer": ["qt interval"]}
    return [
        ([good, '{"sample_id": 1, "reply": '], 2, "not valid JSON"),
        ([good, "[1, 2]"], 2, "expected a JSON object"),
        ([good, {"reply": "yes"}], 2, 'no "sample_id"'),
        ([good, {"sample_id": 1.5, "reply": "yes"}], 2, "sample_id must be an integer"),
        ([good, {"sample_id": 424242, "reply": "yes"}], 2, "sample_id 424242 is not a question of split 'valid'"),
        ([good, "", {"sample_id": ids[0], "reply": "qt interval"}], 3, "again (first answered on line 1)"),
        ([good, {"sample_id": ids[1], "answer": ["qt intervall"]}], 2, "unknown class 'qt intervall'"),
        ([good, {"sample_id": ids[1], "answer": ["qt interval"], "reply": "qt interval"}], 2, 'both "answer" and'),
        ([good, {"sample_id": ids[1], "reply": ["qt interval"]}], 2, '"reply" must be'),
        ([good, {"sample_id": ids[1], "answer": [3]}], 2, "must be a list of class names"),
        ([good, {"sample_id": ids[1], "answer": ["none", "qt interval"]}], 2, "names none together with"),
        ([good, {"sample_id": ids[1], "text": "qt interval"}], 2, "no answer: expected"),
        # issue 24: an existing id in Arabic-Indic digits was accepted (int() reads them); "²" and ids of
        # thousands of digits failed with Python's own text and no FILE:N
        ([good, {"sample_id": str(ids[1]).translate(ARABIC_INDIC), "reply": "yes"}], 2, "not written in ASCII digits"),
        ([good, {"sample_id": "²", "reply": "yes"}], 2, "not written in ASCII digits"),
        ([good, {"sample_id": "9" * 5000, "reply": "yes"}], 2, "or is too long"),
        ([good, '{"sample_id": ' + "9" * 5000 + ', "reply": "yes"}'], 2, "not an answer line"),
    ]


ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.mark.parametrize("case", range(16))
def test_bad_lines_are_one_line_errors_naming_file_and_line(prepared_qa, valid_ids, tmp_path, capsys, case):
    rows, line, text = _bad_lines(valid_ids)[case]
    answers = _write(tmp_path / "answers.jsonl", rows)
    out = tmp_path / "report"
    assert (
        main(
            [
                "score",
                "--data",
                str(prepared_qa),
                "--split",
                "valid",
                "--answers",
                str(answers),
                "--out",
                str(out),
                "--missing",
                "skip",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {answers}:{line}: ")
    assert text in err
    assert not out.exists()  # nothing is written before every line was read


def test_bad_bytes_and_did_you_mean(prepared_qa, valid_ids, tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(json.dumps({"sample_id": valid_ids[0], "reply": "none"}).encode() + b"\n\xff\xfe{}\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: not UTF-8 text"):
        ecgqa.score(prepared_qa, "valid", path)
    with pytest.raises(ValueError, match=r"^answers:1: unknown class 'QT-interval'.*did you mean 'qt interval'"):
        ecgqa.score(prepared_qa, "valid", [{"sample_id": valid_ids[0], "answer": "QT-interval"}])


def test_file_level_mistakes(prepared_qa, sample_paths, tmp_path):
    """A UTF-8 byte-order mark is accepted; UTF-16, an empty file, a JSON array and a folder are one clear error."""
    samples = _release(sample_paths, "valid")
    text = "".join(json.dumps({"sample_id": s["sample_id"], "answer": s["answer"]}) + "\n" for s in samples)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Notepad / PowerShell 7 "utf8BOM"
    assert ecgqa.score(prepared_qa, "valid", bom)["em"] == 1.0
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_text(text, encoding="utf-16")
    with pytest.raises(ValueError, match=rf"^{utf16}: UTF-16 text .*re-save the file as UTF-8"):
        ecgqa.score(prepared_qa, "valid", utf16)
    for name, content in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        (tmp_path / name).write_text(content)
        for missing in ("error", "wrong"):  # never a silent EM of 0 over every question
            with pytest.raises(ValueError, match=rf"^{tmp_path / name}: no answer lines"):
                ecgqa.score(prepared_qa, "valid", tmp_path / name, missing=missing)
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([{"sample_id": s["sample_id"], "answer": s["answer"]} for s in samples]))
    with pytest.raises(ValueError, match=rf"^{array}:1: .*a JSON array of answers: write one object per line"):
        ecgqa.score(prepared_qa, "valid", array)
    with pytest.raises(ValueError, match=rf"^--answers {tmp_path} is a folder; .*predictions.jsonl"):
        ecgqa.score(prepared_qa, "valid", tmp_path)


def test_deep_json_and_a_lone_surrogate(prepared_qa, sample_paths, tmp_path):
    """JSON nested past the parser's depth is one error naming the line; a reply holding a lone surrogate escape
    (an emoji cut in half by a truncating writer) is scored, written out with U+FFFD instead of crashing."""
    s0 = _release(sample_paths, "valid")[0]
    deep = tmp_path / "deep.jsonl"
    deep.write_text(json.dumps({"sample_id": s0["sample_id"], "answer": s0["answer"]}) + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(ValueError, match=rf"^{deep}:2: not an answer line \(JSON nested too deeply\)"):
        ecgqa.score(prepared_qa, "valid", deep)
    half = tmp_path / "half.jsonl"
    truth = ", ".join(s0["answer"])
    half.write_text(json.dumps({"sample_id": s0["sample_id"], "reply": truth + " "})[:-2] + '\\ud83d"}\n')
    report = ecgqa.score(prepared_qa, "valid", half, tmp_path / "out", missing="skip")
    assert report["n"] == 1 and report["em"] == 1.0
    line = json.loads((tmp_path / "out" / "predictions.jsonl").read_text())
    assert line["reply"] == truth + " \ufffd"


def test_class_names_case_none_and_a_single_string(prepared_qa, sample_paths, tmp_path):
    s0, s1, s2 = _release(sample_paths, "valid")[:3]
    rows = [
        {"sample_id": s0["sample_id"], "answer": [a.upper() for a in s0["answer"]]},  # case-insensitive
        {"sample_id": s1["sample_id"], "answer": "none"},  # a string; none = the empty set
        {"sample_id": s2["sample_id"], "answer": []},
    ]
    report = ecgqa.score(prepared_qa, "valid", rows, missing="skip")
    assert report["n"] == 3 and report["em"] == pytest.approx(1 / 3)  # none is wrong for s1, s2 (non-empty truths)
    assert report["answers"] == "answers" and report["answers_sha256"] is None


def test_unanswered_questions(prepared_qa, sample_paths, tmp_path, capsys):
    samples = _release(sample_paths, "valid")
    half = samples[: len(samples) // 2]
    answers = _write(tmp_path / "half.jsonl", [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in half])
    args = ["score", "--data", str(prepared_qa), "--split", "valid", "--answers", str(answers)]
    assert main([*args, "--out", str(tmp_path / "r0")]) == 2
    err = capsys.readouterr().err
    lost = len(samples) - len(half)
    assert f"{answers}: {lost} of the {len(samples)} questions scored" in err and "--missing skip" in err
    assert str(samples[-1]["sample_id"]) in err and not (tmp_path / "r0").exists()

    assert main([*args, "--out", str(tmp_path / "skip"), "--missing", "skip"]) == 0
    skip = json.loads((tmp_path / "skip" / "report.json").read_text())
    assert (skip["n"], skip["em"], skip["n_missing"]) == (len(half), 1.0, lost)
    assert skip["missing_sample_ids"] == sorted(s["sample_id"] for s in samples[len(half) :])

    wrong = ecgqa.score(prepared_qa, "valid", answers, missing="wrong")
    assert (wrong["n"], wrong["n_missing"]) == (len(samples), lost)
    assert wrong["em"] == pytest.approx(len(half) / len(samples))


def test_answers_for_questions_prepare_dropped_are_counted_not_refused(prepared_qa, sample_paths, tmp_path):
    """A model run on the whole release answers questions `prepare --drop-bad` left out (missing records)."""
    data = tmp_path / "prepared"
    shutil.copytree(prepared_qa, data)
    (data / "dropped.json").write_text(json.dumps({"samples": {"valid": [777001, 777002]}}))
    samples = _release(sample_paths, "valid")
    rows = [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in samples]
    rows.append({"sample_id": 777001, "reply": "qt interval"})
    report = ecgqa.score(data, "valid", rows)
    assert (report["n"], report["em"], report["n_ignored_dropped_by_prepare"]) == (len(samples), 1.0, 1)
    with pytest.raises(ValueError, match=rf"^answers:{len(rows) + 1}: sample_id 777003 is not a question"):
        ecgqa.score(data, "valid", [*rows, {"sample_id": 777003, "reply": "qt interval"}])
    with pytest.raises(ValueError, match=rf"^answers:{len(rows) + 1}: sample_id 777001 again"):
        ecgqa.score(data, "valid", [*rows, {"sample_id": 777001, "reply": "qt interval"}])


def test_out_must_be_ours(prepared_qa, sample_paths, tmp_path, capsys):
    samples = _release(sample_paths, "valid")
    answers = _write(tmp_path / "a.jsonl", [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in samples])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args = ["score", "--data", str(prepared_qa), "--split", "valid", "--answers", str(answers), "--out"]
    assert main([*args, str(foreign)]) == 2
    assert "score_run.json" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "mine"
    assert main([*args, str(tmp_path / "ours")]) == 0
    assert main([*args, str(tmp_path / "ours")]) == 0  # its own folder is replaced


def test_sample_paper_refused_where_it_does_not_apply(prepared_qa, sample_paths, tmp_path):
    answers = _write(
        tmp_path / "a.jsonl",
        [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in _release(sample_paths, "valid")],
    )
    with pytest.raises(ValueError, match="--sample paper: the paper's LLM sample covers PTB-XL test questions only"):
        ecgqa.score(prepared_qa, "valid", answers, sample="paper")


# ------------------------------------------------------------------------------------ --sample paper

PAPER_IDS = Path(ecgqa.__file__).parent / "published" / "sampled_ecgqa_ids.txt"


@pytest.fixture(scope="module")
def prepared_paper_test(tmp_path_factory, mapped_sample) -> tuple[Path, list[dict], set[int]]:
    """A PTB-XL test split of real questions (the bundled valid shard and 22 train ones) whose sample ids are
    renumbered: 30 take ids of the published LLM list, the other 30 ids that are not in it."""
    from ecgqa.data.prepare import prepare

    paper = [int(x) for x in PAPER_IDS.read_text().split()]
    assert hashlib.sha256(PAPER_IDS.read_bytes()).hexdigest() == (
        "01c805f4cb4cb0aab6da13102710e189d71b1e518bd3db23e1e3b80fc4acb569"
    )  # the published file's hash
    listed = set(paper)
    outside = [i for i in range(10, 1000) if i not in listed][:30]
    release = tmp_path_factory.mktemp("release") / "ptbxl"
    (release / "template" / "test").mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv", "mapping_report.json"):
        shutil.copy(mapped_sample / name, release / name)
    samples = (
        json.loads((mapped_sample / "template" / "valid" / "60000.json").read_text())
        + json.loads((mapped_sample / "template" / "train" / "120000.json").read_text())[:22]
    )
    for s, sid in zip(samples, paper[100:130] + outside, strict=True):
        s["sample_id"] = sid
    (release / "template" / "test" / "80000.json").write_text(json.dumps(samples))
    out = tmp_path_factory.mktemp("prepared") / "paper-test"
    prepare(release, out, variant="template", task="qa", rate=500, progress=False)
    return out, samples, set(paper)


@pytest.mark.slow  # prepares a data set
def test_sample_paper_scores_the_published_ids_only(prepared_paper_test, tmp_path, capsys):
    data, samples, paper = prepared_paper_test
    answers = _write(
        tmp_path / "all.jsonl",
        [{"sample_id": s["sample_id"], "answer": s["answer"] if k % 2 else []} for k, s in enumerate(samples)],
    )
    report = ecgqa.score(data, "test", answers, tmp_path / "paper", sample="paper")
    inside = [s for s in samples if s["sample_id"] in paper]
    assert len(inside) == 30 and report["n"] == 30 and report["n_ignored_outside_sample"] == 30
    assert report["em"] == pytest.approx(
        np.mean([k % 2 == 1 for k, s in enumerate(samples) if s["sample_id"] in paper])
    )
    assert report["sampling"] == {
        "sample": "paper",
        "n_listed": len(paper),
        "n_missing": len(paper) - 30,
        "sha256": "01c805f4cb4cb0aab6da13102710e189d71b1e518bd3db23e1e3b80fc4acb569",
        "n_selected": 30,
        "n_in_split": 60,
        "source": report["sampling"]["source"],
    }
    # answering only the published ids and forgetting --sample paper: the error says so
    only = _write(tmp_path / "only.jsonl", [{"sample_id": s["sample_id"], "answer": s["answer"]} for s in inside])
    assert main(["score", "--data", str(data), "--answers", str(only), "--out", str(tmp_path / "x")]) == 2
    assert "score that sample with --sample paper" in capsys.readouterr().err


@pytest.mark.slow  # a real HTTP server and an llm-eval run
def test_score_round_trips_llm_eval_predictions_and_replies(prepared_qa, upperbound_checkpoint, tmp_path, monkeypatch):
    """`ecgqa llm-eval` (the paper prompt, against the fake OpenAI-compatible server, some replies off-option,
    some requests failing): its predictions.jsonl, and its raw replies as free text, score to its own report."""
    from tests.fake_llm_server import FakeLLM, FakeServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    run = tmp_path / "llm"
    with FakeServer(FakeLLM(nomatch_substring="lead V1", fail_substring="lead aVR")) as server:
        assert (
            main(
                [
                    "llm-eval",
                    "--data",
                    str(prepared_qa),
                    "--split",
                    "train",
                    "--grounding",
                    str(upperbound_checkpoint),
                    "--model",
                    "fake",
                    "--base-url",
                    server.url,
                    "--max-retries",
                    "0",
                    "--out",
                    str(run),
                    "-q",
                ]
            )
            == 3
        )
    # exit status 3: some requests failed (those of questions naming lead aVR), the rest is scored
    llm = json.loads((run / "report.json").read_text())
    assert llm["n_failed"] > 0 and llm["n_no_match"] > 0 and 0 < llm["em"] < 1
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    replies = _write(
        tmp_path / "replies.jsonl",
        [{"sample_id": x["sample_id"], "reply": x["reply"]} for x in lines if x["status"] != "failed"],
    )
    for answers in (run / "predictions.jsonl", replies):
        report = ecgqa.score(prepared_qa, "train", answers, missing="skip")
        for key in ("n", "em", "em_macro_single", "per_question_type", "per_attribute_type", "n_no_match"):
            assert report[key] == llm[key], (answers.name, key)
        assert report["n_missing"] == report["n_questions"] - llm["n"]
