"""Training stages: ``train`` (QA models and upperbound classifiers), ``pretrain`` (W2V+CMSC+RLM), the
recipes they fill their defaults from, and the fairseq-signals checkpoint bridge."""
