"""Shared fixtures: everything is built from the bundled real sample, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from ecgqa import sample


@pytest.fixture(scope="session")
def sample_paths() -> sample.SamplePaths:
    return sample.paths()


@pytest.fixture(scope="session")
def mapped_sample(tmp_path_factory, sample_paths) -> Path:
    """The bundled PTB-XL sample mapped to its records (template and paraphrased, 500 Hz)."""
    from mapping.mapper import map_release

    out = tmp_path_factory.mktemp("mapped") / "ptbxl"
    map_release("ptbxl", sample_paths.ptbxl_release, sample_paths.ptbxl_records, out, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_qa(tmp_path_factory, mapped_sample) -> Path:
    """PREPARED dir of the bundled sample: task qa, template variant, 500 Hz (train 413, valid 38)."""
    from ecgqa.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "ptbxl-template-qa"
    prepare(mapped_sample, out, variant="template", task="qa", rate=500, progress=False)
    return out


@pytest.fixture(scope="session")
def prepared_upperbound(tmp_path_factory, mapped_sample) -> Path:
    """PREPARED dir of the bundled sample: task upperbound (83 PTB-XL grounding classes), template, 500 Hz."""
    from ecgqa.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "ptbxl-template-upperbound"
    prepare(mapped_sample, out, variant="template", task="upperbound", rate=500, progress=False)
    return out


@pytest.fixture(scope="session")
def qa_checkpoint(tmp_path_factory, prepared_qa) -> Path:
    """A tiny fusion model trained briefly on ``prepared_qa`` (evaluated on valid, best-EM kept): a CKPT dir."""
    from ecgqa.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("checkpoints") / "fusion-tiny"
    return train(
        TrainConfig(
            data=prepared_qa,
            model="fusion-test",
            out=out,
            max_steps=8,
            batch_size=16,
            eval_steps=4,
            lr=3e-3,
            warmup=0,
            logging_steps=2,
            quiet=True,
        )
    )


@pytest.fixture(scope="session")
def upperbound_checkpoint(tmp_path_factory, prepared_upperbound) -> Path:
    """A tiny se-wrn trained briefly on ``prepared_upperbound``: a CKPT dir."""
    from ecgqa.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("checkpoints") / "se-wrn-tiny"
    return train(
        TrainConfig(
            data=prepared_upperbound,
            model="se-wrn-test",
            out=out,
            max_steps=8,
            batch_size=16,
            lr=3e-3,
            warmup=0,
            quiet=True,
        )
    )
