"""LLM harness, offline: sampling, grounding, prompts, parsing, the real `openai` client against a real
local server (retries, failures, resume), with a stand-in grounding classifier on the real sample records."""

from __future__ import annotations

import csv
import email.utils
import glob
import itertools
import json
import math
import random
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgqa.data.constants import LEAD_GROUPS, LEADS, QUESTION_TYPES, question_codes
from llm_eval import sampling
from llm_eval.client import ChatClient, FatalEndpointError, _retry_after, api_key_from_env, ask_all
from llm_eval.grounding import Grounder, Reading, lead_subsets_in, plan_readings
from llm_eval.prompts import INSTRUCTION, build_prompt, options_for, prompt_hash
from llm_eval.run import evaluate
from llm_eval.sampling import Question
from llm_eval.scoring import parse_reply
from llm_eval.store import Response, ResponseStore
from tests.fake_llm_server import FakeLLM, FakeServer

KEY = "sk-test-DO-NOT-LEAK-0123456789"


# ----------------------------------------------------------------------------- fixtures


class StandInClassifier:
    """A deterministic function of the (masked) signal, with the upperbound predictor's interface."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.W = np.random.default_rng(0).normal(size=(len(classes), 24))
        self.rows = 0

    def classify(self, ecgs: np.ndarray, lead_masks: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        x = np.array(ecgs, dtype=np.float64)
        if lead_masks is not None:
            x[~np.asarray(lead_masks, bool)] = 0.0
        self.rows += len(x)
        feats = np.concatenate([x.std(-1), np.abs(np.diff(x, axis=-1)).mean(-1) * 10], axis=1)
        return 1 / (1 + np.exp(-(feats @ self.W.T * 4 - 0.3)))


class InPlaceMaskingClassifier(StandInClassifier):
    """The upstream defect: zeroes the leads of the array it was handed, in place."""

    def classify(self, ecgs, lead_masks=None, batch_size=64):
        if lead_masks is not None:
            ecgs[~np.asarray(lead_masks, bool)] = 0.0
        return super().classify(ecgs, lead_masks, batch_size)


@pytest.fixture(scope="module")
def grounding_classes(sample_paths) -> list[str]:
    with (sample_paths.grounding / "ptbxl" / "grounding_class.csv").open() as f:
        return [r["class"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def train_questions(sample_paths) -> list[Question]:
    return sampling.questions_from_release(sample_paths.ptbxl_release, "train")


@pytest.fixture(scope="module")
def valid_questions(sample_paths) -> list[Question]:
    return sampling.questions_from_release(sample_paths.ptbxl_release, "valid")


@pytest.fixture(scope="module")
def signals(sample_paths):
    """ECG id → read-only (12, 5000) array read with wfdb directly; any write into it raises."""
    cache: dict[int, np.ndarray] = {}

    def signal_of(reading: Reading) -> np.ndarray:
        if reading.ecg_id not in cache:
            path = (
                sample_paths.ptbxl_records
                / "records500"
                / f"{reading.ecg_id // 1000 * 1000:05d}"
                / f"{reading.ecg_id:05d}_hr"
            )
            sig, _ = wfdb.rdsamp(str(path))
            arr = np.ascontiguousarray(sig.T.astype(np.float32))
            arr.flags.writeable = False
            cache[reading.ecg_id] = arr
        return cache[reading.ecg_id]

    signal_of.cache = cache
    return signal_of


@pytest.fixture
def server():
    with FakeServer(FakeLLM()) as s:
        yield s


def synthetic(qtype: str, question: str, options: list[str], answer: list[str], ecg_ids=(16,), attribute_type="noise"):
    return Question(
        sample_id=900000 + QUESTION_TYPES.index(qtype),
        question=question,
        question_type=qtype,
        attribute_type=attribute_type,
        qt3=question_codes(qtype, attribute_type)[2],
        answer=tuple(answer),
        options=tuple(options),
        ecg_ids=tuple(ecg_ids),
    )


LEAD_OPTIONS = [f"lead {x}" for x in ("I", "II", "III", "V1", "V2", "V3", "V4", "V5", "V6", "aVF", "aVL", "aVR")]


@pytest.fixture(scope="module")
def every_type(train_questions, valid_questions) -> dict[str, Question]:
    """One question per question type: the real sample's two types plus synthetic ones for the rest."""
    nums = ["p duration", "pr interval", "qrs duration", "qt corrected", "qt interval", "rr interval"]
    return {
        "single-verify": next(q for q in train_questions if "in lead" in q.question),
        "single-choose": synthetic(
            "single-choose",
            "Which does this ECG show, left axis deviation or right axis deviation?",
            ["left axis deviation", "right axis deviation"],
            [],
            attribute_type="heart_axis",
        ),
        "single-query": synthetic(
            "single-query", "Which leads does this ECG show baseline drift in?", LEAD_OPTIONS, ["lead V1", "lead II"]
        ),
        "comparison_consecutive-verify": synthetic(
            "comparison_consecutive-verify",
            "Does the recent ECG show any changes compared to the previous ECG?",
            ["no", "yes"],
            ["yes"],
            ecg_ids=(16, 17),
            attribute_type="scp_code",
        ),
        "comparison_consecutive-query": synthetic(
            "comparison_consecutive-query",
            "What numeric features of the recent ECG have become abnormal compared to the previous ECG?",
            nums,
            [],
            ecg_ids=(16, 17),
            attribute_type="numeric_feature",
        ),
        "comparison_irrelevant-verify": synthetic(
            "comparison_irrelevant-verify",
            "Does the second ECG show sinus rhythm in lead V2 that the first ECG does not?",
            ["no", "yes"],
            ["no"],
            ecg_ids=(16, 17),
            attribute_type="scp_code",
        ),
        "comparison_irrelevant-query": valid_questions[0],
    }


