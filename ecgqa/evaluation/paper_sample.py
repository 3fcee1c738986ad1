"""The ECG-QA paper's LLM sample: the exact question ids its GPT runs were scored on.

The paper evaluated LLMs on a ~10 % sample of the PTB-XL test split; the authors later published the
ids (``published/sampled_ecgqa_ids.txt``, provenance and licence in ``published/SOURCE.md``). The ids
are PTB-XL test ``sample_id``s; a sample id names the same question in the template and the
paraphrased release, so one list serves both. It does not cover MIMIC-IV-ECG or other splits: there
the seeded stratified draw (``llm_eval.sampling``) stands in for it.

The file is checked against :data:`PAPER_SAMPLE_SHA256` on every load, so a changed or truncated copy
is an error rather than a silently different sample.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PAPER_SAMPLE_FILE: Path = Path(__file__).parent.parent / "published" / "sampled_ecgqa_ids.txt"
PAPER_SAMPLE_SHA256: str = "01c805f4cb4cb0aab6da13102710e189d71b1e518bd3db23e1e3b80fc4acb569"
PAPER_SAMPLE_VERSION = "ptbxl"
PAPER_SAMPLE_SPLIT = "test"


class PaperSampleError(ValueError):
    """The shipped sample file is missing, altered or malformed."""


def applies(version: str, split: str) -> bool:
    """Whether the published sample covers this data: PTB-XL (template or paraphrased), test split."""
    return version == PAPER_SAMPLE_VERSION and split == PAPER_SAMPLE_SPLIT


def ids_sha256(ids: list[int]) -> str:
    """sha256 of an id list written as the published file is (one decimal id per line, ``\\n`` after each).

    The published list hashes to :data:`PAPER_SAMPLE_SHA256` this way; a drawn sample gets a hash
    that is comparable in the same sense.
    """
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


@lru_cache(maxsize=2)
def _load(path: Path) -> tuple[int, ...]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PaperSampleError(f"{path}: cannot read the published LLM sample ({e.strerror or e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != PAPER_SAMPLE_SHA256:
        raise PaperSampleError(
            f"{path}: sha256 {digest} is not the published list's {PAPER_SAMPLE_SHA256}; the file was altered "
            "(reinstall ecgqa)"
        )
    ids = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        try:
            ids.append(int(line))
        except ValueError:
            raise PaperSampleError(f"{path}:{n}: not a sample id: {line!r}") from None
    return tuple(ids)


def paper_sample_ids() -> list[int]:
    """The 8,154 published PTB-XL test sample ids, ascending (verified against the sha256 first)."""
    return list(_load(PAPER_SAMPLE_FILE))
