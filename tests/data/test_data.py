"""Loaders over the prepared sample: tensors equal the store/table they come from; masking never writes the store."""

from __future__ import annotations

import hashlib
import math
import pickle

import numpy as np
import pytest
import torch

from ecgqa.data.constants import LEAD_GROUPS
from ecgqa.data.leads import lead_mask
from ecgqa.data.prepared import PreparedData
from ecgqa.data.torch_datasets import (
    ECGQADataset,
    UpperboundDataset,
    collate_qa,
    collate_upperbound,
    make_loader,
)
from ecgqa.models.losses import labelled_bce


@pytest.mark.slow
def test_prepared_data_api(prepared_qa):
    data = PreparedData(prepared_qa)
    assert data.path == prepared_qa and data.splits == ["train", "valid"] and len(data.classes) == 103
    first = int(data.ecg_ids[0])
    assert data.row_of(first) == 0
    with pytest.raises(KeyError, match="99999"):
        data.row_of(99999)
    with pytest.raises(ValueError, match="read-only"):
        data.signals[0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="no split 'test'"):
        data.split("test")
    _ = data.signals
    assert len(pickle.dumps(data)) < 100_000  # workers re-open the memmap instead of receiving its data


def test_prepared_meta_is_typed_and_versioned(prepared_qa, tmp_path):
    import json
    import shutil

    from ecgqa.data import prepared

    data = PreparedData(prepared_qa)
    raw = json.loads((prepared_qa / prepared.META).read_text())
    assert data.meta == raw and raw["format"] == prepared.FORMAT_VERSION == 2
    assert (data.rate, data.signal_length) == (raw["rate"], raw["signal_length"]) == (500, 5000)
    assert data.signals.shape[-1] == data.signal_length and data.info.task == "qa"
    assert prepared.is_prepared(prepared_qa) and not prepared.is_prepared(tmp_path)
    old = tmp_path / "old"
    shutil.copytree(prepared_qa, old)
    (old / prepared.META).write_text(json.dumps({**raw, "format": 1}))
    with pytest.raises(
        prepared.PreparedDataError,
        match=r"prepared in format 1, this version reads format 2; "
        r"re-run `ecgqa prepare --force",
    ):
        PreparedData(old)
    (old / prepared.META).write_text(json.dumps({**raw, "rate": "fast"}))
    with pytest.raises(prepared.PreparedDataError, match="not a valid prepared meta"):
        PreparedData(old)


def test_tokenizer_is_bert_wordpiece(prepared_qa):
    tok = PreparedData(prepared_qa).tokenizer
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        assert special in tok.get_vocab()
    enc = tok("Does this ECG show static noise in lead aVL?")
    ids = enc["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "does this ecg show static noise in lead avl?"


def test_qa_items_and_batches(prepared_qa):
    data = PreparedData(prepared_qa)
    ds = ECGQADataset(data, "valid", max_question_len=8)
    table = data.split("valid")
    item = ds[3]
    row = table[3]
    assert row["ecg_rows"] and len(row["ecg_rows"]) == 2
    for slot, r in enumerate(row["ecg_rows"]):
        assert torch.equal(item["ecg"][slot], torch.from_numpy(data.signals[r].astype(np.float32)))
    assert item["ecg_mask"].tolist() == [True, True]
    assert len(item["input_ids"]) == 8  # truncated to max_question_len
    assert torch.nonzero(item["labels"]).flatten().tolist() == row["answer"]
    assert torch.nonzero(item["valid_mask"]).flatten().tolist() == row["valid_classes"]

    batched = ds.__getitems__([3, 0])  # what the DataLoader calls: must equal item-by-item access
    for got, want in zip(batched, [item, ds[0]], strict=False):
        assert all(torch.equal(torch.as_tensor(got[k]), torch.as_tensor(want[k])) for k in want)

    single = ECGQADataset(data, "train")
    batch = collate_qa([single[0], single[1], ds[0]])
    assert batch["ecg"].shape == (3, 2, 12, 5000) and batch["ecg"].dtype == torch.float32
    assert batch["ecg_mask"].tolist() == [[True, False], [True, False], [True, True]]
    assert float(batch["ecg"][0, 1].abs().sum()) == 0.0
    tok = data.tokenizer
    n = int(batch["attention_mask"][2].sum())
    assert batch["input_ids"][2, :n].tolist() == tok(table[0]["question"], truncation=True, max_length=8)["input_ids"]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert batch["labels"].shape == batch["valid_mask"].shape == (3, 103)
    for key in ("qt1", "qt2", "qt3", "sample_id", "input_ids", "attention_mask"):
        assert batch[key].dtype == torch.long
    assert batch["qt3"].tolist() == [single.table[0]["qt3"], single.table[1]["qt3"], table[0]["qt3"]]


def test_make_loader_with_workers_serves_every_sample_once(prepared_qa):
    data = PreparedData(prepared_qa)
    loader = make_loader(data, "valid", batch_size=16, shuffle=True, num_workers=2)
    seen = []
    for batch in loader:
        seen.extend(batch["sample_id"].tolist())
        assert batch["ecg"].shape[1:] == (2, 12, 5000)
    assert sorted(seen) == sorted(data.split("valid")["sample_id"])


def test_any_transformers_tokenizer_works(prepared_qa, tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "does", "this", "ecg", "show", "static", "noise", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(["[X]"] + vocab))  # [PAD] at id 1, not 0
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True, pad_token="[PAD]")
    ds = ECGQADataset(PreparedData(prepared_qa), "train", tokenizer=tok)
    batch = collate_qa([ds[i] for i in range(4)])
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 1).all()
    first = batch["input_ids"][0, : batch["attention_mask"][0].sum()].tolist()
    assert first == tok(ds.table[0]["question"])["input_ids"]


