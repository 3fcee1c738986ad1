"""``w2v-cmsc-rlm``: the wav2vec 2.0-style ECG transformer of fairseq-signals, pretrained with contrastive
multi-segment coding and random lead masking (W2V+CMSC+RLM), fine-tuned as an upperbound classifier.

The encoder reproduces fairseq-signals' ``ECGTransformerModel`` / ``Wav2Vec2Model`` forward
(``fairseq_signals/models/ecg_transformer.py``, ``models/wav2vec2/wav2vec2.py``) and the classifier
``models/classification/ecg_transformer_classifier.py``; submodule names follow fairseq-signals' so that
``ecgqa/training/fairseq_import.py`` maps a published checkpoint key by key (docs/models.md has the key map):

- ``feature_extractor.conv_layers.N``: Conv1d(dim, kernel, stride, no bias) → Dropout(0) → [GroupNorm
  (one group per channel) in layer 0 only ("default" mode), or a LayerNorm in every layer ("layer_norm"
  mode)] → GELU; published: 4 × (256, 2, 2) over the 12 leads, 5000 samples → 312 tokens;
- gradient into the extractor scaled by ``feature_grad_mult`` (0.1); ``layer_norm`` over its channels;
- ``post_extract_proj``: Linear(256 → 768) (absent when the widths agree), ``dropout_input``;
- ``encoder.pos_conv``: weight-normed grouped Conv1d (kernel 128, 16 groups) → SamePad → GELU, added to
  the tokens (fairseq-signals keeps it as ``conv_pos`` beside the encoder since 2022; older fairseq and
  wav2vec 2.0 inside it, as here, which lets a pretraining model call ``encoder`` on masked tokens);
- ``encoder``: padding zeroed → LayerNorm (post-norm models) → dropout → ``encoder_layers`` layers
  (self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm) → LayerNorm (pre-norm);
- classifier: ``final_dropout`` → mean over the real tokens → ``proj`` (xavier-initialised).
"""

from __future__ import annotations

import ast
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgqa.models.layers import (
    UpperboundConfig,
    UpperboundOutput,
    UpperboundPreTrainedModel,
    bert_init_,
    grad_multiply,
    masked_mean,
    xavier_head_,
)

#: fairseq-signals' default ``conv_feature_layers``: "[(256, 2, 2)] * 4"
DEFAULT_CONV_LAYERS = [(256, 2, 2)] * 4


class W2VCMSCConfig(UpperboundConfig):
    """Field names and meanings as fairseq-signals' ``ECGTransformerConfig``; defaults = the published
    grounding fine-tuning (``examples/w2v_cmsc/config/finetuning/ecg_transformer/grounding_classification/
    base_total.yaml``: dropout 0, attention dropout 0, activation dropout 0.1, feature_grad_mult 0.1, 12
    layers of 768) plus the config class defaults it leaves alone (FFN 3072, 12 heads, conv_pos 128/16,
    post-norm, 4 × (256, 2, 2) convs, "default" extractor, no conv bias, final_dropout 0).

    ``conv_feature_layers`` is a list of (dim, kernel, stride); fairseq's string form ("[(256, 2, 2)] * 4")
    is accepted and parsed without ``eval``.
    """

    model_type = "ecgqa-w2v-cmsc"

    def __init__(
        self,
        conv_feature_layers: list[tuple[int, int, int]] | list[list[int]] | str | None = None,
        extractor_mode: str = "default",
        conv_bias: bool = False,
        in_d: int = 12,
        encoder_layers: int = 12,
        encoder_embed_dim: int = 768,
        encoder_ffn_embed_dim: int = 3072,
        encoder_attention_heads: int = 12,
        activation_fn: str = "gelu",
        layer_norm_first: bool = False,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.1,
        encoder_layerdrop: float = 0.0,
        dropout_input: float = 0.0,
        dropout_features: float = 0.0,
        feature_grad_mult: float = 0.1,
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        final_dropout: float = 0.0,
        model_name: str = "w2v-cmsc-rlm",
        **kwargs: Any,
    ) -> None:
        layers = DEFAULT_CONV_LAYERS if conv_feature_layers is None else conv_feature_layers
        self.conv_feature_layers = [list(map(int, layer)) for layer in parse_conv_layers(layers)]
        if extractor_mode not in ("default", "layer_norm"):
            raise ValueError(f"extractor_mode {extractor_mode!r}: choose 'default' or 'layer_norm'")
        if activation_fn != "gelu":
            raise ValueError(f"activation_fn {activation_fn!r}: fairseq-signals' transformer layers use 'gelu'")
        if encoder_embed_dim % encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {encoder_embed_dim} is not divisible by {encoder_attention_heads} attention heads"
            )
        if encoder_embed_dim % conv_pos_groups:
            raise ValueError(
                f"encoder_embed_dim {encoder_embed_dim} is not divisible by conv_pos_groups {conv_pos_groups}"
            )
        self.extractor_mode = extractor_mode
        self.conv_bias = conv_bias
        self.in_d = in_d
        self.encoder_layers = encoder_layers
        self.encoder_embed_dim = encoder_embed_dim
        self.encoder_ffn_embed_dim = encoder_ffn_embed_dim
        self.encoder_attention_heads = encoder_attention_heads
        self.activation_fn = activation_fn
        self.layer_norm_first = layer_norm_first
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.encoder_layerdrop = encoder_layerdrop
        self.dropout_input = dropout_input
        self.dropout_features = dropout_features
        self.feature_grad_mult = feature_grad_mult
        self.conv_pos = conv_pos
        self.conv_pos_groups = conv_pos_groups
        self.final_dropout = final_dropout
        super().__init__(model_name=model_name, **kwargs)


