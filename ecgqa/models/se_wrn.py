"""``se-wrn``: the squeeze-and-excitation wide residual network upperbound classifier (upstream
``fairseq_signals/models/se_wrn.py`` + ``classification/resnet_classifier.py``, config
``examples/scratch/ecg_classification/resnet/se_wrn_total.yaml``).

It maps one 12-lead ECG (leads outside the question's lead subset zeroed) to a sigmoid score per
grounding class; the LLM experiments list the classes scoring > 0.5 as the ECG's interpretation.

- stem: Conv1d(12 → 16, kernel 11, stride 1) → BN → ReLU;
- 4 stages of widths [16, 32, 64, 128] (× ``widen``, upstream 1), 3 blocks each, kernel 11; the first block
  of a stage halves the time axis and its shortcut is AvgPool(2, ceil) + 1×1 conv;
- block: [BN → ReLU] (not in the very first block) → conv (stride) → BN → ReLU → Dropout(0.3) → conv →
  squeeze-excitation (global mean → Linear(C, C/8) → ReLU → Linear → sigmoid gate) → + shortcut;
- head: BN → ReLU → Dropout(0.3) → global *max* pool → one xavier-initialised linear layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ecgqa.models.layers import UpperboundConfig, UpperboundOutput, UpperboundPreTrainedModel, xavier_head_


class SEWRNConfig(UpperboundConfig):
    """Defaults = upstream ``SEWideResidualNetworkConfig`` (num_filters [16, 16, 32, 64, 128], num_blocks 3,
    kernel 11, ratio 8, widening 1) and its fine-tuning ``final_dropout`` 0.3."""

    model_type = "ecgqa-se-wrn"

    def __init__(
        self,
        widths: tuple[int, ...] | list[int] = (16, 16, 32, 64, 128),
        blocks_per_stage: int = 3,
        kernel_size: int = 11,
        widen: int = 1,
        se_ratio: int = 8,
        block_dropout: float = 0.3,
        final_dropout: float = 0.3,
        model_name: str = "se-wrn",
        **kwargs: Any,
    ) -> None:
        self.widths = list(widths)
        self.blocks_per_stage = blocks_per_stage
        self.kernel_size = kernel_size
        self.widen = widen
        self.se_ratio = se_ratio
        self.block_dropout = block_dropout
        self.final_dropout = final_dropout
        super().__init__(model_name=model_name, **kwargs)


class SqueezeExcite(nn.Module):
    """Channel gate: global mean over time → Linear(C, C/ratio) → ReLU → Linear → sigmoid, times x."""

    def __init__(self, channels: int, ratio: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, channels // ratio), nn.Linear(channels // ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(-1)))))[..., None]


class SEWideBlock(nn.Module):
    """One SE-WRN residual block (upstream ``SEWideResidualBlock``, 1-D)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, downsample: bool, first: bool, dropout: float, se_ratio: int
    ) -> None:
        super().__init__()
        pad, stride = (kernel - 1) // 2, 2 if downsample else 1
        self.bn1 = None if first else nn.BatchNorm1d(c_in)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, stride, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, 1, pad, bias=False)
        self.se = SqueezeExcite(c_out, se_ratio)
        self.shortcut = (
            nn.Sequential(nn.AvgPool1d(2, 2, ceil_mode=True), nn.Conv1d(c_in, c_out, 1, bias=False))
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.bn1 is None else F.relu(self.bn1(x))
        out = self.conv2(self.drop(F.relu(self.bn2(self.conv1(out)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.se(out) + identity


def se_wrn_backbone(
    config_widths: list[int], blocks_per_stage: int, kernel: int, widen: int, dropout: float, se_ratio: int
) -> tuple[nn.Sequential, nn.Sequential, list[int]]:
    """The stem and the residual blocks of an SE-WRN, and its stage widths."""
    k, w = kernel, [config_widths[0]] + [x * widen for x in config_widths[1:]]
    stem = nn.Sequential(nn.Conv1d(12, w[0], k, 1, (k - 1) // 2, bias=False), nn.BatchNorm1d(w[0]), nn.ReLU())
    blocks = []
    for stage in range(len(w) - 1):
        for i in range(blocks_per_stage):
            blocks.append(
                SEWideBlock(
                    w[stage] if i == 0 else w[stage + 1],
                    w[stage + 1],
                    k,
                    downsample=i == 0,
                    first=stage == 0 and i == 0,
                    dropout=dropout,
                    se_ratio=se_ratio,
                )
            )
    return stem, nn.Sequential(*blocks), w


class SEWRNFeatures(nn.Module):
    """An SE-WRN without its pool and head, as an ECG encoder (``fusion``'s ``ecg_encoder="se-wrn"``):
    (B, 12, T) → (B, C, T / 2**stages), ReLU(BN(blocks(stem))). Its parameter names are ``SEWRNModel``'s
    (``stem.*``, ``blocks.*``, ``final_norm.*``), so a trained attribute classifier's weights load into it."""

    def __init__(self, widths: list[int], blocks_per_stage: int, kernel: int = 11, se_ratio: int = 8) -> None:
        super().__init__()
        self.stem, self.blocks, w = se_wrn_backbone(list(widths), blocks_per_stage, kernel, 1, 0.0, se_ratio)
        self.final_norm = nn.BatchNorm1d(w[-1])

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        return F.relu(self.final_norm(self.blocks(self.stem(ecg))))


class SEWRNModel(UpperboundPreTrainedModel):
    config_class = SEWRNConfig

    def __init__(self, config: SEWRNConfig) -> None:
        super().__init__(config)
        c = config
        self.stem, self.blocks, w = se_wrn_backbone(
            c.widths, c.blocks_per_stage, c.kernel_size, c.widen, c.block_dropout, c.se_ratio
        )
        self.final_norm = nn.BatchNorm1d(w[-1])
        self.final_drop = nn.Dropout(c.final_dropout)
        self.head = xavier_head_(nn.Linear(w[-1], c.num_classes))
        self.post_init()

    def forward(
        self,
        ecg: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        **unused: Any,
    ) -> UpperboundOutput:
        """ecg (B, 12, T); lead_mask (B, 12) bool zeroes the other leads; labels / label_mask (B, C)."""
        if lead_mask is not None:
            ecg = ecg * lead_mask.to(ecg.dtype)[..., None]
        x = self.blocks(self.stem(ecg))
        x = self.final_drop(F.relu(self.final_norm(x))).amax(-1)
        logits = self.head(x)
        return UpperboundOutput(loss=self.upperbound_loss(logits, labels, label_mask), logits=logits)
