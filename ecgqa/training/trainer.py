"""The run machinery ``ecgqa train`` and ``ecgqa pretrain`` share: one public module.

A run folder (``--out``) and its life:

1. :func:`claim_run_dir` — ``--out`` is absent, empty, or holds :data:`RUN_MARKER` with our format (written
   only by :func:`start_run_dir`, before any other file of the run): never a user's folder (a ``checkpoints/``
   or ``train_options.json`` proves nothing), and never a symlink to one;
2. :class:`RunLock` — one run per folder: a second one is refused naming the first's pid (a lock left by a
   dead process is taken over: the kernel releases ``flock`` locks when a process dies);
3. :func:`resume_state` — ``--resume``: the newest complete ``checkpoint-N`` (torn ones skipped), checked
   against the run's model and the data (``ecgqa.checkpoint.check_compatible``: task, classes, rate,
   length) *before* anything is changed; ``metrics.jsonl`` is trimmed to the resumed step only once the
   Trainer has loaded that state (:class:`JsonlLog`); a finished run (:meth:`ResumeState.finished`) is not
   trained again, only its final output rewritten (:func:`restore_finished`);
4. the Trainer: :class:`RecipeTrainer` (upstream Adam and fairseq's tri-stage schedule from the recipe,
   ``ecgqa/training/recipes.py``), the callbacks (:class:`JsonlLog`, :class:`UmaskModes`,
   :class:`StopAfter`, :class:`RunDisplay`: one progress bar, an evaluation table, a time estimate) and
   :func:`training_arguments`;
5. :func:`library_output` — the libraries' logging, warnings and bars only with ``-v``;
6. :func:`interrupted` — Ctrl-C points at ``--resume``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.utils import logging as hf_logging

from ecgqa.checkpoint import PREPARED_META, TOKENIZER_DIR, TRAIN_OPTIONS, CheckpointError, check_compatible
from ecgqa.files import OutputDirError, apply_umask, atomic_write, atomic_write_json, claim_output_dir
from ecgqa.training.errors import clear_error
from ecgqa.training.recipes import DEFAULT_RECIPE, Recipe, tri_stage_factor

TRAINER_DIR = "checkpoints"
METRICS_LOG = "metrics.jsonl"
#: written first into --out: proves the folder is a training run this tool started
RUN_MARKER = "train_run.json"
#: the marker's "format": a marker without it is not ours
MARKER_FORMAT = "ecgqa-train-run"
#: held (``flock``) by the run writing the folder; holds its pid
LOCK_FILE = ".train.lock"
#: what a run writes into --out (a fresh run replaces exactly these)
RUN_OUTPUTS = (
    TRAINER_DIR,
    METRICS_LOG,
    RUN_MARKER,
    TRAIN_OPTIONS,
    PREPARED_META,
    TOKENIZER_DIR,
    "config.json",
    "model.safetensors",
    "generation_config.json",
)
#: a Trainer checkpoint-N is complete once these exist (trainer_state.json is written last)
COMPLETE_FILES = ("trainer_state.json",)
#: a run estimated to take longer than this (seconds) on this device is warned about
LONG_RUN_SECONDS = 3600


@dataclass
class TrainConfig:
    """Everything one training run needs. Fields left None take the recipe's value (``ecgqa/training/recipes.py``)."""

    data: Path
    model: str
    out: Path
    recipe: str = DEFAULT_RECIPE
    # length: updates (max_steps) or epochs
    max_steps: int | None = None
    epochs: float | None = None
    # batch: per device; the effective batch (batch × accumulation × devices) comes from the recipe
    batch_size: int | None = None
    grad_accum: int | None = None
    effective_batch: int | None = None
    # optimiser and schedule
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup: float | None = None
    max_grad_norm: float | None = None  # gradient clipping; 0 = none (the paper recipe's, upstream clip_norm 0.0)
    precision: str = "fp32"
    seed: int = 0
    # data and evaluation
    train_split: str = "train"
    eval_split: str | None = "valid"
    eval_steps: int | None = None
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume: bool | str | Path = False
    text_encoder: str | None = None
    bert_embeddings: str | None = None  # local bert-base-uncased folder: initial word/position/type tables
    init_from: str | None = (
        None  # pretrained W2V encoder: fairseq .pt or a folder with w2v.* (ecgqa/training/fairseq_import.py)
    )
    max_question_len: int = 64
    num_workers: int = 0
    logging_steps: int = 10
    overrides: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False  # no bar, no table, no notes
    verbose: bool = False  # the libraries' logging, warnings and bars too


