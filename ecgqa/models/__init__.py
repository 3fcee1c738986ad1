"""Every model of the toolkit, created by name from one registry (timm style: every size is a named entry).

>>> model = create_model("fusion-small", classes=data.classes, vocab_size=len(tokenizer))

Each family has its published size(s) (the ECG-QA paper's baselines, at the upstream configs' widths;
docs/models.md), a ``-test`` size (tests and CI: trains in seconds) and, where the quickstart trains it, a
``-quick`` size (the reference architecture at a width that trains in minutes on two CPU cores).
``variant_for_tests(name)`` / ``quick_variant(name)`` give those names for any member of a family.
Keyword arguments of ``create_model`` override config fields (``ecgqa train --set``).

The configs are registered with ``transformers``' Auto classes, so ``AutoModel.from_pretrained(ckpt)``
works once ``ecgqa.models`` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from ecgqa.models.fusion import FusionConfig, FusionModel
from ecgqa.models.fusion_prenorm import PreNormFusionConfig, PreNormFusionModel
from ecgqa.models.layers import QAConfig, UpperboundConfig, attach_pretrained_text_encoder
from ecgqa.models.m3ae import M3AEConfig, M3AEModel
from ecgqa.models.resnet_attn import ResNetAttnConfig, ResNetAttnModel
from ecgqa.models.resnet_lstm import ResNetLSTMConfig, ResNetLSTMModel
from ecgqa.models.se_wrn import SEWRNConfig, SEWRNModel
from ecgqa.models.w2v_cmsc import W2VCMSCConfig, W2VCMSCRLMModel


@dataclass(frozen=True)
class Variant:
    """One registry entry: a config class, the fields that differ from its defaults, and what it is."""

    config: type[PretrainedConfig]
    fields: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    size: str = "published"  # "published" (a paper baseline), "test", "quick" or "extra" (this project's)


# Test widths: a few thousand parameters. Four strided convs of kernel/stride 4 turn 5000 samples into
# 19 ECG tokens instead of 312 (small, not cropped).
_TEST_CONV = {"conv_channels": 8, "conv_kernel": 4, "conv_stride": 4}
_TEST_FUSION = dict(
    _TEST_CONV,
    hidden_size=32,
    num_heads=2,
    ffn_size=64,
    num_layers=1,
    dropout=0.0,
    activation_dropout=0.0,
    pos_conv_kernel=4,
    pos_conv_groups=4,
)
_TEST_PRENORM = dict(
    _TEST_CONV,
    hidden_size=32,
    num_heads=2,
    ffn_size=64,
    num_layers=1,
    dropout=0.0,
    pos_conv_kernel=5,
    pos_conv_groups=4,
)
_TEST_M3AE = dict(
    _TEST_CONV,
    hidden_size=32,
    num_heads=2,
    ffn_size=64,
    ecg_layers=1,
    text_layers=1,
    fusion_layers=1,
    dropout=0.0,
    pos_conv_kernel=5,
    pos_conv_groups=4,
)
# Quickstart widths: 3 strided convs of kernel/stride 4 (78 tokens per ECG), width 64, 2 layers.
# w2v-cmsc-rlm: test = 4 convs of (16, k4, s4) (19 tokens), width 32, 1 layer; quick = 3 convs of (64, k4, s4)
# (78 tokens), width 64, 2 layers, as the quick fusion models.
_TEST_W2V = {
    "conv_feature_layers": [(16, 4, 4)] * 4,
    "encoder_layers": 1,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "conv_pos": 4,
    "conv_pos_groups": 4,
    "activation_dropout": 0.0,
}
_QUICK_W2V = {
    "conv_feature_layers": [(64, 4, 4)] * 3,
    "encoder_layers": 2,
    "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 128,
    "encoder_attention_heads": 4,
    "conv_pos": 8,
    "conv_pos_groups": 4,
}
_QUICK_FUSION = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "ffn_size": 128,
    "conv_channels": 32,
    "conv_layers": 3,
    "conv_kernel": 4,
    "conv_stride": 4,
    "pos_conv_kernel": 8,
    "pos_conv_groups": 4,
}

MODELS: dict[str, Variant] = {
    # ---- QA: the ECG-QA paper's baselines (upstream configs) --------------------------------------
    "fusion-small": Variant(FusionConfig, {"num_layers": 8}, "fusion"),
    "fusion-base": Variant(FusionConfig, {"num_layers": 12}, "fusion"),
    "fusion-test": Variant(FusionConfig, _TEST_FUSION, "fusion", "test"),
    "fusion-quick": Variant(FusionConfig, _QUICK_FUSION, "fusion", "quick"),
    # fusion-quick reading each ECG with se-wrn-quick's backbone (the quickstart starts it from its attribute
    # classifier: ecgqa/quickstart.py)
    "fusion-sewrn-quick": Variant(
        FusionConfig,
        dict(_QUICK_FUSION, ecg_encoder="se-wrn", se_wrn_widths=[8, 8, 16, 32, 64], se_wrn_blocks=1),
        "fusion",
        "extra",
    ),
    "medvill": Variant(FusionConfig, {"num_layers": 12, "feature_grad_mult": 0.1}, "medvill"),
    "medvill-test": Variant(FusionConfig, dict(_TEST_FUSION, feature_grad_mult=0.1), "medvill", "test"),
    "blind": Variant(FusionConfig, {"num_layers": 12, "use_ecg": False}, "blind"),
    "blind-test": Variant(FusionConfig, dict(_TEST_FUSION, use_ecg=False), "blind", "test"),
    "blind-quick": Variant(FusionConfig, dict(_QUICK_FUSION, use_ecg=False), "blind", "quick"),
    "deaf": Variant(FusionConfig, {"num_layers": 12, "use_text": False}, "deaf"),
    "deaf-test": Variant(FusionConfig, dict(_TEST_FUSION, use_text=False), "deaf", "test"),
    "m3ae-base": Variant(M3AEConfig, {}, "m3ae"),
    "m3ae-test": Variant(M3AEConfig, _TEST_M3AE, "m3ae", "test"),
    "resnet-lstm": Variant(ResNetLSTMConfig, {}, "resnet-lstm"),
    "resnet-lstm-test": Variant(
        ResNetLSTMConfig,
        {
            "resnet_stages": [1, 1, 1, 1],
            "resnet_width": 4,
            "lstm_input_dim": 16,
            "lstm_hidden": 16,
            "lstm_layers": 1,
            "final_dim": 32,
        },
        "resnet-lstm",
        "test",
    ),
    # ---- QA: this project's variants (not published baselines) ------------------------------------
    "fusion-prenorm-small": Variant(PreNormFusionConfig, {"num_layers": 8}, "fusion-prenorm", "extra"),
    "fusion-prenorm-base": Variant(PreNormFusionConfig, {"num_layers": 12}, "fusion-prenorm", "extra"),
    "fusion-prenorm-test": Variant(PreNormFusionConfig, _TEST_PRENORM, "fusion-prenorm", "test"),
    "m3ae-small": Variant(M3AEConfig, {"ecg_layers": 4, "text_layers": 4, "fusion_layers": 2}, "m3ae", "extra"),
    # ---- upperbound classifiers (upstream ecg_classification/resnet configs) ---------------------
    "se-wrn": Variant(SEWRNConfig, {}, "se-wrn"),
    "se-wrn-test": Variant(
        SEWRNConfig,
        {
            "widths": [8, 8, 16],
            "blocks_per_stage": 1,
            "kernel_size": 5,
            "se_ratio": 4,
            "block_dropout": 0.0,
            "final_dropout": 0.0,
        },
        "se-wrn",
        "test",
    ),
    "se-wrn-quick": Variant(SEWRNConfig, {"widths": [8, 8, 16, 32, 64], "blocks_per_stage": 1}, "se-wrn", "quick"),
    # lead_indicator "nonzero": upstream's (signal != 0).all(-1); the class default "mask" is for old checkpoints
    "resnet-attn": Variant(ResNetAttnConfig, {"lead_indicator": "nonzero"}, "resnet-attn"),
    "resnet-attn-test": Variant(
        ResNetAttnConfig,
        {
            "channels": 8,
            "num_blocks": 2,
            "stride": 4,
            "attention_heads": 2,
            "final_dropout": 0.0,
            "lead_indicator": "nonzero",
        },
        "resnet-attn",
        "test",
    ),
    # W2V+CMSC+RLM (fairseq-signals examples/w2v_cmsc): published = the base_total.yaml fine-tuning config
    "w2v-cmsc-rlm": Variant(W2VCMSCConfig, {}, "w2v-cmsc-rlm"),
    "w2v-cmsc-rlm-quick": Variant(W2VCMSCConfig, _QUICK_W2V, "w2v-cmsc-rlm", "quick"),
    "w2v-cmsc-rlm-test": Variant(W2VCMSCConfig, _TEST_W2V, "w2v-cmsc-rlm", "test"),
}

MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {}
for _config, _model in (
    (FusionConfig, FusionModel),
    (PreNormFusionConfig, PreNormFusionModel),
    (M3AEConfig, M3AEModel),
    (ResNetLSTMConfig, ResNetLSTMModel),
    (SEWRNConfig, SEWRNModel),
    (ResNetAttnConfig, ResNetAttnModel),
    (W2VCMSCConfig, W2VCMSCRLMModel),
):
    MODEL_CLASSES[_config.model_type] = _model
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)


def _check(name: str) -> Variant:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def task_of(name: str) -> str:
    """ "qa" or "upperbound": which prepared data (meta["task"]) a model trains on."""
    return "upperbound" if issubclass(_check(name).config, UpperboundConfig) else "qa"


def family_of(name: str) -> str:
    return _check(name).family


def variant_for_tests(name: str) -> str:
    """The ``-test`` size of ``name``'s family (``"fusion-base"`` → ``"fusion-test"``): tests, CI, ``--tiny``."""
    family = family_of(name)
    return next(n for n, v in MODELS.items() if v.family == family and v.size == "test")


