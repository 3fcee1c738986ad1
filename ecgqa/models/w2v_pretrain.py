"""``ecgqa pretrain``: the W2V+CMSC+RLM self-supervised objective for the ``w2v-cmsc-rlm`` ECG encoder.

What fairseq-signals trains with ``examples/w2v_cmsc/config/pretraining/w2v_cmsc_rlm.yaml`` (model
``wav2vec2_cmsc``, criterion ``wav2vec2_with_cmsc``, task ``ecg_pretraining`` with
``random_leads_masking``), rebuilt on the ``W2VEncoder`` of ``ecgqa/models/w2v_cmsc.py``. Per batch of
CMSC pairs (two adjacent segments of one ECG; 5 s each by default, as upstream's 5 s crops):

1. **random lead masking (RLM)** — in training, every lead of every segment is zeroed with probability
   ``mask_leads_prob`` 0.5 (upstream ``RandomLeadsMask``: ``p`` 1.0, ``mask_leads_selection`` random);
2. **features** — conv features (gradient × ``feature_grad_mult`` 0.1); the *feature penalty* is their mean
   square (before the layer norm, as upstream); layer norm; the unmasked copy (``dropout_features``) is the
   target, the projected copy (``dropout_input``) the encoder input;
3. **time masking** — spans of ``mask_length`` 10 tokens start with probability ``mask_prob`` 0.65 (at least
   two spans), replaced by the learned ``mask_emb``; every row keeps the same number of masked tokens;
4. **targets** — the masked positions' unmasked features through the Gumbel vector quantizer
   (``latent_groups`` 2 × ``latent_vars`` 320, temperature 2 → 0.5 by × 0.999995 per update) and
   ``project_q``; ``num_negatives`` 100 distractors per position, drawn from the other masked positions
   of the same segment;
5. **contrastive loss** — cosine similarity of ``final_proj(encoder output)`` with the target and its
   distractors, / ``logit_temp`` 0.1, cross-entropy towards the target (InfoNCE); distractors equal to the
   target get -inf;
6. **diversity penalty** — (G·V − prob. perplexity) / (G·V), weight 0.1; feature penalty weight 10
   (``loss_weights: [0.1, 10]``);
7. **CMSC** — the encoder outputs (of the masked forward, as upstream's ``return_features``) averaged over
   time and L2-normalised; segment-0 rows against segment-1 rows, / 0.1; every pair of the same patient is
   a positive (the ECG itself when no patient table is given — upstream's PhysioNet 2021 ``patient_id`` is
   the record's index, i.e. the same ECG); the mean of both directions' −log softmax over the positives.

``loss = contrastive + 0.1·diversity + 10·feature penalty + CMSC`` — upstream's per-update objective
(its criterion sums each term × the masked-token count and fairseq divides by that count). Reported
besides: each term, the code perplexity (hard assignments), the prob. perplexity, the temperature and
the contrastive accuracy.

Transformers' wav2vec 2.0 utilities are used where they mean what upstream means:

- ``_compute_mask_indices`` (same span count ``int(p·T/L + U[0,1))``, at least ``min_masks``, starts drawn
  without replacement, spans may overlap). Two upstream steps it lacks are added here: rows are cut to the
  batch's smallest masked count (random subset, as upstream's ``compute_mask_indices``), so targets form a
  (B, M) grid; and its start range is ``T − L + 1`` positions where upstream's is ``T − L`` (a span may end on
  the last token) — kept as transformers draws it.
- ``_sample_negative_indices`` (uniform over the other masked positions of the same row, never the
  position itself: upstream's ``sample_negatives`` with ``cross_sample_negatives`` 0).
- ``Wav2Vec2GumbelVectorQuantizer`` is *not* used: its codebook is named ``codevectors`` (fairseq's
  ``quantizer.vars``, which checkpoints from fairseq-signals carry), it reports only the soft perplexity
  (upstream also logs the code perplexity of the hard assignments) and needs a wav2vec2 config. The
  quantizer below keeps fairseq's names (``vars``, ``weight_proj``) and init (vars U[0, 1), weight_proj
  N(0, 1), bias 0) and reuses transformers' ``_compute_perplexity``; its entropy uses ``xlogy`` where
  upstream adds 1e-7 inside the log (measured against upstream's code on the same weights: 1.5e-3
  absolute, 1.9e-5 relative, on the perplexity; 2.4e-7 on the loss).

Deviations from upstream, each deliberate: losses are in nats (fairseq logs loss / ln 2, bits); the CMSC
average is over all tokens (upstream divides by the non-zero count per channel: the same unless an
output is exactly zero); the quick and test sizes scale ``mask_length``, ``num_negatives``, the codebook and
``final_dim`` down with their shorter token sequences (``PRETRAIN_SIZES``; the published size keeps the
yaml's). The run machinery (``--out`` claim, resume, ``metrics.jsonl``, Trainer arguments) is
``ecgqa/training/trainer.py``'s. The output folder's ``w2v.*`` weights initialise ``ecgqa train --model w2v-cmsc-rlm*
--init-from DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    Wav2Vec2GumbelVectorQuantizer,
    _compute_mask_indices,
    _sample_negative_indices,
)
from transformers.utils import ModelOutput

from ecgqa.models import create_config, family_of
from ecgqa.models.w2v_cmsc import W2VCMSCConfig, W2VEncoder

#: The yaml's model settings that differ from the fine-tuning config (``W2VCMSCConfig`` defaults are the
#: grounding fine-tuning's): transformer dropouts are fairseq's ``TransformerConfig`` defaults.
PRETRAIN_ENCODER = {
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.1,
    "dropout_features": 0.1,
    "feature_grad_mult": 0.1,
}

#: Objective settings per encoder size. Published = the yaml + ``Wav2Vec2Config`` defaults. The quick
#: (38 tokens per 5 s segment at 500 Hz) and test (8 tokens) encoders see 4× and 20× fewer tokens than the
#: published one (156): spans, distractors, codebook and target width shrink with them.
PRETRAIN_SIZES: dict[str, dict[str, Any]] = {
    "w2v-cmsc-rlm": {},
    "w2v-cmsc-rlm-quick": {"mask_length": 3, "num_negatives": 20, "latent_vars": 64, "final_dim": 64},
    "w2v-cmsc-rlm-test": {"mask_length": 2, "num_negatives": 8, "latent_vars": 16, "final_dim": 16},
}


# ----------------------------------------------------------------------------------------------- model


class W2VPretrainConfig(W2VCMSCConfig):
    """The encoder fields of ``W2VCMSCConfig`` plus the objective's (names as fairseq-signals'
    ``Wav2Vec2Config`` and the ``wav2vec2_with_cmsc`` criterion where one exists). Defaults: the yaml's."""

    model_type = "ecgqa-w2v-cmsc-pretrain"

    def __init__(
        self,
        mask_prob: float = 0.65,
        mask_length: int = 10,
        min_masks: int = 2,
        num_negatives: int = 100,
        logit_temp: float = 0.1,
        latent_vars: int = 320,
        latent_groups: int = 2,
        latent_dim: int = 0,
        final_dim: int = 256,
        latent_temp: tuple[float, float, float] | list[float] = (2.0, 0.5, 0.999995),
        diversity_weight: float = 0.1,
        feature_pen_weight: float = 10.0,
        cmsc_weight: float = 1.0,
        cmsc_temp: float = 0.1,
        mask_leads_prob: float = 0.5,
        segment_length: int = 2500,
        **kwargs: Any,
    ) -> None:
        for key, value in PRETRAIN_ENCODER.items():
            kwargs.setdefault(key, value)
        self.mask_prob = mask_prob
        self.mask_length = mask_length
        self.min_masks = min_masks
        self.num_negatives = num_negatives
        self.logit_temp = logit_temp
        self.latent_vars = latent_vars
        self.latent_groups = latent_groups
        self.latent_dim = latent_dim
        self.final_dim = final_dim
        self.latent_temp = [float(t) for t in latent_temp]
        self.diversity_weight = diversity_weight
        self.feature_pen_weight = feature_pen_weight
        self.cmsc_weight = cmsc_weight
        self.cmsc_temp = cmsc_temp
        self.mask_leads_prob = mask_leads_prob
        self.segment_length = segment_length
        super().__init__(**kwargs)
        if len(self.latent_temp) != 3:
            raise ValueError(f"latent_temp {latent_temp!r}: expected (start, end, decay)")
        vq_dim = latent_dim if latent_dim > 0 else final_dim
        if vq_dim % latent_groups:
            raise ValueError(f"the quantized width {vq_dim} is not divisible by latent_groups {latent_groups}")


