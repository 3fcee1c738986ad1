"""w2v-cmsc-rlm and the fairseq-signals / ECG-FM checkpoint bridge (ecgqa/models/w2v_cmsc.py,
ecgqa/training/fairseq_import.py).

The fairseq checkpoints here are written by the test itself, key by key, from the names in
fairseq-signals' source (models/ecg_transformer.py, models/wav2vec2/wav2vec2.py,
modules/conv_feature_extraction.py, conv_positional_encoding.py, transformer_encoder*.py,
multi_head_attention.py, gumbel_vector_quantizer.py, models/classification/ecg_transformer_classifier.py),
with random weights and the objects fairseq's trainer pickles (cfg as a plain container holding an
argparse.Namespace, or an omegaconf DictConfig; numpy scalars in the optimizer history). The reference
forward below is written from the same source with plain torch ops, independent of the model's modules.
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecgqa.training.fairseq_import import FairseqCheckpointError, convert, init_model, read_checkpoint, read_pretrained

# a small architecture in fairseq-signals' cfg.model field names
CFG = {
    "_name": "wav2vec2_cmsc",
    "conv_feature_layers": "[(16, 4, 4)] * 2 + [(16, 3, 2)]",
    "extractor_mode": "default",
    "conv_bias": False,
    "in_d": 12,
    "encoder_layers": 2,
    "encoder_embed_dim": 24,
    "encoder_ffn_embed_dim": 40,
    "encoder_attention_heads": 3,
    "layer_norm_first": False,
    "conv_pos": 6,
    "conv_pos_groups": 3,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "feature_grad_mult": 0.1,
    "quantize_targets": True,
    "final_dim": 8,
    "latent_vars": 5,
    "latent_groups": 2,
    "apply_mask": True,
    "mask_prob": 0.65,
    "data": "${task.data}",
}
CONVS = [(16, 4, 4), (16, 4, 4), (16, 3, 2)]


def fairseq_state(
    cfg: dict,
    *,
    finetuned: int | None = None,
    seed: int = 0,
    pos_layout: str = "weight_g",
) -> OrderedDict:
    """A state dict under fairseq-signals' key names: pretraining (Wav2Vec2CMSCModel) or, with
    ``finetuned=N``, ECGTransformerClassificationModel (encoder under ``encoder.``, head ``proj``)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    D, F_, C = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], CONVS[-1][0]
    sd: OrderedDict = OrderedDict()
    c_in = cfg["in_d"]
    for i, (dim, k, _s) in enumerate(CONVS):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = r(dim, c_in, k, scale=0.3)
        if i == 0:  # Fp32GroupNorm at index 2 (after conv 0 and dropout 1)
            sd["feature_extractor.conv_layers.0.2.weight"] = 1 + r(dim)
            sd["feature_extractor.conv_layers.0.2.bias"] = r(dim)
        c_in = dim
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + r(C), r(C)
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = r(D, C), r(D)
    K, G = cfg["conv_pos"], cfg["conv_pos_groups"]
    if pos_layout == "weight_g":  # torch.nn.utils.weight_norm (fairseq-signals 2022-2024, ECG-FM)
        sd["conv_pos.pos_conv.0.bias"] = r(D)
        sd["conv_pos.pos_conv.0.weight_g"] = 1 + r(1, 1, K).abs()
        sd["conv_pos.pos_conv.0.weight_v"] = r(D, D // G, K)
    else:  # torch.nn.utils.parametrizations.weight_norm (fairseq-signals 2025)
        sd["conv_pos.pos_conv.0.bias"] = r(D)
        sd["conv_pos.pos_conv.0.parametrizations.weight.original0"] = 1 + r(1, 1, K).abs()
        sd["conv_pos.pos_conv.0.parametrizations.weight.original1"] = r(D, D // G, K)
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = r(D, D), r(D)
        sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"] = 1 + r(D), r(D)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(F_, D), r(F_)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(D, F_), r(D)
        sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = 1 + r(D), r(D)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + r(D), r(D)
    if finetuned is None:  # wav2vec 2.0 pretraining parts (vq_dim = final_dim when latent_dim is 0)
        V, Gq, fd = cfg["latent_vars"], cfg["latent_groups"], cfg["final_dim"]
        sd["mask_emb"] = torch.rand(D, generator=g)
        sd["quantizer.vars"] = torch.rand(1, Gq * V, fd // Gq, generator=g)
        sd["quantizer.weight_proj.weight"], sd["quantizer.weight_proj.bias"] = r(Gq * V, C), r(Gq * V)
        sd["project_q.weight"], sd["project_q.bias"] = r(fd, fd), r(fd)
        sd["final_proj.weight"], sd["final_proj.bias"] = r(fd, D), r(fd)
        return sd
    out = OrderedDict(("encoder." + k, v) for k, v in sd.items())
    out["proj.weight"], out["proj.bias"] = r(finetuned, D), r(finetuned)
    return out


def save_fairseq(path: Path, model_state: OrderedDict, cfg_model: dict, *, dictconfig: bool = False) -> Path:
    """As fairseq-signals' Trainer.state_dict + torch.save (cfg = OmegaConf.to_container, or a DictConfig)."""
    cfg = {
        "common": {"fp16": False, "seed": 1},
        "task": {"_name": "ecg_pretraining", "data": "/data", "normalize": False, "p": [1.0]},
        "model": dict(cfg_model, args=argparse.Namespace(arch="legacy", lr=[5e-5])),
    }
    if dictconfig:
        omegaconf = pytest.importorskip("omegaconf")
        cfg["model"].pop("args")
        cfg = omegaconf.OmegaConf.create(cfg)
    state = {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "Wav2Vec2WithCMSCCriterion",
                "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": np.float64(1.25)},
                "num_updates": 1200,
            }
        ],
        "task_state": {},
        "extra_state": {
            "metrics": {},
            "previous_training_time": np.float64(3.5),
            "train_iterator": {"epoch": np.int64(3)},
            "val_loss": None,
            "sizes": np.arange(4, dtype=np.int32),
        },
    }
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------ reference


