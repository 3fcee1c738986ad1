"""Judging answers: metrics, the reply rules, ``evaluate`` (checkpoints), ``score`` (any model's answers),
``report`` (runs side by side) and the paper's LLM sample."""