@dataclass
class W2VPretrainOutput(ModelOutput):
    """The objective and its parts (scalars); ``logits`` (masked tokens, 1 + negatives), target at 0."""

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    diversity_loss: torch.Tensor | None = None
    feature_penalty: torch.Tensor | None = None
    cmsc_loss: torch.Tensor | None = None
    code_perplexity: torch.Tensor | None = None
    prob_perplexity: torch.Tensor | None = None
    temperature: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask_indices: torch.Tensor | None = None


class GumbelVectorQuantizer(nn.Module):
    """fairseq's Gumbel vector quantizer (``combine_groups`` False, ``weight_proj_depth`` 1) with its
    parameter names: ``weight_proj`` (features → groups × vars logits), ``vars`` (1, G·V, width / G)."""

    def __init__(self, dim: int, num_vars: int, groups: int, vq_dim: int, temp: tuple[float, float, float]) -> None:
        super().__init__()
        self.num_vars, self.groups = num_vars, groups
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups))
        nn.init.uniform_(self.vars)
        self.weight_proj = nn.Linear(dim, groups * num_vars)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.max_temp, self.min_temp, self.temp_decay = (float(t) for t in temp)
        self.curr_temp = self.max_temp

    def set_num_updates(self, num_updates: int) -> None:
        """Temperature after ``num_updates`` updates: max(start · decay^n, end) (upstream's schedule)."""
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, dim) → (quantized (N, vq_dim), code perplexity, prob perplexity), perplexities summed over groups."""
        n = x.shape[0]
        logits = self.weight_proj(x).view(n, self.groups, self.num_vars)
        hard = F.one_hot(logits.argmax(-1), self.num_vars).to(logits.dtype)
        perplexity = Wav2Vec2GumbelVectorQuantizer._compute_perplexity
        code_ppl = perplexity(hard.float())
        prob_ppl = perplexity(torch.softmax(logits.float(), dim=-1))
        if self.training:
            onehot = F.gumbel_softmax(logits.float(), tau=self.curr_temp, hard=True).type_as(logits)
        else:
            onehot = hard
        q = (onehot.reshape(n, self.groups * self.num_vars, 1) * self.vars).view(n, self.groups, self.num_vars, -1)
        return q.sum(-2).reshape(n, -1), code_ppl, prob_ppl


def compute_mask(shape: tuple[int, int], mask_prob: float, mask_length: int, min_masks: int = 2) -> np.ndarray:
    """(B, T) boolean time mask: transformers' spans, then every row cut to the batch's smallest masked
    count by a random subset (upstream's step), so each row masks the same number of tokens."""
    batch, tokens = shape
    if tokens < mask_length + 1:
        raise ValueError(
            f"{tokens} tokens per segment cannot hold a mask span of {mask_length} and a distractor; "
            "use longer segments (--segment-seconds) or a smaller mask_length"
        )
    mask = _compute_mask_indices((batch, tokens), mask_prob, mask_length, min_masks=min_masks)
    counts = mask.sum(1)
    fewest = int(counts.min())
    for row in np.flatnonzero(counts > fewest):
        keep = np.random.choice(np.flatnonzero(mask[row]), fewest, replace=False)
        mask[row] = False
        mask[row, keep] = True
    return mask


def cmsc_loss(
    features: torch.Tensor, patient_id: torch.Tensor, segment: torch.Tensor, temp: float = 0.1, eps: float = 1e-8
) -> torch.Tensor:
    """Contrastive multi-segment coding: (N, D) pooled features, their patient ids and segment (0/1) →
    the mean over positives (same patient) of −log softmax, averaged over both directions."""
    features = features / torch.clamp(features.detach().norm(dim=-1, keepdim=True), min=eps)
    first, second = segment == 0, segment == 1
    logits = features[first] @ features[second].T / temp
    positive = patient_id[first][:, None] == patient_id[second][None, :]
    loss_rows = -F.log_softmax(logits, dim=-1)[positive].mean()
    loss_cols = -F.log_softmax(logits.T, dim=-1)[positive.T].mean()
    return loss_rows / 2 + loss_cols / 2


class W2VPretrainModel(PreTrainedModel):
    """The pretraining model: ``w2v`` (the ``W2VEncoder`` a fine-tuned ``w2v-cmsc-rlm`` starts from) plus
    fairseq's pretraining parts ``mask_emb``, ``quantizer``, ``project_q``, ``final_proj``."""

    config_class = W2VPretrainConfig
    base_model_prefix = "ecgqa"
    main_input_name = "source"

    def __init__(self, config: W2VPretrainConfig) -> None:
        super().__init__(config)
        c = config
        self.w2v = W2VEncoder(c)
        self.mask_emb = nn.Parameter(torch.empty(c.encoder_embed_dim).uniform_())
        vq_dim = c.latent_dim if c.latent_dim > 0 else c.final_dim
        self.quantizer = GumbelVectorQuantizer(
            self.w2v.embed, c.latent_vars, c.latent_groups, vq_dim, tuple(c.latent_temp)
        )
        self.project_q = nn.Linear(vq_dim, c.final_dim)
        self.final_proj = nn.Linear(c.encoder_embed_dim, c.final_dim)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # every module initialises itself, as upstream (module by module)

    def set_num_updates(self, num_updates: int) -> None:
        self.quantizer.set_num_updates(num_updates)

    def lead_mask(self, source: torch.Tensor) -> torch.Tensor:
        """RLM: every lead of every segment zeroed with probability ``mask_leads_prob`` (training only)."""
        p = self.config.mask_leads_prob
        if not self.training or p <= 0:
            return source
        survivors = torch.rand(source.shape[:2], device=source.device) >= p
        return source * survivors[..., None].to(source.dtype)

    def forward(
        self,
        source: torch.Tensor,
        patient_id: torch.Tensor | None = None,
        segment: torch.Tensor | None = None,
        mask_indices: torch.Tensor | None = None,
        **unused: Any,
    ) -> W2VPretrainOutput:
        """source (N, 12, S) segments; patient_id / segment (N,) for CMSC (omitted: no CMSC term);
        mask_indices (N, T') bool, equal count per row (default: drawn by ``compute_mask``)."""
        c, w2v = self.config, self.w2v
        source = self.lead_mask(source)
        features = w2v.conv_features(source)
        feature_pen = features.float().pow(2).mean()
        features = w2v.layer_norm(features.transpose(1, 2))
        targets = w2v.dropout_features(features)
        x = w2v.project(features)
        n, tokens, _ = x.shape
        if mask_indices is None:
            mask_indices = torch.from_numpy(compute_mask((n, tokens), c.mask_prob, c.mask_length, c.min_masks))
        mask = mask_indices.to(device=x.device, dtype=torch.bool)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        x = w2v.encoder(x)

        q, code_ppl, prob_ppl = self.quantizer(targets[mask])
        y = self.project_q(q)  # (N·M, F), row-major over (segment, masked position)
        negatives = self._negatives(y, mask)  # (N·M, K, F)
        pred = self.final_proj(x[mask])
        candidates = torch.cat([y[:, None], negatives], dim=1)
        logits = torch.cosine_similarity(pred[:, None].float(), candidates.float(), dim=-1) / c.logit_temp
        neg_is_pos = (y[:, None] == negatives).all(-1)
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(neg_is_pos, float("-inf"))], dim=1)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits, target)

        num_vars = c.latent_vars * c.latent_groups
        diversity = (num_vars - prob_ppl) / num_vars
        loss = contrastive + c.diversity_weight * diversity + c.feature_pen_weight * feature_pen
        cmsc = None
        if patient_id is not None and segment is not None:
            cmsc = cmsc_loss(x.mean(1).float(), patient_id.to(x.device), segment.to(x.device), c.cmsc_temp)
            loss = loss + c.cmsc_weight * cmsc
        with torch.no_grad():
            best, worst = logits.argmax(-1) == 0, logits.argmin(-1) == 0
            accuracy = (best & ~worst).float().mean()
        return W2VPretrainOutput(
            loss=loss,
            contrastive_loss=contrastive.detach(),
            diversity_loss=diversity.detach(),
            feature_penalty=feature_pen.detach(),
            cmsc_loss=None if cmsc is None else cmsc.detach(),
            code_perplexity=code_ppl.detach(),
            prob_perplexity=prob_ppl.detach(),
            temperature=torch.tensor(self.quantizer.curr_temp),
            accuracy=accuracy,
            logits=logits.detach(),
            mask_indices=mask,
        )

    def _negatives(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Distractors for every masked token: transformers' indices into the flat (N·T') grid, which point
        only at masked positions of the same row; gathered from the targets scattered onto that grid."""
        n, tokens = mask.shape
        k = self.config.num_negatives
        idx = _sample_negative_indices((n, tokens), k, mask.cpu().numpy())
        flat = mask.reshape(-1)
        grid = y.new_zeros(n * tokens, y.shape[-1]).index_copy(0, torch.nonzero(flat).squeeze(1), y)
        picked = torch.from_numpy(idx.reshape(n * tokens, k).astype(np.int64)).to(y.device)[flat]
        return grid[picked]


AutoConfig.register(W2VPretrainConfig.model_type, W2VPretrainConfig, exist_ok=True)


def pretrain_config(model: str, **overrides: Any) -> W2VPretrainConfig:
    """The pretraining config for encoder size ``model`` (a ``w2v-cmsc-rlm*`` registry name): its encoder
    fields, the yaml's pretraining dropouts, the size's objective settings, then ``overrides``."""
    if model not in PRETRAIN_SIZES:
        family = family_of(model)  # "unknown model …" with the list
        raise ValueError(
            f"--model {model}: pretraining is for the w2v-cmsc-rlm encoder ({family} is not); choose "
            f"one of {', '.join(PRETRAIN_SIZES)}"
        )
    generic = set(PretrainedConfig().to_dict())
    encoder = {
        k: v
        for k, v in create_config(model).to_dict().items()
        if k not in generic and k not in ("task", "classes", "model_type")
    }
    return W2VPretrainConfig(
        **{**encoder, **PRETRAIN_ENCODER, **PRETRAIN_SIZES[model], "model_name": model, **overrides}
    )
