"""fairseq-signals / ECG-FM checkpoints (``.pt``) into this toolkit, without fairseq installed.

A fairseq-signals checkpoint is a ``torch.save`` dict: ``model`` (the state dict), ``cfg`` (the run's
config: a plain dict since fairseq-signals saves ``OmegaConf.to_container``, an omegaconf ``DictConfig``
in other fairseq builds, ``None`` in old ones that keep an ``argparse.Namespace`` in ``args``),
``optimizer_history``, ``extra_state``, ``last_optimizer_state``... ECG-FM publishes the same layout.

**Safe loading.** :func:`read_checkpoint` calls ``torch.load(weights_only=True)``: torch's restricted
unpickler, which builds tensors and plain containers and refuses every other global. A fairseq
checkpoint pickles a few more kinds of object, which are allow-listed by name for this one call
(``torch.serialization.safe_globals``), each bound to an inert stand-in of this module:

- ``argparse.Namespace`` and omegaconf's ``DictConfig`` / ``ListConfig`` / value nodes / ``Metadata`` /
  ``ContainerMetadata`` / ``typing.Any``: a :class:`_Pickled` record that only stores its pickled state,
  turned into plain dicts and lists afterwards (no omegaconf code runs, omegaconf need not be installed);
- numpy scalars (``numpy[._]core.multiarray.scalar``): rebuilt as Python numbers from their bytes;
  numpy arrays (``_reconstruct``, ``ndarray``), ``numpy.dtype`` and its per-type classes: numpy's own
  (data only; an object array's items come through this same restricted unpickler);
- ``collections.defaultdict`` (omegaconf's resolver cache).

Anything else — a ``posix.system`` reduce, a fairseq class — is refused with the name of the global.

**Key map** (:func:`map_encoder_state`): the checkpoint's encoder keys are found under their prefix
("" in a pretraining checkpoint, ``encoder.`` in a fine-tuned ``ecg_transformer_classifier``,
``w2v_encoder.w2v_model.`` / ``encoder.w2v_model.`` in fairseq-style fine-tuning wrappers) and mapped to
``W2VEncoder`` names; the positional conv moves from ``conv_pos.pos_conv.0`` (fairseq-signals since
2022) or ``encoder.pos_conv.0`` (older) into ``encoder.pos_conv.0``, its weight norm from
``weight_g`` / ``weight_v`` (torch's old ``weight_norm``) or ``parametrizations.weight.original0/1``
into torch's parametrization. The pretraining-only tensors (``mask_emb``, ``quantizer.*``,
``project_q.*``, ``final_proj.*``, ``input_quantizer.*``, ``project_inp.*``, ``target_glu.*``) are
dropped by name and kept in :attr:`KeyMap.extras`; a fine-tuned head ``proj.*`` maps to the
classifier's ``proj`` when the classes agree (a fairseq head has a count, no names). Any other key is
an error naming it; so is a missing or mis-shaped one.
"""

from __future__ import annotations

import collections
import json
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ecgqa.checkpoint import TRAIN_OPTIONS, save_checkpoint
from ecgqa.files import claim_output_dir
from ecgqa.models import family_of
from ecgqa.models.fusion import FusionModel
from ecgqa.models.w2v_cmsc import W2VCMSCConfig, W2VCMSCRLMModel, parse_conv_layers

# ---------------------------------------------------------------------------------------------------
# safe loading


class _Pickled:
    """Inert stand-in for an allow-listed pickled class: records constructor args and state, runs nothing."""

    pickled_as = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_as}>"


def _stand_in(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name, (_Pickled,), {"__module__": module, "__qualname__": name, "pickled_as": full_name})


_OMEGACONF = [
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.EnumNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
    "omegaconf.nodes.InterpolationResultNode",
    "typing.Any",
]
_STAND_INS = {name: _stand_in(name) for name in [*_OMEGACONF, "argparse.Namespace"]}


def _numpy_scalar_function(full_name: str) -> Any:
    def scalar(dtype: Any, data: Any = None) -> Any:
        if isinstance(data, (bytes, bytearray)):
            return np.frombuffer(bytes(data), dtype=dtype)[0].item()
        return data  # object dtype: the value itself was pickled (through this same restricted unpickler)

    scalar.__module__, _, scalar.__qualname__ = full_name.rpartition(".")
    return scalar


