"""``fusion-sewrn-quick``: a fusion model whose ECG encoder is SE-WRN's backbone, initialised (``--init-from``)
from a trained SE-WRN classifier folder such as the quickstart's attribute classifier (ecgqa/quickstart.py)."""

from __future__ import annotations

import pytest
import torch

from ecgqa.models import create_model
from ecgqa.training.fairseq_import import FairseqCheckpointError, init_model, read_pretrained

QA = {"classes": ["yes", "no"], "vocab_size": 50, "pad_token_id": 0, "sep_token_id": 3}


def _trained_classifier(tmp_path, **fields):
    """An se-wrn-quick whose weights and BatchNorm statistics are no longer their init, saved as a folder."""
    torch.manual_seed(0)
    clf = create_model("se-wrn-quick", classes=[f"c{i}" for i in range(5)], **fields)
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(torch.randn_like(p))
    clf.train()
    clf(torch.randn(4, 12, 256))  # moves the BatchNorm running statistics
    clf.save_pretrained(tmp_path / "se-wrn")
    return clf, tmp_path / "se-wrn"


def test_init_copies_the_classifier_backbone(tmp_path):
    clf, folder = _trained_classifier(tmp_path)
    model = create_model("fusion-sewrn-quick", **QA)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = init_model(model, read_pretrained(folder))
    ours = model.state_dict()
    backbone = {k: v for k, v in clf.state_dict().items() if k.startswith(("stem.", "blocks.", "final_norm."))}
    assert backbone and f"{len(backbone)} SE-WRN backbone tensors loaded" in summary
    for k, v in backbone.items():
        assert torch.equal(ours[f"extractor.{k}"], v), k
    # everything else keeps its own init (the head's attribute classes are not the QA answers)
    untouched = [k for k in ours if not k.startswith("extractor.")]
    assert untouched and all(torch.equal(ours[k], before[k]) for k in untouched)
    # the encoder computes what the classifier's backbone computes (eval mode: BatchNorm statistics)
    clf.eval(), model.eval()
    x = torch.randn(2, 12, 256)
    want = torch.relu(clf.final_norm(clf.blocks(clf.stem(x))))
    assert torch.allclose(model.extractor(x), want, atol=1e-6)
    out = model(ecg=torch.randn(2, 2, 12, 256), ecg_mask=torch.tensor([[True, False]] * 2),
                input_ids=torch.tensor([[1, 5, 6]] * 2))  # fmt: skip
    assert out.logits.shape == (2, 2)


def test_init_refuses_another_encoder_or_width(tmp_path):
    _, folder = _trained_classifier(tmp_path)
    with pytest.raises(FairseqCheckpointError, match="ecg_encoder 'conv'"):
        init_model(create_model("fusion-quick", **QA), read_pretrained(folder))
    narrow = create_model("fusion-sewrn-quick", se_wrn_widths=[8, 8, 16, 32, 32], **QA)
    with pytest.raises(FairseqCheckpointError, match="widths"):
        init_model(narrow, read_pretrained(folder))
    with pytest.raises(FairseqCheckpointError, match="not w2v-cmsc-rlm-test"):
        init_model(create_model("w2v-cmsc-rlm-test", classes=["a"]), read_pretrained(folder))
