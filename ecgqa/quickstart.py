"""``ecgqa quickstart``: the main job on the bundled sample, end to end, in a few minutes on a laptop CPU.

Steps: map → hold out a test split BY ECG → prepare (qa) → train a small fusion model and a blind
(question-only) baseline → evaluate both on the held-out split → **attribute classifier**: prepare
dense attribute labels from PTB-XL's metadata (``--task attributes``, ``ecgqa/data/attributes.py``), train
``se-wrn-quick`` on the training ECGs' entire-ECG rows and the same model on those rows with the labels
shuffled across ECGs (the control), score
both on the held-out ECGs (per-class AUC with a 95 % bootstrap interval, macro AUC) → print both tables.

Why the attribute classifier: on the sample's few hundred questions the QA models learn the majority
answer and score like the blind baseline, so the QA table cannot show that the ECG side learns. The
dense labels give every training ECG ~60 labels instead of ~2, and the label-shuffled control says
what AUC a model reaches without any ECG–label link, so the verdict printed under the table is honest.

The bundled sample has only train and valid questions, so the quickstart writes its own re-split
copy of the mapped release (``OUT/release/ptbxl``): the ECGs are shuffled (seeded) and a share of them
is held out; a question goes to ``test`` when all its ECGs are held out, to ``train`` when none is,
and is left out when it mixes both (a comparison question across the cut). No ECG is ever seen in
training and scored in test. ``split_report.json`` lists the ECGs of each side and the questions left out.

``ensure_demo(out)`` (used by ``ecgqa serve``) returns the demo's paths, running the quickstart first
when they are missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The QA models the quickstart trains: registry entries at the quickstart width (ecgqa/models/__init__.py).
MODELS = ("fusion-quick", "blind-quick")
#: The attribute classifier (SE-WRN at the quickstart width) and the rate its data is prepared at:
#: 100 Hz (PTB-XL's low-rate version, the usual rate for PTB-XL classification) makes it ~5x faster.
ATTRIBUTE_MODEL = "se-wrn-quick"
ATTRIBUTE_RATE = 100
QA_DATA = Path("prepared") / "ptbxl-template-qa"
ATTRIBUTE_DATA = Path("prepared") / "ptbxl-attributes"
#: QA learning: balanced generated questions (``ecgqa generate --balanced``), single-ECG types, at 100 Hz.
QA_LEARNING_DATA = Path("prepared") / "ptbxl-generated-balanced-qa"
QA_LEARNING_RATE = 100
QA_LEARNING_REPORT = Path("reports") / "qa-learning"


@dataclass(frozen=True)
class QAModel:
    """How QA learning trains one choice of ``--qa-model`` (docs/controls.md, "The quickstart")."""

    steps: int  # --qa-steps when not given
    lr: float | None  # None: the quickstart's --lr
    minutes: float | None  # time cap per QA model (and for the ECG side's classifier); None: --minutes
    overrides: dict[str, Any]  # --set values of the fusion model
    init_steps: int = 0  # > 0: train ATTRIBUTE_MODEL leak-free first; the ECG side starts from it
    init_lr: float = 1e-3


#: ``--qa-model`` choices. ``fusion-sewrn-quick`` is run C of docs/controls.md: its ECG side starts from an
#: ``se-wrn-quick`` attribute classifier trained on the training patients' entire-ECG rows (300 steps, lr 1e-3),
#: frozen (``feature_grad_mult`` 0), lr 3e-3, 1,200 steps; its cap (8 min) lets it run all of them.
QA_MODELS: dict[str, QAModel] = {
    "fusion-quick": QAModel(steps=300, lr=None, minutes=None, overrides={}),
    "fusion-sewrn-quick": QAModel(
        steps=1200, lr=3e-3, minutes=8.0, overrides={"feature_grad_mult": 0.0}, init_steps=300, init_lr=1e-3
    ),
}
QA_BLIND = "blind-quick"


@dataclass(frozen=True)
class QAPlan:
    """QA learning as ``args`` ask for it (``qa_plan``): the model and what its training uses."""

    model: str
    steps: int
    lr: float
    minutes: float
    overrides: dict[str, Any]
    init_steps: int
    init_lr: float


def qa_plan(args: argparse.Namespace) -> QAPlan | None:
    """The QA-learning run ``args`` ask for (``--qa-model``, ``--qa-steps``, ``--qa-minutes``); None when
    ``--qa-steps 0`` skips it. Unset options take the chosen model's defaults (``QA_MODELS``)."""
    name = getattr(args, "qa_model", None) or "fusion-quick"
    if name not in QA_MODELS:
        raise ValueError(f"--qa-model {name}: choose one of {', '.join(QA_MODELS)}")
    spec = QA_MODELS[name]
    steps = getattr(args, "qa_steps", None)
    steps = spec.steps if steps is None else steps
    if steps <= 0:
        return None
    minutes = getattr(args, "qa_minutes", None)
    minutes = minutes if minutes is not None else spec.minutes if spec.minutes is not None else args.minutes
    return QAPlan(
        model=name,
        steps=steps,
        lr=spec.lr if spec.lr is not None else args.lr,
        minutes=minutes,
        overrides=dict(spec.overrides),
        init_steps=spec.init_steps,
        init_lr=spec.init_lr,
    )