# ----------------------------------------------------------------------------- sampling


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


# ----------------------------------------------------------------------------- grounding


def test_lead_subsets_named_by_questions():
    assert lead_subsets_in("Does this ECG show static noise in lead aVL?") == ["aVL"]
    assert lead_subsets_in("Does this ECG show any kind of noises in lead III?") == ["III"]
    assert lead_subsets_in("Does this ECG show any kind of noises in lead I?") == ["I"]
    assert lead_subsets_in("Does this ECG show ischemic in inferior leads?") == ["inferior"]
    assert lead_subsets_in("Is there myocardial infarction in inferoposterolateral leads?") == ["inferoposterolateral"]
    assert lead_subsets_in("Does this ECG show low qrs voltages in the frontal and horizontal leads?") == ["entire"]
    assert lead_subsets_in("Which does it show, ischemic in lateral leads or ischemic in inferior leads?") == [
        "lateral",
        "inferior",
    ]
    assert lead_subsets_in("Does this ECG show baseline drift?") == []
    assert lead_subsets_in("Is the V5 lead noisy?") == ["V5"]


def test_plan_blocks_per_question_kind(every_type):
    verify = every_type["single-verify"]
    lead = re.search(r"in lead (\S+)\?", verify.question).group(1)
    assert [(b.subset, b.leads) for b in plan_readings(verify)] == [(lead, (lead,))]
    which = plan_readings(every_type["single-query"])
    assert [b.subset for b in which] == list(LEADS)  # one pass per single lead
    comp = plan_readings(every_type["comparison_consecutive-verify"])
    assert [(b.ecg_label, b.ecg_id, b.subset) for b in comp] == [
        ("previous ECG", 16, "entire"),
        ("recent ECG", 17, "entire"),
    ]
    irr = plan_readings(every_type["comparison_irrelevant-query"])
    assert [b.ecg_label for b in irr] == ["first ECG", "second ECG"]
    assert [b.ecg_id for b in irr] == list(every_type["comparison_irrelevant-query"].ecg_ids)
    # "first degree av block" is a class, not the first ECG: a consecutive question keeps previous/recent
    av = synthetic(
        "comparison_consecutive-verify",
        "Has first degree av block newly appeared in the later ECG compared to the earlier one?",
        ["no", "yes"],
        ["no"],
        ecg_ids=(16, 17),
        attribute_type="scp_code",
    )
    assert [b.ecg_label for b in plan_readings(av)] == ["previous ECG", "recent ECG"]
    both = plan_readings(every_type["comparison_irrelevant-verify"])  # a lead named in a comparison question
    assert [(b.ecg_label, b.subset) for b in both] == [("first ECG", "V2"), ("second ECG", "V2")]


