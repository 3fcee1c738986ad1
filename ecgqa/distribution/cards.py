"""Dataset and model cards (Hugging Face ``README.md`` with YAML front matter), and the citations they carry."""

from __future__ import annotations

from typing import Any

import yaml

from ecgqa import __version__

BIBTEX_ECGQA = """@inproceedings{oh2023ecgqa,
  title     = {{ECG-QA}: A Comprehensive Question Answering Dataset Combined With Electrocardiogram},
  author    = {Oh, Jungwoo and Lee, Gyubok and Bae, Seongsu and Kwon, Joon-myoung and Choi, Edward},
  booktitle = {Advances in Neural Information Processing Systems 36 (NeurIPS 2023), Datasets and Benchmarks Track},
  pages     = {66277--66288},
  year      = {2023}
}"""

BIBTEX_PTBXL = """@article{wagner2020ptbxl,
  title   = {{PTB-XL}, a large publicly available electrocardiography dataset},
  author  = {Wagner, Patrick and Strodthoff, Nils and Bousseljot, Ralf-Dieter and Kreiseler, Dieter and
             Lunze, Fatima I. and Samek, Wojciech and Schaeffter, Tobias},
  journal = {Scientific Data},
  volume  = {7},
  pages   = {154},
  year    = {2020},
  doi     = {10.1038/s41597-020-0495-6}
}"""

BIBTEX_MIMIC = """@misc{gow2023mimicivecg,
  title     = {{MIMIC-IV-ECG}: Diagnostic Electrocardiogram Matched Subset (version 1.0)},
  author    = {Gow, Brian and Pollard, Tom and Nathanson, Larry A. and Johnson, Alistair and Moody, Benjamin and
               Fernandes, Chrystinne and Greenbaum, Nathaniel and Waks, Jonathan W. and Eslami, Parastou and
               Carbonati, Tanner and Chaudhari, Ashish and Herbst, Elizabeth and Moukheiber, Dana and
               Berkowitz, Seth and Mark, Roger and Horng, Steven},
  publisher = {PhysioNet},
  year      = {2023},
  doi       = {10.13026/4nqg-sb35}
}"""

BIBTEX_TOOLKIT = f"""@software{{ecgqa_toolkit,
  title   = {{ecgqa: question answering over 12-lead ECGs (the ECG-QA benchmark, baselines and evaluation)}},
  author  = {{{{ecgqa contributors}}}},
  version = {{{__version__}}},
  license = {{MIT}},
  year    = {{2026}}
}}"""

PROTOCOL = """## Evaluation protocol (how to report a number others can compare with)

- **Metric: exact-match accuracy over answer sets.** A question counts as correct only when the set of
  predicted classes, restricted to the question's `valid_classes`, equals the set of true classes
  (`answer`; `["none"]` is the empty set). A classifier's class is predicted when its sigmoid is ≥ 0.5; an
  LLM's reply is parsed by matching the option strings (case-insensitive, longest first, so "lead II"
  does not also match "lead I"; no match = the empty set).
- **Report per `question_type`** (the seven types: `single-verify`, `single-choose`, `single-query`,
  `comparison_consecutive-verify`, `comparison_consecutive-query`, `comparison_irrelevant-verify`,
  `comparison_irrelevant-query`), per `attribute_type`, and the **macro average over question types**
  (state which types it covers: published PTB-XL figures are macro over the three single-ECG types).
- **Comparable** means: the same version (PTB-XL or MIMIC-IV-ECG), the same split (the official `test`),
  the same variant (template or paraphrased), the same question set (every test question, or exactly the
  paper's 8,154-id LLM sample: config `paper-llm-sample-ids`), and the same metric (exact match over sets,
  never substring or character-set matching). A number on a re-split, on single types only without saying
  so, on another subsample or with another matching rule is *not* comparable with the published ones.
- Published points of comparison (PTB-XL test, exact match, macro over single-ECG question types):
  M3AE 57.6 % and GPT-4 grounded in an SE-WRN classifier 51.6 % (Oh et al. 2023; the GPT-4 figure is on
  the 8,154-id LLM sample), Med-Gemini-S 58.4 % (Saab et al. 2024). `ecgqa score` and `ecgqa report --paper`
  compute and tabulate the same columns.
"""


#: how the versions are named in prose
DISPLAY = {"ptbxl": "PTB-XL", "mimic-iv-ecg": "MIMIC-IV-ECG"}


