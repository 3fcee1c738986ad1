"""Fixtures of the model tests: real prepared batches from the bundled sample."""

from __future__ import annotations

import pytest
import torch

from ecgqa.data.prepared import PreparedData
from ecgqa.data.torch_datasets import ECGQADataset, UpperboundDataset, collate_qa, collate_upperbound
from tests.models.model_helpers import pick_distinct


@pytest.fixture(scope="module")
def qa_data(prepared_qa) -> PreparedData:
    return PreparedData(prepared_qa)


@pytest.fixture(scope="module")
def qa_batch(qa_data) -> dict[str, torch.Tensor]:
    """6 single-ECG verify samples (train; 3 yes, 3 no) + 2 two-ECG comparison-query samples (valid), all distinct."""
    train, valid = ECGQADataset(qa_data, "train"), ECGQADataset(qa_data, "valid")
    items = [train[i] for i in pick_distinct(train.table, 6, label="answer")]
    items += [valid[i] for i in pick_distinct(valid.table, 2)]
    return collate_qa(items)


@pytest.fixture(scope="module")
def ub_batch(prepared_upperbound) -> dict[str, torch.Tensor]:
    data = PreparedData(prepared_upperbound)
    ds = UpperboundDataset(data, "train")
    return collate_upperbound([ds[i] for i in pick_distinct(ds.table, 8, text="sample_id", label="label_values")])
