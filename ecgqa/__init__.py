"""ecgqa: question answering over 12-lead ECGs (the ECG-QA benchmark)."""

__version__ = "0.1.0"
