"""`ecgqa llm-eval` end to end on the prepared bundled sample with a trained upperbound checkpoint, the
real `openai` client and a real local server: report vs an independent recomputation, prompts per type,
grounding that never touches the store, SIGKILL mid-run + resume, and the key kept out of everything."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ecgqa.data.constants import LEADS
from ecgqa.data.leads import lead_mask
from ecgqa.data.prepared import SIGNALS
from tests.fake_llm_server import FakeLLM, FakeServer

KEY = "sk-e2e-NEVER-PRINT-ME-9876543210"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server():
    with FakeServer(FakeLLM()) as s:
        yield s


@pytest.fixture(scope="module")
def release_answers(sample_paths) -> dict[int, dict]:
    out = {}
    for f in (sample_paths.ptbxl_release / "template").rglob("*.json"):
        out.update({s["sample_id"]: s for s in json.loads(f.read_text())})
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _independent_em(transcripts: list[dict], release: dict[int, dict]) -> dict:
    per: dict[str, list[bool]] = {}
    for t in transcripts:
        text, hits = t["reply"].lower(), set()
        for o in sorted(t["options"], key=len, reverse=True):
            m = re.search(r"(?<![a-z0-9])" + re.escape(o.lower()) + r"(?![a-z0-9])", text)
            if m:
                hits.add(o)
                text = text[: m.start()] + "#" * len(o) + text[m.end() :]
        true = {a for a in release[t["sample_id"]]["answer"] if a != "none"}
        per.setdefault(t["question_type"], []).append(bool(hits) and hits - {"None"} == true)  # no match = wrong
    flat = [c for v in per.values() for c in v]
    return {
        "n": len(flat),
        "em": sum(flat) / len(flat),
        "macro": float(np.mean([np.mean(v) for v in per.values()])),
        "per_qt": {k: {"n": len(v), "em": sum(v) / len(v)} for k, v in per.items()},
    }


def _cli(args: list[str]) -> int:
    from ecgqa.cli import main

    return main(["llm-eval", *args])


@pytest.mark.slow
def test_llm_eval_on_the_prepared_sample(
    tmp_path, server, prepared_qa, upperbound_checkpoint, release_answers, monkeypatch, capsys
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    signals_sha = _sha(prepared_qa / SIGNALS)
    reports = {}
    for split in ("train", "valid"):
        out = tmp_path / split
        rc = _cli(
            [
                "--data",
                str(prepared_qa),
                "--grounding",
                str(upperbound_checkpoint),
                "--model",
                "fake-4o",
                "--base-url",
                server.url,
                "--split",
                split,
                "--out",
                str(out),
                "--price-in",
                "1",
                "--price-out",
                "2",
            ]
        )
        assert rc == 0
        report = json.loads((out / "report.json").read_text())
        transcripts = [json.loads(p.read_text()) for p in (out / "transcripts").glob("*.json")]
        ind = _independent_em(transcripts, release_answers)
        assert report["kind"] == "llm" and report["split"] == split and report["model"] == "fake-4o (classifier)"
        assert report["llm"] == "fake-4o" and report["input"] == "classifier"
        assert report["n"] == ind["n"] == len(transcripts) == report["n_questions"]
        assert report["em"] == pytest.approx(ind["em"]) and report["em_macro_question_type"] == pytest.approx(
            ind["macro"]
        )
        assert {k: (v["n"], pytest.approx(v["em"])) for k, v in report["per_question_type"].items()} == {
            k: (v["n"], v["em"]) for k, v in ind["per_qt"].items()
        }
        assert report["n_questions"] == {"train": round(413 / 10), "valid": round(38 / 10)}[split]
        reports[split] = (report, transcripts)

        for t in transcripts:
            text = t["messages"][0]["content"]
            q = release_answers[t["sample_id"]]
            # the default for --input classifier: the paper's prompt (test_llm_eval_paper_prompt.py pins it)
            assert report["prompt_style"] == "paper"
            assert text.startswith("These are the interpretations of each ECG along with their scores. ")
            assert text.endswith("\n\nOnly answer based on the given Options without any explanation.")
            heads = re.findall(r"^Interpretation of the (.+?):$", text, re.MULTILINE)
            opts = re.search(r"^Options: (.*)$", text, re.MULTILINE).group(1).split(", ")
            if q["question_type"] == "single-verify":
                lead = re.search(r"in lead (\S+)\?$", q["question"])
                assert heads == [f"ECG in lead {lead.group(1)}" if lead else "ECG"]
                assert opts == ["no", "yes"]
            else:  # comparison_irrelevant-query: one block per ECG, options + None
                assert heads == ["first ECG", "second ECG"]
                assert opts[-1] == "None" and "qrs duration" in opts and "none" not in opts
            assert f"Question: {q['question']}" in text

    # the real checkpoint, read per lead through the grounder, sees twelve different ECGs, none blank
    from ecgqa import load
    from ecgqa.data.prepared import PreparedData
    from llm_eval.grounding import Grounder, Reading, prepared_signal_of

    data = PreparedData(prepared_qa)
    predictor = load(upperbound_checkpoint, device="cpu")
    g = Grounder(predictor, prepared_signal_of(data), progress=False)
    ecg_id = int(data.ecg_ids[0])
    blocks = [Reading(0, ecg_id, None, lead, "ECG") for lead in LEADS]
    g.compute(blocks)
    per_lead = np.stack([g.scores(b) for b in blocks])
    zero = predictor.classify(np.zeros((1, 12, data.signals.shape[-1]), np.float32))[0]
    for i in range(12):
        assert np.abs(per_lead[i] - zero).max() > 1e-6, LEADS[i]
        for j in range(i):
            assert np.abs(per_lead[i] - per_lead[j]).max() > 1e-6, (LEADS[i], LEADS[j])
    x = np.array(data.signals[data.row_of(ecg_id)], dtype=np.float32)
    np.testing.assert_allclose(
        per_lead[3], predictor.classify(x, np.array(lead_mask(("aVR",))))[0], rtol=1e-4, atol=1e-6
    )
    assert _sha(prepared_qa / SIGNALS) == signals_sha

    # dry run: every prompt written, nothing asked; the same prompts the real run sent
    before = server.state.stats()["received"]
    assert (
        _cli(
            [
                "--data",
                str(prepared_qa),
                "--grounding",
                str(upperbound_checkpoint),
                "--model",
                "fake-4o",
                "--split",
                "train",
                "--out",
                str(tmp_path / "dry"),
                "--dry-run",
                "-q",
            ]
        )
        == 0
    )
    assert server.state.stats()["received"] == before
    dry = [json.loads(line) for line in (tmp_path / "dry" / "prompts.jsonl").read_text().splitlines()]
    assert {d["prompt_hash"] for d in dry} == {t["prompt_hash"] for t in reports["train"][1]}

    # the `ecgqa report` table reads these reports like any `ecgqa evaluate` one
    from ecgqa.evaluation.report import compare_table, load_report

    table = compare_table([load_report(tmp_path / "train"), load_report(tmp_path / "valid")])
    assert f"**{100 * reports['train'][0]['em']:.1f}**" in table and "comparison_irrelevant-query" in table

    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    assert server.state.tokens_seen == {KEY}


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, server, prepared_qa, upperbound_checkpoint, monkeypatch, capsys):
    out = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "llm_eval",
        "--data",
        str(prepared_qa),
        "--grounding",
        str(upperbound_checkpoint),
        "--model",
        "fake-4o",
        "--base-url",
        server.url,
        "--split",
        "train",
        "--concurrency",
        "4",
        "--timeout",
        "120",
    ]
    args = [*base, "--out", str(out)]
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    stop_at = 10
    server.state.answer_limit = stop_at  # later requests hang until the client is gone
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = out / "responses.sqlite"
    deadline = time.time() + 90
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                try:
                    stored = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
            if stored == stop_at and server.state.stats()["received"] > stop_at:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline  # the key is not in the process's argv
    proc.send_signal(signal.SIGKILL)
    log1 = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL
    assert stored == stop_at and not (out / "report.json").exists()

    server.state.answer_limit = None
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert _cli([*base[3:], "--out", str(out)]) == 0  # the same command resumes (in-process here, to save time)
    report = json.loads((out / "report.json").read_text())
    n = report["n_questions"]
    stats = server.state.stats()
    # every question answered exactly once across the killed and the resumed run: no duplicate, none lost
    assert stats["answered"] == n == report["n_distinct_prompts"] == report["n"]
    assert stats["max_answers_per_prompt"] == 1
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT prompt_hash) FROM responses").fetchone() == (n, n)
    assert json.loads((out / "run_log.json").read_text())["requests_sent"] == n - stop_at

    # an uninterrupted run elsewhere (in-process this time) writes the identical report
    fresh = tmp_path / "fresh"
    assert _cli([*base[3:], "--out", str(fresh)]) == 0
    assert (fresh / "report.json").read_text() == (out / "report.json").read_text()
    assert (fresh / "predictions.jsonl").read_text() == (out / "predictions.jsonl").read_text()

    captured = capsys.readouterr()
    for text in (log1, captured.out, captured.err):
        assert KEY not in text
    for p in [*out.rglob("*"), *fresh.rglob("*")]:
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert server.state.tokens_seen == {KEY}


@pytest.mark.slow
def test_inputs_side_by_side_through_the_cli(tmp_path, server, prepared_qa, upperbound_checkpoint, monkeypatch, capsys):
    """`--input image` / `none` need no --grounding; `classifier` does; `ecgqa report` shows each run's input."""
    from ecgqa.evaluation.report import compare_table, load_report
    from ecgqa.render import layout_geometry

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    base = ["--data", str(prepared_qa), "--model", "fake-vl", "--base-url", server.url, "--split", "valid", "-q"]
    assert _cli([*base, "--input", "classifier", "--out", str(tmp_path / "nogrounding")]) == 2
    assert "--grounding" in capsys.readouterr().err
    runs = {
        "image": ["--input", "image", "--dpi", "40", "--image-detail", "low"],
        "none": ["--input", "none"],
        "features": ["--input", "features"],
        "classifier": ["--grounding", str(upperbound_checkpoint)],
        "image+classifier": ["--input", "classifier,image", "--dpi", "40", "--grounding", str(upperbound_checkpoint)],
    }
    for name, extra in runs.items():
        before = len(server.state.seen)
        assert _cli([*base, *extra, "--out", str(tmp_path / name)]) == 0, name
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["input"] == name and report["n"] == report["n_questions"] == round(38 / 10)
        sent = server.state.seen[before:]
        n_images = [len(r["images"]) for r in sent]
        if "image" in name:
            assert n_images == [2] * len(sent)  # the sample's valid split: comparison questions, two ECGs each
            assert {i["size"] for r in sent for i in r["images"]} == {layout_geometry("3x4").pixels(40)}
            assert all("The first ECG:" in r["text"] and "The second ECG:" in r["text"] for r in sent)
        else:
            assert n_images == [0] * len(sent)
        assert all(("Interpretation of the" in r["text"]) == ("classifier" in name) for r in sent)
        assert all(("Measurements of the first ECG:\nHeart rate:" in r["text"]) == (name == "features") for r in sent)
    assert (tmp_path / "image" / "grounding_cache" / "images").is_dir()
    table = compare_table([load_report(tmp_path / n) for n in runs])
    for name in runs:
        assert f"fake-vl ({name})" in table
    # a warm re-run of the image run renders nothing and asks nothing
    before = server.state.stats()["received"]
    assert _cli([*base, *runs["image"], "--out", str(tmp_path / "image")]) == 0
    log = json.loads((tmp_path / "image" / "run_log.json").read_text())
    assert log["images_rendered"] == 0 and log["requests_sent"] == 0 and server.state.stats()["received"] == before


@pytest.mark.slow
def test_grounding_checkpoint_at_another_rate_is_refused(
    tmp_path, server, mapped_sample, upperbound_checkpoint, capsys
):
    """One rate policy (ecgqa.checkpoint.check_compatible): never resampled on the fly, the fix is named."""
    from ecgqa.data.prepare import prepare

    data = tmp_path / "qa-250"
    prepare(mapped_sample, data, variant="template", task="qa", rate=250, progress=False)
    rc = _cli(
        [
            "--data",
            str(data),
            "--grounding",
            str(upperbound_checkpoint),
            "--model",
            "m",
            "--base-url",
            server.url,
            "--split",
            "valid",
            "--out",
            str(tmp_path / "out"),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "250 Hz" in err and "500 Hz" in err and "--rate 500" in err
    assert server.state.stats()["received"] == 0
