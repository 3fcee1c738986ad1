"""Helpers of the model tests: the model lists, batch picking, and building a model for prepared data."""

from __future__ import annotations

import torch

from ecgqa.data.prepared import PreparedData
from ecgqa.models import (
    create_model,
    task_of,
)

QA_MODELS = [
    "fusion-test",
    "blind-test",
    "deaf-test",
    "medvill-test",
    "m3ae-test",
    "resnet-lstm-test",
    "fusion-prenorm-test",
]
UB_MODELS = ["se-wrn-test", "resnet-attn-test", "w2v-cmsc-rlm-test"]
QA_INPUTS = ("ecg", "ecg_mask", "input_ids", "attention_mask")
UB_INPUTS = ("ecg", "lead_mask")
READS_ECG = {"fusion-test", "deaf-test", "medvill-test", "m3ae-test", "resnet-lstm-test", "fusion-prenorm-test"}
READS_TEXT = {"fusion-test", "blind-test", "medvill-test", "m3ae-test", "resnet-lstm-test", "fusion-prenorm-test"}


def pick_distinct(table, n: int, text: str = "question", label: str | None = None) -> list[int]:
    """Indices of n samples with pairwise different questions and first ECGs (so blind and deaf can fit them),
    half of them from each of the two most common values of ``label`` (yes/no answers) when given."""
    seen_q, seen_e, out = set(), set(), []
    labels = [str(v) for v in table[label]] if label else [""] * len(table)
    wanted = {v: n // 2 for v in sorted(set(labels), key=labels.count, reverse=True)[:2]} if label else {"": n}
    for i, (q, rows, y) in enumerate(zip(table[text], table["ecg_rows"], labels, strict=False)):
        if q not in seen_q and rows[0] not in seen_e and wanted.get(y, 0) > 0:
            seen_q.add(q)
            seen_e.add(rows[0])
            wanted[y] -= 1
            out.append(i)
    assert len(out) == n, f"the sample holds fewer than {n} distinct samples"
    return out[:n]


def model_inputs(batch: dict, name: str) -> dict:
    keys = QA_INPUTS if task_of(name) == "qa" else UB_INPUTS
    return {k: batch[k] for k in keys}


def make_model(name: str, data: PreparedData | None, **extra):
    if task_of(name) == "qa":
        tok = data.tokenizer
        return create_model(
            name,
            classes=data.classes,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            sep_token_id=tok.sep_token_id,
            **extra,
        )
    return create_model(name, classes=[f"class {i}" for i in range(83)], **extra)


def with_labels(batch: dict, name: str) -> dict:
    keys = QA_INPUTS + ("labels",) if task_of(name) == "qa" else UB_INPUTS + ("labels", "label_mask")
    return {k: batch[k] for k in keys}


def word_embedding(model) -> torch.nn.Parameter:
    return next(p for n, p in model.named_parameters() if "word_emb" in n)
