"""Building blocks shared by the models, each with one meaning (docs/models.md lists where each comes from).

- ``QAConfig`` / ``QAPreTrainedModel`` / ``QAOutput``: what every QA model config carries, and the
  QA loss (BCE-with-logits over the whole answer space, mean over batch × classes).
- ``UpperboundConfig`` / ``UpperboundPreTrainedModel`` / ``UpperboundOutput``: the same for the
  upperbound classifiers, whose loss is the labelled BCE of ``ecgqa/models/losses.py``.
- ``ConvFeatureExtractor``: the strided conv front end of the reference ECG transformers (4 × 256
  channels, kernel 2, stride 2, GroupNorm in the first layer, GELU, no bias: 5000 samples → 312 tokens).
- ``ConvPositionalEncoding``: the reference positional conv (weight-normed, even kernel trimmed by one
  output step, GELU), added to the ECG tokens.
- ``MaskedAttention``: multi-head attention with a key padding mask (self or cross).
- ``PostNormLayer``: the reference transformer layer (attention → add → LN → FFN → add → LN).
- ``PreNormBlock``: the pre-norm block of the ``fusion-prenorm-*`` and M3AE models.
- ``ECGPairEmbedding`` / ``QuestionEmbedding``: the pre-norm models' input embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ecgqa.models.losses import labelled_bce, qa_bce

# ---------------------------------------------------------------------------------------------------
# configs and outputs


@dataclass
class QAOutput(ModelOutput):
    """``logits`` (B, C) over the answer space; ``loss`` (QA BCE) when ``labels`` were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class UpperboundOutput(ModelOutput):
    """``logits`` (B, C) over the grounding classes; ``loss`` when ``labels`` and ``label_mask`` were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class QAConfig(PretrainedConfig):
    """The fields every QA model config carries: what the checkpoint answers over and reads (see predictor.py).

    ``vocab_size`` / ``pad_token_id`` / ``sep_token_id`` default to BERT's uncased WordPiece vocabulary
    (30522 tokens, [PAD] 0, [SEP] 102), as upstream; training sets them from the tokenizer it uses.
    ``max_question_len`` is the truncation length of questions (tokenizer side).
    """

    task = "qa"

    def __init__(
        self,
        classes: list[str] | None = None,
        rate: int = 500,
        signal_length: int = 5000,
        vocab_size: int = 30522,
        pad_token_id: int = 0,
        sep_token_id: int = 102,
        max_question_len: int = 64,
        text_encoder: str | None = None,
        text_config: dict[str, Any] | None = None,
        model_name: str = "",
        **kwargs: Any,
    ) -> None:
        self.classes = list(classes or [])
        self.rate = rate
        self.signal_length = signal_length
        self.vocab_size = vocab_size
        self.max_question_len = max_question_len
        self.text_encoder = text_encoder
        self.text_config = text_config
        self.model_name = model_name
        kwargs.pop("task", None)  # a class fact, stored in config.json for readers of the file only
        super().__init__(pad_token_id=pad_token_id, sep_token_id=sep_token_id, **kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "task": self.task}


class UpperboundConfig(PretrainedConfig):
    """The fields every upperbound classifier config carries (grounding classes, rate, length)."""

    task = "upperbound"

    def __init__(
        self,
        classes: list[str] | None = None,
        rate: int = 500,
        signal_length: int = 5000,
        model_name: str = "",
        **kwargs: Any,
    ) -> None:
        self.classes = list(classes or [])
        self.rate = rate
        self.signal_length = signal_length
        self.model_name = model_name
        kwargs.pop("task", None)
        super().__init__(**kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "task": self.task}


class QAPreTrainedModel(PreTrainedModel):
    """Base of the QA models: the modules initialise themselves (as upstream does, module by module),
    so ``_init_weights`` adds nothing; ``qa_loss`` is the one QA loss."""

    base_model_prefix = "ecgqa"
    main_input_name = "ecg"

    def _init_weights(self, module: nn.Module) -> None:
        pass

    @staticmethod
    def qa_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        return None if labels is None else qa_bce(logits, labels)


class UpperboundPreTrainedModel(PreTrainedModel):
    """Base of the upperbound classifiers; ``upperbound_loss`` is the labelled BCE of ``ecgqa/models/losses.py``."""

    base_model_prefix = "ecgqa"
    main_input_name = "ecg"

    def _init_weights(self, module: nn.Module) -> None:
        pass

    @staticmethod
    def upperbound_loss(
        logits: torch.Tensor, labels: torch.Tensor | None, label_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        if labels is None or label_mask is None:
            return None
        return labelled_bce(logits, labels, label_mask)


def bert_init_(module: nn.Module) -> None:
    """BERT's init (upstream ``init_bert_params``): Linear/Embedding weights N(0, 0.02), biases and the
    padding row zero. Applied with ``module.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def xavier_head_(head: nn.Linear) -> nn.Linear:
    """Upstream's classifier-head init: xavier-uniform weight, zero bias."""
    nn.init.xavier_uniform_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens (mask True); an all-padding part pools to zeros."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class _GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` (upstream ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def grad_multiply(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1.0 else _GradMultiply.apply(x, scale)