def _numpy_reconstruct_function(full_name: str) -> Any:
    """numpy's array pickling entry point under the name the saving numpy wrote (``numpy.core`` before
    2.0, ``numpy._core`` since); the array's data then arrives through ``ndarray.__setstate__``."""
    core = getattr(np, "_core", None) or np.core

    def _reconstruct(*args: Any) -> Any:
        return core.multiarray._reconstruct(*args)

    _reconstruct.__module__, _, _reconstruct.__qualname__ = full_name.rpartition(".")
    return _reconstruct


def _safe_globals() -> list[Any]:

    allowed: list[Any] = list(_STAND_INS.values())
    allowed += [
        _numpy_scalar_function("numpy.core.multiarray.scalar"),
        _numpy_scalar_function("numpy._core.multiarray.scalar"),
        _numpy_reconstruct_function("numpy.core.multiarray._reconstruct"),
        _numpy_reconstruct_function("numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        collections.defaultdict,
        dict,
        list,
        int,
        float,
        str,
        bool,
    ]  # builtin types: omegaconf metadata (key_type, object_type)
    # a pickled dtype is rebuilt as np.dtype(...) then set up by its own class (Float64DType ...)
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUVOMm"}, key=str)
    return allowed


class FairseqCheckpointError(ValueError):
    """A fairseq checkpoint that cannot be read or mapped; the message names the file and the key."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict with ``cfg`` / ``args`` as plain dicts and lists (see the module docstring)."""

    path = Path(path)
    if path.is_dir():
        raise FairseqCheckpointError(
            f"{path} is a folder; give the fairseq checkpoint file inside it (the .pt), or "
            "an ecgqa checkpoint folder where a folder is accepted (--init-from)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"fairseq checkpoint {path} not found")
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # pragma: no cover - torch < 2.5
        raise FairseqCheckpointError(
            f"{path}: reading fairseq checkpoints safely needs torch >= 2.5 "
            f"(torch.serialization.safe_globals); this is torch {torch.__version__}"
        )
    try:
        with safe(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)|got <class '([^']+)'>", text)
        what = next((g for g in found.groups() if g), "an object") if found else "an object"
        # torch's own reason only (its advice to retry with weights_only=False is exactly what not to do)
        detail = next(
            (
                line.strip()
                for line in text.splitlines()
                if line.strip()
                and not line.startswith(("Weights only load failed", "Check the documentation", "\t(", "(1)", "(2)"))
            ),
            "",
        ).split(" Please use")[0]
        raise FairseqCheckpointError(
            f"{path}: refused to unpickle {what}: a fairseq-signals checkpoint holds only tensors, plain "
            f"containers, argparse.Namespace, omegaconf configs and numpy data" + (f" ({detail})" if detail else "")
        ) from e
    except Exception as e:  # a text file or a truncated zip fails deep in pickle/zip with any error
        raise FairseqCheckpointError(
            f"{path}: not a readable torch checkpoint (truncated, corrupt or another kind of file: "
            f"{type(e).__name__}: {e}); download or copy it again, or give the .pt that torch.save wrote"
        ) from e
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise FairseqCheckpointError(
            f"{path}: not a fairseq checkpoint (expected a dict with 'model' and 'cfg'; found {keys})"
        )
    state = dict(state)
    for key in ("cfg", "args"):
        if key in state:
            state[key] = plain(state[key])
    return state


