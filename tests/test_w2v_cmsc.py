"""w2v-cmsc-rlm and the fairseq-signals / ECG-FM checkpoint bridge (ecgqa/models/w2v_cmsc.py,
ecgqa/fairseq_import.py).

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
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecgqa.fairseq_import import FairseqCheckpointError, convert, init_model, read_checkpoint, read_pretrained

# a small architecture in fairseq-signals' cfg.model field names
CFG = {"_name": "wav2vec2_cmsc", "conv_feature_layers": "[(16, 4, 4)] * 2 + [(16, 3, 2)]", "extractor_mode": "default",
       "conv_bias": False, "in_d": 12, "encoder_layers": 2, "encoder_embed_dim": 24, "encoder_ffn_embed_dim": 40,
       "encoder_attention_heads": 3, "layer_norm_first": False, "conv_pos": 6, "conv_pos_groups": 3,
       "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.1,
       "dropout_features": 0.1, "feature_grad_mult": 0.1, "quantize_targets": True, "final_dim": 8,
       "latent_vars": 5, "latent_groups": 2, "apply_mask": True, "mask_prob": 0.65, "data": "${task.data}"}
CONVS = [(16, 4, 4), (16, 4, 4), (16, 3, 2)]


def fairseq_state(cfg: dict, *, finetuned: int | None = None, seed: int = 0, pos_layout: str = "weight_g",
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
    cfg = {"common": {"fp16": False, "seed": 1}, "task": {"_name": "ecg_pretraining", "data": "/data",
                                                          "normalize": False, "p": [1.0]},
           "model": dict(cfg_model, args=argparse.Namespace(arch="legacy", lr=[5e-5]))}
    if dictconfig:
        omegaconf = pytest.importorskip("omegaconf")
        cfg["model"].pop("args")
        cfg = omegaconf.OmegaConf.create(cfg)
    state = {"args": None, "cfg": cfg, "model": model_state, "criterion": None,
             "optimizer_history": [{"criterion_name": "Wav2Vec2WithCMSCCriterion", "optimizer_name": "Adam",
                                    "lr_scheduler_state": {"best": np.float64(1.25)}, "num_updates": 1200}],
             "task_state": {}, "extra_state": {"metrics": {}, "previous_training_time": np.float64(3.5),
                                               "train_iterator": {"epoch": np.int64(3)}, "val_loss": None}}
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------ reference


def reference_forward(sd: dict, cfg: dict, x: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """fairseq-signals' ECGTransformerModel forward (eval, no padding) from the state dict, plain ops:
    conv extractor → LN → proj → + conv_pos → LN (post-norm) → layers → (B, T, D)."""
    w = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    h = x
    for i, (dim, _k, s) in enumerate(CONVS):
        h = F.conv1d(h, w[f"feature_extractor.conv_layers.{i}.0.weight"], stride=s)
        if i == 0:
            h = F.group_norm(h, dim, w["feature_extractor.conv_layers.0.2.weight"],
                             w["feature_extractor.conv_layers.0.2.bias"])
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
    h = F.layer_norm(h, (D,), w["encoder.layer_norm.weight"], w["encoder.layer_norm.bias"])
    H = cfg["encoder_attention_heads"]
    B, T, _ = h.shape
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."

        def lin(t, name, p=p):
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, vv = (lin(h, f"self_attn.{n}").view(B, T, H, D // H).transpose(1, 2) for n in ("q_proj", "k_proj",
                                                                                            "v_proj"))
        att = torch.softmax((q * (D // H) ** -0.5) @ k.transpose(-1, -2), dim=-1) @ vv
        a = lin(att.transpose(1, 2).reshape(B, T, D), "self_attn.out_proj")
        h = F.layer_norm(h + a, (D,), w[p + "self_attn_layer_norm.weight"], w[p + "self_attn_layer_norm.bias"])
        f = lin(F.gelu(lin(h, "fc1")), "fc2")
        h = F.layer_norm(h + f, (D,), w[p + "final_layer_norm.weight"], w[p + "final_layer_norm.bias"])
    return h


def reference_classifier(sd: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """ECGTransformerClassificationModel: encoder, then sum / count of non-zero entries, then proj."""
    h = reference_forward(sd, cfg, x, prefix="encoder.")
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
    assert sorted(km.dropped) == sorted(k for k in sd if k.startswith(("mask_emb", "quantizer.", "project_q.",
                                                                        "final_proj.")))
    assert pre.fields["conv_feature_layers"] == [list(c) for c in CONVS] and pre.fields["encoder_layers"] == 2

    from ecgqa.models import create_model
    from ecgqa.fairseq_import import init_overrides

    model = create_model("w2v-cmsc-rlm-test", classes=["a", "b"],
                         **init_overrides("w2v-cmsc-rlm-test", pre, {})).eval()
    summary = init_model(model, pre)
    assert "encoder tensors loaded" in summary
    x = torch.randn(3, 12, 700, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.w2v(x)
        ref = reference_forward(sd, CFG, x)
    assert ours.shape == ref.shape == (3, 21, 24)  # 700 samples → 175 → 43 → 21 tokens
    assert (ours - ref).abs().max().item() < 1e-5
