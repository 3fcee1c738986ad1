"""``resnet-lstm``: the ECG-QA paper's non-transformer QA baseline (upstream ``resnet_lstm_classifier``,
``examples/scratch/ecg_question_answering/resnet_lstm/deeper.yaml``), after VQA's "deeper LSTM Q + norm I"
with a 1-D ResNet-50 in place of VGG.

- ECG: a 1-D ResNet (torchvision's layout with Conv1d: stem conv k7 s2 → BN → ReLU → max-pool k3 s2, then
  bottleneck stages [3, 4, 6, 3] of 64/128/256/512 planes × expansion 4, global average pool) → linear
  2048 → ``final_dim`` 1024. A second ECG goes through the same network and its features are *added*
  (zero for a single-ECG question).
- Question: word embedding (768) → 2-layer unidirectional LSTM (512) over the real tokens; the final
  hidden and cell states of both layers concatenated (2 × 2 × 512 = 2048) → linear → 1024.
- Fusion: element-wise product of the two 1024-d vectors; head: one xavier-initialised linear layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ecgqa.models.layers import QAConfig, QAOutput, QAPreTrainedModel, xavier_head_


class ResNetLSTMConfig(QAConfig):
    """Defaults = upstream ``resnet_lstm/deeper.yaml`` (configuration resnet50, lstm 768 → 512 × 2 layers)
    with the ``ResnetLSTMConfig`` default ``final_dim`` 1024."""

    model_type = "ecgqa-resnet-lstm"

    def __init__(
        self,
        resnet_stages: tuple[int, ...] | list[int] = (3, 4, 6, 3),
        resnet_width: int = 64,
        lstm_input_dim: int = 768,
        lstm_hidden: int = 512,
        lstm_layers: int = 2,
        final_dim: int = 1024,
        model_name: str = "resnet-lstm",
        **kwargs: Any,
    ) -> None:
        self.resnet_stages = list(resnet_stages)
        self.resnet_width = resnet_width
        self.lstm_input_dim = lstm_input_dim
        self.lstm_hidden = lstm_hidden
        self.lstm_layers = lstm_layers
        self.final_dim = final_dim
        super().__init__(model_name=model_name, **kwargs)


class Bottleneck1d(nn.Module):
    """torchvision's bottleneck in 1-D: 1×1 → 3 (stride) → 1×1 (× 4 channels), BN after each, ReLU, residual."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv1d(c_in, planes, 1, bias=False), nn.BatchNorm1d(planes)
        self.conv2, self.bn2 = nn.Conv1d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm1d(planes)
        self.conv3, self.bn3 = nn.Conv1d(planes, c_out, 1, bias=False), nn.BatchNorm1d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet1d(nn.Module):
    """(B, 12, T) → (B, 8 · width · 4): upstream ``VanillaResnetModel`` (torchvision ResNet with Conv1d)."""

    def __init__(self, stages: list[int], width: int, in_leads: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads, width, 7, 2, 3, bias=False), nn.BatchNorm1d(width), nn.ReLU(), nn.MaxPool1d(3, 2, 1)
        )
        layers, c_in = [], width
        for i, n in enumerate(stages):
            planes = width * 2**i
            for j in range(n):
                layers.append(Bottleneck1d(c_in, planes, 2 if (j == 0 and i > 0) else 1))
                c_in = planes * Bottleneck1d.expansion
        self.layers = nn.Sequential(*layers)
        self.out_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, ecg: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(ecg)).mean(-1)


class ResNetLSTMModel(QAPreTrainedModel):
    config_class = ResNetLSTMConfig

    def __init__(self, config: ResNetLSTMConfig) -> None:
        super().__init__(config)
        c = config
        self.resnet = ResNet1d(c.resnet_stages, c.resnet_width)
        self.ecg_proj = nn.Linear(self.resnet.out_dim, c.final_dim)
        self.word_emb = nn.Embedding(c.vocab_size, c.lstm_input_dim, padding_idx=c.pad_token_id)
        self.lstm = nn.LSTM(c.lstm_input_dim, c.lstm_hidden, c.lstm_layers, batch_first=True)
        self.text_proj = nn.Linear(2 * c.lstm_layers * c.lstm_hidden, c.final_dim)
        self.head = xavier_head_(nn.Linear(c.final_dim, c.num_classes))
        self.post_init()

    def bert_embedding_tables(self) -> dict[str, nn.Embedding]:
        """Upstream ``LanguageLSTMModel`` takes only its word table from ``bert-base-uncased``."""
        return {"word_embeddings": self.word_emb}

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
        B = ecg.shape[0]
        if ecg_mask is None:
            ecg_mask = torch.ones(B, 2, dtype=torch.bool, device=ecg.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feats = self.ecg_proj(self.resnet(ecg.flatten(0, 1))).unflatten(0, (B, 2))  # (B, 2, final_dim)
        ecg_vec = (feats * ecg_mask[..., None].to(feats.dtype)).sum(1)  # ECG1 + ECG2 (absent: 0)
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.word_emb(input_ids), lengths, batch_first=True, enforce_sorted=False)
        _, (h, c) = self.lstm(packed)  # (layers, B, hidden) each
        text_vec = self.text_proj(torch.cat([h.transpose(0, 1).flatten(1), c.transpose(0, 1).flatten(1)], 1))
        logits = self.head(ecg_vec * text_vec)
        return QAOutput(loss=self.qa_loss(logits, labels), logits=logits)
