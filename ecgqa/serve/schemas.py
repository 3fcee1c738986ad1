"""The demo API's request and response bodies (pydantic), as the OpenAPI page at /docs shows them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_QUESTION_CHARS = 500
ECG_ID_MAX = 2**62  # ids beyond int64 cannot be in any prepared data; reject them as 422, not 500


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    ecg_ids: list[Annotated[int, Field(ge=0, le=ECG_ID_MAX)]] = Field(
        min_length=1,
        max_length=2,
        description="one ECG id, or two (first, second) for comparison questions",
        examples=[[127]],
    )
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, examples=["Does this ECG show static noise?"])


class ClassScore(BaseModel):
    name: str
    score: float = Field(description="sigmoid probability")
    selected: bool = Field(
        description="above the decision threshold (ecgqa.evaluation.metrics.decide): part of the answer"
    )


class MatchInfo(BaseModel):
    source: str = Field(description="dataset: a prepared question; similar: close to one; fallback: all classes")
    question_type: str | None
    attribute_type: str | None
    template_id: int | None
    matched_question: str | None
    similarity: float


class Timing(BaseModel):
    total_ms: float
    queue_ms: float = Field(description="waiting for the model")
    inference_ms: float = Field(description="the batched forward pass this request was part of")
    batch_size: int


class AnswerResponse(BaseModel):
    question: str
    ecg_ids: list[int] | None = Field(description="the ECGs answered about; null for uploads")
    recognised: bool = Field(
        description="whether the question is one of the prepared data's questions or close to one (a template "
        "the model was trained on); when false the answer below is a guess over every class"
    )
    warning: str | None = Field(
        None, description="set when the question is not one the model was trained on: read it before the answer"
    )
    answer: list[str] = Field(description="the answer set; [] means none of the options")
    scores: list[ClassScore] = Field(description="every valid class, highest score first")
    valid_classes: list[str]
    question_type: str | None
    match: MatchInfo
    timing: Timing
    notes: list[str] = Field(default_factory=list, description="adjustments made to the input (resampling, length)")


class Info(BaseModel):
    model_name: str
    version: str
    task: str
    n_classes: int
    rate: int
    signal_length: int
    data_version: str | None
    data_variant: str | None
    n_ecgs: int
    max_upload_bytes: int
    max_question_chars: int
    attributes_model: str | None = Field(None, description="the attribute classifier behind /api/ecgs/{id}/findings")


class ECGSummary(BaseModel):
    id: int
    n_questions: int
    splits: list[str]
    duration_s: float


class ECGPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ECGSummary]


class ECGSignal(BaseModel):
    id: int
    rate: int
    n_samples: int
    leads: list[str]
    values: list[list[float]] = Field(description="one list per lead, in mV")


class Finding(BaseModel):
    name: str = Field(description="a grounding class (attribute, optionally with its lead group)")
    score: float = Field(description="the attribute classifier's sigmoid probability")


class Findings(BaseModel):
    ecg_id: int
    model_name: str
    threshold: float = Field(description="a class is a finding when its score is above this")
    findings: list[Finding] = Field(description="classes above the threshold, highest score first")
    n_classes: int


class Example(BaseModel):
    question: str
    ecg_ids: list[int]
    question_type: str
    attribute_type: str
    answer: list[str] = Field(description="the dataset's answer")
    split: str


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    detail: str
    error_id: str | None = None