def plain(obj: Any) -> Any:
    """Stand-ins (DictConfig, ListConfig, nodes, Namespace) → dicts, lists and values; containers recursively."""
    if isinstance(obj, _Pickled):
        name, st = obj.pickled_as, obj.state if obj.state is not None else {}
        if name == "argparse.Namespace":
            return plain(dict(st))
        if name.endswith(("DictConfig", "ListConfig")):
            content = st.get("_content") if isinstance(st, Mapping) else None
            return plain(content)  # None, an interpolation string "${...}" / "???", a dict or a list
        if name.startswith("omegaconf.nodes."):
            return plain(st.get("_val") if isinstance(st, Mapping) else None)
        return None  # Metadata, typing.Any: structure only
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj) if isinstance(obj, list) else tuple(plain(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------------
# config


#: fairseq-signals ``cfg.model`` fields that fix the encoder's shapes (also W2VCMSCConfig field names)
ARCHITECTURE_FIELDS = (
    "conv_feature_layers",
    "extractor_mode",
    "conv_bias",
    "in_d",
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "layer_norm_first",
    "conv_pos",
    "conv_pos_groups",
)
#: regularisation fields copied when converting a checkpoint as it is
TRAINING_FIELDS = (
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "encoder_layerdrop",
    "dropout_input",
    "dropout_features",
    "feature_grad_mult",
    "final_dropout",
)
#: fairseq-signals' ECGTransformerConfig / TransformerConfig defaults, for fields a cfg leaves out
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": "[(256, 2, 2)] * 4",
    "extractor_mode": "default",
    "conv_bias": False,
    "in_d": 12,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "feature_grad_mult": 1.0,
    "final_dropout": 0.0,
}


def model_cfg(state: Mapping[str, Any], path: str | Path = "checkpoint") -> dict[str, Any]:
    """``cfg.model`` (or the old ``args`` namespace) as a dict."""
    cfg = state.get("cfg")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        return dict(cfg["model"])
    args = state.get("args")
    if isinstance(args, Mapping) and args:
        return dict(args)
    raise FairseqCheckpointError(f"{path}: no model config (neither cfg.model nor args); cannot tell its architecture")


def encoder_fields(cfg: Mapping[str, Any], *, training: bool = True) -> dict[str, Any]:
    """W2VCMSCConfig fields from a fairseq ``cfg.model`` (architecture, and the regularisation with
    ``training``); absent fields take fairseq-signals' defaults."""

    names = ARCHITECTURE_FIELDS + (TRAINING_FIELDS if training else ())
    fields = {n: cfg.get(n, FAIRSEQ_DEFAULTS[n]) for n in names}
    fields["conv_feature_layers"] = [list(x) for x in parse_conv_layers(fields["conv_feature_layers"])]
    return fields


# ---------------------------------------------------------------------------------------------------
# key map

#: pretraining-objective tensors (wav2vec 2.0 / CMSC): not part of the encoder
PRETRAINING_ONLY = (
    "mask_emb",
    "quantizer.",
    "input_quantizer.",
    "project_q.",
    "project_inp.",
    "target_glu.",
    "final_proj.",
)
_PREFIXES = ("w2v_encoder.w2v_model.", "encoder.w2v_model.", "encoder.", "")
_ANCHOR = "feature_extractor.conv_layers.0.0.weight"
_WEIGHT_NORM = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
    "parametrizations.weight.original0": "parametrizations.weight.original0",
    "parametrizations.weight.original1": "parametrizations.weight.original1",
    "bias": "bias",
}


