"""Every model of the toolkit, created by name from one table of variants (timm's ``create_model``).

>>> model = create_model("fusion-small", classes=data.classes, vocab_size=len(tokenizer))

A variant is a config class plus its defaults; keyword arguments override any config field (tests
and quick runs use tiny widths this way). The configs are registered with ``transformers``' Auto
classes, so ``AutoModel.from_pretrained(ckpt)`` works once ``ecgqa.models`` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from ecgqa.models.fusion import FusionConfig, FusionModel
from ecgqa.models.m3ae import M3AEConfig, M3AEModel
from ecgqa.models.upperbound import UpperboundConfig, UpperboundModel

#: name -> (config class, defaults). The QA models answer over meta["classes"] of a qa prepared
#: directory, the upperbound ones classify its grounding classes (task "upperbound").
MODELS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "fusion-small": (FusionConfig, {"num_layers": 8}),
    "fusion-base": (FusionConfig, {"num_layers": 12}),
    "blind": (FusionConfig, {"num_layers": 8, "use_ecg": False}),
    "deaf": (FusionConfig, {"num_layers": 8, "use_text": False}),
    "m3ae-small": (M3AEConfig, {"ecg_layers": 4, "text_layers": 4, "fusion_layers": 2}),
    "m3ae-base": (M3AEConfig, {"ecg_layers": 12, "text_layers": 12, "fusion_layers": 6}),
    "se-wrn": (UpperboundConfig, {"arch": "se-wrn", "base_width": 16, "widen": 4, "blocks_per_stage": 2, "stages": 3}),
    "resnet-attn": (UpperboundConfig, {"arch": "resnet-attn", "base_width": 64, "blocks_per_stage": 2, "stages": 4}),
}

#: Tiny widths per config class, for tests, CI and CPU smoke runs (``create_model(name, **tiny(name))``).
#: Strided convs 4x4 turn 5000 samples into 19 ECG tokens instead of 312: small, not cropped.
_TINY_CONV = {"conv_channels": 8, "conv_kernel": 4, "conv_stride": 4, "pos_conv_kernel": 5, "pos_conv_groups": 4}
TINY: dict[type[PretrainedConfig], dict[str, Any]] = {
    FusionConfig: dict(_TINY_CONV, hidden_size=32, num_heads=2, ffn_size=64, num_layers=1, dropout=0.0),
    M3AEConfig: dict(_TINY_CONV, hidden_size=32, num_heads=2, ffn_size=64, ecg_layers=1, text_layers=1,
                     fusion_layers=1, dropout=0.0),
    UpperboundConfig: {"base_width": 8, "widen": 1, "blocks_per_stage": 1, "stages": 2, "stem_stride": 4,
                       "kernel_size": 5, "attn_hidden": 16, "dropout": 0.0},
}


def tiny(name: str) -> dict[str, Any]:
    """Config overrides that make ``name`` tiny (a few thousand parameters; trains in seconds on a CPU)."""
    return dict(TINY[MODELS[_check(name)][0]])


MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    FusionConfig.model_type: FusionModel,
    M3AEConfig.model_type: M3AEModel,
    UpperboundConfig.model_type: UpperboundModel,
}

for _config, _model in ((FusionConfig, FusionModel), (M3AEConfig, M3AEModel), (UpperboundConfig, UpperboundModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)


def task_of(name: str) -> str:
    """"qa" or "upperbound": which prepared data (meta["task"]) a model trains on."""
    return "upperbound" if MODELS[_check(name)][0] is UpperboundConfig else "qa"


def _check(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return name


def create_config(name: str, **overrides: Any) -> PretrainedConfig:
    config_cls, defaults = MODELS[_check(name)]
    return config_cls(**{**defaults, "model_name": name, **overrides})


def create_model(name: str, *, text_encoder: str | None = None, **overrides: Any) -> PreTrainedModel:
    """A freshly initialised model ``name`` (see ``MODELS``); ``overrides`` set config fields.

    ``text_encoder`` (QA models): path or hub id of a pretrained ``transformers`` encoder whose
    weights initialise the text side; its tokenizer must then be used for the questions.
    """
    if text_encoder is not None:
        if task_of(name) != "qa" or name == "deaf":
            raise ValueError(f"--text-encoder applies to models with a text side, not {name!r}")
        from ecgqa.models.fusion import attach_pretrained_text_encoder

        try:
            text_config = AutoConfig.from_pretrained(text_encoder).to_dict()
        except OSError as e:
            raise FileNotFoundError(
                f"text encoder {text_encoder!r} not found ({e}); give a local folder with a transformers "
                "encoder (config.json, weights, tokenizer) or a hub id while online"
            ) from e
        overrides = {**overrides, "text_encoder": text_encoder, "text_config": text_config}
        model = MODEL_CLASSES[create_config(name).model_type](create_config(name, **overrides))
        attach_pretrained_text_encoder(model, text_encoder)
        return model
    config = create_config(name, **overrides)
    return MODEL_CLASSES[config.model_type](config)


def load_model(path: str | Path) -> PreTrainedModel:
    """A trained model from a checkpoint folder (``save_pretrained`` output), whatever its variant."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a checkpoint written by `ecgqa train`")
    model_type = PretrainedConfig.get_config_dict(str(path))[0].get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{path / 'config.json'}: model_type {model_type!r} is not an ecgqa model "
                         f"({', '.join(MODEL_CLASSES)})")
    return MODEL_CLASSES[model_type].from_pretrained(str(path))


__all__ = [
    "MODELS",
    "TINY",
    "FusionConfig",
    "FusionModel",
    "M3AEConfig",
    "M3AEModel",
    "UpperboundConfig",
    "UpperboundModel",
    "create_config",
    "create_model",
    "load_model",
    "task_of",
    "tiny",
]
