"""M3AE-style QA model (``m3ae-*``): separate ECG and text encoders joined by cross-attention fusion layers.

- ECG encoder: the conv feature extractor on each ECG (pre-norm front end, see ``layers.py``), a learned
  [CLS] vector in front (upstream ``class_embedding``, uniform [0, 1)), a token-type embedding per slot
  (ECG1 / SEP+ECG2), then ``ecg_layers`` self-attention blocks over ``[CLS][ECG1][SEP][ECG2]``.
- Text encoder: word + position embeddings and ``text_layers`` blocks, or any pretrained
  ``transformers`` encoder (``text_encoder`` = path or hub id) followed by a linear projection.
- Fusion: ``fusion_layers`` pairs of blocks; in each, the ECG stream self-attends and cross-attends
  to the text stream and vice versa (both read the previous layer's other stream).
- Pooling as upstream (``m3ae.py`` ``Pooler``): the first token of each stream (the question's [CLS],
  the ECG [CLS]) through Linear + tanh, concatenated as [text, ECG];
  head Linear → LayerNorm → GELU → Linear.

Padding (question pads, a missing second ECG) is masked in every attention. Upstream fine-tunes a
pretrained M3AE (W2V+CMSC ECG encoder, BERT-base); here the model trains from scratch unless
``text_encoder`` is given (docs/models.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ecgqa.models.layers import (
    ECGPairEmbedding,
    PreNormBlock,
    QAConfig,
    QAOutput,
    QAPreTrainedModel,
    QuestionEmbedding,
    bert_init_,
)


class M3AEConfig(QAConfig):
    """Layer counts and head of upstream ``m3ae`` / ``m3ae_qa`` (12 ECG, 12 text (BERT-base), 6 fusion layers)."""

    model_type = "ecgqa-m3ae"

    def __init__(
        self,
        ecg_layers: int = 12,
        text_layers: int = 12,
        fusion_layers: int = 6,
        hidden_size: int = 768,
        num_heads: int = 12,
        ffn_size: int = 3072,
        dropout: float = 0.1,
        conv_channels: int = 256,
        conv_layers: int = 4,
        conv_kernel: int = 2,
        conv_stride: int = 2,
        pos_conv_kernel: int = 65,
        pos_conv_groups: int = 16,
        model_name: str = "m3ae-base",
        **kwargs: Any,
    ) -> None:
        self.ecg_layers = ecg_layers
        self.text_layers = text_layers
        self.fusion_layers = fusion_layers
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.ffn_size = ffn_size
        self.dropout = dropout
        self.conv_channels = conv_channels
        self.conv_layers = conv_layers
        self.conv_kernel = conv_kernel
        self.conv_stride = conv_stride
        self.pos_conv_kernel = pos_conv_kernel
        self.pos_conv_groups = pos_conv_groups
        super().__init__(model_name=model_name, **kwargs)


class FirstTokenPooler(nn.Module):
    """Upstream ``Pooler``: the first token through Linear + tanh."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class M3AEModel(QAPreTrainedModel):
    config_class = M3AEConfig

    def __init__(self, config: M3AEConfig) -> None:
        super().__init__(config)
        c = config
        D = c.hidden_size

        def blocks(n: int, cross: bool = False) -> nn.ModuleList:
            return nn.ModuleList(PreNormBlock(D, c.num_heads, c.ffn_size, c.dropout, cross=cross) for _ in range(n))

        self.ecg = ECGPairEmbedding(c)
        self.ecg_cls = nn.Parameter(torch.rand(1, 1, D))
        self.ecg_blocks = blocks(c.ecg_layers)
        self.ecg_ln = nn.LayerNorm(D)
        self.question = QuestionEmbedding(c)
        if not self.question.pretrained:  # a pretrained encoder already contextualises the question
            self.text_emb_norm = nn.LayerNorm(D)
            self.text_blocks = blocks(c.text_layers)
        self.text_ln = nn.LayerNorm(D)
        # fusion
        self.fusion_ecg = blocks(c.fusion_layers, cross=True)
        self.fusion_text = blocks(c.fusion_layers, cross=True)
        self.ln_ecg, self.ln_text = nn.LayerNorm(D), nn.LayerNorm(D)
        self.text_pooler, self.ecg_pooler = FirstTokenPooler(D), FirstTokenPooler(D)
        self.head = nn.Sequential(
            nn.Linear(2 * D, 2 * D), nn.LayerNorm(2 * D), nn.GELU(), nn.Linear(2 * D, c.num_classes)
        )
        self.drop = nn.Dropout(c.dropout)
        for name, module in self.named_children():  # the head too: upstream head.apply(init_weights), N(0, 0.02)
            if name != "question" or not self.question.pretrained:
                module.apply(bert_init_)
        self.post_init()

    def encode_ecg(self, ecg: torch.Tensor, ecg_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        (e1, m1), (e2, m2) = self.ecg(ecg, ecg_mask)
        cls = self.ecg_cls.to(e1.dtype).expand(e1.shape[0], -1, -1)
        x = self.drop(torch.cat([cls, e1, e2], 1))
        mask = torch.cat([torch.ones_like(m1[:, :1]), m1, m2], 1)
        for block in self.ecg_blocks:
            x = block(x, mask)
        return self.ecg_ln(x), mask

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.question(input_ids, attention_mask)
        if self.question.pretrained:
            return self.text_ln(x)
        x = self.drop(self.text_emb_norm(x))
        mask = attention_mask.to(torch.bool)
        for block in self.text_blocks:
            x = block(x, mask)
        return self.text_ln(x)

    def forward(
        self,
        ecg: torch.Tensor,
        input_ids: torch.Tensor,
        ecg_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **unused: Any,
    ) -> QAOutput:
        """ecg (B, 2, 12, T), ecg_mask (B, 2) bool, input_ids / attention_mask (B, L), labels (B, C) multi-hot."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        e, e_mask = self.encode_ecg(ecg, ecg_mask)
        t_mask = attention_mask.to(torch.bool)
        t = self.encode_text(input_ids, attention_mask)
        for ecg_block, text_block in zip(self.fusion_ecg, self.fusion_text, strict=False):
            e, t = ecg_block(e, e_mask, t, t_mask), text_block(t, t_mask, e, e_mask)
        pooled = torch.cat([self.text_pooler(self.ln_text(t)), self.ecg_pooler(self.ln_ecg(e))], -1)
        logits = self.head(pooled)
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