# ---------------------------------------------------------------------------------------------------
# ECG front end


class ConvFeatureExtractor(nn.Module):
    """(B, 12, T) → (B, channels, N): ``layers`` × Conv1d(kernel, stride, no bias) → [GroupNorm] → GELU.

    GroupNorm (one group per channel) only after the first conv, as upstream's "default" extractor mode;
    convs kaiming-normal initialised. 4 × (256, k2, s2) turns 5000 samples into 312 tokens.
    """

    def __init__(self, channels: int, layers: int, kernel: int, stride: int, in_leads: int = 12) -> None:
        super().__init__()
        blocks, in_ch = [], in_leads
        for i in range(layers):
            conv = nn.Conv1d(in_ch, channels, kernel, stride, bias=False)
            nn.init.kaiming_normal_(conv.weight)
            norm = nn.GroupNorm(channels, channels) if i == 0 else nn.Identity()
            blocks.append(nn.Sequential(conv, norm, nn.GELU()))
            in_ch = channels
        self.layers = nn.Sequential(*blocks)
        self.kernel, self.stride, self.n_layers = kernel, stride, layers

    def output_length(self, samples: int) -> int:
        """Tokens per ECG of ``samples`` samples (upstream ``_get_feat_extract_output_lengths``)."""
        for _ in range(self.n_layers):
            samples = (samples - self.kernel) // self.stride + 1
        return samples

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        return self.layers(ecg)


class ConvPositionalEncoding(nn.Module):
    """(B, N, D) → (B, N, D) positions: grouped Conv1d(kernel, padding kernel//2), weight-normed over the
    kernel axis, the extra output step of an even kernel trimmed, then GELU. Init as upstream:
    N(0, sqrt(4 / (kernel · D))), bias 0."""

    def __init__(self, width: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * width)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------
# transformer layers


class MaskedAttention(nn.Module):
    """Multi-head attention (self, or cross with ``context``); True in ``key_mask`` = a real key."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        mask = key_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, M): broadcast over heads and queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, D))


class PostNormLayer(nn.Module):
    """The reference transformer layer (upstream ``TransformerEncoderLayer``, ``layer_norm_first=False``):
    x = LN(x + drop(attn(x))); x = LN(x + drop(fc2(act_drop(gelu(fc1(x))))))."""

    def __init__(
        self, width: int, heads: int, ffn: int, dropout: float, attention_dropout: float, activation_dropout: float
    ) -> None:
        super().__init__()
        self.attn = MaskedAttention(width, heads, attention_dropout)
        self.attn_norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.ffn_norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.act_drop = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, mask)))
        return self.ffn_norm(x + self.drop(self.fc2(self.act_drop(F.gelu(self.fc1(x))))))


class PreNormBlock(nn.Module):
    """Pre-norm transformer block; with ``cross=True`` a cross-attention sub-layer sits between the two."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), MaskedAttention(width, heads, dropout)
        self.ln_x = nn.LayerNorm(width) if cross else None
        self.xattn = MaskedAttention(width, heads, dropout) if cross else None
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        if self.xattn is not None:
            x = x + self.drop(self.xattn(self.ln_x(x), context_mask, context))
        return x + self.drop(self.mlp(self.ln2(x)))


# ---------------------------------------------------------------------------------------------------
# the pre-norm models' embeddings (fusion-prenorm-*, m3ae-*)


