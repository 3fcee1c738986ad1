"""``resnet-attn``: Nejedly et al.'s residual network with multi-head self-attention, the second upperbound
classifier (upstream ``Nejedly2021ResnetModel`` in ``fairseq_signals/models/resnet.py`` +
``Nejedly2021ResnetClassificationModel`` in ``classification/resnet_classifier.py``, config
``examples/scratch/ecg_classification/resnet/nejedly2021_total.yaml``: ``indicate_leads: true``,
``use_mha: true``, ``final_dropout: 0.5``).

- stem: Conv1d(12 → 256, kernel 15, stride 2) → BN → leaky ReLU;
- 5 residual blocks of 256 channels: conv k9 stride 2 → BN → leaky ReLU → conv k9 → BN → leaky ReLU,
  shortcut AvgPool(2, ceil) + 1×1 conv; 5000 samples → 79 time steps;
- head: Dropout(0.5) → ``nn.MultiheadAttention(256, 8)`` self-attention over time → mean over time →
  concatenated with a 12-d lead indicator → one xavier-initialised linear layer.

The lead indicator (config ``lead_indicator``):

- ``"nonzero"`` (default, upstream's rule, ``fairseq_signals/models/resnet.py`` ``(source != 0).all(-1)``):
  1 for a lead of the (masked) input signal none of whose samples is exactly 0. A lead outside the
  question's subset (zeroed) gives 0, but so does any lead with a single sample at exactly 0, which on
  real 16-bit recordings is nearly every lead: on the bundled PTB-XL sample 99.8 % of leads hold an
  exact zero, so the indicator is almost always all zeros (uninformative), as it was upstream.
- ``"mask"`` (this project's alternative, ``--set lead_indicator=mask``): the batch's ``lead_mask``
  (``ecgqa/data/torch_datasets.py``), 1 exactly for the leads of the question's subset. Not the same
  subset as upstream's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgqa.models.layers import UpperboundConfig, UpperboundOutput, UpperboundPreTrainedModel, xavier_head_

#: "nonzero": upstream's (signal != 0).all(-1) per lead; "mask": the question's lead subset (lead_mask)
LEAD_INDICATORS = ("nonzero", "mask")


class ResNetAttnConfig(UpperboundConfig):
    """Defaults = upstream ``Nejedly2021ResnetConfig`` (num_blocks 5, num_filters 256, kernel_size [15, 9],
    stride 2, no conv bias) and ``nejedly2021_total.yaml``.

    ``lead_indicator``: every registry entry (``resnet-attn``, ``resnet-attn-test``) sets upstream's
    ``"nonzero"``; the class default ``"mask"`` only keeps checkpoints saved before the field existed
    (their config.json lacks it) on the rule they were trained with."""

    model_type = "ecgqa-resnet-attn"

    def __init__(
        self,
        channels: int = 256,
        num_blocks: int = 5,
        stem_kernel: int = 15,
        block_kernel: int = 9,
        stride: int = 2,
        attention_heads: int = 8,
        final_dropout: float = 0.5,
        indicate_leads: bool = True,
        lead_indicator: str = "mask",
        model_name: str = "resnet-attn",
        **kwargs: Any,
    ) -> None:
        self.channels = channels
        self.num_blocks = num_blocks
        self.stem_kernel = stem_kernel
        self.block_kernel = block_kernel
        self.stride = stride
        self.attention_heads = attention_heads
        self.final_dropout = final_dropout
        if lead_indicator not in LEAD_INDICATORS:
            raise ValueError(f"lead_indicator {lead_indicator!r}: choose one of {', '.join(LEAD_INDICATORS)}")
        self.indicate_leads = indicate_leads
        self.lead_indicator = lead_indicator
        super().__init__(model_name=model_name, **kwargs)


class NejedlyBlock(nn.Module):
    """Upstream ``Nejedly2021ResidualBlock`` (1-D, downsampling)."""

    def __init__(self, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        pad = (kernel - 1) // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.shortcut = nn.Sequential(
            nn.AvgPool1d(stride, stride, ceil_mode=True), nn.Conv1d(channels, channels, 1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)))
        out = F.leaky_relu(self.bn2(self.conv2(out)))
        return out + self.shortcut(x)


class ResNetAttnModel(UpperboundPreTrainedModel):
    config_class = ResNetAttnConfig

    def __init__(self, config: ResNetAttnConfig) -> None:
        super().__init__(config)
        c = config
        C = c.channels
        self.stem = nn.Conv1d(12, C, c.stem_kernel, c.stride, (c.stem_kernel - 1) // 2, bias=False)
        self.stem_norm = nn.BatchNorm1d(C)
        self.blocks = nn.Sequential(*(NejedlyBlock(C, c.block_kernel, c.stride) for _ in range(c.num_blocks)))
        self.final_drop = nn.Dropout(c.final_dropout)
        self.attention = nn.MultiheadAttention(C, c.attention_heads, batch_first=True)
        self.head = xavier_head_(nn.Linear(C + (12 if c.indicate_leads else 0), c.num_classes))
        self.post_init()

    def forward(
        self,
        ecg: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        **unused: Any,
    ) -> UpperboundOutput:
        """ecg (B, 12, T); lead_mask (B, 12) bool: the question's leads (others zeroed); labels / label_mask (B, C)."""
        if lead_mask is None:
            lead_mask = torch.ones(ecg.shape[0], 12, dtype=torch.bool, device=ecg.device)
        ecg = ecg * lead_mask.to(ecg.dtype)[..., None]
        x = self.blocks(F.leaky_relu(self.stem_norm(self.stem(ecg))))
        x = self.final_drop(x).transpose(1, 2)  # (B, T', C)
        x, _ = self.attention(x, x, x, need_weights=False)
        x = x.mean(1)
        if self.config.indicate_leads:
            indicator = lead_mask if self.config.lead_indicator == "mask" else (ecg != 0).all(-1)
            x = torch.cat([x, indicator.to(x.dtype)], 1)
        logits = self.head(x)
        return UpperboundOutput(loss=self.upperbound_loss(logits, labels, label_mask), logits=logits)