# ------------------------------------------------------------------------------------- options


def world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def positive(value: Any, option: str, *, allow_none: bool = True, integer: bool = True) -> None:
    """Raise a one-line ``ValueError`` naming ``option`` unless ``value`` is a positive (integer) number."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{option} {value!r}: must be {kind}")


def fill_from_recipe(config: TrainConfig, recipe: Recipe) -> TrainConfig:
    """The recipe fills what the user did not set (``train`` and ``pretrain``); returns ``config``."""
    from ecgqa.training.recipes import grad_accum_for

    if config.max_steps is None and config.epochs is None:
        config.max_steps, config.epochs = recipe.max_steps, recipe.epochs
    if config.batch_size is None:
        config.batch_size = recipe.batch_size
        if recipe.effective_batch and config.grad_accum is None:
            # the reference per-device batch, made smaller where more devices share the effective batch
            fits = [
                b
                for b in range(min(recipe.batch_size, recipe.effective_batch // world_size()), 0, -1)
                if recipe.effective_batch % (b * world_size()) == 0
            ]
            config.batch_size = fits[0] if fits else recipe.batch_size  # none fits: grad_accum_for says so
    if config.grad_accum is None:
        config.effective_batch = config.effective_batch or recipe.effective_batch
        config.grad_accum = (
            grad_accum_for(config.effective_batch, config.batch_size, world_size()) if config.effective_batch else 1
        )
    config.effective_batch = config.batch_size * config.grad_accum * world_size()
    config.lr = config.lr if config.lr is not None else recipe.lr
    config.weight_decay = config.weight_decay if config.weight_decay is not None else recipe.weight_decay
    config.schedule = config.schedule or recipe.schedule
    config.warmup = config.warmup if config.warmup is not None else recipe.warmup
    config.max_grad_norm = config.max_grad_norm if config.max_grad_norm is not None else recipe.max_grad_norm
    return config


def planned_steps(config: TrainConfig, n_samples: int) -> int:
    """Updates the run makes, as the Trainer counts them: each device's loader has ceil(n / devices /
    batch) batches, an update takes ``grad_accum`` of them; ``--max-steps`` wins over ``--epochs``."""
    batches = math.ceil(math.ceil(n_samples / world_size()) / config.batch_size)
    per_epoch = max(math.ceil(batches / config.grad_accum), 1)
    return int(config.max_steps or math.ceil((config.epochs or 0) * per_epoch))


# ------------------------------------------------------------------------------------- the run folder


def is_run_marker(path: Path) -> bool:
    """Whether ``path`` is a marker this module wrote (JSON with our ``format``)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == MARKER_FORMAT


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` is a run folder this tool started (a symlink to one counts: the marker is inside)."""
    return Path(out).is_dir() and is_run_marker(Path(out) / RUN_MARKER)


def claim_run_dir(config: TrainConfig) -> None:
    """Check that ``--out`` may hold this run; changes nothing (:func:`start_run_dir` does, under the lock).

    Accepted: absent, empty, or a run folder of this tool (its marker; a symlink to one too). Anything else
    — a file, a folder of a user's files even with a ``checkpoints/`` in it, a symlink to such a folder — is
    refused (``ecgqa.files.claim_output_dir``'s message): the run never deletes what it did not write.
    """
    if not is_main_process():
        return  # rank 0 decides (and clears); the others would race with its clean-up
    out = config.out
    if is_run_dir(out) or (out.is_dir() and not out.is_symlink() and {p.name for p in out.iterdir()} <= {LOCK_FILE}):
        return  # ours, or only another run's lock in it (RunLock names that run)
    claim_output_dir(out, marker=RUN_MARKER, what="training run", is_ours=is_run_marker)


def start_run_dir(config: TrainConfig) -> None:
    """Under the lock, once the options, data and model are checked: a fresh run clears its own earlier
    outputs (only the names in :data:`RUN_OUTPUTS`) and writes the marker before anything else; a resumed
    run keeps everything (its marker stays)."""
    if not is_main_process():
        return
    out = config.out
    if not config.resume:
        for name in RUN_OUTPUTS:  # a fresh run into our own folder: nothing of the old run may mix in
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    if not (out / RUN_MARKER).is_file():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            out / RUN_MARKER, {"format": MARKER_FORMAT, "model": config.model, "data": str(config.data)}, indent=2
        )


class RunLockedError(OutputDirError):
    """Another live run holds ``--out``."""


class RunLock:
    """``with RunLock(out):`` — this process alone writes the run folder ``out`` (created if absent).

    An ``flock`` on ``OUT/.train.lock``, which holds the owner's pid and host for the refusal message. The
    kernel drops the lock when its process dies, so a lock file left by a killed run is simply taken over.
    Only rank 0 of a distributed run takes it. The file is removed on release (and the folder, if this lock
    created it and nothing else was written)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_FILE
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> RunLock:
        if not is_main_process():
            return self
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 256).decode(errors="replace").split()
                os.close(fd)
                who = f"pid {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else "a process"
                raise RunLockedError(
                    f"--out {self.path.parent} is in use by another run ({who}, lock {self.path}); wait for it "
                    "to finish, stop it, or choose another --out"
                ) from None
            try:  # the previous owner may have removed the file between our open and flock: lock the new one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = None
            if self.created:  # a run refused before writing anything leaves no empty folder behind
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()


# ------------------------------------------------------------------------------------- resume


def step_of(path: Path) -> int:
    """N of a ``checkpoint-N`` folder (-1 for any other name)."""
    try:
        return int(Path(path).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def is_complete(checkpoint: Path) -> bool:
    """Whether a Trainer ``checkpoint-N`` folder was fully written (``trainer_state.json`` comes last)."""
    return all((checkpoint / name).is_file() for name in COMPLETE_FILES)


def find_resume_checkpoint(config: TrainConfig) -> Path:
    """The checkpoint to resume from: the given folder, or the newest complete ``checkpoint-N`` in
    ``OUT/checkpoints``; torn ones (a save killed midway) are skipped with a message on stderr."""
    if config.resume is not True:
        path = Path(config.resume)
        if not path.is_dir():
            raise FileNotFoundError(f"resume checkpoint {path} not found")
        if not is_complete(path):
            raise ValueError(
                f"resume checkpoint {path} is incomplete (no trainer_state.json: its save was "
                f"interrupted); resume from an earlier one or use --resume alone"
            )
        return path
    trainer_dir = config.out / TRAINER_DIR
    found = (
        sorted(
            (p for p in trainer_dir.glob("checkpoint-*") if p.is_dir() and step_of(p) >= 0), key=step_of, reverse=True
        )
        if trainer_dir.is_dir()
        else []
    )
    for path in found:
        if is_complete(path):
            return path
        print(f"note: skipping {path}: incomplete (no trainer_state.json; its save was interrupted)", file=sys.stderr)
    raise FileNotFoundError(f"nothing to resume: no complete checkpoint-N folder in {trainer_dir}")


def trim_log(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step``: they are re-run (and re-logged) after the resume."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    atomic_write(path, "".join(line + "\n" for line in kept))


@dataclass
class SavedModel:
    """What :func:`ecgqa.checkpoint.check_compatible` reads of a ``checkpoint-N``'s ``config.json``."""

    path: Path
    task: str
    classes: list[str]
    rate: int
    signal_length: int


@dataclass
class ResumeState:
    """The checkpoint a run resumes from, its step and its Trainer state (``trainer_state.json``)."""

    path: Path
    step: int
    state: dict[str, Any]

    def finished(self, planned: int) -> bool:
        """Whether the state is already at (or past) the run's last update: nothing left to train."""
        return self.step >= planned


def resume_state(config: TrainConfig, data: Any, *, signal_only: bool = False) -> ResumeState | None:
    """The checkpoint ``--resume`` continues from, after every check, before anything is changed.

    Checked: the folder's marker names this ``--model``, the checkpoint's own ``config.json`` is a
    ``--model`` model, and it fits ``data`` (task, classes, rate, length; only rate and length with
    ``signal_only``, for pretraining): a run resumed on other data would train on and write a checkpoint
    whose config describes the new data. ``metrics.jsonl`` is not touched here (:class:`JsonlLog` trims it
    once the Trainer has loaded the state)."""
    if not config.resume:
        return None
    path = find_resume_checkpoint(config)
    marker = config.out / RUN_MARKER
    started = json.loads(marker.read_text()).get("model") if is_run_marker(marker) else None
    if started and started != config.model:  # else the state dict fails to load, in a many-line error
        raise ValueError(
            f"--resume: {config.out} is a run of --model {started}, not {config.model}; resume it "
            f"with --model {started} (or start the {config.model} run in another --out)"
        )
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"resume checkpoint {path}: no readable config.json ({e})") from None
    if saved.get("model_name") not in (None, config.model):
        raise ValueError(
            f"--resume {path}: a checkpoint of --model {saved['model_name']}, not {config.model}; resume it with "
            f"--model {saved['model_name']}"
        )
    model = SavedModel(
        path=path,
        task=str(saved.get("task")),
        classes=list(saved.get("classes") or []),
        rate=int(saved.get("rate", -1)),
        signal_length=int(saved.get("signal_length", -1)),
    )
    check_compatible(model, data, signal_only=signal_only)
    state = json.loads((path / "trainer_state.json").read_text())
    return ResumeState(path=path, step=int(state.get("global_step", step_of(path))), state=state)


def restore_finished(trainer: Trainer, resume: ResumeState, *, best: bool, log: Path) -> None:
    """A finished run resumed: no update is made; the trainer gets the saved state and the weights of the
    final model (the best-metric checkpoint with ``best``, else the last) so the final output can be
    written again; the metrics ``log`` is trimmed to the state's step as a resumed run's is."""
    trainer.state = TrainerState.load_from_json(str(resume.path / "trainer_state.json"))
    source = resume.path
    recorded = trainer.state.best_model_checkpoint
    if best and recorded:
        named = Path(trainer.args.output_dir) / Path(recorded).name  # the run folder may have moved
        source = next((p for p in (Path(recorded), named) if p.is_dir() and is_complete(p)), resume.path)
    trainer._load_from_checkpoint(str(source))  # the Trainer's own loader (safetensors, tied weights)
    if trainer.is_world_process_zero():
        trim_log(log, resume.step)


def run_or_restore(
    config: TrainConfig,
    trainer: Trainer,
    resume: ResumeState | None,
    planned: int,
    *,
    best: bool,
    stop_after: int | None,
) -> bool:
    """``trainer.train`` (from ``resume``), or for a resumed run already at its ``planned`` last step only
    :func:`restore_finished`; a full disk or a refused state file becomes one line (``ecgqa/training/errors.py``).
    Returns False when ``stop_after`` ended the run early (its resumable state is in ``out/checkpoints``)."""
    if resume is not None and resume.finished(planned):
        say(config, f"{config.out}: the run is finished (step {resume.step} of {planned}); writing its final output")
        restore_finished(trainer, resume, best=best, log=config.out / METRICS_LOG)
        return True
    resume_from = str(resume.path) if resume else None
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except Exception as e:
        clear = clear_error(e, config.out, resume_from)
        if clear is None:
            raise
        raise clear from e
    return not (stop_after and trainer.state.global_step < (trainer.state.max_steps or 0))


def interrupted(out: Path) -> int:
    """Ctrl-C in ``train`` / ``pretrain``: the generic advice (re-run the same command) would start afresh,
    and a fresh run clears ``OUT/checkpoints``; point at ``--resume`` instead. Exit status 130 as dispatch."""
    folder = Path(out) / TRAINER_DIR
    saved = [p for p in folder.glob("checkpoint-*") if step_of(p) >= 0] if folder.is_dir() else []
    if not saved:
        print(
            "interrupted before the first checkpoint was saved; re-run the same command to start again", file=sys.stderr
        )
        return 130
    newest = max(saved, key=step_of)
    print(
        f"interrupted; continue with the same command plus --resume (newest saved state: {newest}); without "
        f"--resume the run starts afresh and deletes {folder}",
        file=sys.stderr,
    )
    return 130


# ------------------------------------------------------------------------------------- the Trainer


class RecipeTrainer(Trainer):
    """The Trainer with the recipe's optimiser and schedule: upstream's Adam (``torch.optim.AdamW`` over
    every parameter: decoupled decay) when ``recipe.optimizer == "adam"``, fairseq's tri-stage schedule when
    ``schedule == "tri_stage"``; the transformers defaults otherwise."""

    loss_is_scaled_for_ga = False  # our losses are per-batch means; let the Trainer divide for accumulation

    def __init__(self, *args: Any, recipe: Recipe, schedule: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recipe = recipe
        self.schedule = schedule or recipe.schedule

    def create_optimizer(self, model=None):
        if self.recipe.optimizer != "adam":
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.optimizer is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(
                params,
                lr=self.args.learning_rate,
                betas=self.recipe.betas,
                eps=self.recipe.eps,
                weight_decay=self.args.weight_decay,
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.schedule != "tri_stage":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            r = self.recipe
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                lambda step: tri_stage_factor(
                    step, num_training_steps, r.phase_ratio, r.init_lr_scale, r.final_lr_scale
                ),
            )
        return self.lr_scheduler


class ECGQATrainer(RecipeTrainer):
    """``ecgqa train``'s Trainer: the model's own loss (``model(**batch, labels=..., label_mask=...)``
    returns ``.loss``: the reference baselines' BCE, ``ecgqa/models/losses.py``) on the task's inputs."""

    INPUTS = {"qa": ("ecg", "ecg_mask", "input_ids", "attention_mask"), "upperbound": ("ecg", "lead_mask")}

    def __init__(self, *args: Any, task: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task = task
        self.model_inputs = self.INPUTS["qa" if task == "qa" else "upperbound"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = {k: inputs[k] for k in self.model_inputs if k in inputs}
        batch["labels"] = inputs["labels"]
        if "label_mask" in inputs:
            batch["label_mask"] = inputs["label_mask"]
        outputs = model(**batch)
        if outputs.loss is None:
            raise RuntimeError(f"{type(model).__name__} returned no loss for a batch with labels")
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class JsonlLog(TrainerCallback):
    """Appends every Trainer log (loss, lr, eval EM, ...) with its step and epoch as one JSON line. On a
    resume, lines of steps after the resumed one are dropped first — once the Trainer has loaded that state,
    so a resume refused by any check leaves the log as it was."""

    def __init__(self, path: Path, *, resumed: bool = False) -> None:
        self.path, self.resumed = Path(path), resumed

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed and state.is_world_process_zero:
            trim_log(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class UmaskModes(TrainerCallback):
    """Every ``checkpoint-N`` follows the umask like our own files (safetensors writes 0600)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            apply_umask(folder)


class StopAfter(TrainerCallback):
    """Stops (after saving) once ``step`` updates are done: an interrupted run, for resume tests."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


class CtrlC(TrainerCallback):
    """Ctrl-C (SIGINT) stops training at the end of the current step, by a ``KeyboardInterrupt`` raised there.

    Python's own handler raises ``KeyboardInterrupt`` at whatever bytecode runs when the signal arrives; when
    that is a finaliser (a tensor's or a data iterator's ``__del__``), Python prints "Exception ignored" and the
    run goes on as if nothing was pressed (seen under load: a pretraining run ignored Ctrl-C). Here the signal
    only sets a flag, and the interrupt is raised from :meth:`on_step_end`, where nothing swallows it; the
    usual handler is back in place at once, so a second Ctrl-C interrupts immediately.
    """

    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None

    def _handler(self, signum, frame) -> None:
        self.pending = True
        signal.signal(signal.SIGINT, self.previous)

    def on_train_begin(self, args, state, control, **kwargs):
        # only over Python's own handler: a process that ignores SIGINT (nohup, a background job) or handles it
        # itself keeps doing so
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def on_train_end(self, args, state, control, **kwargs):
        if self.previous is not None and signal.getsignal(signal.SIGINT) == self._handler:
            signal.signal(signal.SIGINT, self.previous)


def peak_memory() -> str:
    """This process's peak memory: the accelerator's allocations on CUDA, else the resident set size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB on {torch.cuda.get_device_name()}"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{rss / 2**30:.2f} GiB resident (CPU)"


def describe_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(steps: int, per_step: float, measured: str) -> str:
    """``estimate: N steps x T s/step (measured over ...) = D; peak memory M`` (+ a warning beyond
    :data:`LONG_RUN_SECONDS`); evaluations and saves come on top."""
    total = steps * per_step
    line = (
        f"estimate: {steps} steps x {per_step:.3g} s/step (measured over {measured}) = "
        f"{describe_duration(total)}; peak memory {peak_memory()}"
    )
    if total > LONG_RUN_SECONDS:
        line += (
            f"\nwarning: this run will take about {describe_duration(total)} on this device; for a quick run use "
            "--max-steps, a -test size (--tiny) or a GPU"
        )
    return line


class RunDisplay(TrainerCallback):
    """What a person sees of a run: one progress bar (loss and the last EM in its postfix), each
    evaluation as a row of a short table, and after the first few updates an estimate of the whole run's
    time and the peak memory. Nothing with ``quiet``; rank 0 only."""

    TIMED = 3  # updates timed for the estimate (after a first, warm-up one)

    def __init__(self, *, quiet: bool = False, desc: str = "train") -> None:
        self.quiet, self.desc = quiet, desc
        self.bar: Any = None
        self.postfix: dict[str, str] = {}
        self.header = False
        self._t0: float | None = None
        self._first = 0

    def _show(self, state) -> bool:
        return not self.quiet and state.is_world_process_zero

    def on_train_begin(self, args, state, control, **kwargs):
        if self._show(state):
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step", dynamic_ncols=True
            )
        self._first = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        done = state.global_step - self._first
        if done == 1:
            self._t0 = time.perf_counter()
        elif self._t0 is not None and done == 1 + min(self.TIMED, state.max_steps - self._first - 1):
            per_step = (time.perf_counter() - self._t0) / (done - 1)
            self._t0 = None
            if self._show(state):
                self.write(
                    estimate_line(state.max_steps, per_step, f"{done - 1} step{'s' if done > 2 else ''}"), err=True
                )

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.postfix["loss"] = f"{logs['loss']:.4g}"
        if "eval_em" in logs:
            self.postfix["EM"] = f"{100 * logs['eval_em']:.1f}%"
            self._table_row(state, logs)
        if self.bar is not None and self.postfix:
            self.bar.set_postfix(self.postfix, refresh=False)
        if "train_runtime" in logs and self._show(state):
            loss = f", mean train loss {logs['train_loss']:.4g}" if "train_loss" in logs else ""
            self.write(f"trained {state.global_step} steps in {describe_duration(logs['train_runtime'])}{loss}")

    def _table_row(self, state, logs: dict[str, Any]) -> None:
        if not self._show(state):
            return
        extra = "label_acc" if "eval_label_accuracy" in logs else ""
        if not self.header:
            self.write(f"{'step':>7} {'epoch':>7} {'eval loss':>10} {'EM':>7}" + (f" {extra:>9}" if extra else ""))
            self.header = True
        row = f"{state.global_step:>7} {state.epoch or 0:>7.2f} {logs.get('eval_loss', float('nan')):>10.4f}"
        row += f" {100 * logs['eval_em']:>6.1f}%"
        if extra:
            row += f" {100 * logs['eval_label_accuracy']:>8.1f}%"
        self.write(row)

    def write(self, text: str, *, err: bool = False) -> None:
        tqdm.write(text, file=sys.stderr if err else sys.stdout)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepTimer(TrainerCallback):
    """Times each update after the first (warm-up) one: :attr:`per_step` is their mean in seconds (the first
    update's own time when only it ran). Stops the run once ``budget`` seconds are spent: a dry run of a
    model that takes minutes per update measures one update, not three."""

    def __init__(self, budget: float = 60.0) -> None:
        self.budget = budget
        self.times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.times = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())
        if self.times[-1] - self.times[0] > self.budget:
            control.should_training_stop = True
        return control

    @property
    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.times[1:], self.times[2:], strict=False)]
        if not gaps:
            gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return sum(gaps) / len(gaps) if gaps else float("nan")


def display_callbacks(trainer: Trainer, display: RunDisplay) -> None:
    """Replace the Trainer's raw dict printer / bars by ``display``."""
    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)
    trainer.add_callback(display)


@contextlib.contextmanager
def library_output(*, verbose: bool) -> Iterator[None]:
    """For the run's duration: without ``verbose``, transformers / datasets log errors only, their
    progress bars (e.g. one "Writing model shards" bar per save) are off and Python warnings are not
    shown; everything is restored afterwards."""
    if verbose:
        yield
        return
    import datasets

    ds_logging = datasets.utils.logging
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    ds_before = (ds_logging.get_verbosity(), datasets.utils.is_progress_bar_enabled())
    torch_logger = logging.getLogger("torch")
    torch_level = torch_logger.level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ds_logging.set_verbosity_error()
    datasets.utils.disable_progress_bars()
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(before[0])
        if before[1]:
            hf_logging.enable_progress_bar()
        ds_logging.set_verbosity(ds_before[0])
        if ds_before[1]:
            datasets.utils.enable_progress_bars()
        torch_logger.setLevel(torch_level)


def training_arguments(config: TrainConfig, has_eval: bool, label_names: list[str]) -> TrainingArguments:
    """The ``TrainingArguments`` of a run (the Trainer's own bars and printed dicts off: :class:`RunDisplay`)."""
    if config.eval_steps:
        strategy = {
            "eval_strategy": "steps",
            "eval_steps": config.eval_steps,
            "save_strategy": "steps",
            "save_steps": config.eval_steps,
        }
    elif has_eval:
        strategy = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    elif config.save_steps:
        strategy = {"eval_strategy": "no", "save_strategy": "steps", "save_steps": config.save_steps}
    else:
        strategy = {"eval_strategy": "no", "save_strategy": "epoch"}
    warmup = config.warmup if config.schedule != "tri_stage" else 0
    return TrainingArguments(
        output_dir=str(config.out / TRAINER_DIR),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs or 1.0,
        max_steps=config.max_steps or -1,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        lr_scheduler_type=config.schedule if config.schedule != "tri_stage" else "constant",
        warmup_steps=warmup if warmup < 1 else int(warmup),
        max_grad_norm=config.max_grad_norm,  # 0: no clipping (the Trainer clips only when > 0)
        bf16=config.precision == "bf16",
        use_cpu=config.precision != "fp32" and not torch.cuda.is_available(),  # CPU autocast; the Trainer wants it said
        fp16=config.precision == "fp16",
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="em" if has_eval else None,
        greater_is_better=True,
        label_names=label_names,
        remove_unused_columns=False,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_persistent_workers=config.num_workers > 0,
        disable_tqdm=True,  # RunDisplay draws the one bar
        log_level="warning" if config.verbose else "error",
        report_to="none",
        ddp_backend="gloo" if world_size() > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=bool(config.text_encoder),
        **strategy,
    )


def run_callbacks(config: TrainConfig, resume: ResumeState | None, stop_after: int | None) -> list[TrainerCallback]:
    """The callbacks every run has: the JSONL log (trimmed on resume), umask modes, Ctrl-C at a step's end, and
    ``stop_after``."""
    return [JsonlLog(config.out / METRICS_LOG, resumed=resume is not None), UmaskModes(), CtrlC()] + (
        [StopAfter(stop_after)] if stop_after else []
    )


def final_options(config: TrainConfig, trainer: Trainer) -> dict[str, Any]:
    """``train_options.json``'s common part: the config, then the Trainer's step, epoch and device count."""
    from dataclasses import asdict

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    return {
        **options,
        "global_step": trainer.state.global_step,
        "epoch": trainer.state.epoch,
        "world_size": trainer.args.world_size,
    }


def say(config: TrainConfig, text: str) -> None:
    """A note on stderr from rank 0, unless ``quiet``."""
    if not config.quiet and is_main_process():
        print(text, file=sys.stderr)


__all__ = [
    "COMPLETE_FILES",
    "LOCK_FILE",
    "METRICS_LOG",
    "RUN_MARKER",
    "RUN_OUTPUTS",
    "TRAINER_DIR",
    "ECGQATrainer",
    "JsonlLog",
    "RecipeTrainer",
    "ResumeState",
    "RunDisplay",
    "RunLock",
    "RunLockedError",
    "StepTimer",
    "StopAfter",
    "TrainConfig",
    "UmaskModes",
    "claim_run_dir",
    "fill_from_recipe",
    "find_resume_checkpoint",
    "interrupted",
    "is_complete",
    "is_run_dir",
    "library_output",
    "planned_steps",
    "positive",
    "restore_finished",
    "resume_state",
    "run_or_restore",
    "start_run_dir",
    "step_of",
    "training_arguments",
    "trim_log",
    "world_size",
]
