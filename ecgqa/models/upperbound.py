"""Upperbound attribute classifiers (1-D): ``se-wrn`` and ``resnet-attn``.

They map one 12-lead ECG (leads outside the question's lead subset zeroed) to a sigmoid score per
grounding class; the LLM experiments list the classes scoring > 0.5 as the ECG's interpretation.
Training uses the labelled-class BCE (``ecgqa.losses.labelled_bce``): each sample labels only a few
classes, and only those terms count.

- ``se-wrn``: a wide ResNet (pre-activation basic blocks, widening factor ``widen``) whose blocks
  end in squeeze-and-excitation channel gating; global average pooling; linear head.
- ``resnet-attn``: a plain 1-D ResNet whose time axis is pooled by learned attention (a small MLP
  scores each time step; softmax; weighted sum) instead of averaging; linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

ARCHS = ("se-wrn", "resnet-attn")


@dataclass
class UpperboundOutput(ModelOutput):
    """``logits`` (B, C) over the grounding classes; ``loss`` when labels and label_mask were given."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class UpperboundConfig(PretrainedConfig):
    model_type = "ecgqa-upperbound"

    def __init__(
        self,
        arch: str = "se-wrn",
        base_width: int = 16,
        widen: int = 4,
        blocks_per_stage: int = 2,
        stages: int = 3,
        kernel_size: int = 7,
        stem_stride: int = 2,
        se_reduction: int = 8,
        attn_hidden: int = 128,
        dropout: float = 0.1,
        classes: list[str] | None = None,
        rate: int = 500,
        signal_length: int = 5000,
        model_name: str = "se-wrn",
        **kwargs: Any,
    ) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown upperbound arch {arch!r}; expected one of {ARCHS}")
        self.arch = arch
        self.base_width = base_width
        self.widen = widen
        self.blocks_per_stage = blocks_per_stage
        self.stages = stages
        self.kernel_size = kernel_size
        self.stem_stride = stem_stride
        self.se_reduction = se_reduction
        self.attn_hidden = attn_hidden
        self.dropout = dropout
        self.task = "upperbound"
        self.classes = list(classes or [])
        self.rate = rate
        self.signal_length = signal_length
        self.model_name = model_name
        super().__init__(**kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(-1))[..., None]


class BasicBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-Conv x2), optionally followed by squeeze-excitation."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, dropout: float, se_reduction: int = 0) -> None:
        super().__init__()
        pad = kernel // 2
        self.bn1, self.conv1 = nn.BatchNorm1d(c_in), nn.Conv1d(c_in, c_out, kernel, stride, pad, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm1d(c_out), nn.Conv1d(c_out, c_out, kernel, 1, pad, bias=False)
        self.drop = nn.Dropout(dropout)
        self.se = SqueezeExcite(c_out, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = (nn.Conv1d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(self.drop(F.relu(self.bn2(out))))
        return self.shortcut(x) + self.se(out)


class AttentionPool(nn.Module):
    """Softmax-weighted sum over time, the weights scored by a small MLP per time step."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C)
        h = x.transpose(1, 2)
        w = torch.softmax(self.score(h), dim=1)
        return (w * h).sum(1)


class UpperboundModel(PreTrainedModel):
    config_class = UpperboundConfig
    base_model_prefix = "ecgqa"
    main_input_name = "ecg"

    def __init__(self, config: UpperboundConfig) -> None:
        super().__init__(config)
        c = config
        se = c.se_reduction if c.arch == "se-wrn" else 0
        widen = c.widen if c.arch == "se-wrn" else 1
        width = c.base_width
        self.stem = nn.Conv1d(12, width, c.kernel_size * 2 + 1, c.stem_stride, c.kernel_size, bias=False)
        layers = []
        for stage in range(c.stages):
            c_out = c.base_width * (2**stage) * widen
            for i in range(c.blocks_per_stage):
                stride = 2 if i == 0 else 1
                layers.append(BasicBlock(width, c_out, stride, c.kernel_size, c.dropout, se))
                width = c_out
        self.layers = nn.Sequential(*layers)
        self.norm = nn.BatchNorm1d(width)
        self.pool = AttentionPool(width, c.attn_hidden) if c.arch == "resnet-attn" else None
        self.head = nn.Linear(width, c.num_classes)
        self.post_init()
        nn.init.normal_(self.head.weight, std=width**-0.5)  # unit-variance logits at init (see fusion._init_head)
        nn.init.zeros_(self.head.bias)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv1d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self,
        ecg: torch.Tensor,
        lead_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        **unused: Any,
    ) -> UpperboundOutput:
        """ecg (B, 12, T); lead_mask (B, 12) bool zeroes the other leads (out of place); labels/label_mask (B, C)."""
        if lead_mask is not None:
            ecg = ecg * lead_mask.to(ecg.dtype)[..., None]
        x = F.relu(self.norm(self.layers(self.stem(ecg))))
        pooled = self.pool(x) if self.pool is not None else x.mean(-1)
        logits = self.head(pooled)
        loss = None
        if labels is not None and label_mask is not None:
            from ecgqa.losses import labelled_bce

            loss = labelled_bce(logits, labels, label_mask)
        return UpperboundOutput(loss=loss, logits=logits)
