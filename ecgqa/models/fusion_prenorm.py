"""``fusion-prenorm-*``: this project's earlier, modernised fusion transformer (not a published baseline).

Same layout as the reference (``fusion.py``: ``[ECG1][SEP+ECG2][question]``, the same conv feature
extractor, mean pool per part, linear head) but: pre-norm blocks with a final LayerNorm, dropout 0.1
everywhere, a positional conv of kernel 65 without weight norm run per ECG, a learned zero-initialised
SEP, three token types (ECG1, ECG2, question), BERT-style init and a LeCun-normal head (unit-variance
logits at init, which helps narrow widths learn). Padding is masked everywhere.
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
    masked_mean,
)


def lecun_head_(head: nn.Linear) -> nn.Linear:
    """LeCun-normal (std 1/sqrt(fan_in)), zero bias: unit-variance logits at init. With std 0.02 a narrow
    model's head passes almost no gradient back, and the encoder collapses to one answer first."""
    nn.init.normal_(head.weight, std=head.in_features**-0.5)
    nn.init.zeros_(head.bias)
    return head


class PreNormFusionConfig(QAConfig):
    model_type = "ecgqa-fusion-prenorm"

    def __init__(
        self,
        num_layers: int = 8,
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
        use_ecg: bool = True,
        use_text: bool = True,
        model_name: str = "fusion-prenorm-small",
        **kwargs: Any,
    ) -> None:
        if not (use_ecg or use_text):
            raise ValueError("a fusion model needs at least one modality (use_ecg or use_text)")
        self.num_layers = num_layers
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
        self.use_ecg = use_ecg
        self.use_text = use_text
        super().__init__(model_name=model_name, **kwargs)


class PreNormFusionModel(QAPreTrainedModel):
    config_class = PreNormFusionConfig

    def __init__(self, config: PreNormFusionConfig) -> None:
        super().__init__(config)
        c = config
        self.ecg = ECGPairEmbedding(c) if c.use_ecg else None
        self.question = QuestionEmbedding(c) if c.use_text else None
        self.question_type_emb = nn.Embedding(1, c.hidden_size) if c.use_text else None  # token type 2
        self.emb_norm = nn.LayerNorm(c.hidden_size)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(c.hidden_size, c.num_heads, c.ffn_size, c.dropout) for _ in range(c.num_layers)
        )
        self.ln_f = nn.LayerNorm(c.hidden_size)
        n_parts = 2 * c.use_ecg + c.use_text
        self.head = nn.Linear(n_parts * c.hidden_size, c.num_classes)
        for name, module in self.named_children():
            if name != "question" or not self.question.pretrained:
                module.apply(bert_init_)
        lecun_head_(self.head)
        self.post_init()

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
        for p, m in zip(parts, masks, strict=False):
            pooled.append(masked_mean(x[:, start : start + p.shape[1]], m))
            start += p.shape[1]
        logits = self.head(torch.cat(pooled, -1))
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
