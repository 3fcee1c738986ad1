"""Checkpoints on the Hub: `ecgqa export hub CHECKPOINT` writes the card; `ecgqa.load` takes a folder or a repo id.

Offline throughout: the Hub cache is a temporary folder laid out as huggingface_hub lays it out
(``models--org--name/refs/main`` + ``snapshots/<revision>/...``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

import ecgqa
from ecgqa.checkpoint import CheckpointError
from ecgqa.cli import main
from ecgqa.distribution.hub_model import COPIED, looks_like_repo_id, resolve_checkpoint

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache that huggingface_hub (offline) reads; returns a function that publishes a folder in it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def publish(folder, repo_id="ecgqa-test/fusion-tiny", revision=REVISION):
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / revision)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        return repo / "snapshots" / revision

    return publish


def test_repo_ids_and_local_paths_are_told_apart(tmp_path):
    assert looks_like_repo_id("org/name") and looks_like_repo_id("org/name@v1.0")
    for local in ("./org/name", "/abs/path", "a/b/c", "runs", "../x/y", "org/na me"):
        assert not looks_like_repo_id(local), local
    (tmp_path / "org").mkdir()
    here = tmp_path / "org" / "name"
    here.mkdir()
    assert resolve_checkpoint(here) == here  # an existing folder is never looked up on the Hub


def test_repo_id_resolves_from_the_offline_cache(tmp_path, hub_cache):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "ecgqa-fusion"}')
    snapshot = hub_cache(folder)
    assert resolve_checkpoint("ecgqa-test/fusion-tiny") == snapshot
    assert resolve_checkpoint(f"ecgqa-test/fusion-tiny@{REVISION}") == snapshot
    with pytest.raises(
        CheckpointError, match="HF_HUB_OFFLINE is set and the Hub cache .* no snapshot of ecgqa-test/other"
    ):
        resolve_checkpoint("ecgqa-test/other")


def test_missing_repo_is_a_one_line_cli_error(tmp_path, hub_cache, capsys):
    # `ecgqa evaluate` goes through ecgqa.load: a repo id missing from the offline cache is a one-line error
    code = main(["evaluate", "--checkpoint", "nobody/nothing", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: checkpoint nobody/nothing not found") and "Traceback" not in err


@pytest.mark.slow  # trains the tiny checkpoint fixture
def test_checkpoint_round_trips_through_export_and_the_hub_cache(qa_checkpoint, prepared_qa, tmp_path, hub_cache):
    from transformers import AutoModel

    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.evaluate import evaluate

    report = evaluate(qa_checkpoint, prepared_qa, split="valid", out=tmp_path / "report", progress=False)
    out = tmp_path / "hub-ckpt"
    assert main(["export", "hub", str(qa_checkpoint), "--out", str(out), "--report", str(tmp_path / "report"),
                 "--repo-id", "ecgqa-test/fusion-tiny"]) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n for n in COPIED if (qa_checkpoint / n).exists()] + ["README.md", "ecgqa_export.json"]
    )
    assert not (out / "checkpoints").exists()  # the Trainer's resumable states stay behind

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "cc-by-4.0" and front["library_name"] == "ecgqa"
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["value"] == round(100 * report["em"], 2)
    assert front["model-index"][0]["results"][0]["dataset"]["split"] == "valid"
    for needle in ("## Training data", "## Training recipe", "## Intended use", "not on the official test split"):
        assert needle in card
    assert json.loads((qa_checkpoint / "train_options.json").read_text())["model"] in card

    # transformers conventions: AutoModel reads the exported folder (configs registered by ecgqa.models)
    bare = AutoModel.from_pretrained(str(out))
    assert type(bare).__name__ == "FusionModel"

    # the same predictions from the original folder, the exported folder and the Hub repo id (offline cache)
    hub_cache(out)
    data = PreparedData(prepared_qa)
    rows = data.split("valid").select(range(8))
    items = [
        ([data.signals[r].astype(np.float32) for r in row["ecg_rows"]], row["question"], row["valid_classes"])
        for row in rows
    ]
    results = []
    for ref in (qa_checkpoint, out, "ecgqa-test/fusion-tiny"):
        model = ecgqa.load(ref, device="cpu")
        results.append([(a.answer, a.scores) for a in model.answer_batch(items)])
    assert results[0] == results[1] == results[2]
    assert ecgqa.load("ecgqa-test/fusion-tiny", device="cpu").path.parent.name == "snapshots"
