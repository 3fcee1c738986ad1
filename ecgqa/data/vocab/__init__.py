"""Question tokenizers, built offline and deterministically (same inputs → same token ids, always).

- ``bert_tokenizer()``: BERT's uncased WordPiece tokenizer (``bert-base-uncased``, 30,522 tokens), as
  the ECG-QA baselines use it. Its vocabulary ships beside this file (``bert-base-uncased-vocab.txt``;
  origin and licence in ``NOTICE.md`` here), so nothing is downloaded at run time.
- ``train_wordpiece(questions)``: a WordPiece vocabulary built from the given questions (prepare
  passes the train split only, never valid/test): every character seen (word-initial and ``##``
  continuation) plus whole words by descending count, ties broken alphabetically. Unlike the
  ``tokenizers`` WordPiece trainer, whose tie-breaking moved 59 of 186 ids between identical runs,
  this construction is deterministic by definition. Both use BERT's normaliser and pre-tokeniser.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

BERT_VOCAB = Path(__file__).with_name("bert-base-uncased-vocab.txt")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_LENGTH = 512


def _from_tokens(tokens: list[str]) -> Any:
    """A BERT uncased WordPiece tokenizer (BERT's normaliser, pre-tokeniser, [CLS]/[SEP] template) over ``tokens``."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        vocab={token: i for i, token in enumerate(tokens)},
        do_lower_case=True,
        tokenize_chinese_chars=True,
        strip_accents=None,
        model_max_length=MAX_LENGTH,
    )


def read_vocab(path: Path) -> list[str]:
    """Tokens of a ``vocab.txt`` (one a line, id = line number)."""
    return path.read_text(encoding="utf-8").splitlines()


def bert_tokenizer() -> Any:
    """``BertTokenizerFast`` with bert-base-uncased's vocabulary, from the file shipped in the package."""
    if not BERT_VOCAB.is_file():
        raise FileNotFoundError(f"{BERT_VOCAB} is missing from this installation; reinstall ecgqa")
    return _from_tokens(read_vocab(BERT_VOCAB))


def train_wordpiece(questions: Iterable[str], vocab_size: int = 8000) -> Any:
    """A ``BertTokenizerFast`` whose vocabulary is built from ``questions`` (see the module docstring)."""
    from tokenizers import normalizers, pre_tokenizers

    normalize = normalizers.BertNormalizer(lowercase=True)
    split = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for question in questions:
        counts.update(word for word, _ in split.pre_tokenize_str(normalize.normalize_str(question)))
    if not counts:
        raise ValueError("no questions to build a vocabulary from (the train split is empty)")
    chars = sorted({c for word in counts for c in word})
    vocab = [*SPECIALS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    return _from_tokens(vocab)


def vocabulary(tokenizer: Any) -> list[str]:
    """The tokens of a tokenizer in id order."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def tokenizer_info(tokenizer: Any, kind: str) -> Any:
    """The ``TokenizerInfo`` recorded in a prepared directory's meta (checked against a checkpoint's)."""
    from ecgqa.data.prepared import TokenizerInfo

    tokens = vocabulary(tokenizer)
    digest = hashlib.sha256("".join(f"{t}\n" for t in tokens).encode()).hexdigest()
    return TokenizerInfo(kind=kind, vocab_size=len(tokens), vocab_sha256=digest)


__all__ = ["BERT_VOCAB", "SPECIALS", "bert_tokenizer", "read_vocab", "tokenizer_info", "train_wordpiece", "vocabulary"]
