"""`ecgqa pretrain` (W2V+CMSC+RLM): the objective's parts against independent constructions (masking as
upstream's algorithm draws it, distractors, quantizer perplexities, CMSC positives from the PTB-XL patient
table, segments read with wfdb), learning on the bundled sample, resume, and the chain
pretrain → fine-tune (--init-from) → evaluate → llm-eval --grounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ecgqa.data.prepared import PreparedData
from ecgqa.models.w2v_pretrain import W2VPretrainModel, cmsc_loss, compute_mask, pretrain_config
from ecgqa.training.pretrain import PretrainConfig, SegmentPairs, collate_pairs, dry_run, pretrain, read_patients

# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded 2-core machine, two threads contend and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _upstream_mask(
    rng: np.random.RandomState, batch: int, tokens: int, p: float, length: int, min_masks: int = 2
) -> np.ndarray:
    """fairseq-signals' compute_mask_indices (static lengths, overlap allowed, no padding), written from its
    description: span count int(p·T/L + U), starts from T − L positions without replacement, rows cut to
    the smallest count."""
    num = max(min_masks, int(p * tokens / length + rng.rand()))
    rows = []
    for _ in range(batch):
        starts = rng.choice(tokens - length, num, replace=False)
        rows.append(np.unique((starts[:, None] + np.arange(length)[None]).ravel()))
    fewest = min(len(r) for r in rows)
    mask = np.zeros((batch, tokens), bool)
    for i, r in enumerate(rows):
        mask[i, rng.choice(r, fewest, replace=False)] = True
    return mask


def _perplexity(probs: np.ndarray) -> float:
    """Σ over groups of exp(entropy of the batch-mean distribution); probs (N, G, V)."""
    mean = probs.mean(0)
    ent = -(np.where(mean > 0, mean * np.log(np.where(mean > 0, mean, 1)), 0)).sum(-1)
    return float(np.exp(ent).sum())


# ----------------------------------------------------------------------------------------------- masking


def test_mask_rows_are_equal_and_cover_what_upstream_covers():
    np.random.seed(0)
    ours = np.stack([compute_mask((8, 156), 0.65, 10) for _ in range(150)])
    assert all((m.sum(1) == m.sum(1)[0]).all() for m in ours)  # every row masks the same number of tokens
    rng = np.random.RandomState(1)
    ref = np.stack([_upstream_mask(rng, 8, 156, 0.65, 10) for _ in range(150)])
    # the published setting (156 tokens per 5 s segment): the same masked share as upstream's algorithm
    assert abs(ours.mean() - ref.mean()) < 0.01, (ours.mean(), ref.mean())
    assert 0.35 < ours.mean() < 0.55
    # length-1 spans never overlap: exactly int(p·T + U) tokens, so floor or ceil of p·T
    for _ in range(20):
        m = compute_mask((4, 40), 0.5, 1)
        assert m.sum(1)[0] in (20, 21) and (m.sum(1) == m.sum(1)[0]).all()
    # p = 0: the two minimum spans of 3 → 3..6 tokens (fewer where spans overlap), covered by two windows of 3
    for _ in range(20):
        m = compute_mask((3, 30), 0.0, 3)
        assert 3 <= m.sum(1)[0] <= 6
        for row in m:
            windows, covered = 0, -1
            for t in np.flatnonzero(row):
                if t > covered:
                    windows, covered = windows + 1, t + 2
            assert windows <= 2
    with pytest.raises(ValueError, match="tokens per segment"):
        compute_mask((2, 5), 0.65, 10)


def test_negatives_come_from_the_other_masked_tokens_of_the_same_segment():
    torch.manual_seed(0)
    np.random.seed(0)
    model = W2VPretrainModel(pretrain_config("w2v-cmsc-rlm-test", num_negatives=6))
    n, tokens = 3, 12
    mask = torch.from_numpy(compute_mask((n, tokens), 0.5, 2))
    m = int(mask[0].sum())
    # target vectors that name their own (row, token): decodable after the gather
    where = torch.nonzero(mask)  # row-major: the order of y
    y = torch.stack([where[:, 0].float(), where[:, 1].float(), torch.ones(len(where))], 1)
    counts = np.zeros((n * m, tokens))
    for _ in range(200):
        negs = model._negatives(y, mask)
        assert negs.shape == (n * m, 6, 3)
        rows, toks = negs[..., 0].long(), negs[..., 1].long()
        assert (rows == where[:, :1]).all()  # the same segment
        assert mask[rows, toks].all()  # a masked token
        assert (toks != where[:, 1:]).all()  # never the target itself
        for i in range(n * m):
            np.add.at(counts[i], toks[i].numpy(), 1)
    # uniform over the m − 1 candidates
    per = counts[counts > 0].reshape(n * m, m - 1)
    expected = 200 * 6 / (m - 1)
    assert np.abs(per - expected).max() < 0.25 * expected


# ----------------------------------------------------------------------------------------------- objective


@pytest.mark.slow
def test_the_objective_parts_match_an_independent_computation():
    torch.manual_seed(0)
    np.random.seed(0)
    model = W2VPretrainModel(pretrain_config("w2v-cmsc-rlm-test"))
    model.eval()  # no dropout, no Gumbel noise, no lead masking: every part is deterministic
    source = torch.randn(6, 12, 2500)
    patient = torch.tensor([7, 7, 8, 8, 7, 7])
    segment = torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        out = model(source, patient_id=patient, segment=segment)
        mask = out.mask_indices
        c = model.config
        raw = model.w2v.feature_extractor(source)
        feats = model.w2v.extract_features(source)  # the encoder's own path (H4) = ours
        x = model.w2v.post_extract_proj(feats)
        x[mask] = model.mask_emb
        enc = model.w2v.encoder(x)
        logits = model.quantizer.weight_proj(feats[mask]).view(-1, c.latent_groups, c.latent_vars).numpy()
        code = logits.argmax(-1)
        onehot = np.eye(c.latent_vars)[code]
        soft = np.exp(logits - logits.max(-1, keepdims=True))
        soft /= soft.sum(-1, keepdims=True)
        codebook = model.quantizer.vars[0].numpy().reshape(c.latent_groups, c.latent_vars, -1)
        q = np.concatenate([codebook[g][code[:, g]] for g in range(c.latent_groups)], axis=1)
        y = model.project_q(torch.from_numpy(q).float())
        pred = model.final_proj(enc[mask])
    positive = F.cosine_similarity(pred, y, dim=-1) / c.logit_temp
    np.testing.assert_allclose(out.logits[:, 0], positive, rtol=1e-4, atol=1e-4)
    # every distractor logit: cos(pred_i, y_j) / temp for another masked token j of the same segment, or
    # -inf where y_j is the target's own codeword (upstream's neg_is_pos)
    pairs = F.cosine_similarity(pred[:, None], y[None], dim=-1) / c.logit_temp
    seg = torch.nonzero(mask)[:, 0]
    same_code = (y[:, None] == y[None]).all(-1)
    for i in range(len(pred)):
        others = (seg == seg[i]) & (torch.arange(len(pred)) != i)
        for v in out.logits[i, 1:]:
            if torch.isinf(v):
                assert v < 0 and (same_code[i] & others).any()
            else:
                assert (pairs[i][others & ~same_code[i]] - v).abs().min() < 1e-3
    np.testing.assert_allclose(
        float(out.contrastive_loss),
        float(F.cross_entropy(out.logits, torch.zeros(len(out.logits), dtype=torch.long))),
        rtol=1e-5,
    )
    assert out.code_perplexity == pytest.approx(_perplexity(onehot), rel=1e-4)
    assert out.prob_perplexity == pytest.approx(_perplexity(soft), rel=1e-4)
    gv = c.latent_groups * c.latent_vars
    assert out.diversity_loss == pytest.approx((gv - _perplexity(soft)) / gv, rel=1e-4)
    assert out.feature_penalty == pytest.approx(float((raw.double() ** 2).mean()), rel=1e-4)
    # CMSC from the pooled encoder outputs, by loops over the positive pairs
    f = enc.mean(1).double().numpy()
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    a, b = f[[0, 2, 4]], f[[1, 3, 5]]
    sim = a @ b.T / c.cmsc_temp
    pa, pb = patient.numpy()[[0, 2, 4]], patient.numpy()[[1, 3, 5]]
    rows = [-(sim[i, j] - np.log(np.exp(sim[i]).sum())) for i in range(3) for j in range(3) if pa[i] == pb[j]]
    cols = [-(sim[i, j] - np.log(np.exp(sim[:, j]).sum())) for j in range(3) for i in range(3) if pa[i] == pb[j]]
    assert len(rows) == 5  # (0,0) (0,2) (1,1) (2,0) (2,2)
    assert out.cmsc_loss == pytest.approx(np.mean(rows) / 2 + np.mean(cols) / 2, rel=1e-4)
    weighted = (
        out.contrastive_loss
        + c.diversity_weight * out.diversity_loss
        + c.feature_pen_weight * out.feature_penalty
        + c.cmsc_weight * out.cmsc_loss
    )
    assert float(out.loss) == pytest.approx(float(weighted), rel=1e-5)


def test_lead_masking_and_the_gumbel_temperature():
    torch.manual_seed(0)
    model = W2VPretrainModel(pretrain_config("w2v-cmsc-rlm-test"))
    ones = torch.ones(400, 12, 50)
    model.train()
    masked = model.lead_mask(ones)
    per_lead = masked.amax(-1)
    assert ((masked == 0) | (masked == 1)).all() and (masked.amin(-1) == per_lead).all()  # whole leads
    assert abs(float(per_lead.mean()) - 0.5) < 0.03  # p 0.5, each lead of each segment independently
    assert len({tuple(r.tolist()) for r in per_lead}) > 300
    model.eval()
    assert torch.equal(model.lead_mask(ones), ones)
    q = model.quantizer
    for n, expected in ((0, 2.0), (1000, 2.0 * 0.999995**1000), (10**6, 0.5)):
        q.set_num_updates(n)
        assert q.curr_temp == pytest.approx(expected)


@pytest.mark.slow
def test_cmsc_segments_and_patients_from_the_sample(prepared_upperbound, sample_paths):
    """Pairs are the two 5 s halves of each stored ECG (read independently with wfdb); with the PTB-XL
    table, every two ECGs of one patient are positives too."""
    import wfdb

    data = PreparedData(prepared_upperbound)
    table = sample_paths.ptbxl_records / "ptbxl_database.csv"
    patients = read_patients(table, data.ecg_ids)
    pairs = SegmentPairs(data, np.arange(len(data.ecg_ids)), 2500, patients)
    n = len(data.ecg_ids)
    assert len(pairs) == n > 100
    db = pd.read_csv(table, index_col="ecg_id")
    for i in (0, 57, n - 1):
        record = wfdb.rdrecord(str(sample_paths.ptbxl_records / db.loc[int(data.ecg_ids[i]), "filename_hr"]))
        signal = record.p_signal.T.astype(np.float32)  # PTB-XL's lead order is ours
        item = pairs[i]
        np.testing.assert_allclose(item["source"][0], signal[:, :2500], atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(item["source"][1], signal[:, 2500:5000], atol=2e-3, rtol=2e-3)
        assert item["patient_id"] == int(db.loc[int(data.ecg_ids[i]), "patient_id"])
    batch = collate_pairs([pairs[i] for i in range(len(pairs))])
    assert batch["source"].shape == (2 * n, 12, 2500) and batch["segment"].tolist() == [0, 1] * n
    np.testing.assert_array_equal(batch["source"][2 * 57 + 1], pairs[57]["source"][1])
    # positives: an independent count of ordered (ECG, ECG) pairs sharing a patient in the sample table
    sizes = db.loc[[int(e) for e in data.ecg_ids], "patient_id"].value_counts()
    expected = int((sizes**2).sum())
    seg0 = batch["patient_id"][batch["segment"] == 0]
    seg1 = batch["patient_id"][batch["segment"] == 1]
    assert int((seg0[:, None] == seg1[None, :]).sum()) == expected > n
    # the loss on those positives: one-hot features per patient make every positive pair the best match
    ids = {p: k for k, p in enumerate(sorted(set(patients.tolist())))}
    feats = F.one_hot(torch.tensor([ids[int(p)] for p in batch["patient_id"]]), len(ids)).float()
    perfect = cmsc_loss(feats, batch["patient_id"], batch["segment"], temp=0.01)
    shuffled = cmsc_loss(feats[torch.randperm(len(feats))], batch["patient_id"], batch["segment"], temp=0.01)
    assert float(perfect) < float(np.log(sizes.max())) + 1e-3 < float(shuffled)


@pytest.mark.slow
def test_a_records_folder_reads_as_the_prepared_store(prepared_upperbound, sample_paths, tmp_path):
    """--data RECORDS: every ECG once (PTB-XL's 100 Hz copies skipped), equal to the prepared store's rows."""
    from ecgqa.training.pretrain import RecordsFolder, check_config, load_pairs

    folder = RecordsFolder(sample_paths.ptbxl_records, 500, 10, progress=False)
    assert len(folder.ecg_ids) == len(set(folder.ecg_ids.tolist())) == 198
    data = PreparedData(prepared_upperbound)
    rows = [int(np.flatnonzero(folder.ecg_ids == e)[0]) for e in data.ecg_ids]
    np.testing.assert_allclose(folder.signals[rows], np.asarray(data.signals, dtype=np.float32), atol=3e-3, rtol=1e-3)
    config = check_config(
        PretrainConfig(data=sample_paths.ptbxl_records, out=tmp_path / "o", model="w2v-cmsc-rlm-test", quiet=True)
    )
    _, pairs = load_pairs(config)
    assert len(pairs) == 198 and pairs.segment == 2500
    # --split: the ECGs the split's questions use, once each
    config = check_config(
        PretrainConfig(data=prepared_upperbound, out=tmp_path / "o", model="w2v-cmsc-rlm-test", split="train")
    )
    _, pairs = load_pairs(config)
    used = {r for rows_ in data.split("train")["ecg_rows"] for r in rows_}
    assert sorted(pairs.rows.tolist()) == sorted(used)


@pytest.mark.slow
def test_init_from_an_ecgqa_folder_or_a_fairseq_checkpoint_loads_every_tensor(prepared_upperbound, tmp_path):
    """--init-from: the architecture and codebook sizes come from the checkpoint, every tensor is loaded
    (fairseq's pretraining names are ours); a contradicting --set is an error."""
    from ecgqa.training.pretrain import init_source, load_init
    from tests.training.test_w2v_cmsc import CFG, fairseq_state, save_fairseq

    torch.manual_seed(3)
    source = W2VPretrainModel(pretrain_config("w2v-cmsc-rlm-test", latent_vars=12, final_dim=20))
    source.save_pretrained(tmp_path / "ours")
    fairseq = fairseq_state(CFG)
    save_fairseq(tmp_path / "checkpoint_last.pt", fairseq, CFG)
    for path, model in (
        (tmp_path / "ours", "w2v-cmsc-rlm-quick"),
        (tmp_path / "checkpoint_last.pt", "w2v-cmsc-rlm-test"),
    ):
        config = PretrainConfig(data=prepared_upperbound, out=tmp_path / "o", model=model, init_from=str(path))
        pre, fields = init_source(config)
        loaded = W2VPretrainModel(pretrain_config(model, **fields))
        assert "pretraining parts (8 tensors) loaded" in load_init(loaded, pre)
        state = loaded.state_dict()
        if path.name == "ours":
            expected = source.state_dict()
            assert fields["latent_vars"] == 12 and fields["final_dim"] == 20 and fields["encoder_embed_dim"] == 32
        else:  # the encoder as the bridge maps it (tests/training/test_w2v_cmsc.py checks that map), the rest by name
            expected = {
                **pre.encoder_tensors(),
                **{
                    k: v
                    for k, v in fairseq.items()
                    if not k.startswith(
                        ("feature_extractor", "layer_norm", "post_extract_proj", "conv_pos", "encoder.")
                    )
                },
            }
            assert fields["latent_vars"] == CFG["latent_vars"] and fields["final_dim"] == CFG["final_dim"]
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
    with pytest.raises(ValueError, match="--set latent_vars=7 contradicts --init-from"):
        init_source(
            PretrainConfig(
                data=prepared_upperbound,
                out=tmp_path / "o",
                model="w2v-cmsc-rlm-test",
                init_from=str(tmp_path / "ours"),
                overrides={"latent_vars": 7},
            )
        )
    # a run continues from the fairseq checkpoint: two updates move every part away from it
    out = _pretrain(
        prepared_upperbound,
        tmp_path / "continued",
        max_steps=2,
        batch_size=2,
        init_from=str(tmp_path / "checkpoint_last.pt"),
    )
    from safetensors.torch import load_file

    after = load_file(out / "model.safetensors")
    assert after["quantizer.vars"].shape == fairseq["quantizer.vars"].shape
    assert 0 < float((after["final_proj.weight"] - fairseq["final_proj.weight"]).abs().max()) < 0.1


def test_bad_input_is_one_error_naming_it(prepared_upperbound, tmp_path):
    table = tmp_path / "patients.csv"
    data = PreparedData(prepared_upperbound)
    table.write_text("ecg_id,patient_id\n" + "".join(f"{e},{e}\n" for e in data.ecg_ids[1:]))
    with pytest.raises(ValueError, match=rf"patients.csv: no patient_id for ecg id {int(data.ecg_ids[0])} \(1 of"):
        read_patients(table, data.ecg_ids)
    table.write_text("ecg_id,patient_id\n1,abc\n")
    with pytest.raises(ValueError, match="line 2: ecg_id 1 / patient_id 'abc'"):
        read_patients(table, data.ecg_ids)
    base = {"data": prepared_upperbound, "out": tmp_path / "out"}
    with pytest.raises(ValueError, match="pretraining is for the w2v-cmsc-rlm encoder"):
        dry_run(PretrainConfig(model="se-wrn", **base))
    with pytest.raises(ValueError, match="fewer than two segments"):
        dry_run(PretrainConfig(model="w2v-cmsc-rlm-test", segment_seconds=6, **base))
    with pytest.raises(ValueError, match="--set mask_prb=0.5: mask_prb is not a pretraining config field"):
        dry_run(PretrainConfig(model="w2v-cmsc-rlm-test", overrides={"mask_prb": 0.5}, **base))
    with pytest.raises(ValueError, match="--set mask_prob=1.5: expected a value like the default 0.65"):
        dry_run(PretrainConfig(model="w2v-cmsc-rlm-test", overrides={"mask_prob": 1.5}, **base))
    with pytest.raises(ValueError, match="--set rate=100: rate comes from the data"):
        dry_run(PretrainConfig(model="w2v-cmsc-rlm-test", overrides={"rate": 100}, **base))
    with pytest.raises(ValueError, match="--max-steps 0"):
        dry_run(PretrainConfig(model="w2v-cmsc-rlm-test", max_steps=0, **base))
    assert not (tmp_path / "out").exists()


def test_paper_recipe_dry_run(prepared_upperbound, tmp_path, capsys):
    from ecgqa.cli import main

    assert (
        main(
            [
                "pretrain",
                "--data",
                str(prepared_upperbound),
                "--out",
                str(tmp_path / "o"),
                "--model",
                "w2v-cmsc-rlm",
                "--recipe",
                "paper",
                "--dry-run",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    for line in (
        "w2v_cmsc_rlm.yaml",
        "effective batch: 512 pairs (1024 segments) = batch 64 x grad-accum 8",
        "updates: 200 (200 epochs)",
        "betas (0.9, 0.98), eps 1e-06, weight decay 0.01",
        "fixed at 5e-05",
        "gradient clipping: none",
        "mask_prob 0.65, mask_length 10, num_negatives 100",
        "codebook 2 x 320, final_dim 256, latent_temp (2.0, 0.5, 0.999995)",
        "diversity 0.1 / feature penalty 10.0 / cmsc 1.0 (temp 0.1), lead masking p 0.5",
    ):
        assert line in text, line
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def prepared_attributes_500(tmp_path_factory, mapped_sample, sample_paths) -> Path:
    """The bundled sample prepared for --task attributes at 500 Hz (the -test encoder needs 5 s = 9 tokens)."""
    from ecgqa.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "attributes-500"
    prepare(
        mapped_sample,
        out,
        task="attributes",
        rate=500,
        metadata=sample_paths.ptbxl_records / "ptbxl_database.csv",
        progress=False,
    )
    return out


def _pretrain(data: Path, out: Path, stop_after: int | None = None, **kw) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pretrain(
            PretrainConfig(data=data, out=out, model="w2v-cmsc-rlm-test", quiet=True, **kw), stop_after=stop_after
        )
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, prepared_attributes_500, sample_paths) -> Path:
    """200 updates of the -test encoder on the sample's 198 ECGs (batch 8 pairs, lr 2e-3, patient positives)."""
    out = tmp_path_factory.mktemp("pretrain") / "w2v-test"
    return _pretrain(
        prepared_attributes_500,
        out,
        max_steps=200,
        batch_size=8,
        lr=2e-3,
        logging_steps=5,
        save_steps=100,
        patients=sample_paths.ptbxl_records / "ptbxl_database.csv",
    )


def _log(folder: Path) -> list[dict]:
    return [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if "code_perplexity" in r]


@pytest.mark.slow
def test_pretraining_on_the_sample_lowers_the_loss_and_raises_the_code_perplexity(pretrained):
    log = _log(pretrained)
    assert [r["step"] for r in log] == list(range(5, 201, 5))
    first, last = log[:8], log[-8:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    assert mean(last, "loss") < 0.9 * mean(first, "loss")
    assert mean(last, "code_perplexity") > mean(first, "code_perplexity") + 1.0
    assert mean(last, "feature_penalty") < 0.5 * mean(first, "feature_penalty")
    for r in log:  # every part is logged, and the loss is their weighted sum (means of the interval)
        parts = r["contrastive_loss"] + 0.1 * r["diversity_loss"] + 10 * r["feature_penalty"] + r["cmsc_loss"]
        assert r["loss"] == pytest.approx(parts, rel=0.02, abs=0.02)
        assert 0 < r["code_perplexity"] <= 2 * 16 and r["temperature"] == pytest.approx(
            max(2 * 0.999995 ** (r["step"] - 1), 0.5), abs=1e-4
        )
    options = json.loads((pretrained / "train_options.json").read_text())
    assert options["global_step"] == 200 and options["ecgs"] == 198 and options["objective"] == "w2v+cmsc+rlm"


@pytest.mark.slow
def test_resume_gives_the_weights_of_an_uninterrupted_run(prepared_attributes_500, tmp_path, one_thread):
    from safetensors.torch import load_file

    kw = {"max_steps": 6, "batch_size": 4, "save_steps": 3, "logging_steps": 1}
    _pretrain(prepared_attributes_500, tmp_path / "whole", **kw)
    _pretrain(prepared_attributes_500, tmp_path / "cut", stop_after=3, **kw)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    _pretrain(prepared_attributes_500, tmp_path / "cut", resume=True, **kw)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("quantizer.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in _log(tmp_path / "whole")] == [r["loss"] for r in _log(tmp_path / "cut")]
    # a finished run resumed makes no update (it made checkpoint-7, -8 with a climbing lr): only its final output
    _pretrain(prepared_attributes_500, tmp_path / "whole", resume=True, **kw)
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert json.loads((tmp_path / "whole" / "train_options.json").read_text())["global_step"] == 6
    c = load_file(tmp_path / "whole" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_pretrain_then_finetune_evaluate_and_ground_an_llm(
    pretrained, prepared_attributes_500, prepared_qa, tmp_path, monkeypatch, one_thread
):
    """The chain on the bundled sample: the pretrained w2v.* weights start `ecgqa train --init-from`, the
    fine-tuned classifier is evaluated and grounds `ecgqa llm-eval` (real openai client, local server)."""
    from safetensors.torch import load_file

    from ecgqa.cli import main
    from ecgqa.models import create_model
    from ecgqa.training.fairseq_import import init_model, read_pretrained
    from tests.fake_llm_server import FakeLLM, FakeServer

    ours = load_file(pretrained / "model.safetensors")
    data = PreparedData(prepared_attributes_500)
    fresh = create_model("w2v-cmsc-rlm-test", classes=data.classes, rate=500, signal_length=5000)
    init_model(fresh, read_pretrained(pretrained))
    encoder = {k: v for k, v in fresh.state_dict().items() if k.startswith("w2v.")}
    assert encoder and all(torch.equal(v, ours[k]) for k, v in encoder.items())

    ft = tmp_path / "finetuned"
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared_attributes_500),
                "--model",
                "w2v-cmsc-rlm-test",
                "--init-from",
                str(pretrained),
                "--out",
                str(ft),
                "--max-steps",
                "3",
                "--batch-size",
                "8",
                "--eval-split",
                "none",
                "--workers",
                "0",
                "-q",
            ]
        )
        == 0
    )
    tuned = load_file(ft / "model.safetensors")
    fresh = create_model("w2v-cmsc-rlm-test", classes=data.classes).state_dict()

    def distance(weights: dict) -> float:
        return float(torch.cat([(weights[k] - v).flatten() for k, v in encoder.items()]).norm())

    assert 0 < distance(tuned) < 0.1 * distance(fresh)  # three updates away from the pretrained encoder
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ft),
                "--data",
                str(prepared_attributes_500),
                "--split",
                "valid",
                "--out",
                str(tmp_path / "eval"),
                "--limit",
                "48",
                "-q",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == 48 and 0 <= report["em"] <= 1

    monkeypatch.setenv("OPENAI_API_KEY", "sk-pretrain-test")
    with FakeServer(FakeLLM()) as server:
        assert (
            main(
                [
                    "llm-eval",
                    "--data",
                    str(prepared_qa),
                    "--grounding",
                    str(ft),
                    "--model",
                    "fake-4o",
                    "--base-url",
                    server.url,
                    "--split",
                    "valid",
                    "--out",
                    str(tmp_path / "llm"),
                    "-q",
                ]
            )
            == 0
        )
    llm = json.loads((tmp_path / "llm" / "report.json").read_text())
    assert llm["grounding"] == str(ft) and llm["n"] == llm["n_questions"] > 0 and llm["n_failed"] == 0
    prompts = [
        json.loads(p.read_text())["messages"][0]["content"] for p in (tmp_path / "llm" / "transcripts").glob("*")
    ]
    assert len(prompts) == llm["n"] and all("Interpretation of the" in p for p in prompts)
