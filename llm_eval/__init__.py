"""Grounded LLM evaluation on ECG-QA: sampling, grounding with an upperbound classifier, prompts,
an OpenAI-compatible client, a durable response store, and scoring (docs/llm-eval.md; the protocol is in
docs/benchmark.md)."""