def _front_matter(meta: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def dataset_card(datas: list[Any], configs: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The dataset card of a Hub export (``ecgqa/distribution/hub_dataset.py``)."""
    versions = sorted({d.info.version for d in datas})
    n_questions = sum(sum(c["splits"].values()) for n, c in summary["configs"].items() if "prepared" in c)
    meta: dict[str, Any] = {
        "license": "cc-by-4.0",
        "pretty_name": "ECG-QA (" + ", ".join(DISPLAY.get(v, v) for v in versions) + ")",
        "language": ["en"],
        "task_categories": ["question-answering"],
        "tags": ["ecg", "electrocardiogram", "medical", "ecg-qa", *versions],
        "size_categories": [_size_category(n_questions)],
        "configs": configs,
    }
    lines = [_front_matter(meta), f"# {meta['pretty_name']}\n"]
    lines.append(
        "ECG-QA (Oh et al., NeurIPS 2023 Datasets and Benchmarks) asks questions about one or two 12-lead ECGs, "
        "from 70 templates validated by a cardiologist. This folder was exported by "
        f"[ecgqa](https://pypi.org/project/ecgqa/) {__version__} (`ecgqa export hub`) from folders made by "
        "`ecgqa prepare`; every row can be traced to the release by its `sample_id`.\n"
    )
    lines.append("## Configs\n")
    lines.append("| config | splits (rows) | what |")
    lines.append("|---|---|---|")
    for c in configs:
        name = c["config_name"]
        info = summary["configs"][name]
        splits = ", ".join(f"{s} {n:,}" for s, n in info["splits"].items())
        if "prepared" in info:
            p = info["prepared"]
            what = (
                f"questions of the {p['variant']} variant, {p['version']} ({p['n_answer_classes']} answer classes)"
                + (" — default" if c.get("default") else "")
            )
        elif name.endswith("-signals"):
            what = (
                f"one row per ECG: `ecg_id` and `signal` (12 × {info['signal_length']} float16, mV, {info['rate']} Hz)"
            )
        elif name.endswith("-paper-llm-sample"):
            what = f"the questions of the ECG-QA paper's LLM sample ({info['splits']['test']:,} of {info['of']:,} ids)"
        else:
            what = "the 8,154 `sample_id`s of the PTB-XL test questions the ECG-QA paper's LLM experiments used"
        lines.append(f"| `{name}` | {splits} | {what} |")
    lines.append("")
    lines.append(
        "```python\nimport datasets\n"
        f'questions = datasets.load_dataset("PATH_OR_REPO", "{configs[0]["config_name"]}")\n'
        + (
            f'signals = datasets.load_dataset("PATH_OR_REPO", "{versions[0]}-signals")  # join on ecg_id\n'
            if summary["signals"] == "embed"
            else ""
        )
        + "```\n"
    )
    lines.append("## Columns\n")
    lines.append(
        "- `sample_id`, `template_id`, `question_id`: the release's ids (a `sample_id` names the same question "
        "in the template and the paraphrased variant; ids count from 0 in every split).\n"
        "- `question`, `question_type`, `attribute_type`, `attribute` (empty for comparison questions).\n"
        '- `answer`: the answer classes, in answer-space order; `["none"]` is the empty answer set.\n'
        "- `valid_classes`: the options the question is scored over (see the protocol).\n"
        "- `qt1`, `qt2`, `qt3`: question-type codes (single 0 / consecutive 1 / irrelevant 2; "
        "`qt2 = 3·qt1 + {verify 0, choose 1, query 2}`; `qt3 = 6·qt2 + attribute type`).\n"
        "- `ecg_id`: one id, or two for comparison questions (first/previous, then second/recent); "
        "a PTB-XL `ecg_id` or a MIMIC-IV-ECG `study_id` (`ecg_source` says which).\n"
        "- `ecg_record`: the source records, relative to the database root on PhysioNet (PTB-XL: the 500 Hz "
        "`records500/…_hr`; empty for MIMIC-IV-ECG, whose paths need its `record_list.csv`: "
        "`ecgqa records-needed mimic` resolves them).\n"
    )
    lines.append("## Signals and licences\n")
    if summary["signals"] == "embed":
        lines.append(
            "PTB-XL signals are included (CC BY 4.0), exactly as stored by `ecgqa prepare`: 12 leads in the order "
            "I, II, III, aVR, aVL, aVF, V1–V6, in mV, float16.\n"
        )
    else:
        lines.append(
            "No signals are included: fetch the records from PhysioNet (`ecgqa records-needed` lists exactly the "
            "files these questions reference) and build them locally with `ecgqa map` + `ecgqa prepare`.\n"
        )
    if "mimic-iv-ecg" in versions:
        lines.append(
            "MIMIC-IV-ECG waveforms are never included: PhysioNet distributes them under its own licence and "
            "terms (cite Gow et al. 2023). The questions and answers are ECG-QA's (CC BY 4.0).\n"
        )
    lines.append(
        "The ECG-QA questions and answers are CC BY 4.0 (Oh et al. 2023); PTB-XL v1.0.3 is CC BY 4.0 "
        "(Wagner et al.; https://doi.org/10.13026/kfzx-aw45).\n"
    )
    lines.append(PROTOCOL)
    lines.append("## Citation\n")
    bib = [BIBTEX_ECGQA, BIBTEX_PTBXL] + ([BIBTEX_MIMIC] if "mimic-iv-ecg" in versions else []) + [BIBTEX_TOOLKIT]
    lines.append("```bibtex\n" + "\n\n".join(bib) + "\n```\n")
    return "\n".join(lines)


__all__ = ["DISPLAY", "BIBTEX_ECGQA", "BIBTEX_MIMIC", "BIBTEX_PTBXL", "BIBTEX_TOOLKIT", "PROTOCOL", "dataset_card"]