def test_per_lead_grounding_differs_and_never_touches_the_store(signals, grounding_classes, every_type):
    q = every_type["single-query"]  # "which leads": one pass per lead
    ecg = np.array(signals(plan_readings(q)[0]))
    for clf in (StandInClassifier(grounding_classes), InPlaceMaskingClassifier(grounding_classes)):
        g = Grounder(clf, signals, progress=False)
        g.ground([q])
        per_lead = np.stack([g.scores(b) for b in plan_readings(q)])
        zeroed = clf.classify(np.zeros((1, 12, ecg.shape[-1]), np.float32))[0]
        # every pair of leads reads differently, and no lead reads like an all-zero ECG
        for i in range(12):
            assert not np.allclose(per_lead[i], zeroed, atol=1e-4), LEADS[i]
            for j in range(i):
                assert not np.allclose(per_lead[i], per_lead[j], atol=1e-4), (LEADS[i], LEADS[j])
        # each reading equals the classifier on its own zero-masked copy
        for i, _lead in enumerate(LEADS):
            x = ecg.copy()
            x[[k for k in range(12) if k != i]] = 0
            np.testing.assert_allclose(
                per_lead[i], StandInClassifier(grounding_classes).classify(x[None])[0], rtol=0, atol=1e-6
            )  # the cache keeps float32 scores exactly
        np.testing.assert_array_equal(signals(plan_readings(q)[0]), ecg)  # the source is unchanged


def test_each_ecg_subset_classified_once_and_cached_on_disk(tmp_path, signals, grounding_classes, train_questions):
    qs = train_questions[:60]
    distinct = {b.key for q in qs for b in plan_readings(q)}
    total = sum(len(plan_readings(q)) for q in qs)
    clf = StandInClassifier(grounding_classes)
    g = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", batch_size=16, progress=False)
    first = g.ground(qs)
    assert g.n_forward == clf.rows == len(distinct) < total + 1
    again = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    assert again.ground(qs) == first and again.n_forward == 0
    with pytest.raises(ValueError, match="cache.jsonl holds classifier scores of another checkpoint"):
        Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="another-checkpoint", progress=False)
    with (tmp_path / "cache.jsonl").open("a") as f:
        f.write('{"key": "1|entire", "scores": [0.1, 0.')  # a write torn by a crash is skipped, not fatal
    torn = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    assert torn.ground(qs) == first and torn.n_forward == 0
    torn.ground(train_questions[60:70])  # appends after the torn line...
    n_new = torn.n_forward
    after = Grounder(clf, signals, tmp_path / "cache.jsonl", fingerprint="abc", progress=False)
    after.ground(train_questions[:70])
    assert n_new > 0 and after.n_forward == 0  # ...and every new record reads back
    # interpretations: classes scored > 0.5 with three decimals, highest first
    interp = first[qs[0].sample_id][0]
    scores = g.scores(interp.reading)
    expect = sorted(
        ((c, round(float(s), 3)) for c, s in zip(grounding_classes, scores, strict=False) if s > 0.5),
        key=lambda cs: (-cs[1], cs[0]),
    )
    assert list(interp.findings) == expect and expect


@pytest.mark.parametrize("left_behind", ["", '{"kind": "ecgqa-grou', '{"kind": "ecgqa-grounding-cache", "fingerp'])
def test_cache_killed_before_its_header_was_written_starts_afresh(
    tmp_path, signals, grounding_classes, train_questions, left_behind
):
    """A kill between creating the cache file and completing its header line must not block every later run."""
    path = tmp_path / "cache.jsonl"
    path.write_text(left_behind)
    qs = train_questions[:5]
    g = Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
    first = g.ground(qs)
    assert g.n_forward > 0
    again = Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
    assert again.ground(qs) == first and again.n_forward == 0


# ----------------------------------------------------------------------------- prompts and parsing


def test_prompt_for_each_question_type(signals, grounding_classes, every_type):
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    interps = g.ground(list(every_type.values()))
    for qtype, q in every_type.items():
        text = build_prompt(q, interps[q.sample_id])[0]["content"]
        blocks = re.findall(r"^Interpretation of the (.+?) \((.+?)\):$", text, re.MULTILINE)
        expected = [(b.ecg_label, b.subset) for b in plan_readings(q)]
        assert len(blocks) == len(expected), qtype
        for (label, leads), (want_label, subset) in zip(blocks, expected, strict=False):
            assert label == want_label
            group = LEAD_GROUPS[subset]
            assert leads == (
                "all 12 leads"
                if len(group) == 12
                else f"lead {group[0]} only"
                if len(group) == 1
                else f"leads {', '.join(group)} only"
            )
        assert f"\nQuestion: {q.question}\n" in text
        options = re.search(r"^Options: (.*)$", text, re.MULTILINE).group(1).split("; ")
        assert options == list(q.options) + ([] if qtype.endswith("verify") else ["None"]), qtype
        assert text.rstrip().endswith(INSTRUCTION)
        findings = re.findall(r"^- (.+): (\d\.\d{3})$", text, re.MULTILINE)
        assert findings and all(float(s) >= 0.5 and c in grounding_classes for c, s in findings), findings
    assert "two ECGs" in build_prompt(every_type["comparison_irrelevant-query"], [])[0]["content"]


