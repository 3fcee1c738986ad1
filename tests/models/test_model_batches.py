"""Models on real prepared batches: shapes and gradients, the loss each model returns, save/load round trips,
padding really masked, learning (loss down, 100 % train exact match on a tiny batch), pretrained text encoders,
and the predictor's inputs equal to the data loader's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ecgqa.evaluation.metrics import exact_match, upperbound_correct
from ecgqa.models import (
    create_model,
    load_model,
    task_of,
)
from tests.models.model_helpers import (
    QA_MODELS,
    READS_ECG,
    READS_TEXT,
    UB_MODELS,
    make_model,
    model_inputs,
    with_labels,
    word_embedding,
)

# ------------------------------------------------------------------------------------- real batches


def test_batch_is_what_the_contract_says(qa_batch, qa_data):
    # The learning tests below rely on a mixed batch: single- and two-ECG questions, padded questions.
    assert qa_batch["ecg"].shape == (8, 2, 12, qa_data.meta["signal_length"])
    assert qa_batch["ecg_mask"].tolist() == [[True, False]] * 6 + [[True, True]] * 2
    assert (qa_batch["attention_mask"] == 0).any(), "expected some question padding in the batch"


@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_forward_backward_and_loss(name, qa_batch, ub_batch, qa_data):
    torch.manual_seed(0)
    model = make_model(name, qa_data)
    qa = task_of(name) == "qa"
    batch = qa_batch if qa else ub_batch
    out = model(**with_labels(batch, name))
    n_classes = 103 if qa else 83
    assert out.logits.shape == (8, n_classes)
    # the returned loss equals an independent computation from the logits
    x, y = out.logits.detach().double(), batch["labels"].double()
    cell = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))
    if qa:
        expected = cell.mean()
    else:
        m = batch["label_mask"].double()
        labelled = m.sum(0) > 0
        expected = ((cell * m).sum(0)[labelled] / m.sum(0)[labelled]).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model(**model_inputs(batch, name)).loss is None  # no labels, no loss
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    # every part of the input that the variant reads must reach the loss
    if name in READS_ECG or not qa:
        stem = next(p for n, p in model.named_parameters() if "extractor" in n or "stem" in n or "resnet" in n)
        assert stem.grad.abs().sum() > 0
    if name in READS_TEXT:
        assert word_embedding(model).grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_save_pretrained_round_trip(name, qa_batch, ub_batch, qa_data, tmp_path):
    torch.manual_seed(1)
    model = make_model(name, qa_data).eval()
    batch = qa_batch if task_of(name) == "qa" else ub_batch
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_name"] == name and config["task"] == task_of(name)
    assert config["rate"] == 500 and config["signal_length"] == 5000 and len(config["classes"]) in (83, 103)
    loaded = load_model(tmp_path).eval()
    assert type(loaded) is type(model)
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    with torch.no_grad():  # same weights; the LSTM's kernels may sum in another order (~1e-9)
        torch.testing.assert_close(
            loaded(**model_inputs(batch, name)).logits, model(**model_inputs(batch, name)).logits, rtol=1e-6, atol=1e-7
        )


def _fast_first(names: list[str]) -> list:
    """The first model in the fast tier, the others marked slow (each runs several forward passes)."""
    return [names[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in names[1:]]


@pytest.mark.parametrize(
    "name", _fast_first(["fusion-test", "blind-test", "m3ae-test", "resnet-lstm-test", "fusion-prenorm-test"])
)
def test_text_padding_is_masked(name, qa_batch, qa_data):
    torch.manual_seed(2)
    model = make_model(name, qa_data).eval()
    inputs = model_inputs(qa_batch, name)
    pads = inputs["attention_mask"] == 0
    assert pads.any()
    changed = dict(inputs, input_ids=inputs["input_ids"].masked_fill(pads, 7))
    # and longer padding: four more pad columns of arbitrary ids
    B = inputs["input_ids"].shape[0]
    longer = dict(
        inputs,
        input_ids=torch.cat([inputs["input_ids"], torch.full((B, 4), 11)], 1),
        attention_mask=torch.cat([inputs["attention_mask"], torch.zeros(B, 4, dtype=torch.long)], 1),
    )
    with torch.no_grad():
        ref = model(**inputs).logits
        torch.testing.assert_close(model(**changed).logits, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(**longer).logits, ref, rtol=1e-5, atol=1e-6)
        # ...while a real token does change the answer scores
        real = dict(inputs, input_ids=inputs["input_ids"].masked_fill(~pads, 7))
        assert not torch.allclose(model(**real).logits, ref)


@pytest.mark.parametrize(
    "name", _fast_first(["fusion-test", "deaf-test", "m3ae-test", "resnet-lstm-test", "fusion-prenorm-test"])
)
def test_missing_second_ecg_is_masked(name, qa_batch, qa_data):
    torch.manual_seed(3)
    model = make_model(name, qa_data).eval()
    inputs = model_inputs(qa_batch, name)
    noisy = inputs["ecg"].clone()
    noisy[:6, 1] = torch.randn_like(noisy[:6, 1])  # slot 2 of the single-ECG questions: not a real ECG
    with torch.no_grad():
        ref = model(**inputs).logits
        out = model(**dict(inputs, ecg=noisy)).logits
    torch.testing.assert_close(out[:6], ref[:6], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(**dict(inputs, ecg=inputs["ecg"] * 2)).logits, ref)


@pytest.mark.slow
@pytest.mark.parametrize("name", QA_MODELS + UB_MODELS)
def test_learns_a_tiny_batch(name, qa_batch, ub_batch, qa_data):
    """At most 150 AdamW steps on 8 samples, on the model's own loss, drive it down and reach 100 % train
    exact match. Proves learning, not just running: blind must memorise questions that differ in one word,
    deaf the ECGs alone, and the comparison samples need both ECG slots."""
    torch.manual_seed(4)
    model = make_model(name, qa_data)
    qa = task_of(name) == "qa"
    batch = qa_batch if qa else ub_batch
    inputs = model_inputs(batch, name)
    labels = batch["labels"].numpy()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3, betas=(0.9, 0.98))
    losses, correct = [], np.zeros(8, dtype=bool)
    for step in range(150):
        model.train()
        loss = model(**with_labels(batch, name)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 9:
            model.eval()  # the upperbound models' batch norm: judge what inference would answer
            with torch.no_grad():
                probs = torch.sigmoid(model(**inputs).logits).numpy()
            correct = (
                exact_match(probs, labels, batch["valid_mask"].numpy())
                if qa
                else upperbound_correct(probs, labels, batch["label_mask"].numpy())
            )
            if correct.all():
                break
    assert math.isfinite(losses[-1]) and losses[-1] < 0.5 * losses[0], losses
    assert correct.all(), (name, step + 1, correct, losses[-5:])


def test_pretrained_text_encoder(tmp_path, qa_batch, qa_data):
    """--text-encoder: weights come from the given transformers encoder, and the checkpoint reloads offline."""
    from transformers import BertConfig, BertModel

    enc_dir = tmp_path / "tiny-bert"
    tok = qa_data.tokenizer
    torch.manual_seed(5)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
        )
    )
    bert.save_pretrained(enc_dir)
    tok.save_pretrained(enc_dir)
    model = create_model(
        "fusion-test",
        text_encoder=str(enc_dir),
        classes=qa_data.classes,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        sep_token_id=tok.sep_token_id,
    )
    torch.testing.assert_close(
        model.text_encoder.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight
    )
    model.eval()
    inputs = model_inputs(qa_batch, "fusion-test")
    model.save_pretrained(tmp_path / "ckpt")
    (enc_dir / "config.json").unlink()  # the checkpoint must not need the encoder folder any more
    loaded = load_model(tmp_path / "ckpt").eval()
    with torch.no_grad():
        ref = model(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, ref, rtol=0, atol=0)
        pads = inputs["attention_mask"] == 0
        torch.testing.assert_close(
            model(**dict(inputs, input_ids=inputs["input_ids"].masked_fill(pads, 9))).logits, ref, rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="text side"):
        create_model("se-wrn", text_encoder=str(enc_dir))
    with pytest.raises(ValueError, match="text side"):
        create_model("deaf", text_encoder=str(enc_dir))


def test_predictor_inputs_match_the_data_loader(qa_data, qa_batch, tmp_path):
    """ecgqa.load's tokenisation and ECG slots equal the training loader's, so scores are the same."""
    import ecgqa

    torch.manual_seed(6)
    model = make_model("fusion-test", qa_data).eval()
    model.save_pretrained(tmp_path)
    qa_data.tokenizer.save_pretrained(tmp_path / "tokenizer")
    predictor = ecgqa.load(tmp_path, device="cpu")
    with torch.no_grad():
        probs = torch.sigmoid(model(**model_inputs(qa_batch, "fusion-test")).logits).numpy()
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