@dataclass
class KeyMap:
    """Every checkpoint tensor, mapped (``ours`` name → checkpoint name) or dropped (name → why)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # ours → tensor
    mapped: dict[str, str] = field(default_factory=dict)  # ours → theirs
    dropped: dict[str, str] = field(default_factory=dict)  # theirs → reason
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # dropped pretraining tensors (by their name)
    prefix: str = ""

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        dropped = "; ".join(f"{n} {why}" for why, n in reasons.items()) or "none"
        return f"{len(self.mapped)} tensors mapped, {len(self.dropped)} dropped ({dropped}), 0 unmapped"


def _encoder_prefix(keys: list[str], path: Any) -> str:
    for prefix in _PREFIXES:
        if prefix + _ANCHOR in keys:
            return prefix
    raise FairseqCheckpointError(
        f"{path}: no wav2vec 2.0 / ECG transformer encoder in the state dict (no key ending "
        f"in {_ANCHOR!r}; first keys: {', '.join(keys[:5])})"
    )


_ENCODER_KEY = re.compile(
    r"feature_extractor\.conv_layers\.\d+\.(0\.weight|0\.bias|2\.weight|2\.bias|2\.1\.weight|2\.1\.bias)"
    r"|(layer_norm|post_extract_proj|encoder\.layer_norm)\.(weight|bias)"
    r"|encoder\.layers\.\d+\.(self_attn\.[qkv]_proj|self_attn\.out_proj|self_attn_layer_norm|fc1|fc2|final_layer_norm)"
    r"\.(weight|bias)"
)


def _our_name(rest: str) -> str | None:
    """Encoder key (prefix removed) → W2VEncoder name; None when it is not an encoder key."""
    if _ENCODER_KEY.fullmatch(rest):
        return rest
    for old in ("conv_pos.pos_conv.0.", "encoder.pos_conv.0."):
        if rest.startswith(old) and rest[len(old) :] in _WEIGHT_NORM:
            return "encoder.pos_conv.0." + _WEIGHT_NORM[rest[len(old) :]]
    return None


def map_encoder_state(state: Mapping[str, torch.Tensor], path: Any = "checkpoint") -> KeyMap:
    """The encoder tensors under ``w2v.*`` names, the head under ``proj.*``, every other key dropped by
    name or an error naming it (see the module docstring)."""
    keys = list(state)
    prefix = _encoder_prefix(keys, path)
    out, unmapped = KeyMap(prefix=prefix), []
    for key in keys:
        tensor = state[key]
        if not key.startswith(prefix):
            if key in ("proj.weight", "proj.bias") and prefix == "encoder.":
                out.tensors[key], out.mapped[key] = tensor, key
            else:
                unmapped.append(key)
            continue
        rest = key[len(prefix) :]
        ours = _our_name(rest)
        if ours is not None:
            out.tensors["w2v." + ours], out.mapped["w2v." + ours] = tensor, key
        elif rest.startswith(PRETRAINING_ONLY):
            out.dropped[key] = "pretraining-only (masking, quantizer, projections)"
            out.extras[rest] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        raise FairseqCheckpointError(
            f"{path}: {len(unmapped)} tensor(s) this loader cannot place: "
            f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}"
        )
    return out


def check_and_load(
    module: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: Any,
    *,
    prefix: str = "",
    what: str = "checkpoint",
) -> None:
    """Copy ``tensors`` (module-relative names under ``prefix``) into ``module`` after checking that every
    parameter under ``prefix`` gets one of its exact shape; an error names the first missing / extra /
    mis-shaped key, and the module is untouched then."""

    target = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing = [k for k in target if k not in tensors]
    if missing:
        raise FairseqCheckpointError(
            f"{path}: the {what} lacks {len(missing)} tensor(s) the model needs: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
        )
    extra = [k for k in tensors if k.startswith(prefix) and k not in target]
    if extra:
        raise FairseqCheckpointError(f"{path}: the {what} has tensor(s) the model does not: {', '.join(extra[:6])}")
    for k, v in target.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise FairseqCheckpointError(
                f"{path}: {k} is {tuple(tensors[k].shape)} in the {what} but "
                f"{tuple(v.shape)} in the model (another architecture: check the config)"
            )
    with torch.no_grad():
        params = dict(module.state_dict(keep_vars=True))
        for k in target:
            params[k].copy_(tensors[k])


@dataclass
class Pretrained:
    """An encoder read from a fairseq .pt or one of our checkpoint folders."""

    path: Path
    source: str  # "fairseq" or "ecgqa"
    fields: dict[str, Any]  # W2VCMSCConfig architecture fields
    keymap: KeyMap
    cfg: dict[str, Any] = field(default_factory=dict)  # fairseq cfg.model (fairseq only)
    classes: list[str] | None = None  # the head's class names (our folders; a fairseq head has only a count)

    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.keymap.tensors.items() if k.startswith("w2v.")}


def read_pretrained(path: str | Path) -> Pretrained:
    """``path`` = a fairseq-signals / ECG-FM ``.pt``, a converted folder, or any ecgqa checkpoint folder
    whose weights hold ``w2v.*`` (a ``w2v-cmsc-rlm`` run, an ``ecgqa pretrain`` output)."""
    path = Path(path)
    if path.is_file():
        state = read_checkpoint(path)
        cfg = model_cfg(state, path)
        return _twelve_leads(
            Pretrained(
                path, "fairseq", encoder_fields(cfg, training=False), map_encoder_state(state["model"], path), cfg
            )
        )
    if path.is_dir():
        return _twelve_leads(_read_folder(path))
    raise FileNotFoundError(f"--init-from {path}: not found (give a fairseq .pt file or a checkpoint folder)")


def _twelve_leads(pre: Pretrained) -> Pretrained:
    """What ``--init-from`` feeds is ECG-QA's 12-lead data; another lead count would fail deep in the first
    convolution of the first batch, after the run had started."""
    leads = pre.fields.get("in_d", 12)
    if leads != 12:
        raise FairseqCheckpointError(
            f"{pre.path}: its encoder reads {leads} lead(s) (in_d), but ECG-QA's ECGs have "
            "12; give a 12-lead checkpoint"
        )
    return pre


def _read_folder(path: Path) -> Pretrained:

    weights = sorted(path.glob("*.safetensors"))
    config = path / "config.json"
    if not weights or not config.is_file():
        raise FairseqCheckpointError(
            f"{path}: no config.json + *.safetensors; give a checkpoint folder written by "
            "`ecgqa train`, `ecgqa pretrain` or `ecgqa convert-fairseq`, or a fairseq .pt"
        )
    tensors: dict[str, torch.Tensor] = {}
    for w in weights:
        try:
            tensors.update(load_file(str(w)))
        except Exception as e:  # safetensors' SafetensorError is no ValueError
            raise FairseqCheckpointError(
                f"{w}: unreadable weights (truncated or corrupt: {e}); write the folder "
                "again (its command's --resume, or ecgqa convert-fairseq)"
            ) from e
    try:
        meta = json.loads(config.read_text())
    except ValueError as e:
        raise FairseqCheckpointError(f"{config}: not valid JSON ({e}); write the folder again") from e
    if meta.get("model_type") == "ecgqa-se-wrn":
        return _read_se_wrn(path, meta, tensors)
    w2v = {k: v for k, v in tensors.items() if k.startswith("w2v.")}
    if not w2v:
        raise FairseqCheckpointError(
            f"{path}: its weights hold no w2v.* encoder ({meta.get('model_type')!r} model); "
            "give a w2v-cmsc-rlm or `ecgqa pretrain` folder"
        )
    missing = [n for n in ARCHITECTURE_FIELDS if n not in meta]
    if missing:
        raise FairseqCheckpointError(f"{path / 'config.json'}: lacks the encoder fields {', '.join(missing)}")
    keymap = KeyMap(tensors=dict(w2v), mapped={k: k for k in w2v})
    for k, v in tensors.items():
        if k.startswith("proj.") and tensors["proj.weight"].shape[0] == 0:
            keymap.dropped[k] = "no classifier head (0 classes)"
        elif k.startswith("proj."):
            keymap.tensors[k], keymap.mapped[k] = v, k
        elif not k.startswith("w2v."):
            keymap.dropped[k] = (
                "pretraining-only (masking, quantizer, projections)"
                if k.startswith(PRETRAINING_ONLY)
                else "not part of the encoder"
            )
            keymap.extras[k] = v
    fields = {n: meta[n] for n in ARCHITECTURE_FIELDS}
    return Pretrained(path, "ecgqa", fields, keymap, classes=list(meta.get("classes") or []))


#: an SE-WRN checkpoint's backbone (what a ``fusion`` model with ``ecg_encoder="se-wrn"`` takes as its extractor)
SE_WRN_BACKBONE = ("stem.", "blocks.", "final_norm.")
#: the SE-WRN fields its backbone's shapes depend on, and the fusion config fields that must match them
SE_WRN_FIELDS = {"widths": "se_wrn_widths", "blocks_per_stage": "se_wrn_blocks"}


def _read_se_wrn(path: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Pretrained:
    """An ``se-wrn*`` folder (e.g. the quickstart's attribute classifier): its backbone, for the ECG side of a
    fusion model whose ``ecg_encoder`` is ``"se-wrn"``; its head (the attribute classes) is not used."""
    if meta.get("kernel_size", 11) != 11 or meta.get("widen", 1) != 1:
        raise FairseqCheckpointError(
            f"{path}: an SE-WRN of kernel {meta.get('kernel_size')} / widen {meta.get('widen')}; the fusion "
            "models' se-wrn encoder has kernel 11 and widen 1"
        )
    keymap = KeyMap()
    for k, v in tensors.items():
        if k.startswith(SE_WRN_BACKBONE):
            keymap.tensors[f"extractor.{k}"], keymap.mapped[f"extractor.{k}"] = v, k
        else:
            keymap.dropped[k] = "the classifier head (not part of the ECG encoder)"
    fields = {n: meta[n] for n in SE_WRN_FIELDS if n in meta}
    return Pretrained(path, "ecgqa-se-wrn", fields, keymap, classes=list(meta.get("classes") or []))


def _init_fusion_se_wrn(model: torch.nn.Module, pre: Pretrained) -> str:
    c = model.config
    if c.ecg_encoder != "se-wrn":
        raise FairseqCheckpointError(
            f"--init-from {pre.path}: an SE-WRN classifier initialises a fusion model whose ECG encoder is "
            f"an SE-WRN (fusion-sewrn-quick), not {c.model_name} (ecg_encoder {c.ecg_encoder!r})"
        )
    for theirs, ours in SE_WRN_FIELDS.items():
        if pre.fields.get(theirs) != getattr(c, ours):
            raise FairseqCheckpointError(
                f"--init-from {pre.path}: its {theirs} {pre.fields.get(theirs)!r} differs from "
                f"{c.model_name}'s {ours} {getattr(c, ours)!r}"
            )
    check_and_load(model, pre.keymap.tensors, pre.path, prefix="extractor.", what="SE-WRN backbone")
    return (
        f"--init-from {pre.path}: {len(pre.keymap.tensors)} SE-WRN backbone tensors loaded into {c.model_name}'s "
        f"ECG encoder; {len(pre.keymap.dropped)} not used (the classifier head)"
    )


#: model families ``--init-from`` initialises: the W2V classifier, and the ECG side of the fusion transformers
INIT_FAMILIES = ("w2v-cmsc-rlm", "fusion", "medvill", "deaf")
#: architecture fields no tensor shape reveals. A fine-tuned fairseq-signals checkpoint's ``cfg.model`` is
#: the fine-tuning config, while upstream built its encoder from the pretraining checkpoint's config
#: (``models/pretraining_model.py`` ``from_pretrained``), which the file does not keep: a ``--set`` of
#: one of these may correct it there (a pretraining checkpoint's own value stays binding)
UNCHECKED_FIELDS = ("layer_norm_first",)


def init_overrides(model_name: str, pre: Pretrained, user: Mapping[str, Any]) -> dict[str, Any]:
    """Config fields a ``w2v-cmsc-rlm-*`` model takes from ``pre`` so that its encoder has the checkpoint's
    shapes (conv layers, width, depth, heads, positional conv): the registry size gives the rest
    (dropouts, feature_grad_mult: the fine-tuning recipe). A ``--set`` of one of them to another value is
    an error; other families take nothing (their shapes are checked when loading)."""

    if family_of(model_name) != "w2v-cmsc-rlm" or pre.source == "ecgqa-se-wrn":
        return {}  # an SE-WRN folder initialises only fusion-sewrn-quick (init_model says so otherwise)
    out = {}
    finetuned = pre.source == "fairseq" and pre.keymap.prefix != ""
    for name, value in pre.fields.items():
        if name in user:
            mine = [list(x) for x in user[name]] if name == "conv_feature_layers" else user[name]
            if name in UNCHECKED_FIELDS and finetuned:
                continue  # the fine-tuning cfg may not know how the encoder was built: the user's value wins
            if mine != value:
                raise FairseqCheckpointError(
                    f"--set {name}={user[name]!r} contradicts --init-from {pre.path}, whose "
                    f"encoder has {name} {value!r}"
                )
            continue
        out[name] = value
    return out


def _classes_of(pre: Pretrained) -> int | None:
    head = pre.keymap.tensors.get("proj.weight")
    return None if head is None else int(head.shape[0])


def init_model(model: torch.nn.Module, pre: Pretrained) -> str:
    """Load ``pre``'s encoder into ``model`` (a ``w2v-cmsc-rlm-*`` classifier, or the ECG side of a
    ``fusion-*`` / ``medvill`` / ``deaf`` QA model); returns a one-line summary of what was loaded."""

    if pre.source == "ecgqa-se-wrn" and not isinstance(model, FusionModel):
        raise FairseqCheckpointError(
            f"--init-from {pre.path}: an SE-WRN classifier initialises the ECG side of fusion-sewrn-quick, "
            f"not {getattr(model.config, 'model_name', type(model).__name__)}"
        )
    if isinstance(model, W2VCMSCRLMModel):
        tensors = pre.encoder_tensors()
        check_and_load(model, tensors, pre.path, prefix="w2v.", what="pretrained encoder")
        n_head = _classes_of(pre)
        head = ""
        ours = list(model.config.classes)
        if n_head is not None:
            if pre.classes is not None and pre.classes != ours:
                head = (
                    f"; its classifier head ({n_head} classes) is not used: its classes differ from this "
                    f"model's {len(ours)} (proj starts from its init)"
                )
            elif n_head == len(ours):
                check_and_load(model, pre.keymap.tensors, pre.path, prefix="proj.", what="fine-tuned head")
                head = f"; classifier head proj ({n_head} classes) loaded" + (
                    ""
                    if pre.classes is not None
                    else ": a fairseq head has no class names, label i is taken as this model's class i"
                )
            else:
                head = (
                    f"; its classifier head ({n_head} classes) is not used: this model has "
                    f"{len(ours)} classes (proj starts from its init)"
                )
        return f"--init-from {pre.path}: {len(tensors)} encoder tensors loaded into w2v{head}"
    if isinstance(model, FusionModel) and pre.source == "ecgqa-se-wrn":
        return _init_fusion_se_wrn(model, pre)
    if isinstance(model, FusionModel):
        return _init_fusion(model, pre)
    raise FairseqCheckpointError(
        f"--init-from applies to w2v-cmsc-rlm-* and to the ECG side of fusion-*/medvill/deaf "
        f"models, not {getattr(model.config, 'model_name', type(model).__name__)}"
    )


#: fusion ECG-side parameter → encoder tensor; the fusion transformer layers (ECG and question tokens
#: together) and its input LayerNorm keep their own init
def fusion_key_map(model: torch.nn.Module) -> dict[str, str]:
    c = model.config
    out = {}
    for i in range(c.conv_layers):
        out[f"extractor.layers.{i}.0.weight"] = f"w2v.feature_extractor.conv_layers.{i}.0.weight"
    out["extractor.layers.0.1.weight"] = "w2v.feature_extractor.conv_layers.0.2.weight"
    out["extractor.layers.0.1.bias"] = "w2v.feature_extractor.conv_layers.0.2.bias"
    out["feature_norm.weight"], out["feature_norm.bias"] = "w2v.layer_norm.weight", "w2v.layer_norm.bias"
    if model.feature_proj is not None:
        out["feature_proj.weight"] = "w2v.post_extract_proj.weight"
        out["feature_proj.bias"] = "w2v.post_extract_proj.bias"
    for a, b in (("original0", "original0"), ("original1", "original1")):
        out[f"pos_conv.conv.parametrizations.weight.{a}"] = f"w2v.encoder.pos_conv.0.parametrizations.weight.{b}"
    out["pos_conv.conv.bias"] = "w2v.encoder.pos_conv.0.bias"
    return out


def _init_fusion(model: torch.nn.Module, pre: Pretrained) -> str:

    c = model.config
    if not c.use_ecg:
        raise FairseqCheckpointError(f"--init-from: {c.model_name} reads no ECG (blind); nothing to initialise")
    layers = [tuple(x) for x in pre.fields["conv_feature_layers"]]
    ours = [(c.conv_channels, c.conv_kernel, c.conv_stride)] * c.conv_layers
    if layers != ours or pre.fields["extractor_mode"] != "default" or pre.fields["conv_bias"]:
        raise FairseqCheckpointError(
            f"--init-from {pre.path}: its conv feature extractor {layers} (mode {pre.fields['extractor_mode']}, bias "
            f"{pre.fields['conv_bias']}) differs from {c.model_name}'s {ours} (default mode, no bias)"
        )
    mapping = fusion_key_map(model)
    source = pre.encoder_tensors()
    absent = [theirs for theirs in mapping.values() if theirs not in source]
    if absent:
        raise FairseqCheckpointError(f"{pre.path}: the pretrained encoder lacks {', '.join(absent[:6])}")
    tensors = {ours: source[theirs] for ours, theirs in mapping.items()}
    target = model.state_dict()
    for ours, theirs in mapping.items():
        if tuple(tensors[ours].shape) != tuple(target[ours].shape):
            raise FairseqCheckpointError(
                f"{pre.path}: {theirs} is {tuple(tensors[ours].shape)} but {c.model_name}'s {ours} is "
                f"{tuple(target[ours].shape)} (another width or positional conv: check the model size)"
            )
    with torch.no_grad():
        params = dict(model.state_dict(keep_vars=True))
        for ours, t in tensors.items():
            params[ours].copy_(t)
    unused = [k for k in source if k not in mapping.values()]
    return (
        f"--init-from {pre.path}: {len(mapping)} ECG-side tensors of {c.model_name} loaded (conv extractor, "
        f"feature LayerNorm, projection, positional conv); {len(unused)} not used (the encoder's transformer "
        "layers and final LayerNorm: the fusion layers read ECG and question tokens together)"
    )


# ---------------------------------------------------------------------------------------------------
# the converter


def convert(path: str | Path, out: str | Path, *, classes: list[str] | None = None) -> tuple[Path, KeyMap]:
    """Write ``path`` (a fairseq .pt) as a ``w2v-cmsc-rlm`` checkpoint folder: config from ``cfg.model``
    (architecture and regularisation), encoder weights, and the fine-tuned head when there is one (its
    classes named by ``classes`` when given, else ``label_0`` ...)."""

    path = Path(path)
    # before any work: only an earlier conversion is replaced, never a user's folder or a trained checkpoint
    claim_output_dir(out, marker=TRAIN_OPTIONS, what="converted checkpoint", is_ours=_converted)
    state = read_checkpoint(path)
    cfg = model_cfg(state, path)
    keymap = map_encoder_state(state["model"], path)
    head = keymap.tensors.get("proj.weight")
    n = int(head.shape[0]) if head is not None else None
    if classes is not None and n is None:
        raise FairseqCheckpointError(
            f"{path}: --classes names a fine-tuned head's labels, but this checkpoint has no "
            "head (a pretraining checkpoint); leave --classes out"
        )
    if classes is not None and n is not None and len(classes) != n:
        raise FairseqCheckpointError(f"{path}: its head predicts {n} labels but {len(classes)} class names were given")
    names = classes if classes is not None else [f"label_{i}" for i in range(n or 0)]
    config = W2VCMSCConfig(**encoder_fields(cfg), classes=names, model_name="w2v-cmsc-rlm")
    with warnings.catch_warnings():  # a pretraining checkpoint has no head: proj has 0 classes
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        model = W2VCMSCRLMModel(config)
    check_and_load(model, keymap.tensors, path, prefix="w2v.", what="checkpoint")
    if n is not None:
        check_and_load(model, keymap.tensors, path, prefix="proj.", what="checkpoint")
    meta = {
        "task": "upperbound",
        "classes": names,
        "rate": config.rate,
        "signal_length": config.signal_length,
        "source": f"converted from fairseq checkpoint {path.name} ({cfg.get('_name', 'unknown model')})",
    }
    options = {"converted_from": str(path), "fairseq_model": cfg.get("_name"), "keymap": keymap.summary()}
    save_checkpoint(out, model, None, meta, options)
    return Path(out), keymap


def _converted(marker: Path) -> bool:
    try:
        return "converted_from" in json.loads(marker.read_text())
    except (OSError, ValueError, TypeError):
        return False


__all__ = [
    "FairseqCheckpointError",
    "KeyMap",
    "Pretrained",
    "check_and_load",
    "convert",
    "init_model",
    "map_encoder_state",
    "read_checkpoint",
    "read_pretrained",
]
