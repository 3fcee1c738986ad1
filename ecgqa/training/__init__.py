"""Training stages: ``train`` (QA models and upperbound classifiers), ``pretrain`` (W2V+CMSC+RLM), the machinery
they share (``trainer``: the run folder, resume, the Trainer, progress; ``errors``: one-line save/resume errors),
the recipes they fill their defaults from, and the fairseq-signals checkpoint bridge."""