@pytest.mark.parametrize("rule", ["paper", "ecgqa-v2"])  # the rules of --prompt paper and --prompt ecgqa-v2
def test_parse_reply_longest_first_case_insensitive(rule):
    assert parse_reply("Lead II", LEAD_OPTIONS + ["None"], rule=rule) == (["lead II"], True)
    assert parse_reply("lead III; LEAD I.", LEAD_OPTIONS, rule=rule) == (["lead I", "lead III"], True)
    assert parse_reply("Lead aVF, lead V1", LEAD_OPTIONS, rule=rule)[0] == ["lead V1", "lead aVF"]
    stages = ["early stage of myocardial infarction", "none of myocardial infarction", "None"]
    assert parse_reply("None of myocardial infarction", stages, rule=rule) == (["none of myocardial infarction"], True)
    assert parse_reply("None", stages, rule=rule) == ([], True)
    big = ["bigeminal pattern (unknown origin, supraventricular, or ventricular)", "sinus rhythm", "None"]
    assert parse_reply("Bigeminal pattern (unknown origin, supraventricular, or ventricular)", big, rule=rule)[0] == [
        big[0]
    ]
    assert parse_reply("I cannot tell from this.", ["no", "yes"], rule=rule) == ([], False)
    assert parse_reply("yes", ["no", "yes"], rule=rule) == (["yes"], True)
    assert parse_reply("eyes", ["no", "yes"], rule=rule) == ([], False)  # whole phrases only


# ----------------------------------------------------------------------------- client, store, resume


