"""LLM harness, offline: --input image, features, none and their combinations: what reaches a real local server,
the render and measurement caches, the dry run's image token estimate, servers refusing images, resume."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from llm_eval.grounding import Grounder, Reading, plan_readings
from llm_eval.run import evaluate
from tests.llm_eval.llm_eval_helpers import KEY, StandInClassifier


def _sources(inputs, tmp_path, signals, grounding_classes, *, dpi=30, layout="3x4", detail="auto"):
    from llm_eval.inputs import FeatureCache, ImageCache
    from llm_eval.run import Sources

    def by_id(ecg_id):
        return signals(Reading(0, ecg_id, None, "entire", "ECG"))

    return Sources(
        inputs,
        grounder=Grounder(StandInClassifier(grounding_classes), signals, tmp_path / "cache" / "g.jsonl", progress=False)
        if "classifier" in inputs
        else None,
        images=ImageCache(tmp_path / "cache", by_id, 500, "data-hash", layout=layout, dpi=dpi)
        if "image" in inputs
        else None,
        features=FeatureCache(tmp_path / "cache", by_id, 500, "data-hash") if "features" in inputs else None,
        image_detail=detail,
    )


@pytest.mark.parametrize(
    "inputs",
    [
        ("image",),
        pytest.param(("features",), marks=pytest.mark.slow),
        ("none",),
        pytest.param(("classifier",), marks=pytest.mark.slow),
        pytest.param(("image", "classifier"), marks=pytest.mark.slow),
        pytest.param(("image", "features", "classifier"), marks=pytest.mark.slow),
    ],
)
@pytest.mark.slow
def test_what_arrives_at_the_server_for_each_input(tmp_path, server, signals, grounding_classes, every_type, inputs):
    from ecgqa.render import layout_geometry
    from llm_eval.inputs import input_name

    qs = list(every_type.values())
    kwargs = {
        "base_url": server.url,
        "api_key": KEY,
        "concurrency": 2,
        "max_retries": 1,
        "backoff_base": 0.01,
        "progress": False,
    }
    report = evaluate(qs, _sources(inputs, tmp_path, signals, grounding_classes), "fake-vl", tmp_path / "out", **kwargs)
    name = input_name(inputs)
    assert report["input"] == name and report["model"] == f"fake-vl ({name})" and report["n"] == len(qs)
    seen = {re.search(r"^Question: (.*)$", r["text"], re.MULTILINE).group(1): r for r in server.state.seen}
    assert len(seen) == len(qs)
    size = layout_geometry("3x4").pixels(30)
    for q in qs:
        req = seen[q.question]
        labels = [b.ecg_label for b in plan_readings(q)][:: 12 if len(plan_readings(q)) == 12 else 1]
        labels = list(dict.fromkeys(labels))
        if "image" in inputs:
            assert [i["size"] for i in req["images"]] == [size] * len(q.ecg_ids), q.question_type
            assert all(i["detail"] == "auto" for i in req["images"])
            for label in labels:
                assert f"The {label}:" in req["text"]
        else:
            assert req["images"] == []
        assert ("Measurements of the" in req["text"]) == ("features" in inputs)
        if "features" in inputs:
            assert all(f"Measurements of the {label}:\nHeart rate:" in req["text"] for label in labels)
        assert ("Interpretation of the" in req["text"]) == ("classifier" in inputs)
        assert ("No recording is available" in req["text"]) == (inputs == ("none",))
        assert req["options"].get("temperature") == 0 and req["options"].get("max_tokens") == 256
    t = json.loads((tmp_path / "out" / "transcripts" / f"{qs[0].sample_id}.json").read_text())
    assert t["input"] == name
    assert "base64" not in (tmp_path / "out" / "transcripts" / f"{qs[0].sample_id}.json").read_text()

    # the same run again, with fresh caches objects over the same folders: nothing rendered, measured or asked
    before = server.state.stats()["received"]
    sources = _sources(inputs, tmp_path, signals, grounding_classes)
    again = evaluate(qs, sources, "fake-vl", tmp_path / "out", **kwargs)
    assert again == report and server.state.stats()["received"] == before
    log = json.loads((tmp_path / "out" / "run_log.json").read_text())
    assert log["images_rendered"] == 0 and log["ecgs_measured"] == 0 and log["grounding_forward_rows"] == 0
    assert server.state.stats()["max_answers_per_prompt"] == 1
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


def test_each_ecg_rendered_once_and_cached_beside_the_grounding_cache(
    tmp_path, signals, grounding_classes, train_questions
):
    from llm_eval.run import build_prompts

    few = sorted({q.ecg_ids[0] for q in train_questions})[:4]
    qs = [q for q in train_questions if set(q.ecg_ids) <= set(few)][:12]  # questions sharing four ECGs
    sources = _sources(("image",), tmp_path, signals, grounding_classes)
    build_prompts(qs, sources)
    distinct = {e for q in qs for e in q.ecg_ids}
    assert sources.images.n_rendered == len(distinct) < len(qs)
    pngs = sorted(p.name for p in sources.images.dir.glob("*.png"))
    assert pngs == sorted(f"{e}.png" for e in distinct)
    assert sources.images.dir.parent.parent == tmp_path / "cache"
    other = _sources(("image",), tmp_path, signals, grounding_classes, dpi=40)  # other options: other pictures
    build_prompts(qs[:1], other)
    assert other.images.n_rendered == 1 and other.images.dir != sources.images.dir


def test_dry_run_writes_messages_exactly_as_sent_with_an_image_token_estimate(
    tmp_path, server, signals, grounding_classes, every_type
):
    from ecgqa.render import layout_geometry
    from tests.fake_llm_server import png_size

    qs = list(every_type.values())
    summary = evaluate(
        qs,
        _sources(("image",), tmp_path, signals, grounding_classes, detail="high"),
        "fake-vl",
        tmp_path / "dry",
        dry_run=True,
        progress=False,
        price_in=2.0,
    )
    assert server.state.stats()["received"] == 0
    lines = [json.loads(x) for x in (tmp_path / "dry" / "prompts.jsonl").read_text().splitlines()]
    w, h = layout_geometry("3x4").pixels(30)
    # OpenAI's tile rule, computed here: fit 2048, shortest side 768, 170 per 512 px tile + 85
    s = min(1, 2048 / max(w, h))
    w2, h2 = w * s, h * s
    s = min(1, 768 / min(w2, h2))
    per_image = 85 + 170 * math.ceil(w2 * s / 512) * math.ceil(h2 * s / 512)
    total = 0
    for line, q in zip(lines, qs, strict=False):
        parts = line["messages"][0]["content"]
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert [png_size(u) for u in urls] == [(w, h)] * len(q.ecg_ids)
        text = "\n".join(p["text"] for p in parts if p["type"] == "text")
        assert line["estimated_tokens"] == round(len(text) / 4) + per_image * len(q.ecg_ids)
        total += line["estimated_tokens"]
    assert summary["estimated_prompt_tokens"] == total and summary["images"] == sum(len(q.ecg_ids) for q in qs)
    assert summary["estimated_input_cost"] == pytest.approx(total * 2e-6)
    # what the dry run wrote is what a real run sends
    evaluate(
        qs,
        _sources(("image",), tmp_path, signals, grounding_classes, detail="high"),
        "fake-vl",
        tmp_path / "real",
        base_url=server.url,
        api_key=KEY,
        progress=False,
    )
    sent = {r["text"]: r["images"] for r in server.state.seen}
    for line in lines:
        parts = line["messages"][0]["content"]
        text = "\n".join(p["text"] for p in parts if p["type"] == "text")
        assert [i["bytes"] for i in sent[text]] == [
            len(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"
        ]
    real = {json.loads(x)["prompt_hash"] for x in (tmp_path / "real" / "prompts.jsonl").read_text().splitlines()}
    assert real == {x["prompt_hash"] for x in lines}


def test_a_server_refusing_images_stops_the_run_naming_model_and_input(
    tmp_path, server, signals, grounding_classes, train_questions
):
    from llm_eval.client import RejectedInputError

    qs = train_questions[:5]
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    evaluate(qs[:2], g, "text-only", tmp_path / "out", base_url=server.url, api_key=KEY, progress=False)
    server.state.reject_images = True
    with pytest.raises(RejectedInputError, match=r"model 'text-only'.*input 'image\+classifier'.*400"):
        evaluate(
            qs,
            _sources(("image", "classifier"), tmp_path, signals, grounding_classes),
            "text-only",
            tmp_path / "out",
            base_url=server.url,
            api_key=KEY,
            concurrency=1,
            progress=False,
        )
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # what was done is recorded
    assert report["input"] == "image+classifier" and report["n_failed"] == len(qs)
    assert (
        "does not support image"
        in json.loads((tmp_path / "out" / "transcripts" / f"{qs[0].sample_id}.json").read_text())["error"]
    )
    assert server.state.stats()["faulted"] == {} and server.state.stats()["received"] == 3  # stopped at once


def test_reasoning_model_options_are_sent_and_recorded(tmp_path, server, signals, grounding_classes, train_questions):
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate(
        train_questions[:2],
        g,
        "o-fake",
        tmp_path / "out",
        base_url=server.url,
        api_key=KEY,
        max_completion_tokens=2000,
        omit_temperature=True,
        progress=False,
    )
    assert [r["options"] for r in server.state.seen] == [{"max_completion_tokens": 2000}] * 2
    assert report["request"] == {"temperature": None, "max_completion_tokens": 2000}


def test_features_text_says_not_measurable_for_a_flat_record(tmp_path):
    from llm_eval.inputs import FeatureCache

    flat = FeatureCache(tmp_path, lambda e: np.zeros((12, 5000), np.float32), 500, "h")
    flat.measure([1, 1])
    assert flat.n_measured == 1
    text = flat.text(1)
    assert "Heart rate: not measurable" in text and "QRS duration: not measurable" in text
    again = FeatureCache(tmp_path, lambda e: 1 / 0, 500, "h")  # read back, never measured again
    again.measure([1])
    assert again.n_measured == 0 and again.text(1) == text


def test_parse_inputs():
    from llm_eval.inputs import parse_inputs

    assert parse_inputs("classifier,image") == ("image", "classifier")
    assert parse_inputs(" features ") == ("features",)
    for bad in ("", "image,none", "pictures"):
        with pytest.raises(ValueError, match="--input"):
            parse_inputs(bad)


@pytest.mark.slow
def test_resume_with_images_resends_only_the_failed_and_matches_an_uninterrupted_run(
    tmp_path, server, signals, grounding_classes, every_type
):
    qs = list(every_type.values())
    kwargs = {"base_url": server.url, "api_key": KEY, "concurrency": 2, "max_retries": 0, "progress": False}
    server.state.fail_substring = f"Question: {qs[1].question}\n"
    first = evaluate(
        qs, _sources(("image", "features"), tmp_path, signals, grounding_classes), "vl", tmp_path / "out", **kwargs
    )
    assert first["n_failed"] == 1 and first["failed_sample_ids"] == [qs[1].sample_id]
    server.state.fail_substring = None
    before = server.state.stats()["received"]
    resumed = evaluate(
        qs, _sources(("image", "features"), tmp_path, signals, grounding_classes), "vl", tmp_path / "out", **kwargs
    )
    assert server.state.stats()["received"] - before == 1 and resumed["n_failed"] == 0
    fresh = evaluate(
        qs,
        _sources(("image", "features"), tmp_path / "other", signals, grounding_classes),
        "vl",
        tmp_path / "fresh",
        **kwargs,
    )
    assert (tmp_path / "fresh" / "report.json").read_text() == (tmp_path / "out" / "report.json").read_text()
    assert fresh == resumed