#: The options' defaults: ``ecgqa quickstart``'s command line (ecgqa/cli/quickstart.py) and ``ensure_demo`` share them.
DEFAULTS: dict[str, Any] = {
    "out": Path("runs/quickstart"),
    "minutes": 0.8,
    "max_steps": 400,
    "batch_size": 16,
    "lr": 1e-3,
    "test_fraction": 0.25,
    "seed": 0,
    "threads": 1,
    "models": list(MODELS),
    "attribute_steps": 300,
    "bootstrap": 1000,
    "qa_steps": None,  # None: the --qa-model's own default (QA_MODELS)
    "qa_model": "fusion-quick",
    "qa_minutes": None,  # None: the --qa-model's own cap, else --minutes
    "quiet": False,
}


@dataclass(frozen=True)
class DemoPaths:
    """What the demo (``ecgqa serve``) needs from a quickstart run (contract: ``ensure_demo``)."""

    checkpoint: Path  # the QA model (fusion, quickstart width)
    data: Path  # its prepared qa directory (the ECGs and questions the demo offers)
    attributes_checkpoint: Path | None  # the dense-label attribute classifier; None when not built


def holdout_by_ecg(
    mapped: Path, out: Path, *, test_fraction: float = 0.25, seed: int = 0, variant: str = "template"
) -> dict[str, Any]:
    """Write a copy of the mapped release ``mapped`` to ``out`` with ``train``/``test`` splits disjoint by ECG.

    Every question of ``variant`` (all splits) is pooled; a seeded ``test_fraction`` of its ECGs is held
    out. Returns the split report (also written as ``out/split_report.json``).
    """
    from ecgqa.data.release import load_shard, shards

    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must be between 0 and 1, not {test_fraction}")
    samples = [s for shard in shards(mapped, variants=(variant,)) for s in load_shard(shard)]
    if not samples:
        raise FileNotFoundError(f"{mapped}: no {variant} questions; expected the output of `ecgqa map`")
    ecgs = sorted({int(e) for s in samples for e in s["ecg_id"]})
    random.Random(seed).shuffle(ecgs)
    test_ecgs = set(ecgs[: max(1, round(test_fraction * len(ecgs)))])
    split: dict[str, list[dict]] = {"train": [], "test": []}
    left_out = []
    for s in samples:
        held = [int(e) in test_ecgs for e in s["ecg_id"]]
        if all(held):
            split["test"].append(s)
        elif not any(held):
            split["train"].append(s)
        else:
            left_out.append(s["sample_id"])

    if out.exists():
        shutil.rmtree(out)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("answers.csv", "answers_for_each_template.csv", "mapping_report.json"):
        if (mapped / name).is_file():
            shutil.copy2(mapped / name, staging / name)
    report = {
        "source": str(mapped),
        "variant": variant,
        "seed": seed,
        "test_fraction": test_fraction,
        "left_out_samples": left_out,
        "samples": {},
        "ecgs": {},
    }
    for name, rows in split.items():
        folder = staging / variant / name
        folder.mkdir(parents=True)
        (folder / "00000.json").write_text(json.dumps(rows))
        ids = sorted({int(e) for s in rows for e in s["ecg_id"]})
        (staging / f"{name}_ecgs.tsv").write_text("".join(f"{i}\t{e}\n" for i, e in enumerate(ids)))
        report["samples"][name] = len(rows)
        report["ecgs"][name] = ids
    (staging / "split_report.json").write_text(json.dumps(report, indent=1))
    staging.rename(out)
    return report


def _time_limit(seconds: float):
    """A Trainer callback that ends training once ``seconds`` have passed (the model so far is kept)."""
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.monotonic() + seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > self.deadline:
                control.should_training_stop = True
                self.stopped_at = state.global_step

    return TimeLimit()