def parse_conv_layers(spec: Any) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` ("[(512, 10, 5)] + [(512, 3, 2)] * 4", or a list) as a list of
    (dim, kernel, stride). The string is read with ``ast`` (literals, ``+`` and ``*`` only), never ``eval``."""
    if isinstance(spec, str):

        def value(node: ast.AST) -> Any:
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
                left, right = value(node.left), value(node.right)
                return left + right if isinstance(node.op, ast.Add) else left * right
            return ast.literal_eval(node)

        try:
            spec = value(ast.parse(spec, mode="eval").body)
        except (ValueError, SyntaxError, TypeError) as e:
            raise ValueError(f"conv_feature_layers {spec!r}: not a list of (dim, kernel, stride) ({e})") from e
    layers = [tuple(layer) for layer in spec]
    if not layers or any(
        len(layer) != 3 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in layer) for layer in layers
    ):
        raise ValueError(
            f"conv_feature_layers {spec!r}: expected a non-empty list of (dim, kernel, stride) positive integers"
        )
    return [(int(d), int(k), int(s)) for d, k, s in layers]


# ---------------------------------------------------------------------------------------------------
# blocks


class TransposeLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class Fp32GroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32 (fairseq's ``Fp32GroupNorm``), so bf16/fp16 runs match fp32 statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).type_as(x)


class Fp32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).type_as(
            x
        )


class ConvFeatureExtraction(nn.Module):
    """(B, in_d, T) → (B, C, T'): ``conv_layers.N`` = Sequential(conv, dropout, [norm], GELU), indices as
    fairseq's (conv 0, norm 2), convs kaiming-normal initialised."""

    def __init__(self, layers: list[tuple[int, int, int]], in_d: int, mode: str, conv_bias: bool) -> None:
        super().__init__()
        self.layers = [tuple(x) for x in layers]
        self.conv_layers = nn.ModuleList()
        for i, (dim, k, stride) in enumerate(self.layers):
            conv = nn.Conv1d(in_d, dim, k, stride=stride, bias=conv_bias)
            nn.init.kaiming_normal_(conv.weight)
            if mode == "layer_norm":
                norm: list[nn.Module] = [nn.Sequential(TransposeLast(), Fp32LayerNorm(dim), TransposeLast())]
            elif i == 0:
                norm = [Fp32GroupNorm(dim, dim, affine=True)]
            else:
                norm = []
            self.conv_layers.append(nn.Sequential(conv, nn.Dropout(0.0), *norm, nn.GELU()))
            in_d = dim

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Tokens per input of ``lengths`` samples (fairseq's ``_get_feat_extract_output_lengths``)."""
        lengths = lengths.to(torch.float64)
        for _, k, s in self.layers:
            lengths = torch.floor((lengths - k) / s + 1)
        return lengths.to(torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            x = x.unsqueeze(1)
        for block in self.conv_layers:
            x = block(x)
        return x


class SamePad(nn.Module):
    """Drop the extra output step an even kernel with padding kernel//2 makes."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


def positional_conv(width: int, kernel: int, groups: int) -> nn.Sequential:
    """Sequential(weight-normed Conv1d, SamePad, GELU); weight norm over the kernel axis (dim 2), stored
    as torch's parametrization: ``0.parametrizations.weight.original0`` (g, (1, 1, K)) and ``original1``
    (v) — fairseq's ``weight_g`` / ``weight_v``. Init N(0, sqrt(4 / (K · D))), bias 0, as upstream."""
    conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=groups)
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * width)))
    nn.init.zeros_(conv.bias)
    conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    return nn.Sequential(conv, SamePad(kernel), nn.GELU())


class MultiHeadAttention(nn.Module):
    """fairseq's self-attention: separate q/k/v/out projections, scaling 1/sqrt(head dim), dropout on the
    attention weights; ``key_padding_mask`` True = padding."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.k_proj, self.v_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.q_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)
        for proj in (self.k_proj, self.v_proj, self.q_proj, self.out_proj):  # upstream init_bert_params
            bert_init_(proj)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = (
            p(x).view(B, T, self.heads, D // self.heads).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :].to(torch.bool)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class TransformerEncoderLayer(nn.Module):
    """Post-norm (``layer_norm_first`` False): x = LN(x + drop(attn(x))); x = LN(x + drop(fc2(act_drop(
    gelu(fc1(x)))))). Pre-norm: the LNs move before each sub-layer. GELU in float32 as upstream."""

    def __init__(self, c: W2VCMSCConfig) -> None:
        super().__init__()
        D = c.encoder_embed_dim
        self.self_attn = MultiHeadAttention(D, c.encoder_attention_heads, c.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(D)
        self.fc1, self.fc2 = nn.Linear(D, c.encoder_ffn_embed_dim), nn.Linear(c.encoder_ffn_embed_dim, D)
        for fc in (self.fc1, self.fc2):
            bert_init_(fc)
        self.final_layer_norm = nn.LayerNorm(D)
        self.dropout1, self.dropout2, self.dropout3 = (
            nn.Dropout(c.dropout),
            nn.Dropout(c.activation_dropout),
            nn.Dropout(c.dropout),
        )
        self.layer_norm_first = c.layer_norm_first

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(F.gelu(self.fc1(x).float()).type_as(x))))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout1(self.self_attn(x, padding_mask)))
        return self.final_layer_norm(x + self._ffn(x))


class TransformerEncoder(nn.Module):
    """(B, T, D) tokens → (B, T, D): + positional conv, padding zeroed, [LN], dropout, layers, [LN]."""

    def __init__(self, c: W2VCMSCConfig) -> None:
        super().__init__()
        self.pos_conv = positional_conv(c.encoder_embed_dim, c.conv_pos, c.conv_pos_groups)
        self.layers = nn.ModuleList(TransformerEncoderLayer(c) for _ in range(c.encoder_layers))
        self.layer_norm = nn.LayerNorm(c.encoder_embed_dim)
        self.layer_norm_first = c.layer_norm_first
        self.dropout = nn.Dropout(c.dropout)
        self.layerdrop = c.encoder_layerdrop

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``padding_mask`` (B, T) True = padding token (``W2VEncoder.token_padding_mask``)."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and float(np.random.random()) <= self.layerdrop:
                continue
            x = layer(x, padding_mask)
        return self.layer_norm(x) if self.layer_norm_first else x


class W2VEncoder(nn.Module):
    """The ECG transformer encoder (fairseq-signals' ``ECGTransformerModel`` without its pretraining parts).

    Pretraining code inserts masking between ``post_extract_proj``/``dropout_input`` and ``encoder``:
    ``extract_features`` → ``post_extract_proj`` → ``dropout_input`` → (mask) → ``encoder``.
    """

    def __init__(self, c: W2VCMSCConfig) -> None:
        super().__init__()
        layers = [tuple(x) for x in c.conv_feature_layers]
        self.embed = layers[-1][0]
        self.feature_extractor = ConvFeatureExtraction(layers, c.in_d, c.extractor_mode, c.conv_bias)
        self.layer_norm = nn.LayerNorm(self.embed)
        self.post_extract_proj = (
            nn.Linear(self.embed, c.encoder_embed_dim) if self.embed != c.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(c.dropout_input)
        self.dropout_features = nn.Dropout(c.dropout_features)
        self.encoder = TransformerEncoder(c)
        self.feature_grad_mult = c.feature_grad_mult

    def conv_features(self, source: torch.Tensor) -> torch.Tensor:
        """(B, in_d, T) → (B, C, T'): conv features, gradient scaled by ``feature_grad_mult`` (frozen when it
        is 0), before ``layer_norm`` (where pretraining takes its feature penalty)."""
        if self.feature_grad_mult > 0:
            return grad_multiply(self.feature_extractor(source), self.feature_grad_mult)
        with torch.no_grad():
            return self.feature_extractor(source)

    def extract_features(self, source: torch.Tensor) -> torch.Tensor:
        """(B, in_d, T) → (B, T', C): ``conv_features`` after ``layer_norm``, before the projection —
        wav2vec 2.0's unmasked targets."""
        return self.layer_norm(self.conv_features(source).transpose(1, 2))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T', C) features → (B, T', D) encoder input: ``post_extract_proj`` (if any), ``dropout_input``."""
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        return self.dropout_input(features)

    def token_padding_mask(self, padding_mask: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
        """Sample-level ``padding_mask`` (B, T) or (B, leads, T), True = padding, → token-level (B, tokens):
        a token is padding when it lies past the conv output length of the real samples (upstream's rule)."""
        if padding_mask is None or not bool(padding_mask.any()):
            return None
        if padding_mask.dim() == 3:
            padding_mask = padding_mask[:, 0]
        lengths = self.feature_extractor.output_lengths((~padding_mask.bool()).sum(-1))
        return torch.arange(tokens, device=padding_mask.device)[None, :] >= lengths[:, None]

    def forward(self, source: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_d, T) → (B, T', D), the full unmasked path (fine-tuning and inference)."""
        x = self.project(self.extract_features(source))
        return self.encoder(x, self.token_padding_mask(padding_mask, x.shape[1]))


# ---------------------------------------------------------------------------------------------------
# the upperbound classifier


class W2VCMSCRLMModel(UpperboundPreTrainedModel):
    """The W2V+CMSC+RLM grounding classifier: ``w2v`` encoder → final dropout → mean over the real tokens
    → ``proj``. Upstream divides the token sum by the count of non-zero entries per channel, the same
    mean unless an encoder output is exactly zero."""

    config_class = W2VCMSCConfig

    def __init__(self, config: W2VCMSCConfig) -> None:
        super().__init__(config)
        self.w2v = W2VEncoder(config)
        self.final_dropout = nn.Dropout(config.final_dropout)
        self.proj = xavier_head_(nn.Linear(config.encoder_embed_dim, config.num_classes))
        self.post_init()

    def forward(
        self,
        ecg: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        **unused: Any,
    ) -> UpperboundOutput:
        """ecg (B, 12, T); lead_mask (B, 12) bool zeroes the other leads (upstream's padded leads);
        padding_mask (B, T) True = padded sample; labels / label_mask (B, C)."""
        if lead_mask is not None:
            ecg = ecg * lead_mask.to(ecg.dtype)[..., None]
        x = self.final_dropout(self.w2v(ecg, padding_mask))
        pad = self.w2v.token_padding_mask(padding_mask, x.shape[1])
        logits = self.proj(x.mean(1) if pad is None else masked_mean(x, ~pad))
        return UpperboundOutput(loss=self.upperbound_loss(logits, labels, label_mask), logits=logits)