def reference_token_padding(sample_padding: torch.Tensor, tokens: int) -> torch.Tensor:
    """Upstream's rule: conv output length of the real samples, floor((L - k) / s + 1) per layer."""
    lengths = (~sample_padding).sum(-1).double()
    for _, k, s in CONVS:
        lengths = torch.floor((lengths - k) / s + 1)
    return torch.arange(tokens)[None, :] >= lengths.long()[:, None]


def reference_forward(
    sd: dict, cfg: dict, x: torch.Tensor, prefix: str = "", pad: torch.Tensor | None = None
) -> torch.Tensor:
    """fairseq-signals' ECGTransformerModel forward (eval) from the state dict, plain ops: conv extractor
    → LN → proj → + conv_pos → padded tokens zeroed → LN (post-norm) → layers (padded keys masked)."""
    w = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    h = x
    for i, (dim, _k, s) in enumerate(CONVS):
        h = F.conv1d(h, w[f"feature_extractor.conv_layers.{i}.0.weight"], stride=s)
        if i == 0:
            h = F.group_norm(
                h, dim, w["feature_extractor.conv_layers.0.2.weight"], w["feature_extractor.conv_layers.0.2.bias"]
            )
        h = F.gelu(h)
    h = h.transpose(1, 2)
    h = F.layer_norm(h, (h.shape[-1],), w["layer_norm.weight"], w["layer_norm.bias"])
    h = h @ w["post_extract_proj.weight"].T + w["post_extract_proj.bias"]
    K, G, D = cfg["conv_pos"], cfg["conv_pos_groups"], cfg["encoder_embed_dim"]
    gk = w.get("conv_pos.pos_conv.0.weight_g", w.get("conv_pos.pos_conv.0.parametrizations.weight.original0"))
    v = w.get("conv_pos.pos_conv.0.weight_v", w.get("conv_pos.pos_conv.0.parametrizations.weight.original1"))
    weight = gk * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # weight norm over all dims but 2
    pos = F.conv1d(h.transpose(1, 2), weight, w["conv_pos.pos_conv.0.bias"], padding=K // 2, groups=G)
    if K % 2 == 0:
        pos = pos[:, :, :-1]  # SamePad
    h = h + F.gelu(pos).transpose(1, 2)
    if pad is not None:
        h = h.masked_fill(pad[..., None], 0.0)
    prenorm = cfg.get("layer_norm_first", False)  # TransformerEncoder: LN before the layers (post-norm) or after
    if not prenorm:
        h = F.layer_norm(h, (D,), w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"])
    H = cfg["encoder_attention_heads"]
    B, T, _ = h.shape
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."

        def lin(t, name, p=p):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        def norm(t, name, p=p):
            return F.layer_norm(t, (D,), w[p + name + ".weight"], w[p + name + ".bias"])

        x_in = norm(h, "self_attn_layer_norm") if prenorm else h
        q, k, vv = (
            lin(x_in, f"self_attn.{n}").view(B, T, H, D // H).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj")
        )
        scores = (q * (D // H) ** -0.5) @ k.transpose(-1, -2)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        att = torch.softmax(scores, dim=-1) @ vv
        a = lin(att.transpose(1, 2).reshape(B, T, D), "self_attn.out_proj")
        if prenorm:  # x + attn(LN(x)); x + ffn(LN(x))
            h = h + a
            h = h + lin(F.gelu(lin(norm(h, "final_layer_norm"), "fc1")), "fc2")
        else:  # LN(x + attn(x)); LN(x + ffn(x))
            h = norm(h + a, "self_attn_layer_norm")
            h = norm(h + lin(F.gelu(lin(h, "fc1")), "fc2"), "final_layer_norm")
    if prenorm:
        h = F.layer_norm(h, (D,), w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"])
    return h


def reference_classifier(sd: dict, cfg: dict, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
    """ECGTransformerClassificationModel: encoder, padded tokens zeroed, sum / count of non-zero entries, proj."""
    h = reference_forward(sd, cfg, x, prefix="encoder.", pad=pad)
    if pad is not None:
        h = h.masked_fill(pad[..., None], 0.0)
    pooled = h.sum(dim=1) / (h != 0).sum(dim=1)
    return pooled @ sd["proj.weight"].T + sd["proj.bias"]


# ------------------------------------------------------------------------------------------ loading


def test_pretraining_checkpoint_loads_every_key_and_matches_the_reference(tmp_path):
    sd = fairseq_state(CFG)
    path = save_fairseq(tmp_path / "checkpoint_last.pt", sd, CFG)
    pre = read_pretrained(path)
    km = pre.keymap
    assert set(km.mapped.values()) | set(km.dropped) == set(sd)  # every tensor mapped or dropped by name
    assert not set(km.mapped.values()) & set(km.dropped)
    assert sorted(km.dropped) == sorted(
        k for k in sd if k.startswith(("mask_emb", "quantizer.", "project_q.", "final_proj."))
    )
    assert pre.fields["conv_feature_layers"] == [list(c) for c in CONVS] and pre.fields["encoder_layers"] == 2

    from ecgqa.models import create_model
    from ecgqa.training.fairseq_import import init_overrides

    model = create_model("w2v-cmsc-rlm-test", classes=["a", "b"], **init_overrides("w2v-cmsc-rlm-test", pre, {})).eval()
    summary = init_model(model, pre)
    assert "encoder tensors loaded" in summary
    x = torch.randn(2, 12, 700, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.w2v(x)
        ref = reference_forward(sd, CFG, x)
    assert ours.shape == ref.shape == (2, 21, 24)  # 700 samples → 175 → 43 → 21 tokens
    assert (ours - ref).abs().max().item() < 1e-5


def test_prenorm_checkpoint_matches_the_reference(tmp_path):
    """``layer_norm_first: True`` (a cfg field without a tensor of its own): LNs before each sub-layer and the
    encoder LN after the layers; padded tokens masked as in the post-norm case."""
    from ecgqa.models import create_model
    from ecgqa.training.fairseq_import import init_overrides

    cfg = dict(CFG, layer_norm_first=True)
    sd = fairseq_state(cfg, seed=11)
    pre = read_pretrained(save_fairseq(tmp_path / "prenorm.pt", sd, cfg))
    model = create_model("w2v-cmsc-rlm-test", classes=["a"], **init_overrides("w2v-cmsc-rlm-test", pre, {})).eval()
    init_model(model, pre)
    assert model.config.layer_norm_first is True
    x = torch.randn(2, 12, 700, generator=torch.Generator().manual_seed(4))
    padding = torch.zeros(2, 700, dtype=torch.bool)
    padding[1, 500:] = True
    x[1, :, 500:] = 0.0
    with torch.no_grad():
        diff = (model.w2v(x) - reference_forward(sd, cfg, x)).abs().max().item()
        pad = reference_token_padding(padding, 21)
        real = ~pad[..., None]
        padded = ((model.w2v(x, padding) - reference_forward(sd, cfg, x, pad=pad)) * real).abs().max().item()
        post = reference_forward(sd, dict(cfg, layer_norm_first=False), x)
    assert diff < 1e-5 and padded < 1e-5
    assert (model.w2v(x) - post).abs().max().item() > 1e-2  # the two orders really differ on these weights


def test_set_layer_norm_first_corrects_a_finetuned_cfg_only(tmp_path):
    """A fine-tuned classifier's cfg.model is the fine-tuning config (upstream builds the encoder from the
    pretraining config, which the file does not keep): layer_norm_first, which no tensor shape shows, may be
    corrected with --set there; a pretraining checkpoint's own value stays binding."""
    from ecgqa.models import create_model
    from ecgqa.training.fairseq_import import init_overrides

    cfg = dict(CFG, _name="ecg_transformer_classifier", num_labels=2)  # layer_norm_first False (the default)
    sd = fairseq_state(cfg, finetuned=2, seed=12)  # weights of a pre-norm encoder
    pre = read_pretrained(save_fairseq(tmp_path / "ft.pt", sd, cfg))
    user = {"layer_norm_first": True}
    model = create_model(
        "w2v-cmsc-rlm-test", classes=["a", "b"], **init_overrides("w2v-cmsc-rlm-test", pre, user), **user
    ).eval()
    init_model(model, pre)
    x = torch.randn(2, 12, 700, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        diff = (model.w2v(x) - reference_forward(sd, dict(cfg, layer_norm_first=True), x, prefix="encoder.")).abs()
    assert diff.max().item() < 1e-5
    pretraining = read_pretrained(save_fairseq(tmp_path / "pt.pt", fairseq_state(CFG), CFG))
    with pytest.raises(FairseqCheckpointError, match="--set layer_norm_first=True contradicts"):
        init_overrides("w2v-cmsc-rlm-test", pretraining, user)


def test_finetuned_dictconfig_checkpoint_converts_and_matches_the_reference_classifier(tmp_path, capsys):
    from ecgqa.cli import main
    from ecgqa.models import create_model, load_model

    cfg = dict(
        CFG,
        _name="ecg_transformer_classifier",
        num_labels=4,
        final_dropout=0.0,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.1,
        feature_grad_mult=0.1,
    )
    sd = fairseq_state(cfg, finetuned=4, seed=3, pos_layout="parametrizations")
    path = save_fairseq(tmp_path / "checkpoint_best.pt", sd, cfg, dictconfig=True)
    assert main(["convert-fairseq", str(path), "--out", str(tmp_path / "conv")]) == 0
    assert f"{len(sd)} tensors mapped, 0 dropped (none), 0 unmapped" in capsys.readouterr().out
    model = load_model(tmp_path / "conv").eval()
    assert model.config.classes == ["label_0", "label_1", "label_2", "label_3"]
    assert (model.config.activation_dropout, model.config.feature_grad_mult) == (0.1, 0.1)  # from cfg.model
    x = torch.randn(2, 12, 640, generator=torch.Generator().manual_seed(5))
    padding = torch.zeros(2, 640, dtype=torch.bool)
    padding[1, 400:] = True  # the second ECG is 400 samples long, zero-padded to 640
    x[1, :, 400:] = 0.0
    pad = reference_token_padding(padding, 19)  # 640 → 160 → 40 → 19 tokens; 400 → 100 → 25 → 12 real
    assert pad.sum(1).tolist() == [0, 7]
    with torch.no_grad():
        diff = (model(ecg=x).logits - reference_classifier(sd, cfg, x)).abs().max().item()
        diff_padded = (model(ecg=x, padding_mask=padding).logits - reference_classifier(sd, cfg, x, pad)).abs().max()
    assert diff < 1e-5 and diff_padded.item() < 1e-5
    # --init-from: a fairseq head (4 labels, no names) initialises a 4-class model's proj, not a 3-class one
    from ecgqa.training.fairseq_import import init_overrides

    pre = read_pretrained(path)
    for classes, loaded in ((["w", "x", "y", "z"], True), (["x", "y", "z"], False)):
        target = create_model("w2v-cmsc-rlm-test", classes=classes, **init_overrides("w2v-cmsc-rlm-test", pre, {}))
        summary = init_model(target, pre)
        assert torch.equal(target.proj.weight, sd["proj.weight"]) is loaded
        assert ("proj (4 classes) loaded" in summary) is loaded
    # our converted folder names its classes: another class list leaves the head alone
    summary = init_model(target, read_pretrained(tmp_path / "conv"))
    assert "classes differ" in summary


def test_cfg_objects_become_plain_values(tmp_path):
    sd = fairseq_state(CFG)
    state = read_checkpoint(save_fairseq(tmp_path / "a.pt", sd, CFG))
    assert state["cfg"]["model"]["args"] == {"arch": "legacy", "lr": [5e-5]}  # argparse.Namespace → dict
    assert state["optimizer_history"][0]["lr_scheduler_state"]["best"] == 1.25  # numpy scalar → float
    assert state["extra_state"]["train_iterator"]["epoch"] == 3
    assert state["extra_state"]["sizes"].tolist() == [0, 1, 2, 3]
    state = read_checkpoint(save_fairseq(tmp_path / "b.pt", sd, CFG, dictconfig=True))
    assert state["cfg"]["model"]["conv_feature_layers"] == CFG["conv_feature_layers"]
    assert state["cfg"]["model"]["data"] == "${task.data}" and state["cfg"]["task"]["p"] == [1.0]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("drop:encoder.layers.1.fc2.bias", "lacks 1 tensor.*w2v.encoder.layers.1.fc2.bias"),
        ("shape:encoder.layers.0.fc1.weight", r"w2v.encoder.layers.0.fc1.weight is \(40, 23\)"),
        ("add:encoder.layers.0.extra.weight", "cannot place: encoder.layers.0.extra.weight"),
    ],
)
def test_missing_misshaped_or_unknown_key_is_an_error_naming_it(tmp_path, damage, message):
    sd = fairseq_state(CFG)
    kind, key = damage.split(":")
    if kind == "drop":
        del sd[key]
    elif kind == "shape":
        sd[key] = sd[key][:, :-1].clone()
    else:
        sd[key] = torch.zeros(2)
    pre_path = save_fairseq(tmp_path / "bad.pt", sd, CFG)
    with pytest.raises(FairseqCheckpointError, match=message):
        convert(pre_path, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_malicious_pickle_is_refused(tmp_path):
    exploit = _Exploit()
    exploit.target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"model": {}}, "x": exploit}, path)
    with pytest.raises(FairseqCheckpointError, match=r"evil.pt: refused to unpickle (posix|nt).system") as caught:
        read_checkpoint(path)
    assert not exploit.target.exists()
    assert "weights_only" not in str(caught.value)  # never the advice to load it unsafely


def test_published_size_parameter_count():
    from ecgqa.models import create_model

    with torch.device("meta"):  # shapes only: no 360 MB of weights to initialise
        model = create_model("w2v-cmsc-rlm", classes=[f"c{i}" for i in range(83)])
    c = model.config
    D, Fd, L, K, G = (c.encoder_embed_dim, c.encoder_ffn_embed_dim, c.encoder_layers, c.conv_pos, c.conv_pos_groups)
    assert (D, Fd, L, c.encoder_attention_heads, K, G) == (768, 3072, 12, 12, 128, 16)
    assert c.conv_feature_layers == [[256, 2, 2]] * 4 and not c.layer_norm_first and c.feature_grad_mult == 0.1
    convs = 12 * 256 * 2 + 3 * 256 * 256 * 2 + 2 * 256  # no conv bias; GroupNorm after the first
    front = 2 * 256 + (256 * D + D)  # feature LayerNorm, post_extract_proj
    pos = K + D * (D // G) * K + D  # weight-norm g (1, 1, K), v, bias
    layer = 4 * (D * D + D) + 2 * 2 * D + (D * Fd + Fd) + (Fd * D + D)
    head = 83 * D + 83
    closed_form = convs + front + pos + L * layer + 2 * D + head
    encoder = sum(p.numel() for p in model.w2v.parameters())
    assert encoder == 90_373_248 == closed_form - head
    assert sum(p.numel() for p in model.parameters()) == closed_form


def test_dry_run_prints_the_paper_recipe(tmp_path, prepared_upperbound, capsys):
    from ecgqa.cli import main

    sd = fairseq_state(CFG)
    ckpt = save_fairseq(tmp_path / "fairseq.pt", sd, CFG)
    rc = main(
        [
            "train",
            "--model",
            "w2v-cmsc-rlm",
            "--init-from",
            str(ckpt),
            "--recipe",
            "paper",
            "--dry-run",
            "--no-measure",
            "--data",
            str(prepared_upperbound),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "grounding_classification/base_total.yaml" in out
    assert "effective batch: 64 = batch 64 x grad-accum 1 x 1 device(s)" in out
    assert "updates: 100000" in out
    assert "betas (0.9, 0.98), eps 1e-08, weight decay 0.0001" in out
    assert "tri-stage: warmup 10000 updates 5e-07 -> 5e-05, hold 40000, exponential decay 50000 to 2.5e-06" in out
    assert "gradient clipping: none" in out
    assert f"initialised from: {ckpt} (fairseq checkpoint; {len(sd) - 8} tensors mapped, 8 dropped" in out
    # the model section of base_total.yaml, and the encoder shapes the checkpoint (not the registry) gives
    assert (
        "model: 2 post-norm layers of 24 (ffn 40, 3 heads), convs [(16, 4, 4), (16, 4, 4), (16, 3, 2)] default, "
        "positional conv 6/3 (from the checkpoint); dropout 0, attention dropout 0, activation dropout 0.1, "
        "feature_grad_mult 0.1, final dropout 0"
    ) in out
    assert not (tmp_path / "run").exists()
    # a family without a W2V encoder or ECG side is refused before anything is read or written
    assert (
        main(
            [
                "train",
                "--model",
                "se-wrn",
                "--init-from",
                str(ckpt),
                "--dry-run",
                "--data",
                str(prepared_upperbound),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "se-wrn has no W2V encoder or ECG side to initialise" in capsys.readouterr().err


def test_init_from_our_folder_and_the_fusion_ecg_side(tmp_path):
    from ecgqa.models import create_model
    from ecgqa.training.fairseq_import import init_overrides

    # a fairseq encoder with fusion-test's ECG front (4 x (8, k4, s4), width 32, positional conv 4 / 4)
    cfg = dict(
        CFG,
        conv_feature_layers="[(8, 4, 4)] * 4",
        encoder_embed_dim=32,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=2,
        conv_pos=4,
        conv_pos_groups=4,
        encoder_layers=1,
    )
    global CONVS
    saved, CONVS = CONVS, [(8, 4, 4)] * 4
    try:
        sd = fairseq_state(cfg, seed=7)
    finally:
        CONVS = saved
    path = save_fairseq(tmp_path / "f.pt", sd, cfg)
    folder, _ = convert(path, tmp_path / "conv")
    # our folder → w2v-cmsc-rlm-test: the encoder weights land unchanged
    pre = read_pretrained(folder)
    model = create_model("w2v-cmsc-rlm-test", classes=["a"], **init_overrides("w2v-cmsc-rlm-test", pre, {}))
    init_model(model, pre)
    assert torch.equal(model.w2v.encoder.layers[0].fc1.weight, sd["encoder.layers.0.fc1.weight"])
    assert torch.equal(
        model.w2v.encoder.pos_conv[0].parametrizations.weight.original1, sd["conv_pos.pos_conv.0.weight_v"]
    )
    with pytest.raises(FairseqCheckpointError, match="--set encoder_layers=3 contradicts"):
        init_overrides("w2v-cmsc-rlm-test", pre, {"encoder_layers": 3})
    # the fusion ECG side: extractor, feature LN, projection, positional conv; not the joint layers
    fusion = create_model("fusion-test", classes=["yes", "no"])
    layer_before = fusion.layers[0].fc1.weight.clone()
    summary = init_model(fusion, read_pretrained(path))
    assert "13 ECG-side tensors" in summary and "transformer layers" in summary  # 4 convs, GN 2, LN 2, proj 2, pos 3
    assert torch.equal(fusion.extractor.layers[3][0].weight, sd["feature_extractor.conv_layers.3.0.weight"])
    assert torch.equal(fusion.feature_proj.bias, sd["post_extract_proj.bias"])
    assert torch.equal(fusion.pos_conv.conv.parametrizations.weight.original0, sd["conv_pos.pos_conv.0.weight_g"])
    assert torch.equal(fusion.layers[0].fc1.weight, layer_before)
    # another width is an error naming the tensor; the model is left as it was
    wide = create_model("fusion-test", classes=["yes"], hidden_size=48, ffn_size=64, num_heads=2)
    with pytest.raises(FairseqCheckpointError, match=r"post_extract_proj.weight is \(32, 8\)"):
        init_model(wide, read_pretrained(path))


@pytest.mark.slow  # trains and evaluates (a few seconds)
def test_train_from_a_fairseq_checkpoint_then_evaluate_and_ground(tmp_path, prepared_upperbound):
    import ecgqa
    from ecgqa.data.prepared import PreparedData
    from ecgqa.evaluation.evaluate import evaluate
    from ecgqa.training.train import TrainConfig, train

    path = save_fairseq(tmp_path / "fairseq.pt", fairseq_state(CFG), CFG)
    out = train(
        TrainConfig(
            data=prepared_upperbound,
            model="w2v-cmsc-rlm-test",
            out=tmp_path / "ckpt",
            max_steps=4,
            batch_size=8,
            lr=1e-3,
            warmup=0,
            init_from=str(path),
            eval_split=None,
            quiet=True,
        )
    )
    predictor = ecgqa.load(out, device="cpu")
    assert predictor.model.config.encoder_embed_dim == 24 and predictor.model.config.conv_feature_layers[-1] == [
        16,
        3,
        2,
    ]
    report = evaluate(out, prepared_upperbound, "train", tmp_path / "report", limit=24, progress=False)
    assert report["n"] > 0 and 0.0 <= report["em"] <= 1.0
    # the grounding classifier of llm-eval: Predictor.classify over the lead subsets
    data = PreparedData(prepared_upperbound)
    ecg = np.asarray(data.signals[:2], dtype=np.float32)
    scores = predictor.classify(ecg, np.array([[True] * 12, [True] + [False] * 11]))
    assert scores.shape == (2, len(data.classes)) and np.all((scores > 0) & (scores < 1))


def test_feature_grad_mult_scales_only_the_extractor_gradient():
    from ecgqa.models import create_model

    model = create_model("w2v-cmsc-rlm-test", classes=["a"])
    x = torch.randn(2, 12, 512, generator=torch.Generator().manual_seed(2))  # 512 samples → 2 tokens
    grads = {}
    for mult in (1.0, 0.1, 0.0):
        model.zero_grad(set_to_none=True)
        model.w2v.feature_grad_mult = mult
        model(ecg=x).logits.sum().backward()
        conv = model.w2v.feature_extractor.conv_layers[0][0].weight.grad
        grads[mult] = (None if conv is None else conv.clone(), model.w2v.post_extract_proj.weight.grad.clone())
    assert torch.allclose(grads[0.1][0], 0.1 * grads[1.0][0], atol=1e-7)
    assert torch.equal(grads[0.1][1], grads[1.0][1])  # after the extractor: unscaled
    assert grads[0.0][0] is None  # 0: the extractor is frozen (no_grad), as upstream


def test_init_from_an_ecgqa_pretrain_folder(tmp_path):
    """`ecgqa pretrain`'s model names its encoder `w2v` too: its folder initialises the classifier."""
    from ecgqa.models import create_model
    from ecgqa.models.w2v_pretrain import W2VPretrainModel, pretrain_config
    from ecgqa.training.fairseq_import import init_overrides

    pretrained = W2VPretrainModel(pretrain_config("w2v-cmsc-rlm-test"))
    pretrained.save_pretrained(tmp_path / "pretrain")
    pre = read_pretrained(tmp_path / "pretrain")
    assert set(pre.keymap.dropped) == {k for k in pretrained.state_dict() if not k.startswith("w2v.")}
    assert {"mask_emb", "quantizer.vars", "project_q.weight", "final_proj.weight"} <= set(pre.keymap.extras)
    model = create_model("w2v-cmsc-rlm-test", classes=["a", "b"], **init_overrides("w2v-cmsc-rlm-test", pre, {}))
    assert "encoder tensors loaded into w2v" in init_model(model, pre)
    ours, theirs = model.w2v.state_dict(), pretrained.w2v.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