@pytest.mark.slow
def test_retry_after_is_honoured_and_backoff_grows(tmp_path):
    class Resp:
        def __init__(self, headers):
            self.headers = headers

    class Err(Exception):
        def __init__(self, headers):
            self.response = Resp(headers)

    assert _retry_after(Err({"retry-after": "7"})) == 7.0
    assert _retry_after(Err({"retry-after-ms": "250"})) == 0.25
    assert _retry_after(Err({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # an HTTP date, long past
    soon = email.utils.format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < _retry_after(Err({"retry-after": soon})) <= 30  # an HTTP date is honoured too
    assert _retry_after(Err({"retry-after": "soon"})) is None
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient(
            "m", store, base_url="http://127.0.0.1:9/v1", api_key="x", backoff_base=0.5, backoff_max=100, seed=0
        )
        assert all(client._delay(a, Err({"retry-after": "30"})) >= 30 for a in range(4))
        delays = [max(client._delay(a, Err({})) for _ in range(50)) for a in range(5)]
        assert all(0.5 * 2**a * 0.8 < d <= 0.5 * 2**a for a, d in enumerate(delays))  # jittered, doubling caps


class _closing:
    def __init__(self, store):
        self.store = store

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.store.close()


def test_api_key_only_from_the_environment(monkeypatch):
    monkeypatch.setenv("MY_GATEWAY_KEY", KEY)
    assert api_key_from_env("MY_GATEWAY_KEY") == KEY
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        api_key_from_env("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="NAME"):
        api_key_from_env(KEY)  # someone passed the key itself
    assert api_key_from_env("OPENAI_API_KEY", base_url="http://localhost:8000/v1") == "not-needed"


@pytest.mark.slow
def test_retries_on_429_500_and_timeouts_then_succeeds(tmp_path, server):
    server.state.faults = ["429", "500", "hang"]
    server.state.retry_after = 0.05
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient(
            "fake", store, base_url=server.url, api_key=KEY, timeout=1.0, max_retries=5, backoff_base=0.01
        )
        messages = [{"role": "user", "content": "Question: ?\n\nOptions: no; yes"}]
        out = ask_all(client, {"h1": messages}, progress=False)
        assert out["h1"].ok and out["h1"].attempts == 4
        assert store.get("fake", "h1").reply in ("no", "yes") and store.count() == 1
    st = server.state.stats()
    assert st["received"] == 4 and st["answered"] == 1
    assert st["faulted"] == {"429": 1, "500": 1, "hang": 1}
    assert server.state.tokens_seen == {KEY}


def test_request_and_lock_timeouts_are_retried(tmp_path, server):
    server.state.faults = ["408", "409"]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=3, backoff_base=0.01)
        out = ask_all(client, {"h": [{"role": "user", "content": "Options: no; yes"}]}, progress=False)
        assert out["h"].ok and out["h"].attempts == 3 and store.count() == 1
    assert server.state.stats()["faulted"] == {"408": 1, "409": 1}


def test_rejected_key_stops_the_run_without_showing_the_key(tmp_path, server):
    server.state.faults = ["401"]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=3, backoff_base=0.01)
        with pytest.raises(FatalEndpointError) as err:
            ask_all(client, {"h": [{"role": "user", "content": "Options: no; yes"}]}, progress=False)
        assert "401" in str(err.value) and KEY not in str(err.value) and KEY[:12] not in str(err.value)
        assert store.count() == 0
    assert server.state.stats()["received"] == 1  # not retried


def test_store_is_keyed_by_model_and_prompt_hash(tmp_path):
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        m = [{"role": "user", "content": "x"}]
        assert store.put("a", prompt_hash(m), m, Response("yes", 3, 1))
        assert not store.put("a", prompt_hash(m), m, Response("no", 3, 1))  # first write wins, no duplicate
        assert store.put("b", prompt_hash(m), m, Response("no", 3, 1))
        assert store.count() == 2 and store.get("a", prompt_hash(m)).reply == "yes"
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as again:
        assert again.count("a") == 1 and again.get("b", prompt_hash(m)).completion_tokens == 1


def _recompute(transcripts: list[dict], truth: dict[int, tuple[list[str], list[str]]]) -> dict:
    """Independent EM from transcripts (own parser) and the release's answers."""
    per: dict[str, list[bool]] = {}
    for t in transcripts:
        if t["status"] == "failed":
            continue
        opts = t["options"]
        text = t["reply"].lower()
        hits = []
        for o in sorted(opts, key=len, reverse=True):
            m = re.search(r"(?<![a-z0-9])" + re.escape(o.lower()) + r"(?![a-z0-9])", text)
            if m:
                hits.append(o)
                text = text[: m.start()] + "#" * len(o) + text[m.end() :]
        predicted = {h for h in hits if h != "None"}
        answer, valid = truth[t["sample_id"]]
        true = {a for a in answer if a != "none"} & set(valid)
        per.setdefault(t["question_type"], []).append(bool(hits) and predicted == true)  # no match = wrong
    flat = [c for v in per.values() for c in v]
    return {
        "n": len(flat),
        "em": sum(flat) / len(flat),
        "macro": sum(sum(v) / len(v) for v in per.values()) / len(per),
        "per_qt": {k: (len(v), sum(v) / len(v)) for k, v in per.items()},
    }


@pytest.mark.slow
def test_evaluate_end_to_end_resume_and_failures(
    tmp_path, server, signals, grounding_classes, sample_paths, train_questions, valid_questions, capsys
):
    raw = {}
    for split in ("train", "valid"):
        for f in (sample_paths.ptbxl_release / "template" / split).glob("*.json"):
            raw.update({s["sample_id"]: s for s in json.loads(f.read_text())})
    chosen = sampling.stratified_sample(train_questions + valid_questions)
    fail_q, nomatch_q = chosen[3], chosen[7]
    server.state.fail_substring = f"Question: {fail_q.question}\n"
    server.state.nomatch_substring = f"Question: {nomatch_q.question}\n"
    same_fail = [q for q in chosen if q.question == fail_q.question]
    same_nomatch = [q for q in chosen if q.question == nomatch_q.question]
    grounder = Grounder(StandInClassifier(grounding_classes), signals, tmp_path / "g.jsonl", progress=False)
    kwargs = {
        "base_url": server.url,
        "api_key": KEY,
        "concurrency": 4,
        "timeout": 5,
        "max_retries": 1,
        "backoff_base": 0.01,
        "price_in": 2.5,
        "price_out": 10.0,
        "report_meta": {"data": "sample", "split": "train+valid"},
        "progress": True,
    }
    report = evaluate(chosen, grounder, "fake-model", tmp_path / "out", **kwargs)

    out = tmp_path / "out"
    transcripts = [json.loads(p.read_text()) for p in sorted((out / "transcripts").glob("*.json"))]
    assert len(transcripts) == len(chosen) == report["n_questions"]
    # failed requests are recorded as failed, never scored
    assert report["n_failed"] == len(same_fail) and report["failed_sample_ids"] == sorted(
        q.sample_id for q in same_fail
    )
    assert {t["sample_id"] for t in transcripts if t["status"] == "failed"} == {q.sample_id for q in same_fail}
    assert report["n_no_match"] == len(same_nomatch)
    assert all(t["parsed"] == [] for t in transcripts if t["status"] == "no-match")
    # report figures = independent recomputation from transcripts and the release answers
    truth = {q.sample_id: (raw[q.sample_id]["answer"], list(q.options)) for q in chosen}
    ind = _recompute(transcripts, truth)
    assert report["n"] == ind["n"] == len(chosen) - len(same_fail)
    assert math.isclose(report["em"], ind["em"]) and math.isclose(report["em_macro_question_type"], ind["macro"])
    assert report["per_question_type"].keys() == ind["per_qt"].keys()
    for qt, (n, em) in ind["per_qt"].items():
        assert report["per_question_type"][qt]["n"] == n and math.isclose(report["per_question_type"][qt]["em"], em)
    assert 0 < report["em"] < 1
    ok = [t for t in transcripts if t["status"] != "failed"]
    p_tok = sum(len(t["messages"][0]["content"].split()) for t in ok)
    c_tok = sum(len(t["reply"].split()) for t in ok)
    assert report["usage"] == {"prompt_tokens": p_tok, "completion_tokens": c_tok, "total_tokens": p_tok + c_tok}
    assert report["cost"]["total"] == pytest.approx(p_tok * 2.5e-6 + c_tok * 10e-6, abs=1e-6)
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["sample_id"] for p in preds] == [q.sample_id for q in chosen]
    assert (out / "report.md").read_text().count("fake-model") >= 1
    first_answered = server.state.stats()["answered"]
    assert first_answered == len({t["prompt_hash"] for t in ok})

    # re-run with the failure fixed: only the failed prompts are requested, nothing twice
    server.state.fail_substring = None
    before = server.state.stats()["received"]
    report2 = evaluate(chosen, grounder, "fake-model", out, **kwargs)
    failed_prompts = {t["prompt_hash"] for t in transcripts if t["status"] == "failed"}
    assert server.state.stats()["received"] - before == len(failed_prompts)
    assert report2["n_failed"] == 0 and report2["n"] == len(chosen)
    assert server.state.stats()["max_answers_per_prompt"] == 1
    # and once more: zero requests, identical report
    before = server.state.stats()["received"]
    report3 = evaluate(chosen, grounder, "fake-model", out, **kwargs)
    assert server.state.stats()["received"] == before
    assert report3 == report2
    assert json.loads((out / "run_log.json").read_text())["requests_sent"] == 0

    # the key never shows up in anything written or printed
    captured = capsys.readouterr()
    assert KEY not in captured.out + captured.err
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    assert server.state.tokens_seen == {KEY}


def test_dry_run_writes_prompts_and_calls_nothing(
    tmp_path, server, signals, grounding_classes, train_questions, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    qs = train_questions[:12]
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    summary = evaluate(qs, g, "fake-model", tmp_path / "dry", dry_run=True, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "dry" / "prompts.jsonl").read_text().splitlines()]
    assert [x["sample_id"] for x in lines] == [q.sample_id for q in qs]
    assert all(x["prompt_hash"] == prompt_hash(x["messages"]) for x in lines)
    assert summary["chars"] == sum(len(x["messages"][0]["content"]) for x in lines)
    assert server.state.stats()["received"] == 0
    assert not (tmp_path / "dry" / "report.json").exists()
    assert all(options_for(q) == ["no", "yes"] for q in qs)


def test_report_url_drops_credentials_and_query_keeps_ipv6():
    from llm_eval.client import safe_url as _safe_url

    assert _safe_url("https://user:secret@gw.example.com:8443/v1?api-key=abc") == "https://gw.example.com:8443/v1"
    assert _safe_url("http://u:p@[::1]:8000/v1?k=1") == "http://[::1]:8000/v1"
    assert _safe_url(None) is None


# ----------------------------------------------------------------------------- broken endpoints, full disks, user files


@pytest.mark.parametrize(
    "fault", ["html", "badjson", "empty", "nochoices", "nullcontent", "intcontent", "notext", "blank", "cutoff"]
)
@pytest.mark.slow
def test_a_broken_200_is_a_failed_attempt_retried_then_recorded_as_failed(tmp_path, server, fault):
    """L6-L8: a 200 that is no chat completion is never stored as a reply; it is retried, then failed."""
    messages = [{"role": "user", "content": "Question: ?\n\nOptions: no; yes"}]
    server.state.faults = [fault] * 3
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=2, backoff_base=0.01)
        out = ask_all(client, {"h": messages}, progress=False)["h"]
        assert not out.ok and out.attempts == 3 and store.count() == 0
        assert server.url in out.error and "HTTP 200" in out.error
        excerpt = {
            "html": "502 Bad Gateway",
            "badjson": '"choices": [',
            "empty": "{}",
            "nochoices": '"choices": []',
            "nullcontent": '"content": null',
            "intcontent": '"content": 42',
            "notext": '"image_url"',
            "blank": '"content": " \\\\n "',
            "cutoff": '"finish_reason": "length"',
        }[fault]
        assert excerpt in out.error
        why = {
            "intcontent": "not text (int)",
            "notext": "no text part",
            "blank": "whitespace-only",
            "cutoff": "cut at max tokens before any text",
        }.get(fault, "")
        assert why in out.error and (fault != "cutoff" or "--max-completion-tokens" in out.error)
    assert server.state.stats()["received"] == 3
    # the next run asks again (nothing bad was stored) and gets the answer
    server.state.faults = [fault]
    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=2, backoff_base=0.01)
        out = ask_all(client, {"h": messages}, progress=False)["h"]
        assert out.ok and out.attempts == 2 and store.get("fake", "h").reply in ("no", "yes")