def _train(
    data: Path,
    model: str,
    ckpt: Path,
    *,
    max_steps: int,
    args: argparse.Namespace,
    init_from: Path | None = None,
    lr: float | None = None,
    minutes: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> None:
    """One quickstart training run: fresh folder, no evaluation during training, capped by ``minutes``
    (default --minutes), at ``lr`` (default --lr), with ``overrides`` as ``--set`` values."""
    from ecgqa.training.train import TrainConfig, train

    limit = _time_limit(60 * (args.minutes if minutes is None else minutes))
    if ckpt.exists():
        shutil.rmtree(ckpt)  # a fresh run each time: an old Trainer state would be resumed otherwise
    train(
        TrainConfig(
            data=data,
            model=model,
            out=ckpt,
            max_steps=max_steps,
            batch_size=args.batch_size,
            lr=args.lr if lr is None else lr,
            warmup=0.05,
            seed=args.seed,
            eval_split=None,
            logging_steps=50,
            quiet=args.quiet,
            save_steps=max_steps,
            init_from=str(init_from) if init_from is not None else None,
            overrides=dict(overrides or {}),
        ),  # no resumable Trainer state mid-run: each run starts fresh
        callbacks=[limit],
    )
    if getattr(limit, "stopped_at", None):
        print(f"  time cap reached after {limit.stopped_at} steps", file=sys.stderr)


MARKER = "quickstart.json"


def claim_quickstart_out(out: Path) -> None:
    """Refuse an ``--out`` this command did not make (a user's folder, a file), else mark it as ours.

    The marker is written before anything else, so a re-run (or an interrupted run) may reuse the
    folder, and the sub-folders the quickstart replaces inside it are always its own.
    """
    import json

    from ecgqa import __version__
    from ecgqa.files import atomic_write_json, claim_output_dir

    def ours(marker: Path) -> bool:
        try:
            return json.loads(marker.read_text()).get("written_by") == "ecgqa quickstart"
        except (OSError, ValueError, AttributeError):
            return False

    claim_output_dir(out, marker=MARKER, what="quickstart output", is_ours=ours)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"written_by": "ecgqa quickstart", "ecgqa_version": __version__})