def quick_variant(name: str) -> str:
    """The ``-quick`` size of ``name``'s family (the quickstart's width); ValueError when it has none."""
    family = family_of(name)
    for n, v in MODELS.items():
        if v.family == family and v.size == "quick":
            return n
    raise ValueError(
        f"model family {family!r} has no quickstart size; families with one: "
        f"{', '.join(sorted({v.family for v in MODELS.values() if v.size == 'quick'}))}"
    )


def reference_models() -> list[str]:
    """The published baselines (size "published"), in registry order: what ``--recipe paper`` and the
    benchmark cover."""
    return [n for n, v in MODELS.items() if v.size == "published"]


def create_config(name: str, **overrides: Any) -> PretrainedConfig:
    variant = _check(name)
    return variant.config(**{**variant.fields, "model_name": name, **overrides})


def create_model(name: str, *, text_encoder: str | None = None, **overrides: Any) -> PreTrainedModel:
    """A freshly initialised model ``name`` (see ``MODELS``); ``overrides`` set config fields.

    ``text_encoder`` (QA models with a text side): path or hub id of a pretrained ``transformers`` encoder
    whose weights initialise the text side; its tokenizer must then be used for the questions.
    """
    if text_encoder is not None:
        config = create_config(name)
        if (
            not isinstance(config, QAConfig)
            or not getattr(config, "use_text", True)
            or isinstance(config, ResNetLSTMConfig)
        ):
            raise ValueError(f"--text-encoder applies to transformer QA models with a text side, not {name!r}")
        try:
            text_config = AutoConfig.from_pretrained(text_encoder).to_dict()
        except OSError as e:
            raise FileNotFoundError(
                f"text encoder {text_encoder!r} not found ({e}); give a local folder with a transformers "
                "encoder (config.json, weights, tokenizer) or a hub id while online"
            ) from e
        overrides = {**overrides, "text_encoder": text_encoder, "text_config": text_config}
        config = create_config(name, **overrides)
        model = MODEL_CLASSES[config.model_type](config)
        attach_pretrained_text_encoder(model, text_encoder)
        return model
    config = create_config(name, **overrides)
    return MODEL_CLASSES[config.model_type](config)


