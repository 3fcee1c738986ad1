"""``ecgqa llm-eval --control shuffled-ecg --control question-only`` against a real local OpenAI-compatible server:
the same questions asked again with another sample's ECG input and with none, paired by sample in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ecgqa.cli import main
from ecgqa.evaluation.controls import compare
from tests.fake_llm_server import FakeLLM, FakeServer


@pytest.mark.slow  # measures ECGs (neurokit2) and runs a server
def test_llm_eval_controls_ask_the_same_questions_with_another_ecg_and_none(tmp_path, prepared_qa, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "run"
    with FakeServer(FakeLLM()) as server:
        rc = main(
            ["llm-eval", "--data", str(prepared_qa), "--split", "valid", "--model", "fake", "--base-url", server.url,
             "--input", "features", "--fraction", "0.5", "--out", str(out), "--control", "shuffled-ecg",
             "--control", "question-only", "-q"]
        )  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())

    def lines(folder):
        return {x["sample_id"]: x for x in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}

    def transcript(folder, sid):
        return json.loads((folder / "transcripts" / f"{sid}.json").read_text())

    model = lines(out)
    shuffled = lines(out / "controls" / "shuffled-ecg")
    qonly = lines(out / "controls" / "question-only")
    assert set(model) == set(shuffled) == set(qonly) and len(model) == report["n"] > 2
    mapping = {}
    for sid, x in shuffled.items():
        assert x["ecg_id"] == model[sid]["ecg_id"] and x["question"] == model[sid]["question"]
        assert all(a != b for a, b in zip(x["ecg_id"], x["shown_ecg_id"], strict=True))
        for real, shown in zip(x["ecg_id"], x["shown_ecg_id"], strict=True):
            assert mapping.setdefault(real, shown) == shown  # one permutation of the ECGs
        t, m = transcript(out / "controls" / "shuffled-ecg", sid), transcript(out, sid)
        assert t["ecg_id"] == x["shown_ecg_id"] and t["question"] == m["question"]
        assert "Measurements of the first ECG" in json.dumps(t["messages"]) and t["messages"] != m["messages"]
        q = transcript(out / "controls" / "question-only", sid)
        assert "Measurements" not in json.dumps(q["messages"]) and q["input"] == "none"
    c = report["controls"]
    assert set(c["arms"]) == {"model", "shuffled-ecg", "question-only"} and c["n_paired"] == len(model)
    for name, rows in (("model", model), ("shuffled-ecg", shuffled), ("question-only", qonly)):
        assert c["arms"][name]["em"] == pytest.approx(np.mean([r["correct"] for r in rows.values()]))
    again = compare(
        list(model.values()), {"shuffled-ecg": list(shuffled.values()), "question-only": list(qonly.values())}
    )
    assert again["verdict"] == c["verdict"]
    assert c["verdict"]["sentence"] in (out / "report.md").read_text()
    card = report["protocol"]
    assert card["input"] == "features" and card["sample"]["kind"] == "draw" and card["prompt_style"] == "ecgqa-v2"
    sub = json.loads((out / "controls" / "shuffled-ecg" / "report.json").read_text())
    assert sub["protocol"]["control"] == "shuffled-ecg"
    assert not any(x["comparable"] for x in sub["protocol"]["comparable_with_published"])