def run(args: argparse.Namespace) -> int:
    """Run the quickstart with ``args`` (the options of ``DEFAULTS``) on ``args.threads`` torch CPU threads."""
    import os

    import torch  # here, not at the top: the command line reads DEFAULTS and MODELS from this module

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    from ecgqa import sample
    from ecgqa.data.prepare import prepare
    from ecgqa.evaluation.evaluate import evaluate
    from ecgqa.evaluation.report import compare_table
    from ecgqa.files import atomic_write
    from mapping.mapper import map_release

    start = time.perf_counter()
    out: Path = args.out
    claim_quickstart_out(out)
    progress = not args.quiet
    with_attributes = args.attribute_steps > 0
    plan = qa_plan(args)
    with_qa_learning = plan is not None
    qa_stages = 0 if plan is None else 5 + (2 if plan.init_steps else 0)
    steps = 4 + len(args.models) * 2 + (4 if with_attributes else 0) + qa_stages
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        print(f"[{step}/{steps}] {text}  ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    paths = sample.paths()
    mapped = out / "mapped" / "ptbxl"
    say(f"mapping the bundled sample into {mapped}")
    map_release("ptbxl", paths.ptbxl_release, paths.ptbxl_records, mapped, progress=progress)

    release = out / "release" / "ptbxl"
    say(f"holding out {args.test_fraction:.0%} of the ECGs as the test split: {release}")
    split = holdout_by_ecg(mapped, release, test_fraction=args.test_fraction, seed=args.seed)
    print(
        f"  train {split['samples']['train']} questions over {len(split['ecgs']['train'])} ECGs, "
        f"test {split['samples']['test']} over {len(split['ecgs']['test'])} ECGs, "
        f"{len(split['left_out_samples'])} comparison questions across the cut left out",
        file=sys.stderr,
    )

    prepared = out / QA_DATA
    say(f"preparing {prepared}")
    prepare(release, prepared, variant="template", task="qa", rate=500, progress=progress)

    reports = []
    for name in args.models:
        ckpt = out / "checkpoints" / name
        say(f"training {name} (at most {args.max_steps} steps or {args.minutes:g} min) into {ckpt}")
        _train(prepared, name, ckpt, max_steps=args.max_steps, args=args)
        report_dir = out / "reports" / name
        say(f"evaluating {name} on the held-out test split into {report_dir}")
        reports.append(evaluate(ckpt, prepared, "test", report_dir, progress=progress))

    table = compare_table(reports, list(args.models))
    atomic_write(out / "comparison.md", table)

    attribute_text = None
    if with_attributes:
        attrs = out / ATTRIBUTE_DATA
        say(f"preparing dense attribute labels from PTB-XL metadata into {attrs} ({ATTRIBUTE_RATE} Hz)")
        prepare(
            release,
            attrs,
            variant="template",
            task="attributes",
            rate=ATTRIBUTE_RATE,
            metadata=paths.ptbxl_records / "ptbxl_database.csv",
            progress=progress,
        )
        entire = rows_copy(attrs, out / "prepared" / "ptbxl-attributes-entire", groups=("entire",))
        control = rows_copy(
            attrs, out / "prepared" / "ptbxl-attributes-shuffled", groups=("entire",), shuffle_seed=args.seed
        )
        ckpt = out / "checkpoints" / ATTRIBUTE_MODEL
        say(f"training {ATTRIBUTE_MODEL} on the dense labels of the training ECGs into {ckpt}")
        _train(entire, ATTRIBUTE_MODEL, ckpt, max_steps=args.attribute_steps, args=args)
        control_ckpt = out / "checkpoints" / f"{ATTRIBUTE_MODEL}-shuffled"
        say(f"training the control: {ATTRIBUTE_MODEL} on label-shuffled training ECGs into {control_ckpt}")
        _train(control, ATTRIBUTE_MODEL, control_ckpt, max_steps=args.attribute_steps, args=args)
        say("scoring both on the held-out ECGs (AUC, bootstrap 95 % intervals)")
        result = attribute_auc(ckpt, control_ckpt, attrs, "test", n_boot=args.bootstrap, seed=args.seed)
        attribute_text = auc_markdown(result)
        atomic_write(out / "attributes.md", attribute_text)
        atomic_write(out / "attributes.json", json.dumps(result, indent=1) + "\n")

    qa_text = None
    if with_qa_learning:
        qa_text = qa_learning(out, args, paths, say, progress, plan)

    say("done")
    print("\nExact match (%) on the held-out test split (no test ECG was seen in training):\n")
    print(table)
    if attribute_text:
        print("\nAttribute classifier on the held-out ECGs (dense labels from PTB-XL metadata):\n")
        print(attribute_text)
    if qa_text:
        print(
            f"\nQA learning: does {plan.model} use the ECG? ({plan.steps} steps at most, lr {plan.lr:g}; "
            "balanced generated questions, held-out patients)\n"
        )
        print(qa_text)
    print(f"mapped release:   {mapped}\nre-split release: {release} (split_report.json)\nprepared data:    {prepared}")
    for name in args.models:
        print(f"{name + ':':17s} checkpoint {out / 'checkpoints' / name}, report {out / 'reports' / name}/report.md")
    runs = " ".join(str(out / "reports" / n) for n in args.models)
    print(f"comparison:       {out / 'comparison.md'}  (ecgqa report {runs})")
    if qa_text:
        print(f"QA learning:      {out / 'qa_learning.md'}, report {out / QA_LEARNING_REPORT}/report.md")
        print(f"{plan.model + ':':17s} checkpoint {out / 'checkpoints' / (plan.model + '-generated')}")
    if attribute_text:
        print(f"attributes:       {out / 'attributes.md'}, checkpoint {out / 'checkpoints' / ATTRIBUTE_MODEL}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


# ------------------------------------------------------------------------------------------ QA learning


def patient_split(metadata: Path, ecg_ids: list[int], test_fraction: float, seed: int) -> dict[int, str]:
    """ecg_id → "train" / "test": a seeded ``test_fraction`` of the PATIENTS (PTB-XL ``patient_id``) is held out,
    so no held-out ECG, nor another ECG of its patient, is seen in training."""
    import pandas as pd

    meta = pd.read_csv(metadata, usecols=["ecg_id", "patient_id"]).set_index("ecg_id")
    wanted = sorted(set(ecg_ids) & set(meta.index))
    patients = sorted({float(meta.at[e, "patient_id"]) for e in wanted})
    random.Random(seed).shuffle(patients)
    held = set(patients[: max(1, round(test_fraction * len(patients)))])
    return {int(e): "test" if float(meta.at[e, "patient_id"]) in held else "train" for e in wanted}


def _single_only(release: Path) -> dict[str, int]:
    """Keep the single-ECG questions of a generated release (the verify texts balanced accuracy is about, and
    a third of the questions to score three times); returns the kept counts per split."""
    from ecgqa.data.release import load_shard, shards

    kept: dict[str, int] = {}
    for shard in shards(release):
        rows = [s for s in load_shard(shard) if s["question_type"].startswith("single")]
        shard.write_text(json.dumps(rows))
        if shard.parent.parent.name == "template":
            kept[shard.parent.name] = kept.get(shard.parent.name, 0) + len(rows)
    return kept


def qa_learning(
    out: Path, args: argparse.Namespace, paths: Any, say: Any, progress: bool, plan: QAPlan | None = None
) -> str:
    """Generate balanced questions over the bundled records (``ecgqa generate --balanced``; yes = no per verify
    question text), hold out a share of the patients, train the fusion model (``plan.model``) and the blind
    baseline on the rest, and score the fusion model on the held-out ECGs beside its controls: the blind model
    (question only) and itself with the ECGs shuffled (``ecgqa evaluate --blind``). Returns the Markdown
    written to ``OUT/qa_learning.md``; the verdict is the one ``ecgqa.evaluation.controls`` derives from the CI.

    With ``plan.init_steps`` (``--qa-model fusion-sewrn-quick``), the ECG side first learns the attributes:
    ``ATTRIBUTE_MODEL`` is trained on the dense labels of the same generated release's **train** patients only
    (entire-ECG rows), and the fusion model starts its ECG encoder from it (``init_from``).
    """
    plan = plan or qa_plan(args)
    assert plan is not None, "qa_learning needs --qa-steps > 0"
    from ecgqa.data.prepare import prepare
    from ecgqa.evaluation.evaluate import evaluate
    from ecgqa.evaluation.report_folder import controls_markdown
    from ecgqa.files import atomic_write
    from ecgqa.generation.engine import generate
    from mapping.mapper import map_release

    generated = out / "generated" / "ptbxl-balanced"
    metadata = paths.ptbxl_records / "ptbxl_database.csv"
    records = sorted(int(p.stem.split("_")[0]) for p in (paths.ptbxl_records / "records500").rglob("*_hr.hea"))
    split = patient_split(metadata, records, args.test_fraction, args.seed)
    say(f"generating balanced questions over the {len(records)} bundled records (held-out patients: test)")
    if generated.exists():
        shutil.rmtree(generated)
    generate("ptbxl", generated, records=paths.ptbxl_records, balanced=True, measure=False, split_of=split,
             seed=args.seed, progress=progress)  # fmt: skip
    kept = _single_only(generated)
    mapped = out / "mapped" / "ptbxl-generated"
    map_release("ptbxl", generated, paths.ptbxl_records, mapped, progress=progress)
    data = out / QA_LEARNING_DATA
    say(f"preparing {data} ({QA_LEARNING_RATE} Hz; single-ECG questions: {kept})")
    prepare(mapped, data, variant="template", task="qa", rate=QA_LEARNING_RATE, progress=progress)
    init_from = None
    if plan.init_steps:
        attrs = out / "prepared" / "ptbxl-generated-attributes"
        say(f"preparing dense attribute labels of the generated release's ECGs into {attrs} ({ATTRIBUTE_RATE} Hz)")
        prepare(mapped, attrs, variant="template", task="attributes", rate=ATTRIBUTE_RATE, metadata=metadata,
                progress=progress)  # fmt: skip
        # the train split only (rows_copy keeps "train" and nothing else is trained on): no held-out patient's ECG
        entire = rows_copy(attrs, out / "prepared" / "ptbxl-generated-attributes-entire", groups=("entire",))
        init_from = out / "checkpoints" / f"{ATTRIBUTE_MODEL}-generated"
        say(
            f"training {ATTRIBUTE_MODEL} on the training patients' dense labels ({plan.init_steps} steps, "
            f"lr {plan.init_lr:g}) into {init_from}: {plan.model}'s ECG side starts from it"
        )
        _train(entire, ATTRIBUTE_MODEL, init_from, max_steps=plan.init_steps, args=args, lr=plan.init_lr,
               minutes=plan.minutes)  # fmt: skip
    ckpts = {}
    for name in (plan.model, QA_BLIND):
        ckpts[name] = out / "checkpoints" / f"{name}-generated"
        fusion = name == plan.model
        settings = f"at most {plan.steps} steps or {plan.minutes:g} min, lr {plan.lr if fusion else args.lr:g}"
        if fusion and plan.overrides:
            settings += ", " + ", ".join(f"{k} {v:g}" for k, v in plan.overrides.items())
        say(f"training {name} on the generated questions ({settings}) into {ckpts[name]}")
        _train(data, name, ckpts[name], max_steps=plan.steps, args=args, minutes=plan.minutes,
               lr=plan.lr if fusion else None, overrides=plan.overrides if fusion else None,
               init_from=init_from if fusion else None)  # fmt: skip
    report_dir = out / QA_LEARNING_REPORT
    say(f"scoring {plan.model} on the held-out patients beside its controls into {report_dir}")
    report = evaluate(ckpts[plan.model], data, "test", report_dir, blind=ckpts[QA_BLIND], progress=progress,
                      control_seed=args.seed, n_bootstrap=args.bootstrap,
                      questions="generated by `ecgqa generate --balanced` over the bundled records")  # fmt: skip
    c = report["controls"]
    held = sorted({e for e, s in split.items() if s == "test"})
    text = (
        f"Held out: {len(held)} ECGs of {round(args.test_fraction * 100)} % of the patients; "
        f"{c['n_paired']} questions ("
        + ", ".join(f"{k} {v['n']}" for k, v in report["per_question_type"].items())
        + ").\n\n"
        + controls_markdown(c)
    )
    if not c["verdict"]["above_all"]:
        text += (
            f"\nTarget not reached: the fusion model is not above both controls with a CI excluding 0 after "
            f"{plan.steps} steps at most (--qa-steps, --qa-minutes); the figures above are what was measured.\n"
        )
    atomic_write(out / "qa_learning.md", text)
    atomic_write(
        out / "qa_learning.json",
        json.dumps(
            {
                "report": str(report_dir),
                "model": plan.model,
                "checkpoint": str(ckpts[plan.model]),
                "init_from": str(init_from) if init_from else None,
                "steps": plan.steps,
                "lr": plan.lr,
                "overrides": plan.overrides,
                "held_out_ecgs": held,
                "kept": kept,
                "controls": c,
            },
            indent=1,
        )
        + "\n",
    )
    return text


# ------------------------------------------------------------------------------ the attribute classifier


def rows_copy(
    prepared: Path,
    out: Path,
    *,
    split: str = "train",
    groups: tuple[str, ...] | None = None,
    shuffle_seed: int | None = None,
) -> Path:
    """A copy of a prepared (attributes/upperbound) directory with ``split``'s rows changed.

    ``groups``: keep only the rows of these lead subsets (the quickstart trains on ``("entire",)``: the
    entire-ECG row carries ~78 of an ECG's ~165 labels, so every step sees the dense labels).
    ``shuffle_seed``: the **control** — within each lead subset the rows' ``ecg_rows`` are permuted, so every
    label vector stays (same label frequencies) but belongs to another ECG; a model trained on it can only
    learn the base rates, and its AUC on held-out ECGs is the level to beat.
    """
    from ecgqa.data import prepared as prep

    data = prep.PreparedData(prepared)
    table = data.split(split)
    rows = [r for r in table.to_list() if groups is None or r["lead_group"] in groups]
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        by_group: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_group.setdefault(r["lead_group"], []).append(i)
        for idx in by_group.values():
            targets = [rows[i]["ecg_rows"] for i in idx]
            rng.shuffle(targets)
            for i, t in zip(idx, targets, strict=False):
                rows[i] = {**rows[i], "ecg_rows": t, "ecg_id": [int(data.ecg_ids[t[0]])]}
    if out.exists():
        shutil.rmtree(out)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(prepared, staging)
    shutil.rmtree(staging / prep.QUESTIONS / split)
    tag = f"{split}-{'+'.join(groups or ('all',))}-{shuffle_seed}-{data.info.content_hash[:8]}"
    n = prep.write_questions(staging, split, iter(rows), table.features, hashlib.sha256(tag.encode()).hexdigest()[:16])
    meta = data.info.model_copy(update={"splits": {**data.info.splits, split: n}})
    (staging / prep.META).unlink()
    prep.write_meta(staging, meta)
    staging.rename(out)
    return out


def predict_rows(
    checkpoint: Path, data_dir: Path, split: str, *, groups: tuple[str, ...] = ("entire",), batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """Scores of an attribute classifier on a split's rows of the given lead subsets.

    Returns (probs (N, C), labels (N, C) with NaN where unknown, ecg ids, classes).
    """
    import torch

    from ecgqa.checkpoint import load_checkpoint
    from ecgqa.data.leads import group_mask
    from ecgqa.data.prepared import PreparedData

    ckpt = load_checkpoint(checkpoint, device="cpu")
    data = PreparedData(data_dir)
    if ckpt.classes != data.classes:
        raise ValueError(
            f"{checkpoint} predicts {len(ckpt.classes)} classes, {data_dir} labels {len(data.classes)} "
            "other ones; score a checkpoint on the data it was trained for"
        )
    rows = [r for r in data.split(split) if r["lead_group"] in groups]
    n, c = len(rows), len(data.classes)
    labels = np.full((n, c), np.nan, dtype=np.float32)
    probs = np.zeros((n, c), dtype=np.float32)
    for i, r in enumerate(rows):
        labels[i, r["label_classes"]] = r["label_values"]
    with torch.no_grad():
        for lo in range(0, n, batch_size):
            batch = rows[lo : lo + batch_size]
            ecg = torch.from_numpy(
                np.stack([np.asarray(data.signals[r["ecg_rows"][0]], dtype=np.float32) for r in batch])
            )
            mask = torch.from_numpy(np.stack([group_mask(r["lead_group"]) for r in batch]))
            logits = ckpt.model(ecg=ecg, lead_mask=mask).logits
            probs[lo : lo + len(batch)] = torch.sigmoid(logits).numpy()
    return probs, labels, [int(r["ecg_id"][0]) for r in rows], data.classes


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged): P(score of a positive > score of a negative). NaN if one class is empty."""
    from scipy.stats import rankdata

    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


#: A class needs this many held-out positives and negatives for a per-class bootstrap interval: with 2 positives
#: most replicates hold the same one or two positive ECGs and the interval collapses to a point (1.000–1.000),
#: which reads as certainty where there is least of it. Such classes show their AUC with no interval.
MIN_FOR_INTERVAL = 5


def attribute_auc(
    checkpoint: Path,
    control: Path | None,
    data_dir: Path,
    split: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_each: int = 2,
) -> dict[str, Any]:
    """Per-class AUC (95 % bootstrap interval over held-out ECGs) of ``checkpoint`` on the ``entire`` rows of
    ``split``, the macro AUC, and the same for the label-shuffled ``control`` with the paired difference.

    Only classes with at least ``min_each`` positive and negative held-out ECGs are scored (others have
    no defined AUC); a class with fewer than :data:`MIN_FOR_INTERVAL` of either gets ``ci95`` None. Each
    bootstrap replicate resamples ECGs with replacement; a class missing one label value in a replicate is
    left out of that replicate.
    """
    probs, labels, ecgs, classes = predict_rows(checkpoint, data_dir, split)
    cprobs = predict_rows(control, data_dir, split)[0] if control is not None else None
    result = auc_result(probs, labels, classes, cprobs, n_boot=n_boot, seed=seed, min_each=min_each)
    result = {"checkpoint": str(checkpoint), "split": split, **result}
    if control is not None:
        result["control_checkpoint"] = str(control)
    return result


def auc_result(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    cprobs: np.ndarray | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_each: int = 2,
) -> dict[str, Any]:
    """``attribute_auc``'s numbers from the scores ``probs`` (and the control's ``cprobs``) of ECGs x classes."""
    n = len(probs)
    eligible = [
        j
        for j in range(len(classes))
        if (labels[:, j] == 1).sum() >= min_each and (labels[:, j] == 0).sum() >= min_each
    ]
    # a replicate = how often each held-out ECG is drawn; AUC of a replicate = weighted pair comparisons
    weights = np.stack([np.bincount(b, minlength=n) for b in np.random.default_rng(seed).integers(0, n, (n_boot, n))])

    def aucs(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point AUC per eligible class, (n_boot, classes) bootstrap AUCs, NaN where a side is empty)."""
        point, boot = np.full(len(eligible), np.nan), np.full((n_boot, len(eligible)), np.nan)
        for k, j in enumerate(eligible):
            pos, neg = np.flatnonzero(labels[:, j] == 1), np.flatnonzero(labels[:, j] == 0)
            diff = p[pos, j][:, None] - p[neg, j][None, :]
            pairs = (diff > 0) + 0.5 * (diff == 0)  # (positives, negatives): 1 / ½ / 0
            point[k] = pairs.mean()
            wp, wn = weights[:, pos].astype(float), weights[:, neg].astype(float)
            denom = wp.sum(1) * wn.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                boot[:, k] = np.einsum("bp,pn,bn->b", wp, pairs, wn) / denom
        return point, boot

    point, boot = aucs(probs)
    result: dict[str, Any] = {
        "n_ecgs": n,
        "n_boot": n_boot,
        "min_for_interval": MIN_FOR_INTERVAL,
        "classes": [],
    }
    cpoint = cboot = None
    if cprobs is not None:
        cpoint, cboot = aucs(cprobs)
    for k, j in enumerate(eligible):
        known = ~np.isnan(labels[:, j])
        lo, hi = np.nanpercentile(boot[:, k], [2.5, 97.5])
        n_pos, n_neg = int((labels[known, j] == 1).sum()), int((labels[known, j] == 0).sum())
        entry = {
            "class": classes[j],
            "auc": round(float(point[k]), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)] if min(n_pos, n_neg) >= MIN_FOR_INTERVAL else None,
            "positives": n_pos,
            "negatives": n_neg,
        }
        if cpoint is not None:
            entry["control_auc"] = round(float(cpoint[k]), 4)
        result["classes"].append(entry)
    macro_boot = np.nanmean(boot, axis=1)
    result["macro_auc"] = round(float(np.nanmean(point)), 4)
    result["macro_ci95"] = [round(float(x), 4) for x in np.percentile(macro_boot, [2.5, 97.5])]
    if cpoint is not None:
        cmacro_boot = np.nanmean(cboot, axis=1)
        diff = macro_boot - cmacro_boot
        result["control_macro_auc"] = round(float(np.nanmean(cpoint)), 4)
        result["control_macro_ci95"] = [round(float(x), 4) for x in np.percentile(cmacro_boot, [2.5, 97.5])]
        result["difference_ci95"] = [round(float(x), 4) for x in np.percentile(diff, [2.5, 97.5])]
        result["learned"] = bool(np.percentile(diff, 2.5) > 0)
    return result


