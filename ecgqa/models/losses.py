"""The two losses of the toolkit; the models call them (``model(**batch).loss``), nothing else computes a loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def qa_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """QA loss: BCE-with-logits over the whole answer space, mean over batch × classes.

    Upstream's multi-label QA criterion sums the terms and divides by their number, which is this mean
    (docs/models.md). Computed in float32 whatever the autocast dtype of the logits.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def labelled_bce(logits: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on the labelled (sample, class) cells only (docs/benchmark.md, attribute classifiers).

    An upperbound sample labels a few of the grounding classes; the others are unknown, not negative.
    Each class term is averaged over the samples of the batch that label it, so a frequent class does
    not drown a rare one; the result is the mean of those per-class terms over the classes the batch
    labels (zero, still differentiable, when it labels none).
    """
    logits = logits.float()  # float32 whatever the autocast dtype, as qa_bce
    mask = label_mask.to(logits.dtype)
    cell = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none") * mask
    count = mask.sum(dim=0)  # (C,) samples labelling each class
    present = count > 0
    if not bool(present.any()):
        return (logits * 0.0).sum()
    per_class = cell.sum(dim=0)[present] / count[present]
    return per_class.mean()