class PreNormECGFrontEnd(nn.Module):
    """(B, 12, T) → (B, N, width): conv extractor, LayerNorm + linear, per-ECG positional conv (no weight norm)."""

    def __init__(
        self,
        channels: int,
        layers: int,
        kernel: int,
        stride: int,
        width: int,
        pos_kernel: int,
        pos_groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.extractor = ConvFeatureExtractor(channels, layers, kernel, stride)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, width)
        groups = pos_groups if width % pos_groups == 0 else 1
        self.pos_conv = nn.Conv1d(width, width, pos_kernel, padding=pos_kernel // 2, groups=groups)
        self.drop = nn.Dropout(dropout)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm(self.extractor(ecg).transpose(1, 2)))  # (B, N, width)
        pos = F.gelu(self.pos_conv(x.transpose(1, 2)))[..., : x.shape[1]].transpose(1, 2)
        return self.drop(x + pos)


class ECGPairEmbedding(nn.Module):
    """``[ECG1][SEP+ECG2]`` for the pre-norm models: both ECG slots through one front end, a learned SEP
    before the second, a token-type embedding per slot, and the key masks that hide a missing second ECG."""

    def __init__(self, c: PretrainedConfig) -> None:
        super().__init__()
        self.front = PreNormECGFrontEnd(
            c.conv_channels,
            c.conv_layers,
            c.conv_kernel,
            c.conv_stride,
            c.hidden_size,
            c.pos_conv_kernel,
            c.pos_conv_groups,
            c.dropout,
        )
        self.sep = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.type_emb = nn.Embedding(2, c.hidden_size)

    def forward(self, ecg: torch.Tensor, ecg_mask: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ecg (B, 2, 12, T), ecg_mask (B, 2) → [(ECG1 tokens, mask), (SEP+ECG2 tokens, mask)]."""
        B = ecg.shape[0]
        if ecg_mask is None:
            ecg_mask = torch.ones(B, 2, dtype=torch.bool, device=ecg.device)
        tokens = self.front(ecg.flatten(0, 1)).unflatten(0, (B, 2))  # one pass over both slots
        e1 = tokens[:, 0] + self.type_emb.weight[0]
        e2 = torch.cat([self.sep.expand(B, -1, -1), tokens[:, 1]], 1) + self.type_emb.weight[1]
        m1 = ecg_mask[:, :1].expand(-1, e1.shape[1])
        m2 = ecg_mask[:, 1:].expand(-1, e2.shape[1])
        return [(e1, m1), (e2, m2)]


def build_text_encoder(config: PretrainedConfig) -> nn.Module | None:
    """The pretrained-encoder side from the stored ``text_config`` (weights are loaded by the caller)."""
    if not config.text_config:
        return None
    cfg = dict(config.text_config)
    text_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModel.from_config(text_cfg)


class QuestionEmbedding(nn.Module):
    """Question tokens → (B, L, width): word + learned position embeddings, or a pretrained ``transformers``
    encoder's last hidden states projected to the model width (``text_encoder``)."""

    def __init__(self, c: PretrainedConfig) -> None:
        super().__init__()
        self.text_encoder = build_text_encoder(c)
        if self.text_encoder is None:
            self.word_emb = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
            self.pos_emb = nn.Embedding(c.max_question_len, c.hidden_size)
            self.max_len = c.max_question_len
            bert_init_(self.word_emb)
            bert_init_(self.pos_emb)
        else:
            self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, c.hidden_size)

    @property
    def pretrained(self) -> bool:
        return self.text_encoder is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.text_encoder is not None:
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.text_proj(hidden)
        if input_ids.shape[1] > self.max_len:
            raise ValueError(
                f"question of {input_ids.shape[1]} tokens exceeds max_question_len "
                f"{self.max_len}; truncate it when tokenizing"
            )
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_emb(input_ids) + self.pos_emb(pos)[None]


def attach_pretrained_text_encoder(model: PreTrainedModel, name_or_path: str) -> None:
    """Replace the model's text encoder by ``name_or_path``'s pretrained weights (AutoModel)."""
    try:
        encoder = AutoModel.from_pretrained(name_or_path)
    except OSError as e:
        raise FileNotFoundError(
            f"text encoder {name_or_path!r} could not be loaded ({e}); give a local folder holding a transformers "
            "encoder (config.json + weights + tokenizer) or a hub id while online"
        ) from e
    target = getattr(model, "text_encoder", None) or model.question.text_encoder
    target.load_state_dict(encoder.state_dict())