def auc_markdown(result: dict[str, Any]) -> str:
    """The per-class AUC table, the macro line beside the control's, and a plain verdict."""
    has_control = "control_macro_auc" in result
    lines = [
        "| class | AUC (95 % CI) | held-out +/− |" + (" shuffled control |" if has_control else ""),
        "|---|---|---|" + ("---|" if has_control else ""),
    ]
    least = result.get("min_for_interval", MIN_FOR_INTERVAL)
    few = 0
    for e in sorted(result["classes"], key=lambda e: -e["auc"]):
        if e.get("ci95") is None:
            few += 1
            ci = f"{e['auc']:.3f} (too few for an interval: needs {least}+/{least}−)"
        else:
            ci = f"{e['auc']:.3f} ({e['ci95'][0]:.3f}–{e['ci95'][1]:.3f})"
        lines.append(
            f"| {e['class']} | {ci} | {e['positives']}/{e['negatives']} |"
            + (f" {e['control_auc']:.3f} |" if has_control else "")
        )
    macro = f"{result['macro_auc']:.3f} ({result['macro_ci95'][0]:.3f}–{result['macro_ci95'][1]:.3f})"
    lines.append(
        f"| **macro ({len(result['classes'])} classes)** | **{macro}** | {result['n_ecgs']} ECGs |"
        + (f" **{result['control_macro_auc']:.3f}** |" if has_control else "")
    )
    text = "\n".join(lines) + "\n"
    if few:
        text += (
            f"\n{few} class{'es' if few > 1 else ''} with fewer than {least} held-out positives or negatives: "
            "too few for an interval (the AUC is shown; the macro interval still covers every class).\n"
        )
    if has_control:
        lo, hi = result["difference_ci95"]
        if result["learned"]:
            verdict = (
                f"The ECG side learned something: macro AUC {result['macro_auc']:.3f} vs "
                f"{result['control_macro_auc']:.3f} for the same model trained on shuffled labels "
                f"(paired bootstrap 95 % CI of the difference {lo:+.3f} to {hi:+.3f}, above 0)."
            )
        else:
            verdict = (
                f"No evidence that the ECG side learned: macro AUC {result['macro_auc']:.3f} vs "
                f"{result['control_macro_auc']:.3f} for the shuffled-label control (95 % CI of the "
                f"difference {lo:+.3f} to {hi:+.3f} includes 0). Train longer (--attribute-steps)."
            )
        text += "\n" + verdict + "\n"
    return text


