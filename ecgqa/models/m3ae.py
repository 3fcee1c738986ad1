"""M3AE-style QA model: separate ECG and text encoders joined by cross-attention fusion layers.

- ECG encoder: the fusion model's conv feature extractor on each ECG, a token-type embedding per
  slot (ECG1 / SEP+ECG2), then ``ecg_layers`` self-attention blocks over both ECGs together.
- Text encoder: word + position embeddings and ``text_layers`` blocks, or any pretrained
  ``transformers`` encoder (``text_encoder`` = path or hub id) followed by a linear projection.
- Fusion: ``fusion_layers`` pairs of blocks; in each, the ECG stream self-attends and cross-attends
  to the text stream and vice versa (both read the previous layer's other stream).
- Head: mean-pool each stream over its real tokens, concatenate, Linear -> LayerNorm -> GELU -> Linear.

Padding (question pads, a missing second ECG) is masked in every attention and pool.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from ecgqa.models.fusion import (
    Block,
    ECGPairEmbedding,
    QAConfigMixin,
    QAOutput,
    QAPreTrainedModel,
    QuestionEmbedding,
    masked_mean,
)


class M3AEConfig(QAConfigMixin, PretrainedConfig):
    model_type = "ecgqa-m3ae"

    def __init__(
        self,
        ecg_layers: int = 6,
        text_layers: int = 6,
        fusion_layers: int = 3,
        model_name: str = "m3ae-small",
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.ecg_layers = ecg_layers
        self.text_layers = text_layers
        self.fusion_layers = fusion_layers
        self.model_name = model_name
        super().__init__(pad_token_id=pad_token_id, **self._init_shared(kwargs))


class M3AEModel(QAPreTrainedModel):
    config_class = M3AEConfig

    def __init__(self, config: M3AEConfig) -> None:
        super().__init__(config)
        c = config
        D = c.hidden_size

        def blocks(n: int, cross: bool = False) -> nn.ModuleList:
            return nn.ModuleList(Block(D, c.num_heads, c.ffn_size, c.dropout, cross=cross) for _ in range(n))

        self.ecg = ECGPairEmbedding(c)
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
        self.head = nn.Sequential(nn.Linear(2 * D, 2 * D), nn.LayerNorm(2 * D), nn.GELU(), nn.Linear(2 * D, c.num_classes))
        self.drop = nn.Dropout(c.dropout)
        self.post_init()
        self._init_head(self.head[-1])

    def encode_ecg(self, ecg: torch.Tensor, ecg_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        (e1, m1), (e2, m2) = self.ecg(ecg, ecg_mask)
        x, mask = self.drop(torch.cat([e1, e2], 1)), torch.cat([m1, m2], 1)
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
        for ecg_block, text_block in zip(self.fusion_ecg, self.fusion_text):
            e, t = ecg_block(e, e_mask, t, t_mask), text_block(t, t_mask, e, e_mask)
        pooled = torch.cat([masked_mean(self.ln_ecg(e), e_mask), masked_mean(self.ln_text(t), t_mask)], -1)
        logits = self.head(pooled)
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