#: families whose upstream text embeddings start from bert-base-uncased's tables (``load_bert_embedding``)
BERT_EMBEDDING_FAMILIES = ("fusion", "medvill", "blind", "resnet-lstm")


def load_bert_embeddings(model: PreTrainedModel, path: str | Path) -> dict[str, tuple[int, ...]]:
    """Copy a local BERT's ``embeddings.{word,position,token_type}_embeddings`` into the model's own tables
    (``model.bert_embedding_tables()``), as upstream's ``load_bert_embedding: True``; no BERT encoder is
    attached. Returns {BERT table name: shape} of what was copied.

    ValueError when ``path`` is not a local transformers BERT folder, when a table's shape differs (hidden
    size, vocabulary, positions), or when the model has no such tables.
    """
    path = Path(path)
    tables = model.bert_embedding_tables() if hasattr(model, "bert_embedding_tables") else {}
    name = getattr(model.config, "model_name", type(model).__name__)
    if not tables:
        raise ValueError(
            f"--bert-embeddings: {name} has no text embedding tables to initialise (it applies to "
            f"{', '.join(BERT_EMBEDDING_FAMILIES)} without --text-encoder)"
        )
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--bert-embeddings {path}: no config.json there; give a local bert-base-uncased folder "
            "in transformers format (config.json + model.safetensors or pytorch_model.bin)"
        )
    try:
        bert = AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"--bert-embeddings {path}: cannot load a transformers model from it ({e})") from e
    source = getattr(bert, "embeddings", None)
    if source is None:
        raise ValueError(f"--bert-embeddings {path}: {type(bert).__name__} has no BERT embeddings module")
    copied = {}
    for table, target in tables.items():
        weight = getattr(getattr(source, table, None), "weight", None)
        if weight is None:
            raise ValueError(f"--bert-embeddings {path}: the model there has no embeddings.{table}")
        if tuple(weight.shape) != tuple(target.weight.shape):
            raise ValueError(
                f"--bert-embeddings {path}: embeddings.{table} is {tuple(weight.shape)} but {name}'s table is "
                f"{tuple(target.weight.shape)} (rows: vocabulary / positions / types, columns: hidden size); "
                "use the BERT matching the model width and the prepared data's tokenizer (bert-base-uncased: 768 "
                "wide, 30522 words, 512 positions)"
            )
        copied[table] = tuple(weight.shape)
    with torch.no_grad():  # all shapes checked first: a mismatch leaves the model untouched
        for table, target in tables.items():
            target.weight.copy_(getattr(source, table).weight)
    return copied


def load_model(path: str | Path) -> PreTrainedModel:
    """A trained model from a checkpoint folder (``save_pretrained`` output), whatever its variant."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a checkpoint written by `ecgqa train`")
    model_type = PretrainedConfig.get_config_dict(str(path))[0].get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{path / 'config.json'}: model_type {model_type!r} is not an ecgqa model ({', '.join(MODEL_CLASSES)})"
        )
    return MODEL_CLASSES[model_type].from_pretrained(str(path))


__all__ = [
    "BERT_EMBEDDING_FAMILIES",
    "MODELS",
    "MODEL_CLASSES",
    "FusionConfig",
    "FusionModel",
    "M3AEConfig",
    "M3AEModel",
    "PreNormFusionConfig",
    "PreNormFusionModel",
    "ResNetAttnConfig",
    "ResNetAttnModel",
    "ResNetLSTMConfig",
    "ResNetLSTMModel",
    "SEWRNConfig",
    "SEWRNModel",
    "Variant",
    "W2VCMSCConfig",
    "W2VCMSCRLMModel",
    "create_config",
    "create_model",
    "family_of",
    "load_bert_embeddings",
    "load_model",
    "quick_variant",
    "reference_models",
    "task_of",
    "variant_for_tests",
]
