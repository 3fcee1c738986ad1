"""The reference ECG-QA transformers: ``fusion-small`` / ``fusion-base`` (upstream ``ecg_transformer``),
``medvill`` (the same network, MedViLL's QA fine-tuning config), and the ``blind`` / ``deaf`` ablations.

One post-norm transformer reads ``[ECG1][SEP][ECG2][question]`` (docs/models.md has every number
beside its upstream value):

- each ECG: conv feature extractor (4 × 256 channels, kernel 2, stride 2: 5000 samples → 312 tokens),
  LayerNorm over the 256 channels, linear to the model width;
- the [SEP] token between the two ECGs is the word embedding of ``sep_token_id`` (BERT's [SEP]);
- one weight-normed positional conv (kernel 128, 16 groups) runs over the joint ``[ECG1][SEP][ECG2]``
  sequence and is added to it; every ECG token (SEP included) gets token type 0;
- question tokens: word embedding → LayerNorm → + learned position → + token type 1;
- the joint sequence: padding zeroed, LayerNorm, dropout, ``num_layers`` post-norm layers;
- head: mean of each part (ECG1, SEP+ECG2, question) over its real tokens, concatenated, one
  xavier-initialised linear layer.

A single-ECG question has no second ECG: its SEP+ECG2 slot is zeroed before the positional conv and
masked as keys and in the pool (pools to zeros, as upstream's), so its answer does not depend on what
else is in the batch.

``use_ecg=False`` is *blind* (question only, token type 0), ``use_text=False`` is *deaf* (ECGs only: the
positional conv runs per ECG and the SEP is a learned vector, as upstream's deaf model, which has no word
embeddings). The text side can instead be a pretrained ``transformers`` encoder (``text_encoder``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ecgqa.models.layers import (
    ConvFeatureExtractor,
    ConvPositionalEncoding,
    PostNormLayer,
    QAConfig,
    QAOutput,
    QAPreTrainedModel,
    bert_init_,
    build_text_encoder,
    grad_multiply,
    masked_mean,
    xavier_head_,
)
from ecgqa.models.se_wrn import SEWRNFeatures


class FusionConfig(QAConfig):
    """Defaults = upstream ``examples/scratch/ecg_question_answering/ecg_transformer/small.yaml`` plus the
    ``TransformerConfig`` / ``ECGLanguageTransformerConfig`` defaults it does not override."""

    model_type = "ecgqa-fusion"

    def __init__(
        self,
        num_layers: int = 8,
        hidden_size: int = 768,
        num_heads: int = 12,
        ffn_size: int = 3072,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.1,
        conv_channels: int = 256,
        conv_layers: int = 4,
        conv_kernel: int = 2,
        conv_stride: int = 2,
        pos_conv_kernel: int = 128,
        pos_conv_groups: int = 16,
        max_positions: int = 512,
        feature_grad_mult: float = 1.0,
        use_ecg: bool = True,
        use_text: bool = True,
        ecg_encoder: str = "conv",
        se_wrn_widths: tuple[int, ...] | list[int] = (8, 8, 16, 32, 64),
        se_wrn_blocks: int = 1,
        model_name: str = "fusion-small",
        **kwargs: Any,
    ) -> None:
        if not (use_ecg or use_text):
            raise ValueError("a fusion model needs at least one modality (use_ecg or use_text)")
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.ffn_size = ffn_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.conv_channels = conv_channels
        self.conv_layers = conv_layers
        self.conv_kernel = conv_kernel
        self.conv_stride = conv_stride
        self.pos_conv_kernel = pos_conv_kernel
        self.pos_conv_groups = pos_conv_groups
        self.max_positions = max_positions
        self.feature_grad_mult = feature_grad_mult
        self.use_ecg = use_ecg
        self.use_text = use_text
        if ecg_encoder not in ("conv", "se-wrn"):
            raise ValueError(f"ecg_encoder {ecg_encoder!r}: give 'conv' (upstream's) or 'se-wrn'")
        self.ecg_encoder = ecg_encoder
        self.se_wrn_widths = list(se_wrn_widths)
        self.se_wrn_blocks = se_wrn_blocks
        super().__init__(model_name=model_name, **kwargs)


class FusionModel(QAPreTrainedModel):
    config_class = FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        c = config
        D = c.hidden_size
        self.text_encoder = build_text_encoder(c) if c.use_text else None
        needs_words = c.use_text and self.text_encoder is None
        # the word table also gives the [SEP] between the two ECGs when there is one
        self.word_emb = (
            nn.Embedding(c.vocab_size, D, padding_idx=c.pad_token_id)
            if needs_words or (c.use_ecg and c.use_text)
            else None
        )
        if c.use_ecg:
            if c.ecg_encoder == "se-wrn":  # the attribute classifier's backbone: its last width is the channels
                self.extractor = SEWRNFeatures(c.se_wrn_widths, c.se_wrn_blocks)
                channels = c.se_wrn_widths[-1]
            else:
                self.extractor = ConvFeatureExtractor(c.conv_channels, c.conv_layers, c.conv_kernel, c.conv_stride)
                channels = c.conv_channels
            self.feature_norm = nn.LayerNorm(channels)
            self.feature_proj = nn.Linear(channels, D) if channels != D else None
            self.pos_conv = ConvPositionalEncoding(D, c.pos_conv_kernel, c.pos_conv_groups)
            self.sep = None if c.use_text else nn.Parameter(torch.rand(D))  # deaf: learned, uniform [0, 1)
        if c.use_text:
            if self.text_encoder is None:
                self.text_norm = nn.LayerNorm(D)
                self.pos_emb = nn.Embedding(c.max_positions, D)
            else:
                self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, D)
        self.type_emb = nn.Embedding(2, D) if c.use_text else None  # ECG 0, text 1 (blind: 0)
        self.input_norm = nn.LayerNorm(D)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            PostNormLayer(D, c.num_heads, c.ffn_size, c.dropout, c.attention_dropout, c.activation_dropout)
            for _ in range(c.num_layers)
        )
        n_parts = 2 * c.use_ecg + c.use_text
        self.head = nn.Linear(n_parts * D, c.num_classes)
        for module in (
            self.word_emb,
            self.type_emb,
            getattr(self, "pos_emb", None),
            getattr(self, "feature_proj", None),
            getattr(self, "text_proj", None),
            self.layers,
        ):
            if module is not None:
                module.apply(bert_init_)
        xavier_head_(self.head)
        self.post_init()

    def bert_embedding_tables(self) -> dict[str, nn.Embedding]:
        """The tables upstream takes from ``bert-base-uncased`` (``load_bert_embedding``), by BERT's names;
        empty when the model has none (deaf, or a whole pretrained ``text_encoder``)."""
        if not self.config.use_text or self.text_encoder is not None:
            return {}
        return {
            "word_embeddings": self.word_emb,
            "position_embeddings": self.pos_emb,
            "token_type_embeddings": self.type_emb,
        }

    # -- inputs -------------------------------------------------------------------------------------

    def ecg_tokens(self, ecg: torch.Tensor) -> torch.Tensor:
        """(B, 12, T) → (B, N, D): extractor, LayerNorm over channels, projection."""
        x = grad_multiply(self.extractor(ecg), self.config.feature_grad_mult).transpose(1, 2)
        x = self.feature_norm(x)
        return self.feature_proj(x) if self.feature_proj is not None else x

    def embed_ecgs(self, ecg: torch.Tensor, ecg_mask: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ecg (B, 2, 12, T) → [(ECG1 tokens, mask), (SEP+ECG2 tokens, mask)] with positions and type 0."""
        B = ecg.shape[0]
        if ecg_mask is None:
            ecg_mask = torch.ones(B, 2, dtype=torch.bool, device=ecg.device)
        tokens = self.ecg_tokens(ecg.flatten(0, 1)).unflatten(0, (B, 2))  # one pass over both slots
        e1, e2 = tokens[:, 0], tokens[:, 1]
        if self.sep is None:  # fusion: BERT's [SEP] word embedding
            sep_ids = torch.full((B, 1), self.config.sep_token_id, dtype=torch.long, device=ecg.device)
            sep = self.word_emb(sep_ids)
        else:
            sep = self.sep.to(e2.dtype).expand(B, 1, -1)
        e2 = torch.cat([sep, e2], 1)
        m1 = ecg_mask[:, :1].expand(-1, e1.shape[1])
        m2 = ecg_mask[:, 1:].expand(-1, e2.shape[1])
        e2 = e2 * m2[..., None].to(e2.dtype)  # a missing second ECG is absent, not noise
        if self.type_emb is not None:  # fusion: one positional conv over the joint sequence
            joint = torch.cat([e1, e2], 1)
            joint = joint + self.pos_conv(joint) + self.type_emb.weight[0]
            e1, e2 = joint[:, : e1.shape[1]], joint[:, e1.shape[1] :]
        else:  # deaf: per ECG, as upstream's ECGTransformerModel.get_embeddings
            e1 = e1 + self.pos_conv(e1)
            e2 = torch.cat([e2[:, :1], e2[:, 1:] + self.pos_conv(e2[:, 1:])], 1)
        return [(e1, m1), (e2, m2)]

    def embed_question(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) → (B, L, D): word → LayerNorm → + position → + token type (1 beside ECGs, 0 for blind)."""
        if self.text_encoder is not None:
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            x = self.text_proj(hidden)
        else:
            if input_ids.shape[1] > self.config.max_positions:
                raise ValueError(
                    f"question of {input_ids.shape[1]} tokens exceeds max_positions "
                    f"{self.config.max_positions}; truncate it when tokenizing"
                )
            x = self.text_norm(self.word_emb(input_ids))  # upstream dropout_input: 0.0
            x = x + self.pos_emb(torch.arange(input_ids.shape[1], device=input_ids.device))[None]
        return x + self.type_emb.weight[1 if self.config.use_ecg else 0]

    # -- forward ------------------------------------------------------------------------------------

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
        parts: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        if self.config.use_ecg:
            for tokens, mask in self.embed_ecgs(ecg, ecg_mask):
                parts.append(tokens)
                masks.append(mask)
        if self.config.use_text:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            parts.append(self.embed_question(input_ids, attention_mask))
            masks.append(attention_mask.to(torch.bool))
        mask = torch.cat(masks, 1)
        x = torch.cat(parts, 1) * mask[..., None].to(parts[0].dtype)  # upstream zeroes padding first
        x = self.drop(self.input_norm(x))
        for layer in self.layers:
            x = layer(x, mask)
        pooled, start = [], 0
        for p, m in zip(parts, masks, strict=True):  # appended together above
            pooled.append(masked_mean(x[:, start : start + p.shape[1]], m))
            start += p.shape[1]
        logits = self.head(torch.cat(pooled, -1))
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