def test_broken_200s_in_a_run_are_failed_not_scored_and_resent(
    tmp_path, server, signals, grounding_classes, train_questions
):
    qs = train_questions[:6]
    server.state.faults = ["empty", "nullcontent"] * 20
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    kwargs = {
        "base_url": server.url,
        "api_key": KEY,
        "concurrency": 1,
        "max_retries": 1,
        "backoff_base": 0.01,
        "progress": False,
    }
    report = evaluate(qs, g, "fake", tmp_path / "out", **kwargs)
    assert report["n_failed"] == len(qs) and report["n"] == 0 and report["n_no_match"] == 0
    server.state.faults = []
    report = evaluate(qs, g, "fake", tmp_path / "out", **kwargs)
    assert report["n_failed"] == 0 and report["n"] == len(qs)


def _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, fault: str, concurrency: int):
    """Evaluate ``qs`` against the clean server, then with ``server.state.<fault>`` on: (clean report, faulted
    report, [(faulted transcript, clean transcript) for each faulted transcript, in file-name order])."""
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    kwargs = {"base_url": server.url, "api_key": KEY, "concurrency": concurrency, "max_retries": 0, "progress": False}
    clean = evaluate(qs, g, "fake", tmp_path / "clean", **kwargs)
    assert hasattr(server.state, fault)
    setattr(server.state, fault, True)
    faulted = evaluate(qs, g, "fake", tmp_path / "faulted", **kwargs)
    pairs = [
        (json.loads(p.read_text()), json.loads((tmp_path / "clean" / "transcripts" / p.name).read_text()))
        for p in sorted((tmp_path / "faulted" / "transcripts").glob("*.json"))
    ]
    return clean, faulted, pairs