@pytest.mark.slow
def test_upperbound_masking_zeroes_a_copy_never_the_store(prepared_upperbound):
    data = PreparedData(prepared_upperbound)
    before = hashlib.sha256(np.asarray(data.signals).tobytes()).hexdigest()
    ds = UpperboundDataset(data, "train")
    items = [ds[i] for i in range(len(ds))]
    assert hashlib.sha256(np.asarray(data.signals).tobytes()).hexdigest() == before
    for i in (0, 1, len(ds) - 1):
        row, item = ds.table[i], items[i]
        keep = np.array(lead_mask(LEAD_GROUPS[row["lead_group"]]))
        assert item["lead_mask"].numpy().tolist() == keep.tolist()
        stored = data.signals[row["ecg_rows"][0]].astype(np.float32)
        assert np.array_equal(item["ecg"].numpy()[keep], stored[keep])
        assert float(item["ecg"][~torch.from_numpy(keep)].abs().sum()) == 0.0
        assert np.abs(stored[~keep]).sum() > 0  # the store still holds those leads
        assert torch.nonzero(item["label_mask"]).flatten().tolist() == row["label_classes"]
        assert item["labels"][row["label_classes"]].tolist() == [float(v) for v in row["label_values"]]
    batch = collate_upperbound(items[:5])
    assert batch["ecg"].shape == (5, 12, 5000) and batch["labels"].shape == batch["label_mask"].shape == (5, 83)
    loader = make_loader(data, "train", batch_size=64, shuffle=False, num_workers=0)
    assert sum(len(b["sample_id"]) for b in loader) == len(ds)


def test_wrong_task_is_refused(prepared_qa, prepared_upperbound):
    with pytest.raises(ValueError, match="upperbound"):
        UpperboundDataset(PreparedData(prepared_qa), "train")
    with pytest.raises(ValueError, match="qa"):
        ECGQADataset(PreparedData(prepared_upperbound), "train")


def test_labelled_bce_uses_only_labelled_cells_averaged_per_class():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, False, True], [True, False, False], [True, True, False]])

    def bce(x, y):
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    per_class = []
    for c in range(3):
        cells = [bce(float(logits[b, c].detach()), float(labels[b, c])) for b in range(3) if mask[b, c]]
        per_class.append(sum(cells) / len(cells))
    expected = sum(per_class) / 3
    loss = labelled_bce(logits, labels, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert (logits.grad[~mask] == 0).all() and (logits.grad[mask] != 0).all()
    empty = labelled_bce(logits, labels, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad
