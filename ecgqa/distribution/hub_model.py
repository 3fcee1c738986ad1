"""Checkpoints on the Hugging Face Hub: ``ecgqa export hub CHECKPOINT`` (a copy with its model card) and the
resolution of a Hub repo id into a local checkpoint folder for ``ecgqa.load`` (``ecgqa/predictor.py``).

A checkpoint folder (``ecgqa/checkpoint.py``) already follows ``transformers``' conventions: ``config.json``
(with a registered ``model_type``) + ``model.safetensors``, so after ``import ecgqa.models``,
``transformers.AutoModel.from_pretrained(folder)`` loads it too; ``tokenizer/`` holds the question
tokenizer. The export copies those files (not the Trainer's resumable ``checkpoints/``) and adds
``README.md``: the model card with the training data, recipe, metrics from an ``ecgqa evaluate`` report,
intended use and limits. ``ecgqa_export.json`` is written last and marks a finished export.

Repo ids go through ``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE`` (then only
the local cache, ``HF_HUB_CACHE``, is read) and the usual token environment (``HF_TOKEN``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ecgqa.checkpoint import CONFIG, PREPARED_META, TOKENIZER_DIR, TRAIN_OPTIONS, WEIGHTS, CheckpointError
from ecgqa.distribution import CHECKPOINT_KIND, MARKER
from ecgqa.files import atomic_write, atomic_write_json, claim_output_dir, marker_kind, staging_dir, swap_dir

CARD = "README.md"
#: what a Hub checkpoint carries (besides the card): the loadable files and the training log
COPIED = (CONFIG, WEIGHTS, TOKENIZER_DIR, PREPARED_META, TRAIN_OPTIONS, "metrics.jsonl")
#: train_options keys left out of a public card (local paths and run plumbing), and those shown by base name
PRIVATE_OPTIONS = {"out", "best_checkpoint", "quiet", "resume", "num_workers", "args"}
PATH_OPTIONS = {"data", "init_from"}
#: Hub repo ids: ``name`` or ``org/name`` (letters, digits, ``-_.``), optionally ``@revision``
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}(?:@[\w./-]+)?$")


def looks_like_repo_id(ref: str | Path) -> bool:
    """True for ``org/name`` (or ``org/name@rev``) strings that are not an existing local path."""
    s = str(ref)
    if Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or "\\" in s or s.count("/") != 1:
        return False
    return bool(_REPO_ID.match(s)) and ".." not in s


def resolve_checkpoint(ref: str | Path) -> Path:
    """A local checkpoint folder for ``ref``: the folder itself, or the snapshot of a Hub repo id.

    Offline (``HF_HUB_OFFLINE=1``) a repo id resolves only from the cache; a miss is a one-line error that
    says so. A local path that does not exist and is not a repo id raises ``FileNotFoundError``.
    """
    path = Path(ref).expanduser()
    if path.exists() or not looks_like_repo_id(ref):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo_id, _, revision = str(ref).partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"checkpoint {ref} not found: no such local folder, and the Hub has no model repo {repo_id!r} "
            "(or it is private: set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set and" if offline else "the Hub could not be reached and"
        raise CheckpointError(
            f"checkpoint {ref} not found: no such local folder; {where} the Hub cache "
            f"({_cache_dir()}) holds no snapshot of {repo_id}"
            + (f" at revision {revision}" if revision else "")
            + "; download it once online (`hf download` or ecgqa.load without HF_HUB_OFFLINE)"
        ) from None
    except HfHubHTTPError as e:
        raise CheckpointError(f"checkpoint {ref}: the Hub refused the download ({e})") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


# -------------------------------------------------------------------------------------------- export


def read_report(path: str | Path | None) -> dict[str, Any] | None:
    """An ``ecgqa evaluate`` report (the folder or its ``report.json``), or None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"--report {path}: not found (an `ecgqa evaluate --out` folder or its report.json)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--report {path}: not JSON ({e})") from None
    if not isinstance(report, dict) or "em" not in report or "split" not in report:
        raise ValueError(f"--report {path}: not an `ecgqa evaluate` report (no em / split)")
    return report


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, *, report: str | Path | None = None, repo_id: str | None = None
) -> Path:
    """Copy the loadable files of ``checkpoint`` into ``out`` with a model card; returns ``out``."""
    src = Path(checkpoint)
    missing = [n for n in (CONFIG, WEIGHTS) if not (src / n).is_file()]
    if missing:
        raise CheckpointError(f"{src} is not a finished checkpoint (no {', '.join(missing)}); train it first")
    config = json.loads((src / CONFIG).read_text())
    meta = json.loads((src / PREPARED_META).read_text()) if (src / PREPARED_META).is_file() else {}
    options = json.loads((src / TRAIN_OPTIONS).read_text()) if (src / TRAIN_OPTIONS).is_file() else {}
    rep = read_report(report)
    if Path(out).resolve() == src.resolve():  # before the claim, whose refusal would not say why
        raise ValueError(f"--out {out} is the checkpoint itself; choose a new folder")
    out = claim_output_dir(out, marker=MARKER, what="Hub checkpoint", is_ours=marker_kind(CHECKPOINT_KIND))
    build = staging_dir(out, "export")
    try:
        for name in COPIED:
            if (src / name).is_dir():
                shutil.copytree(src / name, build / name)
            elif (src / name).is_file():
                shutil.copy2(src / name, build / name)
        atomic_write(build / CARD, model_card(config, meta, options, rep, repo_id=repo_id))
        atomic_write_json(build / MARKER, {"kind": CHECKPOINT_KIND, "source": str(src)}, indent=1)
        swap_dir(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return out


def model_card(
    config: dict[str, Any],
    meta: dict[str, Any],
    options: dict[str, Any],
    report: dict[str, Any] | None,
    *,
    repo_id: str | None = None,
) -> str:
    """The model card: YAML (licence, tags, model-index with the report's metrics) + what, how, how well, for what."""
    from ecgqa.distribution.cards import (
        BIBTEX_ECGQA,
        BIBTEX_MIMIC,
        BIBTEX_PTBXL,
        BIBTEX_TOOLKIT,
        DISPLAY,
        PROTOCOL,
        _front_matter,
    )

    task = config.get("task", "?")
    name = config.get("model_name", config.get("model_type", "?"))
    version = meta.get("version", "?")
    variant = meta.get("variant", "?")
    dataset = f"ECG-QA ({DISPLAY.get(version, version)}, {variant})"
    splits = meta.get("splits", {})
    front: dict[str, Any] = {
        "library_name": "ecgqa",
        "license": "cc-by-4.0" if version == "ptbxl" else "other",
        "tags": ["ecg", "electrocardiogram", "ecg-qa", "medical", version, name],
    }
    if report is not None:
        metrics = [
            {"type": "exact_match", "name": "exact match (all questions)", "value": round(100 * report["em"], 2)}
        ]
        for key, label in (
            ("em_macro_single", "macro over single question types"),
            ("em_macro_all", "macro over types"),
        ):
            if report.get(key) is not None:
                metrics.append(
                    {"type": "exact_match", "name": f"exact match, {label}", "value": round(100 * report[key], 2)}
                )
        front["model-index"] = [
            {
                "name": repo_id or name,
                "results": [
                    {
                        "task": {"type": "question-answering" if task == "qa" else "text-classification",
                                 "name": "ECG question answering" if task == "qa" else "ECG attribute classification"},
                        "dataset": {"type": "ecgqa", "name": dataset, "split": report["split"]},
                        "metrics": metrics,
                    }
                ],
            }
        ]  # fmt: skip
    ref = repo_id or "PATH_OR_REPO_ID"
    lines = [_front_matter(front)]
    kind = "question-answering model" if task == "qa" else "upperbound attribute classifier"
    lines.append(f"# {name}: ECG-QA {kind}\n")
    lines.append(
        f"A `{name}` {kind} trained with [ecgqa](https://pypi.org/project/ecgqa/) on {dataset}. "
        f"It reads 12-lead ECGs at {config.get('rate')} Hz, {config.get('signal_length')} samples "
        "(leads I, II, III, aVR, aVL, aVF, V1–V6, mV)"
        + (" and an English question, and scores each answer class." if task == "qa" else ", and scores each class.")
        + "\n"
    )
    lines.append("## Use\n")
    lines.append(
        "```python\nimport ecgqa\n"
        f'model = ecgqa.load("{ref}")  # a local folder or a Hub repo id (honours HF_HUB_OFFLINE)\n'
        + (
            'answer = model.answer(ecg, "Does this ECG show sinus rhythm?")  # ecg: (12, T) array\n'
            if task == "qa"
            else "scores = model.classify(ecg)  # ecg: (12, T) array\n"
        )
        + "```\n\n"
        "The folder follows `transformers` conventions (`config.json` + `model.safetensors`); after "
        "`import ecgqa.models`, `transformers.AutoModel.from_pretrained(folder)` loads the bare model too.\n"
    )
    lines.append("## Training data\n")
    split_text = ", ".join(f"{s} {n:,}" for s, n in splits.items()) or "not recorded"
    lines.append(
        f"- Data: {dataset}, prepared by `ecgqa prepare` (samples: {split_text}; {meta.get('n_ecgs', '?')} ECGs; "
        f"content hash `{meta.get('content_hash', '?')}`).\n"
        f"- Classes: {len(config.get('classes', []))} "
        + ("answer classes (the release's answers.csv without `none`)." if task == "qa" else "grounding classes.")
        + "\n"
    )
    lines.append("## Training recipe\n")
    if options:
        shown = {
            k: Path(v).name if k in PATH_OPTIONS and isinstance(v, str) else v  # no local paths in a public card
            for k, v in options.items()
            if k not in PRIVATE_OPTIONS and (not isinstance(v, (dict, list)) or len(json.dumps(v)) < 200)
        }
        lines.append("```json\n" + json.dumps(shown, indent=1, sort_keys=True, default=str) + "\n```\n")
    else:
        lines.append("Not recorded (no train_options.json in the checkpoint).\n")
    lines.append("## Evaluation\n")
    if report is None:
        lines.append("No evaluation report was given to `ecgqa export hub --report`: no metric is claimed.\n")
    else:
        lines.append(
            f"`ecgqa evaluate` on the `{report['split']}` split of `{Path(str(report.get('data', '?'))).name}` "
            f"({report.get('n', '?')} questions), exact match (%):\n"
        )
        lines.append("| question type | n | EM |\n|---|---|---|")
        for qt, block in (report.get("per_question_type") or {}).items():
            em = block.get("em")
            lines.append(f"| {qt} | {block.get('n')} | {'' if em is None else f'{100 * em:.1f}'} |")
        lines.append(f"| **all** | {report.get('n')} | {100 * report['em']:.1f} |")
        for key, label in (("em_macro_single", "macro, single types"), ("em_macro_all", "macro, all types")):
            if report.get(key) is not None:
                lines.append(f"| **{label}** | | {100 * report[key]:.1f} |")
        lines.append("")
        if report.get("note"):
            lines.append(f"Note: {report['note']}\n")
        if report["split"] != "test":
            lines.append(
                "These figures are not on the official test split and are not comparable with published results.\n"
            )
    lines.append(PROTOCOL.replace("## Evaluation protocol", "### Evaluation protocol"))
    lines.append("## Intended use and limits\n")
    lines.append(
        "For research on ECG question answering and for reproducing the ECG-QA benchmark. Not a medical device: "
        "not validated for diagnosis, triage or any clinical decision. It answers only the ECG-QA question templates "
        "and classes it was trained on, on 10 s 12-lead ECGs at its sampling rate; other questions, devices, "
        "populations or signal lengths are out of scope. Scores are not calibrated probabilities.\n"
    )
    lines.append("## Citation\n")
    bib = [BIBTEX_ECGQA, BIBTEX_MIMIC if version == "mimic-iv-ecg" else BIBTEX_PTBXL, BIBTEX_TOOLKIT]
    lines.append("```bibtex\n" + "\n\n".join(bib) + "\n```\n")
    return "\n".join(lines)


__all__ = ["CARD", "COPIED", "MARKER", "export_checkpoint", "looks_like_repo_id", "model_card", "resolve_checkpoint"]
