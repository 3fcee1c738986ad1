"""The fixed vocabulary of ECG-QA: lead names, lead groups and question-type codes; and the preparation
defaults the command line shows.

Every other module imports these; nothing else spells out a lead list or a code table. This module imports
nothing heavy: the CLI's parser reads it.
"""

from __future__ import annotations

#: The standard 12-lead order every array in this toolkit uses (PTB-XL's order).
LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")
CHEST = ("V1", "V2", "V3", "V4", "V5", "V6")

#: Lead subsets named by ECG-QA questions ("... in inferior leads"); leads outside are zeroed.
LEAD_GROUPS: dict[str, tuple[str, ...]] = {
    "entire": LEADS,
    "limb": LIMB,
    "chest": CHEST,
    "inferior": ("II", "III", "aVF"),
    "anterior": ("V3", "V4"),
    "septal": ("V1", "V2"),
    "lateral": ("I", "aVL", "V5", "V6"),
    "anteroseptal": ("V1", "V2", "V3", "V4"),
    "anterolateral": ("I", "aVL", "V3", "V4", "V5", "V6"),
    "inferolateral": ("I", "II", "III", "aVL", "aVF", "V5", "V6"),
    "inferoseptal": ("II", "III", "aVF", "V1", "V2"),
    "inferoposterior": ("II", "III", "aVF", "V1", "V2", "V3"),
    "inferoposterolateral": ("I", "II", "III", "aVL", "aVF", "V1", "V2", "V3", "V5", "V6"),
    "posterior": ("V4", "V5", "V6"),
    "frontal": LIMB,
    "horizontal": CHEST,
    "diffuse": LEADS,
    "frontal and horizontal": LEADS,
}
LEAD_GROUPS.update({lead: (lead,) for lead in LEADS})

QUESTION_TYPES: tuple[str, ...] = (
    "single-verify",
    "single-choose",
    "single-query",
    "comparison_consecutive-verify",
    "comparison_consecutive-query",
    "comparison_irrelevant-verify",
    "comparison_irrelevant-query",
)
ATTRIBUTE_TYPES: tuple[str, ...] = (
    "scp_code",
    "noise",
    "stage_of_infarction",
    "extra_systole",
    "heart_axis",
    "numeric_feature",
)
_QT1 = {"single": 0, "comparison_consecutive": 1, "comparison_irrelevant": 2}
_QT2 = {"verify": 0, "choose": 1, "query": 2}


def question_codes(question_type: str, attribute_type: str) -> tuple[int, int, int]:
    """The reference baselines' (qt1, qt2, qt3) codes of a question.

    qt1: single 0, comparison_consecutive 1, comparison_irrelevant 2;
    qt2 = 3*qt1 + {verify 0, choose 1, query 2}; qt3 = 6*qt2 + attribute-type index.
    """
    try:
        scope, kind = question_type.rsplit("-", 1)
        qt1 = _QT1[scope]
        qt2 = 3 * qt1 + _QT2[kind]
        qt3 = 6 * qt2 + ATTRIBUTE_TYPES.index(attribute_type)
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"unknown question_type/attribute_type {question_type!r}/{attribute_type!r}; "
            f"expected one of {QUESTION_TYPES} and {ATTRIBUTE_TYPES}"
        ) from e
    return qt1, qt2, qt3


# Lead masks and the regexes that find lead names in text: ecgqa/data/leads.py.

# ------------------------------------------------------------------ preparation defaults (ecgqa prepare)

DEFAULT_SECONDS = 10
DEFAULT_RATE = 500
#: Question tokenizers: BERT's uncased vocabulary (as upstream) or one built from the train questions.
TOKENIZERS = ("bert", "trained")
#: The preparation tasks, in the order of ``TASKS`` in ecgqa/data/prepare.py (the builders).
TASK_NAMES = ("qa", "upperbound", "attributes")
#: The question variants of a release.
VARIANTS = ("template", "paraphrased")
