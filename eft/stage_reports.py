"""What a stage reports to whoever runs it: one JSON line, typed on both sides.

A stage's summary is its manifest's ``summary`` and, in a pod, its termination message
(``/dev/termination-log``, under 4 KiB). The local runner and the operator read the same line with the
same models, so what evaluate and export say and what the operator does with it cannot drift apart;
unit tests build these lines with the code the stages use.

Whether the quality gate lets a model ship is decided here, once: :meth:`EvaluateReport.blocks_shipping`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

GateStatus = Literal["passed", "failed", "overridden"]

# Why a gate failed although the metric did not (EvaluateReport.gate_reason), and what to tell the user.
# offlineQuestionsOnly: measured in the README (Benchmarks, "The synthetic split's verdict against human
# queries"): on questions cut from their own passages, six held-out checks called a model better that human
# queries called 10.6% worse, and called a model trained on human queries worse; such a split is no evidence.
GATE_REASONS = {
    "offlineQuestionsOnly": (
        "every synthetic test question was cut from its passage by the offline generator, and such a split "
        "rewards matching those copies, not retrieval, so it cannot show that the tuned model is better; "
        "judge the gate on a human-labelled evaluation.datasets entry, or write questions with an LLM "
        "(sdg.backend openai) or supply real ones (spec.queries)"),
}
GateReason = Literal["offlineQuestionsOnly"]


def gate_reason_suffix(reason: str | None) -> str:
    """What every gate message (evaluate's, the operator's condition, export's refusal) appends for a reason."""
    return f"; not accepted as evidence: {GATE_REASONS[reason]}" if reason else ""


class _Report(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def line(self) -> str:
        """The one-line JSON form (camelCase keys) written as summary and termination message."""
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True), separators=(",", ":"))

    @classmethod
    def parse(cls, message: str | None):
        """The report in a termination message or manifest summary; None when there is none (an
        older or other stage's text, a truncated message)."""
        if not message:
            return None
        text = message.strip()
        start = text.find("{")
        if start < 0:
            return None
        try:
            data = json.loads(text[start:])
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        try:
            return cls.model_validate(data)
        except ValidationError:
            return None


class EvaluateReport(_Report):
    """evaluate: base vs tuned on the gate's dataset, and the gate's verdict."""

    base_ndcg10: float | None = Field(None, alias="baseNdcg10")
    tuned_ndcg10: float | None = Field(None, alias="tunedNdcg10")
    gate: GateStatus
    gate_metric: str = Field(alias="gateMetric")
    gate_dataset: str = Field(alias="gateDataset")
    # the gate's own metric when it is not nDCG@10
    gate_base: float | None = Field(None, alias="gateBase")
    gate_tuned: float | None = Field(None, alias="gateTuned")
    relative_improvement: float | None = Field(None, alias="relativeImprovement")
    required: float | None = None
    # set when the gate's dataset cannot tell (GATE_REASONS); the gate then does not pass whatever the metric
    gate_reason: GateReason | None = Field(None, alias="gateReason")

    def blocks_shipping(self) -> bool:
        """The gate failed and was not overridden: nothing is exported or served."""
        return self.gate == "failed"

    def metrics(self) -> dict[str, float | str]:
        """The small mapping shown as status.metrics."""
        return {k: v for k, v in self.model_dump(by_alias=True, exclude_none=True).items()}


class ExportReport(_Report):
    """export: the model folder's digest (what serving rolls out) and the variants written."""

    model_digest: str = Field(alias="modelDigest", pattern=r"^sha256:[0-9a-f]{64}$")
    variants: list[str] = Field(default_factory=list)
    tensorrt: str | None = None


def model_digest(files: dict[str, str]) -> str:
    """sha256 over (relative path, file sha256) of a model folder: changes when any served byte does."""
    blob = json.dumps(sorted(files.items()), separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()
