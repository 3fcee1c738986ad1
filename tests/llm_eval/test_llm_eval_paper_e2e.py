"""The ECG-QA paper's LLM protocol end to end on PTB-XL test data: `ecgqa llm-eval` defaults to the published
sample and the paper's prompt, against a real local server (tests/fake_llm_server.py)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from ecgqa.evaluation import paper_sample
from tests.llm_eval.paper_helpers import END, PREFACE, _shipped_ids


@pytest.fixture(scope="module")
def prepared_test_split(tmp_path_factory, mapped_sample):
    """A prepared PTB-XL QA directory with a test split: the bundle's real train questions given test sample ids,
    the first 25 taken from the published list, the rest outside it."""
    from ecgqa.data.prepare import prepare

    root = tmp_path_factory.mktemp("ptbxl-test")
    mapped = root / "mapped"
    shutil.copytree(mapped_sample, mapped)
    listed = _shipped_ids()
    for variant in ("template", "paraphrased"):
        src = min((mapped / variant / "train").glob("*.json"))
        rows = json.loads(src.read_text())[:60]
        for k, row in enumerate(rows):
            row["sample_id"] = listed[k * 7] if k < 25 else 90000 + k
        (mapped / variant / "test").mkdir(parents=True, exist_ok=True)
        (mapped / variant / "test" / "80000.json").write_text(json.dumps(rows))
    out = root / "prepared"
    prepare(mapped, out, variant="template", task="qa", rate=500, splits=["test"], progress=False)
    return out


@pytest.mark.slow  # prepares a test split and runs the CLI end to end (about 20 s)
def test_llm_eval_on_ptbxl_test_defaults_to_the_published_sample_and_the_paper_prompt(
    tmp_path, prepared_test_split, prepared_qa, upperbound_checkpoint, monkeypatch, capsys
):
    from ecgqa.cli import main
    from ecgqa.data.prepared import PreparedData
    from tests.fake_llm_server import FakeLLM, FakeServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data = PreparedData(prepared_test_split)
    prepared_ids = {int(r["sample_id"]) for r in data.split("test").to_list()}
    listed = set(_shipped_ids())
    want = sorted(prepared_ids & listed)
    assert len(want) == 25
    with FakeServer(FakeLLM()) as server:

        def llm_eval(data, out, *args):  # `ecgqa llm-eval` on `data` against the fake server, model "m"
            return main(
                ["llm-eval", "--data", str(data), "--model", "m", "--base-url", server.url, "--out", str(out), *args]
            )

        out = tmp_path / "run"
        rc = llm_eval(prepared_test_split, out, "--input", "none", "-q")
        assert rc == 0
        err = capsys.readouterr().err
        report = json.loads((out / "report.json").read_text())
        s = report["sampling"]
        assert (
            s["sample"] == "paper"
            and s["sha256"] == hashlib.sha256(paper_sample.PAPER_SAMPLE_FILE.read_bytes()).hexdigest()
        )
        assert s["n_missing"] == len(listed - prepared_ids) == 8154 - 25 and s["n_listed"] == 8154
        assert s["missing_sample_ids"] == sorted(listed - prepared_ids)
        assert f"{8154 - 25} of the 8154 ids of the published LLM sample are not in" in err  # said even with -q
        assert report["n_questions"] == 25
        preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert [p["sample_id"] for p in preds] == want
        md = (out / "report.md").read_text()
        assert f"sha256 `{paper_sample.PAPER_SAMPLE_SHA256}`" in md and f"{8154 - 25} of them not in" in md
        assert report["prompt_style"] == "ecgqa-v2"  # --input none keeps today's wording

        # --sample draw: the seeded draw over the same split, and the sha256 of the ids it drew
        out2 = tmp_path / "draw"
        assert llm_eval(prepared_test_split, out2, "--input", "none", "--sample", "draw", "-q") == 0
        r2 = json.loads((out2 / "report.json").read_text())
        drawn = [json.loads(line)["sample_id"] for line in (out2 / "predictions.jsonl").read_text().splitlines()]
        assert r2["sampling"]["sample"] == "draw" and r2["n_questions"] == round(60 / 10)
        assert r2["sampling"]["sha256"] == hashlib.sha256("".join(f"{i}\n" for i in drawn).encode()).hexdigest()

        # --ids-file keeps working on PTB-XL test (it replaces the default sample)
        pick = sorted(prepared_ids)[::10]
        (tmp_path / "ids.txt").write_text("\n".join(map(str, pick)))
        out5 = tmp_path / "ids"
        assert (
            llm_eval(prepared_test_split, out5, "--input", "none", "--ids-file", str(tmp_path / "ids.txt"), "-q") == 0
        )
        r5 = json.loads((out5 / "report.json").read_text())
        assert r5["sampling"]["sample"] == "ids-file" and r5["n_questions"] == len(pick)
        assert r5["sampling"]["sha256"] == hashlib.sha256("".join(f"{i}\n" for i in pick).encode()).hexdigest()

        # --input classifier: the paper's prompt by default; paper-as-published sends no max_tokens, as the harness
        for style in ("default", "paper-as-published"):
            before = len(server.state.seen)
            out4 = tmp_path / f"classifier-{style}"
            extra = [] if style == "default" else ["--prompt", style]
            assert llm_eval(prepared_test_split, out4, "--grounding", str(upperbound_checkpoint), "-q", *extra) == 0
            r4 = json.loads((out4 / "report.json").read_text())
            sent = server.state.seen[before:]
            assert (
                r4["sampling"]["sample"] == "paper"
                and r4["n_questions"] == 25
                and len(sent) == r4["n_distinct_prompts"]
            )
            assert all(x["text"].startswith(PREFACE) and x["text"].endswith(END) for x in sent)
            assert all(x["options"]["temperature"] == 0 for x in sent)
            transcripts = [json.loads(t.read_text()) for t in (out4 / "transcripts").glob("*.json")]
            assert {t["prompt_style"] for t in transcripts} == {r4["prompt_style"]} and len(transcripts) == 25
            if style == "default":
                assert r4["prompt_style"] == "paper" and r4["model"] == "m (classifier)"
                assert all(x["options"]["max_tokens"] == 256 for x in sent)
            else:
                assert r4["prompt_style"] == style and r4["model"] == f"m (classifier, {style})"
                assert r4["prompt_version"] == "ecg-qa-llm_modeling@3eabbce" and r4["request"]["max_tokens"] is None
                # 25 listed ids of 60 questions: not what the seeded draw gives, so the harness's order is unknown
                assert r4["sampling"]["plan_order"].startswith("ascending sample id")
                assert all("max_tokens" not in x["options"] for x in sent)

        # the paper prompt needs the classifier input alone: a clear one-line error, nothing written
        out3 = tmp_path / "bad"
        assert llm_eval(prepared_test_split, out3, "--input", "none", "--prompt", "paper") == 2
        assert "--prompt paper: the paper's prompt shows classifier findings only" in capsys.readouterr().err
        assert not out3.exists()
        # --sample paper on data the list does not cover (PTB-XL valid): one clear error, nothing asked
        before = server.state.stats()["received"]
        assert (
            llm_eval(prepared_qa, tmp_path / "valid", "--split", "valid", "--input", "none", "--sample", "paper") == 2
        )
        assert (
            "error: --sample paper: the published LLM sample lists PTB-XL test questions only, and this data is "
            "ptbxl valid; use --sample draw"
        ) in capsys.readouterr().err
        assert server.state.stats()["received"] == before
