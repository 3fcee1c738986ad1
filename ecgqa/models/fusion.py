"""The fusion transformer of the ECG-QA baselines, and its blind / deaf ablations.

One transformer reads ``[ECG1][SEP+ECG2][question]``: each ECG goes through a small 1-D conv feature
extractor (4 layers, kernel 2, stride 2: 5000 samples -> 312 tokens), a linear projection to the model
width and a convolutional positional encoding; question tokens get word + position embeddings; every
token gets a token-type embedding (ECG1 0, ECG2 1, question 2). The head mean-pools each part over its
real tokens, concatenates the pools and maps them linearly to the answer space.

Unlike the reference, padding is masked everywhere: question padding and the missing second ECG of a
single-ECG question are excluded from attention (as keys) and from the pools, so a pad token's id
cannot change the answer.

``use_ecg=False`` is the *blind* model (question only), ``use_text=False`` the *deaf* one (ECGs only):
they measure how much of the score comes from one modality alone.

The text side can instead be any pretrained ``transformers`` encoder (``text_encoder`` = path or hub
id): its last hidden states are projected to the model width and take the place of the question
embeddings. Its config is stored in ours, so a checkpoint reloads offline.

The building blocks (``ECGPairEmbedding``, ``QuestionEmbedding``, ``Block``, ``masked_mean``) are
shared with ``m3ae.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class QAOutput(ModelOutput):
    """``logits`` (B, C) over the answer space; ``loss`` when labels were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class QAConfigMixin:
    """Fields every QA model config carries: the shared widths, the ECG side (the reference conv extractor:
    4 layers × 256 channels, kernel 2, stride 2) and what makes a checkpoint self-describing (see predictor.py)."""

    SHARED: ClassVar[dict[str, Any]] = {
        "hidden_size": 768,
        "num_heads": 12,
        "ffn_size": 3072,
        "dropout": 0.1,
        "conv_channels": 256,
        "conv_layers": 4,
        "conv_kernel": 2,
        "conv_stride": 2,
        "pos_conv_kernel": 65,
        "pos_conv_groups": 16,
        "classes": None,
        "rate": 500,
        "signal_length": 5000,
        "vocab_size": 30522,
        "max_question_len": 64,
        "text_encoder": None,
        "text_config": None,
    }

    def _init_shared(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Set the shared fields from ``kwargs`` (defaults above); return the rest for PretrainedConfig."""
        for name, default in self.SHARED.items():
            setattr(self, name, kwargs.pop(name, default))
        self.classes = list(self.classes or [])
        self.task = "qa"
        return kwargs

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class FusionConfig(QAConfigMixin, PretrainedConfig):
    model_type = "ecgqa-fusion"

    def __init__(
        self,
        num_layers: int = 8,
        use_ecg: bool = True,
        use_text: bool = True,
        model_name: str = "fusion-small",
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        if not (use_ecg or use_text):
            raise ValueError("a fusion model needs at least one modality (use_ecg or use_text)")
        self.num_layers = num_layers
        self.use_ecg = use_ecg
        self.use_text = use_text
        self.model_name = model_name
        super().__init__(pad_token_id=pad_token_id, **self._init_shared(kwargs))


# ---------------------------------------------------------------------------------------------------
# building blocks


class ConvFeatureExtractor(nn.Module):
    """(B, 12, T) signal -> (B, N, width) tokens: strided 1-D convs, then LayerNorm + linear + conv positions."""

    def __init__(self, channels: int, layers: int, kernel: int, stride: int, width: int, pos_kernel: int,
                 pos_groups: int, dropout: float) -> None:
        super().__init__()
        convs, in_ch = [], 12
        for i in range(layers):
            convs += [nn.Conv1d(in_ch, channels, kernel, stride, bias=False)]
            convs += [nn.GroupNorm(channels, channels) if i == 0 else nn.Identity(), nn.GELU()]
            in_ch = channels
        self.convs = nn.Sequential(*convs)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, width)
        groups = pos_groups if width % pos_groups == 0 else 1
        self.pos_conv = nn.Conv1d(width, width, pos_kernel, padding=pos_kernel // 2, groups=groups)
        self.drop = nn.Dropout(dropout)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm(self.convs(ecg).transpose(1, 2)))  # (B, N, width)
        pos = F.gelu(self.pos_conv(x.transpose(1, 2)))[..., : x.shape[1]].transpose(1, 2)
        return self.drop(x + pos)


class Attention(nn.Module):
    """Multi-head attention (self or cross) with a key padding mask; True in ``key_mask`` = a real key."""

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


class Block(nn.Module):
    """Pre-norm transformer block; with ``cross=True`` a cross-attention sub-layer sits between the two."""

    def __init__(self, width: int, heads: int, ffn: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads, dropout)
        self.ln_x = nn.LayerNorm(width) if cross else None
        self.xattn = Attention(width, heads, dropout) if cross else None
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.GELU(), nn.Linear(ffn, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), mask))
        if self.xattn is not None:
            x = x + self.drop(self.xattn(self.ln_x(x), context_mask, context))
        return x + self.drop(self.mlp(self.ln2(x)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens (mask True); an all-padding part pools to zeros."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def build_text_encoder(config: PretrainedConfig) -> nn.Module | None:
    """The pretrained-encoder side from the stored ``text_config`` (weights are loaded by the caller)."""
    if not config.text_config:
        return None
    from transformers import AutoConfig, AutoModel

    cfg = dict(config.text_config)
    text_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModel.from_config(text_cfg)


class ECGPairEmbedding(nn.Module):
    """``[ECG1][SEP+ECG2]``: both ECG slots through one conv feature extractor, a SEP token before the
    second, a token-type embedding per slot, and the key masks that hide a missing second ECG.
    The one place this layout lives; the fusion and M3AE models both read their ECGs through it."""

    def __init__(self, c: PretrainedConfig) -> None:
        super().__init__()
        self.extractor = ConvFeatureExtractor(c.conv_channels, c.conv_layers, c.conv_kernel, c.conv_stride,
                                              c.hidden_size, c.pos_conv_kernel, c.pos_conv_groups, c.dropout)
        self.sep = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.type_emb = nn.Embedding(2, c.hidden_size)

    def forward(self, ecg: torch.Tensor, ecg_mask: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ecg (B, 2, 12, T), ecg_mask (B, 2) → [(ECG1 tokens, mask), (SEP+ECG2 tokens, mask)]."""
        B = ecg.shape[0]
        if ecg_mask is None:
            ecg_mask = torch.ones(B, 2, dtype=torch.bool, device=ecg.device)
        ecg_mask = ecg_mask.to(torch.bool)
        tokens = self.extractor(ecg.flatten(0, 1)).unflatten(0, (B, 2))  # (B, 2, N, D)
        N = tokens.shape[2]
        e1 = tokens[:, 0] + self.type_emb.weight[0]
        e2 = torch.cat([self.sep.expand(B, 1, -1), tokens[:, 1]], 1) + self.type_emb.weight[1]
        return [(e1, ecg_mask[:, :1].expand(B, N)), (e2, ecg_mask[:, 1:].expand(B, N + 1))]


class QuestionEmbedding(nn.Module):
    """Question tokens → (B, L, width): word + position embeddings trained from scratch, or a pretrained
    ``transformers`` encoder's last hidden states projected to the width (``config.text_config`` set)."""

    def __init__(self, c: PretrainedConfig) -> None:
        super().__init__()
        self.max_len = c.max_question_len
        self.text_encoder = build_text_encoder(c)
        if self.text_encoder is None:
            self.word_emb = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
            self.pos_emb = nn.Embedding(c.max_question_len, c.hidden_size)
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
            raise ValueError(f"question of {input_ids.shape[1]} tokens exceeds max_question_len "
                             f"{self.max_len}; truncate it when tokenizing")
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.word_emb(input_ids) + self.pos_emb(pos)[None]


def attach_pretrained_text_encoder(model: PreTrainedModel, name_or_path: str) -> None:
    """Replace the model's text encoder by ``name_or_path``'s pretrained weights (AutoModel)."""
    from transformers import AutoModel

    try:
        encoder = AutoModel.from_pretrained(name_or_path)
    except OSError as e:
        raise FileNotFoundError(
            f"text encoder {name_or_path!r} could not be loaded ({e}); give a local folder holding a transformers "
            "encoder (config.json + weights + tokenizer) or a hub id while online"
        ) from e
    model.question.text_encoder.load_state_dict(encoder.state_dict())


# ---------------------------------------------------------------------------------------------------
# the model


class QAPreTrainedModel(PreTrainedModel):
    """Shared init and the BCE loss over the answer space (the reference baselines' loss)."""

    base_model_prefix = "ecgqa"
    main_input_name = "ecg"
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _init_head(self, head: nn.Linear) -> None:
        # LeCun-normal (std 1/sqrt(fan_in)): unit-variance logits at init. With std 0.02 a narrow model's head
        # passes almost no gradient back, and the encoder collapses to one answer for every question first.
        nn.init.normal_(head.weight, std=head.in_features**-0.5)
        nn.init.zeros_(head.bias)

    @staticmethod
    def qa_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class FusionModel(QAPreTrainedModel):
    config_class = FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        c = config
        self.ecg = ECGPairEmbedding(c) if c.use_ecg else None
        self.question = QuestionEmbedding(c) if c.use_text else None
        self.question_type_emb = nn.Embedding(1, c.hidden_size) if c.use_text else None  # token type 2
        self.emb_norm = nn.LayerNorm(c.hidden_size)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.hidden_size, c.num_heads, c.ffn_size, c.dropout) for _ in range(c.num_layers))
        self.ln_f = nn.LayerNorm(c.hidden_size)
        n_parts = 2 * c.use_ecg + c.use_text
        self.head = nn.Linear(n_parts * c.hidden_size, c.num_classes)
        self.post_init()
        self._init_head(self.head)

    def forward(
        self,
        ecg: torch.Tensor | None = None,
        ecg_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused: Any,
    ) -> QAOutput:
        """ecg (B, 2, 12, T), ecg_mask (B, 2) bool, input_ids / attention_mask (B, L), labels (B, C) multi-hot."""
        parts, masks = [], []
        if self.ecg is not None:
            for tokens, mask in self.ecg(ecg, ecg_mask):
                parts.append(tokens)
                masks.append(mask)
        if self.question is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            parts.append(self.question(input_ids, attention_mask) + self.question_type_emb.weight[0])
            masks.append(attention_mask.to(torch.bool))
        x = self.drop(self.emb_norm(torch.cat(parts, 1)))
        mask = torch.cat(masks, 1)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        pooled, start = [], 0
        for p, m in zip(parts, masks):
            pooled.append(masked_mean(x[:, start : start + p.shape[1]], m))
            start += p.shape[1]
        logits = self.head(torch.cat(pooled, -1))
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