# ------------------------------------------------------------------------------------------------ demo


def demo_paths(out: str | Path) -> DemoPaths:
    """Where a quickstart run in ``out`` keeps the demo's checkpoint, data and attribute classifier."""
    out = Path(out)
    attrs = out / "checkpoints" / ATTRIBUTE_MODEL
    from ecgqa.checkpoint import REQUIRED

    return DemoPaths(
        checkpoint=out / "checkpoints" / MODELS[0],
        data=out / QA_DATA,
        attributes_checkpoint=attrs if all((attrs / f).is_file() for f in REQUIRED) else None,
    )


def ensure_demo(out: str | Path, quiet: bool = False) -> DemoPaths:
    """The demo's paths in ``out``; runs ``ecgqa quickstart --out OUT`` first when the QA model or data is missing.

    ``ecgqa serve`` calls this instead of reaching into the quickstart's options.
    """
    from ecgqa.checkpoint import REQUIRED
    from ecgqa.data.prepared import is_prepared

    paths = demo_paths(out)
    if all((paths.checkpoint / f).is_file() for f in REQUIRED) and is_prepared(paths.data):
        return paths
    print(f"no quickstart model in {out}: building it first with `ecgqa quickstart --out {out}`", file=sys.stderr)
    code = run(argparse.Namespace(**{**DEFAULTS, "out": Path(out), "quiet": quiet}))
    paths = demo_paths(out)
    if code or not (paths.checkpoint / "config.json").is_file():
        raise RuntimeError(f"`ecgqa quickstart --out {out}` did not produce {paths.checkpoint} (exit {code})")
    return paths