def test_content_as_a_list_of_text_parts_is_parsed_and_scored(
    tmp_path, server, signals, grounding_classes, train_questions
):
    """N1: ``content: [{"type": "text", "text": ...}, ...]`` is read as its text parts joined, scored as usual."""
    qs = train_questions[:6]
    clean, parts, pairs = _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, "list_content", 1)
    assert parts["n_failed"] == 0 and parts["n"] == len(qs)
    for key in ("em", "n_no_match", "per_question_type", "usage"):
        assert parts[key] == clean[key]
    for t, c in pairs:
        assert isinstance(t["reply"], str) and t["reply"] == c["reply"] and t["parsed"] == c["parsed"]


def test_malformed_usage_counts_as_unknown_and_never_stops_the_run(
    tmp_path, server, signals, grounding_classes, train_questions, capsys
):
    """N4: usage with a negative or non-numeric count: tokens unknown (0), noted, every reply kept and scored."""
    qs = train_questions[:6]
    server.state.bad_usage = True
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate(
        qs, g, "fake", tmp_path / "out", base_url=server.url, api_key=KEY, concurrency=1, max_retries=0, progress=False
    )
    assert report["n_failed"] == 0 and report["n"] == len(qs)
    assert report["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    run_log = json.loads((tmp_path / "out" / "run_log.json").read_text())
    assert run_log["replies_without_usable_usage"] == run_log["requests_sent"] > 0
    assert "malformed usage" in capsys.readouterr().err


def test_a_full_disk_when_opening_the_store_says_so(tmp_path, monkeypatch):
    """L11: SQLITE_FULL while opening the store is a full disk, not a broken store to move aside."""
    import sqlite3

    from llm_eval.store import StoreFullError

    real_connect = sqlite3.connect

    def full(*args, **kwargs):
        db = real_connect(*args, **kwargs)
        db.execute("PRAGMA max_page_count = 1")  # creating the table now fails with a real SQLITE_FULL
        return db

    class Full:
        connect = staticmethod(full)

        def __getattr__(self, name):
            return getattr(sqlite3, name)

    monkeypatch.setattr("llm_eval.store.sqlite3", Full())
    with pytest.raises(StoreFullError, match="disk is full") as err:
        ResponseStore(tmp_path / "s.sqlite")
    assert "move it aside" not in str(err.value)


def test_a_full_disk_ends_with_one_clear_message(tmp_path, server):
    """L11: sqlite's "database or disk is full" (a real SQLITE_FULL, via max_page_count) is one message."""
    from llm_eval.store import StoreFullError

    with _closing(ResponseStore(tmp_path / "s.sqlite")) as store:
        store._db.execute(f"PRAGMA max_page_count = {store._db.execute('PRAGMA page_count').fetchone()[0]}")
        client = ChatClient("fake", store, base_url=server.url, api_key=KEY, max_retries=0)
        prompts = {f"h{i}": [{"role": "user", "content": "x" * 3000 + f"{i}\n\nOptions: no; yes"}] for i in range(5)}
        with pytest.raises(StoreFullError, match="disk is full.*re-run the same command"):
            ask_all(client, prompts, progress=False)


def test_a_user_file_given_as_grounding_cache_is_refused_and_kept(tmp_path, signals, grounding_classes):
    """L13: a file that is not our cache is never deleted or appended to, with or without a newline."""
    for text in ("my notes, no newline", "line one\nline two\n", '{"fingerprint": "x"}\n'):
        path = tmp_path / "notes.txt"
        path.write_text(text)
        with pytest.raises(ValueError, match="not a grounding cache written by ecgqa.*left untouched"):
            Grounder(StandInClassifier(grounding_classes), signals, path, fingerprint="abc", progress=False)
        assert path.read_text() == text
    with pytest.raises(ValueError, match="is a folder"):
        Grounder(StandInClassifier(grounding_classes), signals, tmp_path, fingerprint="abc", progress=False)


def test_out_holding_someone_elses_files_is_refused(tmp_path, server, signals, grounding_classes, train_questions):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    with pytest.raises(ValueError, match="thesis.tex"):
        evaluate(train_questions[:2], g, "fake", out, base_url=server.url, api_key=KEY, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"] and server.state.stats()["received"] == 0
    # our own folder is reused (that is how a run resumes)
    ours = tmp_path / "ours"
    for _ in range(2):
        evaluate(train_questions[:2], g, "fake", ours, base_url=server.url, api_key=KEY, progress=False)
    assert server.state.stats()["received"] == 2


def test_a_reply_matching_no_option_is_wrong_even_when_the_truth_is_none(tmp_path, server, signals, grounding_classes):
    """L1: the paper scores an unparseable reply against {"none"}: wrong, never a free point."""
    q = synthetic("single-query", "Which leads does this ECG show baseline drift in?", LEAD_OPTIONS, [])
    server.state.faults = ["nomatch"]
    g = Grounder(StandInClassifier(grounding_classes), signals, progress=False)
    report = evaluate([q], g, "fake", tmp_path / "out", base_url=server.url, api_key=KEY, progress=False)
    assert report["n"] == 1 and report["n_no_match"] == 1 and report["em"] == 0.0
    t = json.loads((tmp_path / "out" / "transcripts" / f"{q.sample_id}.json").read_text())
    assert t["status"] == "no-match" and t["correct"] is False and t["parsed"] == [] and t["true"] == []


# ------------------------------------------------------------------ --input: image, features, none, combinations


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


def test_a_reply_with_a_lone_surrogate_is_stored_and_scored(
    tmp_path, server, signals, grounding_classes, train_questions
):
    """A reply ending in a lone surrogate escape (valid JSON, no UTF-8 form) is kept with U+FFFD in its place:
    the response store commits it and the run scores it like the clean reply, instead of failing the group commit."""
    qs = train_questions[:4]
    clean, cut, pairs = _clean_then_faulted(tmp_path, server, signals, grounding_classes, qs, "lone_surrogate", 2)
    assert cut["n_failed"] == 0 and cut["n"] == len(qs) and cut["em"] == clean["em"]
    for t, c in pairs:
        assert t["reply"] == c["reply"] + " \ufffd" and t["parsed"] == c["parsed"]
