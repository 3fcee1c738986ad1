"""Models: shapes and gradients on real prepared batches, save/load round trips, padding really masked,
and learning (loss down, 100 % train exact match on a tiny batch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ecgqa.data import ECGQADataset, PreparedData, UpperboundDataset, collate_qa, collate_upperbound
from ecgqa.metrics import exact_match, upperbound_correct
from ecgqa.models import MODELS, create_model, load_model, task_of, tiny

QA_MODELS = ["fusion-small", "blind", "deaf", "m3ae-small"]
UB_MODELS = ["se-wrn", "resnet-attn"]
QA_INPUTS = ("ecg", "ecg_mask", "input_ids", "attention_mask")
UB_INPUTS = ("ecg", "lead_mask")


def _pick_distinct(table, n: int, text: str = "question", label: str | None = None) -> list[int]:
    """Indices of n samples with pairwise different questions and first ECGs (so blind and deaf can fit them),
    half of them from each of the two most common values of ``label`` (yes/no answers) when given."""
    seen_q, seen_e, out = set(), set(), []
    labels = [str(v) for v in table[label]] if label else [""] * len(table)
    wanted = {v: n // 2 for v in sorted(set(labels), key=labels.count, reverse=True)[:2]} if label else {"": n}
    for i, (q, rows, y) in enumerate(zip(table[text], table["ecg_rows"], labels)):
        if q not in seen_q and rows[0] not in seen_e and wanted.get(y, 0) > 0:
            seen_q.add(q)
            seen_e.add(rows[0])
            wanted[y] -= 1
            out.append(i)
    assert len(out) == n, f"the sample holds fewer than {n} distinct samples"
    return out[:n]


@pytest.fixture(scope="module")
def qa_data(prepared_qa) -> PreparedData:
    return PreparedData(prepared_qa)


@pytest.fixture(scope="module")
def qa_batch(qa_data) -> dict[str, torch.Tensor]:
    """6 single-ECG verify samples (train; 3 yes, 3 no) + 2 two-ECG comparison-query samples (valid), all distinct."""
    train, valid = ECGQADataset(qa_data, "train"), ECGQADataset(qa_data, "valid")
    items = [train[i] for i in _pick_distinct(train.table, 6, label="answer")]
    items += [valid[i] for i in _pick_distinct(valid.table, 2)]
    return collate_qa(items)


@pytest.fixture(scope="module")
def ub_batch(prepared_upperbound) -> dict[str, torch.Tensor]:
    data = PreparedData(prepared_upperbound)
    ds = UpperboundDataset(data, "train")
    return collate_upperbound([ds[i] for i in _pick_distinct(ds.table, 8, text="sample_id", label="label_values")])


def _inputs(batch: dict, name: str) -> dict:
    keys = QA_INPUTS if task_of(name) == "qa" else UB_INPUTS
    return {k: batch[k] for k in keys}


def _make(name: str, data: PreparedData | None, **extra):
    if task_of(name) == "qa":
        return create_model(name, classes=data.classes, vocab_size=len(data.tokenizer),
                            pad_token_id=data.tokenizer.pad_token_id, **tiny(name), **extra)
    return create_model(name, classes=[f"class {i}" for i in range(83)], **tiny(name), **extra)


def test_batch_is_what_the_contract_says(qa_batch, qa_data):
    # The learning tests below rely on a mixed batch: single- and two-ECG questions, padded questions.
    assert qa_batch["ecg"].shape == (8, 2, 12, qa_data.meta["signal_length"])
    assert qa_batch["ecg_mask"].tolist() == [[True, False]] * 6 + [[True, True]] * 2
    assert (qa_batch["attention_mask"] == 0).any(), "expected some question padding in the batch"


def test_table_has_every_variant():
    assert set(MODELS) == {"fusion-small", "fusion-base", "blind", "deaf", "m3ae-small", "m3ae-base", "se-wrn",
                           "resnet-attn"}
    assert create_model("fusion-base", classes=["a"], vocab_size=10).config.num_layers == 12
    assert create_model("fusion-small", classes=["a"], vocab_size=10).config.num_layers == 8
    with pytest.raises(ValueError, match="unknown model 'gpt'"):
        create_model("gpt")


@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_forward_backward_shapes(name, qa_batch, ub_batch, qa_data):
    torch.manual_seed(0)
    model = _make(name, qa_data)
    batch = qa_batch if task_of(name) == "qa" else ub_batch
    out = model(**_inputs(batch, name), labels=batch["labels"],
                **({"label_mask": batch["label_mask"]} if task_of(name) == "upperbound" else {}))
    n_classes = 103 if task_of(name) == "qa" else 83
    assert out.logits.shape == (8, n_classes)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    # every part of the input that the variant reads must reach the loss
    if name in ("fusion-small", "m3ae-small", "deaf", "se-wrn", "resnet-attn"):
        stem = next(p for n, p in model.named_parameters() if "conv" in n or "stem" in n)
        assert stem.grad.abs().sum() > 0
    if name in ("fusion-small", "m3ae-small", "blind"):
        assert model.question.word_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_save_pretrained_round_trip(name, qa_batch, ub_batch, qa_data, tmp_path):
    torch.manual_seed(1)
    model = _make(name, qa_data).eval()
    batch = qa_batch if task_of(name) == "qa" else ub_batch
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_name"] == name and config["task"] == task_of(name)
    assert config["rate"] == 500 and config["signal_length"] == 5000 and len(config["classes"]) in (83, 103)
    loaded = load_model(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**_inputs(batch, name)).logits, model(**_inputs(batch, name)).logits,
                                   rtol=0, atol=0)


@pytest.mark.parametrize("name", ["fusion-small", "blind", "m3ae-small"])
def test_text_padding_is_masked(name, qa_batch, qa_data):
    torch.manual_seed(2)
    model = _make(name, qa_data).eval()
    inputs = _inputs(qa_batch, name)
    pads = inputs["attention_mask"] == 0
    assert pads.any()
    changed = dict(inputs, input_ids=inputs["input_ids"].masked_fill(pads, 7))
    # and longer padding: four more pad columns of arbitrary ids
    B = inputs["input_ids"].shape[0]
    longer = dict(inputs, input_ids=torch.cat([inputs["input_ids"], torch.full((B, 4), 11)], 1),
                  attention_mask=torch.cat([inputs["attention_mask"], torch.zeros(B, 4, dtype=torch.long)], 1))
    with torch.no_grad():
        ref = model(**inputs).logits
        torch.testing.assert_close(model(**changed).logits, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(**longer).logits, ref, rtol=1e-5, atol=1e-6)
        # ...while a real token does change the answer scores
        real = dict(inputs, input_ids=inputs["input_ids"].masked_fill(~pads, 7))
        assert not torch.allclose(model(**real).logits, ref)


@pytest.mark.parametrize("name", ["fusion-small", "deaf", "m3ae-small"])
def test_missing_second_ecg_is_masked(name, qa_batch, qa_data):
    torch.manual_seed(3)
    model = _make(name, qa_data).eval()
    inputs = _inputs(qa_batch, name)
    noisy = inputs["ecg"].clone()
    noisy[:6, 1] = torch.randn_like(noisy[:6, 1])  # slot 2 of the single-ECG questions: not a real ECG
    with torch.no_grad():
        ref = model(**inputs).logits
        out = model(**dict(inputs, ecg=noisy)).logits
    torch.testing.assert_close(out[:6], ref[:6], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(**dict(inputs, ecg=inputs["ecg"] * 2)).logits, ref)


@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_learns_a_tiny_batch(name, qa_batch, ub_batch, qa_data):
    """At most 150 AdamW steps on 8 samples drive the loss down and reach 100 % train exact match.

    Proves learning, not just running: blind must memorise questions that differ in one word, deaf the
    ECGs alone, and the comparison samples need both ECG slots.
    """
    from ecgqa.losses import labelled_bce

    torch.manual_seed(4)
    model = _make(name, qa_data)
    qa = task_of(name) == "qa"
    batch = qa_batch if qa else ub_batch
    inputs = _inputs(batch, name)
    labels = batch["labels"].numpy()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, betas=(0.9, 0.98))
    losses, correct = [], np.zeros(8, dtype=bool)
    for step in range(150):
        model.train()
        logits = model(**inputs).logits
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]) if qa
                else labelled_bce(logits, batch["labels"], batch["label_mask"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 9:
            model.eval()  # the upperbound models' batch norm: judge what inference would answer
            with torch.no_grad():
                probs = torch.sigmoid(model(**inputs).logits).numpy()
            correct = (exact_match(probs, labels, batch["valid_mask"].numpy()) if qa
                       else upperbound_correct(probs, labels, batch["label_mask"].numpy()))
            if correct.all():
                break
    assert losses[-1] < 0.5 * losses[0], losses
    assert correct.all(), (name, step + 1, correct, losses[-5:])


def test_pretrained_text_encoder(tmp_path, qa_batch, qa_data):
    """--text-encoder: weights come from the given transformers encoder, and the checkpoint reloads offline."""
    from transformers import BertConfig, BertModel

    enc_dir = tmp_path / "tiny-bert"
    tok = qa_data.tokenizer
    torch.manual_seed(5)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    bert.save_pretrained(enc_dir)
    tok.save_pretrained(enc_dir)
    model = create_model("fusion-small", text_encoder=str(enc_dir), classes=qa_data.classes, **tiny("fusion-small"))
    torch.testing.assert_close(model.question.text_encoder.embeddings.word_embeddings.weight,
                               bert.embeddings.word_embeddings.weight)
    model.eval()
    inputs = _inputs(qa_batch, "fusion-small")
    model.save_pretrained(tmp_path / "ckpt")
    (enc_dir / "config.json").unlink()  # the checkpoint must not need the encoder folder any more
    loaded = load_model(tmp_path / "ckpt").eval()
    with torch.no_grad():
        ref = model(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, ref, rtol=0, atol=0)
        pads = inputs["attention_mask"] == 0
        torch.testing.assert_close(model(**dict(inputs, input_ids=inputs["input_ids"].masked_fill(pads, 9))).logits,
                                   ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="text side"):
        create_model("se-wrn", text_encoder=str(enc_dir))


def test_predictor_inputs_match_the_data_loader(qa_data, qa_batch, tmp_path):
    """ecgqa.load's tokenisation and ECG slots equal the training loader's, so scores are the same."""
    import ecgqa

    torch.manual_seed(6)
    model = _make("fusion-small", qa_data).eval()
    model.save_pretrained(tmp_path)
    qa_data.tokenizer.save_pretrained(tmp_path / "tokenizer")
    predictor = ecgqa.load(tmp_path, device="cpu")
    with torch.no_grad():
        probs = torch.sigmoid(model(**_inputs(qa_batch, "fusion-small")).logits).numpy()
    items = []
    for i in range(8):
        ecgs = [qa_batch["ecg"][i, s].numpy() for s in range(2) if qa_batch["ecg_mask"][i, s]]
        n = int(qa_batch["attention_mask"][i].sum())
        question = qa_data.tokenizer.decode(qa_batch["input_ids"][i, :n], skip_special_tokens=True)
        items.append((ecgs, question, np.flatnonzero(qa_batch["valid_mask"][i].numpy()).tolist()))
    answers = predictor.answer_batch(items, batch_size=3)
    for i, answer in enumerate(answers):
        for name, score in answer.scores.items():
            assert score == pytest.approx(probs[i, qa_data.classes.index(name)], abs=1e-5)


def test_default_conv_feature_extractor_gives_312_tokens_for_5000_samples():
    # ECGQA.md: 4 layers, 256 channels, kernel 2, stride 2: 5000 samples -> 312 tokens
    from ecgqa.models import create_config
    from ecgqa.models.fusion import ConvFeatureExtractor

    c = create_config("fusion-small")
    assert (c.conv_layers, c.conv_channels, c.conv_kernel, c.conv_stride) == (4, 256, 2, 2)
    fe = ConvFeatureExtractor(c.conv_channels, c.conv_layers, c.conv_kernel, c.conv_stride, 64, c.pos_conv_kernel,
                              c.pos_conv_groups, 0.0)
    with torch.no_grad():
        assert fe(torch.zeros(1, 12, 5000)).shape == (1, 312, 64)
