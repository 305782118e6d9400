"""The one model of an EmbeddingFinetune spec.

The local runner, every stage, the operator and the CRD schema (crds/) are all driven by the
classes in this module; every field has a default (training settings come from `training.preset`, the
recipe's values among them). Field names are camelCase on the
wire (YAML, the Kubernetes API) and snake_case in Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "eft.ai"
API_VERSION = "v1alpha1"
KIND = "EmbeddingFinetune"
PLURAL = "embeddingfinetunes"

STAGES: tuple[str, ...] = ("ingest", "sdg", "prepare", "train", "evaluate", "export")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The name of an object in the resource's own namespace (a DNS-1123 subdomain). A spec can only name objects
# there: a "namespace/name" or any other namespace reference is refused, so that an EmbeddingFinetune never lets
# its author reach what they could not reach with a pod of their own (operator/README.md, privilege model).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)]
# A Kueue LocalQueue name: it travels as a label value (at most 63 characters).
QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL.pattern)]


@dataclass(frozen=True)
class CelRule:
    """One CEL rule (x-kubernetes-validations) of the CRD, declared on the block it checks.

    A rule restates either a pydantic validator of its block (``mirrors``: the validator's name; same message,
    so the API server rejects what the runner rejects) or immutability (``immutable``: the field's wire path
    below spec; a transition rule on ``oldSelf``, which only a stored object has). ``field`` (snake_case) puts
    the rule on that property's node instead of the block's. eft.crd reads the rules from the JSON schema.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None
    mirrors: str | None = None
    immutable: str | None = None
    field: str | None = None

    def crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def immutable(path: str, *, optional: bool = False, message: str | None = None) -> CelRule:
    """The field at wire ``path`` keeps its creation value; ``optional``: unset reads as '' (so setting it later
    is a change too, which a rule on the field itself would never see)."""
    name = path.rsplit(".", 1)[-1]
    if optional:
        rule = f"(has(self.{name}) ? self.{name} : '') == (has(oldSelf.{name}) ? oldSelf.{name} : '')"
    else:
        rule = f"self.{name} == oldSelf.{name}"
    return CelRule(rule, message or f"{path} is immutable", field_path=f".{name}", reason="FieldValueForbidden",
                   immutable=path)


def _cel_rules_schema(schema: dict[str, Any], cls: type) -> None:
    """json_schema_extra of every block: its ``cel_rules`` as x-kubernetes-validations."""
    for r in getattr(cls, "cel_rules", ()):
        node = schema
        if r.field is not None:
            props = schema["properties"]
            alias = cls.model_fields[r.field].alias
            node = props[alias] if alias in props else props[r.field]
        node.setdefault("x-kubernetes-validations", []).append(r.crd())


class SpecModel(BaseModel):
    """Base for every spec block: camelCase aliases, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        frozen=False,
        json_schema_extra=_cel_rules_schema,
    )
    # The block's CEL rules: each next to the validator it mirrors.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()


class SecretKeyRef(SpecModel):
    name: ObjectName = Field(description="Name of a Secret in the resource's namespace.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class BaseModelSpec(SpecModel):
    name: str = Field(
        default="bundled",
        min_length=1,
        description="'bundled' (all-MiniLM-L6-v2 shipped with eft, no network), a Hugging Face model id, "
        "or a path to a sentence-transformers / Hugging Face model folder.",
    )
    revision: str | None = Field(default=None, description="Hugging Face revision (branch, tag or commit).")
    query_prefix: str = Field(default="", description="Text prepended to every query, e.g. 'query: '.")
    passage_prefix: str = Field(default="", description="Text prepended to every passage, e.g. 'passage: '.")
    max_seq_length: int = Field(default=256, ge=16, le=8192, description="Maximum tokens per text.")
    pooling: Literal["mean", "cls", "lasttoken"] = Field(default="mean", description="Token pooling.")
    hf_token_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding a Hugging Face token (cluster only), exported as HF_TOKEN."
    )
    existing_claim: ObjectName | None = Field(
        default=None,
        description="PVC holding the model (cluster only); `name` is then a path inside that claim.",
    )

    cel_rules = (
        immutable("baseModel.name", message="baseModel.name is immutable: a different base model is a new "
                  "fine-tune (create a new EmbeddingFinetune)"),
        immutable("baseModel.existingClaim", optional=True),
    )


class ChunkingSpec(SpecModel):
    max_tokens: int = Field(default=256, ge=16, le=8192, description="Maximum base-model tokens per chunk.")
    overlap_tokens: int = Field(default=32, ge=0, le=4096, description="Tokens shared by consecutive chunks.")
    min_tokens: int = Field(default=8, ge=1, le=1024, description="Chunks shorter than this are dropped.")

    cel_rules = (CelRule("self.overlapTokens < self.maxTokens", "overlapTokens must be smaller than maxTokens",
                         field_path=".overlapTokens", mirrors="_overlap_below_max"),)

    @model_validator(mode="after")
    def _overlap_below_max(self) -> ChunkingSpec:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlapTokens ({self.overlap_tokens}) must be smaller than maxTokens ({self.max_tokens})"
            )
        return self


class CorpusSpec(SpecModel):
    path: str = Field(
        default="builtin:kubernetes-api",
        min_length=1,
        description="Local folder, object-store or HTTP URL (s3://, gs://, https://, read through fsspec), "
        "a path inside `existingClaim`, or 'builtin:kubernetes-api' (the sample corpus generated from the "
        "Kubernetes API field documentation that the kubernetes Python client carries).",
    )
    include: list[str] = Field(
        default_factory=lambda: ["**/*.md", "**/*.txt", "**/*.rst", "**/*.html", "**/*.json", "**/*.jsonl"],
        description="Glob patterns of files to read, relative to `path`.",
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns of files to skip.")
    existing_claim: ObjectName | None = Field(
        default=None, description="PVC holding the corpus (cluster only), mounted read-only into the ingest pod."
    )
    config_map: ObjectName | None = Field(
        default=None, description="ConfigMap whose keys are the corpus files (cluster only, small corpora)."
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="Secret whose keys become environment variables of the ingest pod (e.g. AWS_ACCESS_KEY_ID).",
    )
    chunking: ChunkingSpec = Field(
        default_factory=ChunkingSpec,
        description="How documents are cut into passages (chunks), counted in base-model tokens: the units "
        "questions are written about and retrieval returns.",
    )

    cel_rules = (CelRule("!has(self.existingClaim) || !has(self.configMap)",
                         "set at most one of existingClaim and configMap", field_path=".configMap",
                         mirrors="_one_source"),)

    @model_validator(mode="after")
    def _one_source(self) -> CorpusSpec:
        if self.existing_claim and self.config_map:
            raise ValueError("set at most one of existingClaim and configMap")
        return self


class QueriesSpec(SpecModel):
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Real queries with their relevant passages, used as training questions: a BEIR folder "
        "(queries.jsonl and qrels/<split>.tsv; its qrels name corpus ids), or a .jsonl file whose rows are "
        "{\"query\": text, \"ids\": [...]} and/or {\"query\": text, \"passages\": [text, ...]}. An id "
        "names a chunk, a corpus file (its path relative to corpus.path) or a row of a .jsonl corpus (its _id): "
        "every chunk of that document is a positive. A passage text names the chunk with that text, else the "
        "chunks containing it. Local path, object-store or HTTP URL, or a path inside `existingClaim`. Unset: "
        "no supplied queries.",
    )
    split: str = Field(default="train", min_length=1,
                       description="With a BEIR folder: the judgements to use, qrels/<split>.tsv.")
    use: Literal["only", "withGenerated"] = Field(
        default="only",
        description="'only': the supplied queries are the questions and nothing is generated (no LLM calls). "
        "'withGenerated': they are added to what sdg generates, each query counting as one question like a "
        "generated one; both are split together by prepare (split.by).",
    )
    document_positives: Literal["everyChunk", "bestChunk"] = Field(
        default="everyChunk",
        description="When a relevant id names a document cut into several chunks (or a passage text is found in "
        "several), which of them train as positives: 'everyChunk' all of them; 'bestChunk' only the one the base "
        "model scores highest for the query, for long documents whose other parts are unrelated to what they are "
        "labelled for (on NFCorpus, abstracts whose halves share one topic, it measured worse). Either way every "
        "chunk of the document counts as relevant in the held-out splits and is never a negative. A change re-runs "
        "from prepare.",
    )
    existing_claim: ObjectName | None = Field(
        default=None, description="PVC holding the queries (cluster only), mounted read-only into the sdg pod."
    )
    config_map: ObjectName | None = Field(
        default=None, description="ConfigMap holding a .jsonl query file (cluster only), mounted read-only into "
        "the sdg pod: `path` is its key.",
    )

    cel_rules = (CelRule("!has(self.existingClaim) || !has(self.configMap)",
                         "set at most one of existingClaim and configMap", field_path=".configMap",
                         mirrors="_one_source"),
                 CelRule("has(self.path) || (!has(self.existingClaim) && !has(self.configMap))",
                         "existingClaim and configMap need path (the queries inside them)", field_path=".path",
                         mirrors="_source_needs_path"))

    @model_validator(mode="after")
    def _one_source(self) -> QueriesSpec:
        if self.existing_claim and self.config_map:
            raise ValueError("set at most one of existingClaim and configMap")
        return self

    @model_validator(mode="after")
    def _source_needs_path(self) -> QueriesSpec:
        if (self.existing_claim or self.config_map) and not self.path:
            raise ValueError("existingClaim and configMap need path (the queries inside them)")
        return self


class OpenAISpec(SpecModel):
    base_url: str = Field(
        default="http://localhost:8000/v1",
        alias="baseURL",
        pattern=r"^https?://",
        description="Base URL of an OpenAI-compatible API (NIM, vLLM, OpenAI), ending in /v1.",
    )
    model: str = Field(default="meta/llama-3.1-8b-instruct", min_length=1, description="Chat model name.")
    api_key_env: str = Field(
        default="OPENAI_API_KEY", min_length=1, description="Environment variable holding the API key."
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None, description="Secret exported as `apiKeyEnv` into the SDG pod (cluster only)."
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight at once.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Rate limit; unset = unlimited.")
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600, description="Per-request timeout.")
    max_retries: int = Field(default=5, ge=0, le=20, description="Retries per request (429, 5xx, timeouts, bad JSON).")
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0,
        description="Sampling temperature of the calls that write questions: higher gives more varied wording, "
        "lower sticks closer to the chunk's text. The judge calls always use 0.",
    )
    json_mode: bool = Field(default=True, description="Ask for response_format=json_object.")


class SDGSpec(SpecModel):
    backend: Literal["openai", "offline"] = Field(
        default="offline",
        description="'openai': an LLM writes and judges questions (the production path). 'offline': "
        "pseudo-queries cut from the chunks themselves, no LLM; lower quality, lets the pipeline run anywhere.",
    )
    openai: OpenAISpec | None = Field(default=None, description="Required when backend is 'openai'.")
    questions_per_chunk: int = Field(
        default=3, ge=1, le=20,
        description="Questions asked per chunk: with backend 'openai', per chunk of each bundle sent to the LLM "
        "(the judge and the deduplication drop some afterwards); with 'offline', pseudo-queries cut per chunk. "
        "More questions mean more training pairs and, with an LLM, more tokens billed.",
    )
    max_hops: int = Field(default=3, ge=1, le=3, description="Questions use 1..maxHops chunks.")
    min_quality_score: float = Field(default=7, ge=1, le=10, description="Judge score (1-10) a pair needs to stay.")
    dedup_threshold: float = Field(
        default=0.9, gt=0.0, le=1.0, description="Questions at or above this cosine to a kept one are dropped."
    )
    max_chunks: int | None = Field(default=None, ge=1, description="Use at most this many chunks (cost cap).")
    seed: int = Field(
        default=42,
        description="Random seed of the chunk sample (`maxChunks`), of the grouping of related chunks into "
        "multi-hop bundles and of the offline generator's choices; change it to draw different questions.",
    )

    cel_rules = (CelRule("self.backend != 'openai' || has(self.openai)",
                         "backend 'openai' needs the sdg.openai block (at least baseURL and model)",
                         field_path=".openai", reason="FieldValueRequired", mirrors="_openai_needs_block"),)

    @model_validator(mode="after")
    def _openai_needs_block(self) -> SDGSpec:
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend 'openai' needs the sdg.openai block (at least baseURL and model)")
        return self


# split.test when unset and the gate is judged on the synthetic test split.
DEFAULT_TEST_FRACTION = 0.1


class SplitSpec(SpecModel):
    validation: float = Field(default=0.05, ge=0.0, lt=1.0, description="Fraction of questions for validation.")
    test: float | None = Field(
        default=None, ge=0.0, lt=1.0,
        description="Fraction of questions for the synthetic test split. Unset: 0.1, or 0 (no synthetic test split) "
        "when the quality gate is judged on an evaluation.datasets entry; then that split would be a report no "
        "verdict reads, and with supplied queries it would keep a tenth of the labels out of training. With it "
        "unset, adding or removing that entry re-runs from prepare. 0 needs the gate on a datasets entry.",
    )
    by: Literal["document", "chunk", "question"] = Field(
        default="document",
        description="'document': questions whose positive passages come from one source document (every chunk "
        "of a file or corpus row), or share a passage or a copy of its text, go to the same split, so no "
        "validation or test question is about a document trained on: chunks of one document share its title "
        "and vocabulary, and a test chunk whose sibling was trained on is half seen. Falls back to 'chunk' "
        "when documents are too few or too large to fill the held-out splits, and says so. 'chunk': the same "
        "with passages only, multi-hop questions joining their chunks' groups; no validation or test positive is "
        "a training positive. 'question': each question is placed on its own; sibling questions of one chunk "
        "then land on both sides, and the test split measures partly what training memorised (prepare/stats.json "
        "and evaluate/metrics.json count it).",
    )
    remove_quotes: bool = Field(
        default=True,
        description="Remove from each validation and test passage the sentences (5 words or more) its questions "
        "quote verbatim, in prepare/beir only (training rows keep whole passages). A question copied from its "
        "passage, like the offline generator's sentence questions, is otherwise found by the copy, and the "
        "synthetic scores reward lexical copying that real queries never allow. A passage that would keep "
        "fewer than 8 words stays whole. The offline generator's keyword and title questions, words picked from "
        "their passage, are left out of validation and test altogether. prepare/stats.json counts all three "
        "(split.quotesRemoved).",
    )
    seed: int = Field(
        default=42,
        description="Random seed of the shuffle that assigns questions (or, with by 'document' or 'chunk', groups of questions) "
        "to the splits; it also draws the random passages that pad missing hard negatives "
        "(mining.fewerThanNegatives 'pad-random').",
    )

    cel_rules = (CelRule(f"self.validation + (has(self.test) ? self.test : {DEFAULT_TEST_FRACTION}) < 0.9",
                         "validation + test leaves too little for training (must be < 0.9)",
                         mirrors="_leaves_training"),)

    @model_validator(mode="after")
    def _leaves_training(self) -> SplitSpec:
        # an unset test is at most the default: the bound holds for whatever it resolves to
        held_out = self.validation + (DEFAULT_TEST_FRACTION if self.test is None else self.test)
        if held_out >= 0.9:
            raise ValueError(f"validation + test = {held_out:g} leaves too little for training (must be < 0.9)")
        return self


class MiningSpec(SpecModel):
    negatives: int = Field(default=4, ge=0, le=64, description="Hard negatives kept per question.")
    margin: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="Candidates scoring above min_positive - |min_positive|*(1-margin) are dropped as likely "
        "false negatives.",
    )
    candidates: int = Field(default=50, ge=1, le=1000, description="Nearest passages examined per question.")
    fewer_than_negatives: Literal["keep", "pad-random", "drop"] = Field(
        default="pad-random",
        description="Questions with fewer safe hard negatives: keep as is, pad with random passages, or drop.",
    )

    cel_rules = (CelRule("self.candidates >= self.negatives", "candidates must be >= negatives",
                         field_path=".candidates", mirrors="_enough_candidates"),)

    @model_validator(mode="after")
    def _enough_candidates(self) -> MiningSpec:
        if self.candidates < self.negatives:
            raise ValueError(f"candidates ({self.candidates}) must be >= negatives ({self.negatives})")
        return self


class SearchSpec(SpecModel):
    trials: int | None = Field(
        default=None, ge=1, le=6,
        description="Training settings to try before the real run; default 3 when training runs in one process on "
        "a GPU (a trial costs seconds to minutes there; skipped when the validation split is empty) and 1 on a CPU "
        "or across processes. 1 trains once with the settings above; N > 1 "
        "tries the first N distinct pairs of (the spec's learningRate and temperature; 5e-5 and 0.05; the recipe's "
        "1e-5 and 0.02; the spec's learningRate and 0.05; 5e-5 and the spec's temperature; 2e-5 and 0.05; 1e-4 and "
        "0.05), each from the base model for "
        "`trialFraction` of the run's steps, scores each on the validation split (nDCG@10), and trains the real "
        "run with the best (ties: the earlier). Needs a validation split. Every trial is recorded in the train "
        "manifest, the stage's status message and the evaluate report.",
    )
    trial_fraction: float = Field(
        default=0.25, gt=0.0, le=1.0,
        description="Share of the real run's optimizer steps each trial trains (at least 10 steps), on the real "
        "run's learning-rate schedule cut short; the search costs about trials x trialFraction of one run.",
    )


# What an unset learningRate, temperature, epochs or maxRowsPerQuestion becomes, per `training.preset`.
# These fields have no schema default (an API server would fill it in and hide that the user left them unset).
#  - recipe: the published recipe, tuned for a 1B model trained on hard negatives.
#  - measured: what the bundled 22M model measured best with on human queries (NFCorpus, H200 and 2 CPU cores:
#    +10.3% / +10.8% nDCG@10 where the recipe gave +3.0%), each value for a reason that is not the dataset:
#    temperature 0.05 because at 0.02 the loss puts its weight on the few closest in-batch passages, and in a
#    domain corpus those are often relevant too (NFCorpus: 0.02 -> 0.05 turned +0.4% into +4.5%); lr 5e-5 because
#    the small steps that keep a 1B model stable barely move a 22M one (2e-5: +2.0%, 5e-5: +4.4%); 2 epochs because
#    a third added nothing (+4.4% vs +4.5%) for half as much time again; at most 8 rows per question per epoch so
#    that a question with hundreds of positives (search logs; NFCorpus's labels: up to 1,000) weighs at most 8
#    one-positive questions.
TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    "measured": {"learning_rate": 5.0e-5, "temperature": 0.05, "epochs": 2, "max_rows_per_question": 8},
    "recipe": {"learning_rate": 1.0e-5, "temperature": 0.02, "epochs": 3, "max_rows_per_question": None},
}


class TrainingSpec(SpecModel):
    preset: Literal["measured", "recipe"] = Field(
        default="measured",
        description="Values of learningRate, temperature, epochs and maxRowsPerQuestion where the spec leaves them "
        "unset, and of negatives on a CPU. 'measured' (lr 5e-5, temperature 0.05, 2 epochs, at most 8 rows per "
        "question, no hard negatives on a CPU): what the bundled small model measured best with on human queries. "
        "'recipe': the published recipe exactly (lr 1e-5, temperature 0.02, 3 epochs, every row, mining.negatives "
        "hard negatives everywhere).",
    )
    epochs: int | None = Field(
        default=None, ge=1, le=100,
        description="Passes over the training rows (fewer when maxSteps stops sooner); default: the preset's (2, "
        "recipe 3). The model is validated on "
        "the validation split before the first and after every epoch, and the best epoch by nDCG@10 is shipped "
        "(the base weights when none beats them; the last epoch when the validation split is empty).",
    )
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Peak learning rate of AdamW, reached at the end of the warm-up and decayed linearly to 0 by "
        "the last step; default: the preset's (5e-5, recipe 1e-5). Lower it when validation nDCG@10 falls below "
        "the base model's.",
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0.0, le=0.5,
        description="Fraction of the optimizer steps over which the learning rate rises linearly to "
        "`learningRate`; 0 starts at the peak.",
    )
    weight_decay: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="AdamW (decoupled) weight decay of the weight matrices; biases and normalization weights get "
        "none.",
    )
    temperature: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="Softmax temperature (logit scale 1/T); default: the preset's (0.05, recipe 0.02).")
    negatives: int | None = Field(
        default=None, ge=0, le=64,
        description="Hard negatives per query in training; default: mining.negatives on a GPU, and on a CPU 0 with "
        "the 'measured' preset (each hard negative is one more passage to encode per row, which on a CPU costs as "
        "much as the row itself; in-batch negatives are free) and mining.negatives with 'recipe'.",
    )
    in_batch_negatives: bool = Field(default=True, description="Also contrast against other queries' passages.")
    max_seq_length: int | None = Field(
        default=None, ge=16, le=8192,
        description="Tokens per text in training steps (longer texts are cut); validation, evaluation, export and "
        "serving always use baseModel.maxSeqLength. Default: baseModel.maxSeqLength. Shorter trains faster on a CPU "
        "(2.6x per row at 128 tokens as at 256) but the model then learns from the opening of each passage only: "
        "on NFCorpus (2 CPU cores, 254-token chunks scored whole, batch 64) 128 gave +4.0% nDCG@10 where the full "
        "length gave +9.7% (batch 32). At most baseModel.maxSeqLength.",
    )
    batch_size: int | Literal["auto"] = Field(
        default="auto", description="Queries per batch per device (one optimizer step unless gradientAccumulation "
        "says otherwise), or 'auto': the largest power of two that fits the GPU's free memory (on CPU: 16,384 "
        "passage tokens per batch where the CPU computes in bf16 (AVX512-BF16 or AMX), 64 rows at 256 tokens per "
        "training text, else 8,192, 32 rows; at most 64), capped to leave at least 50 steps per epoch."
    )
    gradient_accumulation: int = Field(
        default=1, ge=1, le=1024,
        description="Batches whose gradients are summed into one optimizer step: a larger effective batch in the "
        "same memory, with fewer steps per epoch. In-batch negatives still come from one batch only.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass instead of keeping them: less GPU memory per "
        "query, so a larger batch fits (batchSize 'auto' probes with it on), for more compute per step. Models "
        "without support train without it.",
    )
    compile: Literal["auto", "always", "never"] = Field(
        default="auto", description="torch.compile the model for training steps. 'auto': on a GPU when the run "
        "has enough optimizer steps to repay the compile time (see the train stage's manifest); 'always'; "
        "'never'. A model that fails to compile trains uncompiled (recorded in the manifest)."
    )
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (for smoke runs).")
    max_rows_per_question: int | None = Field(
        default=None, ge=1, le=100000,
        description="Use at most this many (question, positive) rows of one question per epoch, drawn anew each "
        "epoch; keeps questions with hundreds of positives from dominating training. Default: the preset's (8; "
        "recipe: every row); 100000 uses every row.",
    )
    seed: int = Field(
        default=42,
        description="Random seed of training: batch composition and order, padding of missing negatives, dropout.",
    )
    search: SearchSpec = Field(
        default_factory=SearchSpec,
        description="A budgeted search over learning rate and temperature before training (on by default on one "
        "GPU, off on a CPU; off with trials 1).",
    )
    nodes: int = Field(default=1, ge=1, le=64, description="Pods for distributed training (cluster only).")
    gpus_per_node: int = Field(default=1, ge=0, le=16, description="GPUs per training pod (cluster only).")

    cel_rules = (CelRule("type(self) == string ? self == 'auto' : self >= 2",
                         "batchSize must be 'auto' or an integer >= 2", field="batch_size",
                         mirrors="_positive_batch"),)

    @classmethod
    def preset_aliases(cls) -> tuple[str, ...]:
        """The spec names of the fields a preset fills (left out of the CRD's default block)."""
        return tuple(cls.model_fields[name].alias for name in TRAINING_PRESETS["measured"])

    @model_validator(mode="after")
    def _fill_from_preset(self) -> TrainingSpec:
        for name, value in TRAINING_PRESETS[self.preset].items():
            if getattr(self, name) is None:
                # not through setattr: the field stays out of model_fields_set (a dump without unset fields
                # keeps saying "the preset's")
                self.__dict__[name] = value
        return self

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 2:
            raise ValueError("batchSize must be 'auto' or an integer >= 2")
        return v


class GateSpec(SpecModel):
    metric: str = Field(
        default="ndcg@10", max_length=32,
        pattern=r"^(ndcg|recall|map|precision)@[0-9]+$",
        description="Metric the tuned model must not lose on, e.g. ndcg@10.",
    )
    min_relative_improvement: float = Field(
        default=0.0, ge=-1.0, le=10.0, description="Required (tuned - base) / base; 0 = must not be worse."
    )
    override: bool = Field(default=False, description="Ship even when the gate fails (recorded in status).")
    dataset: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$",
        description="Where the gate is measured: 'test' (the synthetic test split) or the name of an "
        "evaluation.datasets entry. Unset: the first datasets entry when there is one, else 'test'. Judging on "
        "'test' while a human-labelled set only measures shows what the gate would decide without human labels.",
    )


RESERVED_DATASET_NAMES = ("test", "gate", "datasets", "seenInTraining", "trainingSearch", "quotesRemoved")  # other metrics.json keys
_RESERVED_LIST = ", ".join(f"'{n}'" for n in RESERVED_DATASET_NAMES[:-1]) + f" and '{RESERVED_DATASET_NAMES[-1]}'"


RESERVED_MESSAGE = f"the names {_RESERVED_LIST} are reserved (other keys of evaluate/metrics.json)"


class EvalDatasetSpec(SpecModel):
    # No docstring: kubectl explain would append it (the list's items) to evaluation.datasets' description.
    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$",
        description="Short name of the dataset, unique among the datasets: its key in metrics.json and the "
        f"evaluation report ({_RESERVED_LIST} are reserved).",
    )
    path: str = Field(min_length=1, description="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")
    split: str = Field(
        default="test", min_length=1, description="Split of the judgements to evaluate: qrels/<split>.tsv in `path`."
    )

    cel_rules = (CelRule(f"!(self.name in [{', '.join(repr(n) for n in RESERVED_DATASET_NAMES)}])",
                         RESERVED_MESSAGE, mirrors="_not_reserved"),)

    @model_validator(mode="after")
    def _not_reserved(self) -> EvalDatasetSpec:
        if self.name in RESERVED_DATASET_NAMES:
            raise ValueError(RESERVED_MESSAGE)
        return self


class EvaluationSpec(SpecModel):
    k: list[int] = Field(default_factory=lambda: [1, 5, 10, 100], min_length=1, max_length=64, description="Cut-offs.")
    gate: GateSpec = Field(
        default_factory=GateSpec,
        description="Quality gate: the tuned model is exported and served only when it passes (or `override` is "
        "set). It is measured on `gate.dataset`; by default the first of `datasets` when there is one, else the "
        "synthetic test split. A synthetic test split of the offline generator's questions alone is no evidence "
        "(they are cut from their passages): judged on it, the gate fails unless training kept the base weights.",
    )
    datasets: list[EvalDatasetSpec] = Field(
        default_factory=list, max_length=16, description="Extra human-labelled BEIR datasets to evaluate on."
    )

    @field_validator("k")
    @classmethod
    def _valid_k(cls, v: list[int]) -> list[int]:
        if any(x < 1 or x > 1000 for x in v):
            raise ValueError("every k must be between 1 and 1000")
        return sorted(set(v))

    cel_rules = (CelRule("int(self.gate.metric.split('@')[1]) in self.k",
                         "the gate metric's k (e.g. 10 in ndcg@10) must be one of evaluation.k",
                         field_path=".gate.metric", mirrors="_gate_k_measured"),
                 CelRule("!has(self.gate.dataset) || self.gate.dataset == 'test' || "
                         "(has(self.datasets) && self.datasets.exists(d, d.name == self.gate.dataset))",
                         "gate.dataset must be 'test' or the name of an evaluation.datasets entry",
                         field_path=".gate.dataset", mirrors="_gate_dataset_known"))

    @model_validator(mode="after")
    def _gate_dataset_known(self) -> EvaluationSpec:
        names = ["test", *(d.name for d in self.datasets)]
        if self.gate.dataset is not None and self.gate.dataset not in names:
            raise ValueError(f"gate.dataset must be 'test' or the name of an evaluation.datasets entry "
                             f"(got '{self.gate.dataset}', have {names})")
        return self

    def gate_dataset_name(self) -> str:
        """Where the gate is judged: gate.dataset, else the first datasets entry, else the synthetic test split."""
        return self.gate.dataset or (self.datasets[0].name if self.datasets else "test")

    @model_validator(mode="after")
    def _gate_k_measured(self) -> EvaluationSpec:
        k = int(self.gate.metric.split("@")[1])
        if k not in self.k:
            raise ValueError(f"gate metric {self.gate.metric} uses k={k}, which is not in k {self.k}")
        return self


class OnnxSpec(SpecModel):
    enabled: bool = Field(
        default=True,
        description="Export ONNX files. With false the export holds only its manifest, and the model can be "
        "served only with serving.backend 'torch'.",
    )
    opset: int = Field(
        default=17, ge=17, le=23,
        description="ONNX opset of the exported graphs; raise it when the serving runtime or an operator of the "
        "model needs a newer one.",
    )
    int8: bool = Field(default=True, description="Also export an int8 dynamically quantized variant (CPU).")
    fp16: bool = Field(default=False, description="Also export an fp16 variant (GPU).")
    max_quality_loss: float = Field(
        default=0.01, ge=0.0, le=1.0, description="A variant losing more relative nDCG@10 than this is rejected."
    )


class TensorRTSpec(SpecModel):
    enabled: bool = Field(
        default=False,
        description="Build the TensorRT engine (needs export.onnx.enabled). Skipped, with the reason in the model "
        "manifest, when the stage image has no TensorRT or the export pod no GPU.",
    )
    fp8: bool = Field(
        default=False,
        description="Ask for FP8 precision (Hopper or newer GPUs). TensorRT uses FP8 only in graphs with FP8 "
        "quantize/dequantize nodes, which eft's ONNX export does not produce: the engine is then built with "
        "FP16/FP32 and its manifest entry says so.",
    )
    max_batch: int = Field(
        default=64, ge=1, le=4096,
        description="Largest batch the engine accepts (its optimisation profile is tuned for half of it); "
        "sequences go up to baseModel.maxSeqLength tokens.",
    )


class ExportSpec(SpecModel):
    onnx: OnnxSpec = Field(
        default_factory=OnnxSpec,
        description="ONNX export, served by `eft serve` (serving.backend 'onnx'): an fp32 graph checked against "
        "PyTorch, and optional int8/fp16 variants checked for quality loss on the test split.",
    )
    tensorrt: TensorRTSpec = Field(
        default_factory=TensorRTSpec,
        description="TensorRT engine (tensorrt/model.plan in the export folder), built from the fp32 ONNX graph "
        "and checked against it; for servers that run TensorRT engines (`eft serve` does not load it).",
    )


class AutoscalingSpec(SpecModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) on the serving Deployment, scaling on CPU utilization."""

    enabled: bool = Field(
        default=False,
        description="Create a HorizontalPodAutoscaler that scales the serving Deployment between `minReplicas` "
        "and `maxReplicas` on the serving pods' CPU utilization; serving.replicas is then ignored (the "
        "autoscaler owns the replica count). Needs metrics-server (the resource metrics API) in the cluster and "
        "serving.resources.requests.cpu (utilization is a percentage of the request).",
    )
    min_replicas: int = Field(
        default=1, ge=1, le=100,
        description="Fewest serving pods the autoscaler keeps (also the replica count the Deployment is created "
        "with).",
    )
    max_replicas: int = Field(
        default=3, ge=1, le=100,
        description="Most serving pods the autoscaler starts. More than 1 needs a ReadWriteMany workspace, else "
        "the resource is Blocked.",
    )
    target_cpu_utilization_percentage: int = Field(
        default=70, ge=1, le=1000, alias="targetCPUUtilizationPercentage",
        description="Average CPU use of the serving pods, in percent of serving.resources.requests.cpu, that the "
        "autoscaler keeps them at (above 100 when limits allow pods to use more than they request).",
    )

    cel_rules = (CelRule("self.minReplicas <= self.maxReplicas", "minReplicas must be <= maxReplicas",
                         field_path=".minReplicas", mirrors="_min_at_most_max"),)

    @model_validator(mode="after")
    def _min_at_most_max(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= maxReplicas ({self.max_replicas})")
        return self


# A label value (Kubernetes: at most 63 characters, alphanumeric at both ends, '-', '_' and '.' inside).
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]


class LabelSelectorSpec(SpecModel):
    """Objects whose labels include every one of `matchLabels` (a Kubernetes LabelSelector's matchLabels)."""

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict, description="Labels (key: value) an object must all carry; empty selects every one.",
    )


class NetworkPolicySpec(SpecModel):
    """A NetworkPolicy admitting traffic to the serving pods only from the named clients."""

    enabled: bool = Field(
        default=False,
        description="Create a NetworkPolicy on the serving pods: ingress only on serving.port, only from pods "
        "selected by `allowedClients` in the namespaces `allowedNamespaces` selects (by default the resource's "
        "own namespace); all other ingress to the serving pods is dropped (metrics scrapers included). "
        "Enforcement needs a CNI plugin that implements NetworkPolicy (Calico, Cilium, ...); elsewhere the object "
        "exists but nothing is blocked.",
    )
    allowed_clients: LabelSelectorSpec = Field(
        default_factory=LabelSelectorSpec,
        description="Pods allowed to call the serving endpoint, by pod labels (`matchLabels`); empty = every pod "
        "of the allowed namespaces.",
    )
    allowed_namespaces: LabelSelectorSpec | None = Field(
        default=None,
        description="Namespaces, by namespace labels (`matchLabels`; e.g. kubernetes.io/metadata.name: team-a), "
        "whose pods matching `allowedClients` may call the endpoint; empty `matchLabels` = every namespace. "
        "Unset = the resource's namespace only.",
    )


class ServingSpec(SpecModel):
    enabled: bool = Field(
        default=True,
        description="Deploy the exported model (Deployment + Service) once every stage succeeded; false deletes "
        "both and the resource ends Succeeded.",
    )
    model_name: str | None = Field(default=None, description="Name served at /v1/models; default <name>-embed.")
    replicas: int = Field(
        default=1, ge=0, le=100,
        description="Serving pods (Deployment replicas). 0 keeps the Deployment without pods (condition Ready "
        "False, reason ScaledToZero); more than 1 needs a ReadWriteMany workspace, else the resource is Blocked, "
        "and adds a PodDisruptionBudget (maxUnavailable 1). Ignored while autoscaling.enabled.",
    )
    port: int = Field(
        default=8000, ge=1, le=65535,
        description="Port of the serving container and of its Service (status.endpoint ends in it); a custom "
        "image or command must listen on it.",
    )
    backend: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="Inference backend of `eft serve`: 'onnx' serves the export folder (see `variant`; needs "
        "export.onnx.enabled), 'torch' the tuned sentence-transformers model in PyTorch. Unused when `image`, "
        "`command` or `args` replace the default server.",
    )
    variant: Literal["auto", "fp32", "int8", "fp16"] = Field(
        default="auto", description="ONNX variant: auto = int8 on CPU, fp16 on GPU when exported, else fp32."
    )
    gpus: int = Field(
        default=0, ge=0, le=16,
        description="GPUs per serving pod, requested as the operator's GPU resource (nvidia.com/gpu unless the "
        "chart's defaults.gpuResourceName says otherwise); 0 serves on CPU.",
    )
    image: str | None = Field(default=None, description="Serving image; default from the operator's settings.")
    command: list[str] | None = Field(default=None, description="Replace the container command (e.g. NIM, TEI).")
    args: list[str] | None = Field(default=None, description="Replace the container args.")
    env: list[dict[str, Any]] = Field(default_factory=list, description="Extra container env (Kubernetes EnvVar).")
    resources: dict[str, Any] = Field(
        default_factory=dict,
        description="Container resources (Kubernetes ResourceRequirements); autoscaling needs requests.cpu.",
    )
    health_path: str = Field(default="/health/ready", description="Readiness probe path.")
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec,
        description="Optional HorizontalPodAutoscaler of the serving Deployment (CPU utilization; needs "
        "metrics-server and serving.resources.requests.cpu). With maxReplicas > 1 it also adds a "
        "PodDisruptionBudget (maxUnavailable 1).",
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="Optional NetworkPolicy restricting who may call the serving pods (needs a NetworkPolicy-"
        "capable CNI plugin to be enforced).",
    )

    cel_rules = (CelRule("!has(self.autoscaling) || !self.autoscaling.enabled || (has(self.resources) && "
                         "has(self.resources.requests) && has(self.resources.requests.cpu))",
                         "autoscaling needs a CPU request: set serving.resources.requests.cpu (e.g. '500m'), the "
                         "base of the utilization target", field_path=".resources", reason="FieldValueRequired",
                         mirrors="_autoscaling_needs_cpu_request"),)

    @model_validator(mode="after")
    def _autoscaling_needs_cpu_request(self) -> ServingSpec:
        requests = self.resources.get("requests") if isinstance(self.resources, dict) else None
        if self.autoscaling.enabled and not (isinstance(requests, dict) and requests.get("cpu") is not None):
            raise ValueError("autoscaling needs a CPU request: set serving.resources.requests.cpu (e.g. '500m'), "
                             "the base of the utilization target")
        return self

    def max_replicas(self) -> int:
        """The most serving pods there can be: autoscaling.maxReplicas while autoscaling, else replicas."""
        return self.autoscaling.max_replicas if self.autoscaling.enabled else self.replicas


class WorkspaceSpec(SpecModel):
    size: str = Field(
        default="20Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="Requested storage of the created claim (a Kubernetes quantity): downloaded models, every "
        "stage's outputs and checkpoints. Unused with `existingClaim`.",
    )
    storage_class_name: ObjectName | None = Field(
        default=None, description="StorageClass of the created claim; unset = the cluster's default StorageClass."
    )
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"], min_length=1, max_length=3,
        description="Access modes of the created claim (with `existingClaim`: the modes the operator takes that "
        "claim to have). ReadWriteMany lets serving run several replicas and training span nodes "
        "(training.nodes > 1); without it both are Blocked.",
    )
    existing_claim: ObjectName | None = Field(default=None, description="Use this PVC instead of creating one.")
    retention_policy: Literal["Retain", "Delete"] = Field(
        default="Retain", description="What happens to a created PVC when the resource is deleted."
    )

    cel_rules = (
        immutable("workspace.existingClaim", optional=True),
        immutable("workspace.size"),
        immutable("workspace.storageClassName", optional=True),
        immutable("workspace.accessModes"),
    )


class StagePodSpec(SpecModel):
    """Pod settings of this stage; what is unset here comes from scheduling and the operator's defaults."""

    image: str | None = Field(
        default=None, description="Image of this stage's pod; unset = the operator's stage image "
        "(chart value defaults.stageImage).",
    )
    resources: dict[str, Any] = Field(default_factory=dict, description="Container resources (Kubernetes).")
    gpus: int | None = Field(default=None, ge=0, le=16, description="nvidia.com/gpu for this stage.")
    backoff_limit: int | None = Field(
        default=None, ge=0, le=20,
        description="Retries of this stage's pod before the stage fails; unset = scheduling.backoffLimit.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1,
        description="Fail the stage when its Job runs longer than this many seconds, retries included (Job "
        "activeDeadlineSeconds); unset = no limit.",
    )


class SchedulingSpec(SpecModel):
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels every stage pod requires; empty = the operator's default (chart value "
        "defaults.nodeSelector). Serving pods do not use it.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Tolerations of every stage pod (Kubernetes Toleration objects); empty = the operator's "
        "default (chart value defaults.tolerations). Serving pods do not use them.",
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict,
        description="Affinity of every stage pod (a Kubernetes Affinity object). Serving pods do not use it.",
    )
    priority_class_name: ObjectName | None = Field(
        default=None, description="PriorityClass of the stage and serving pods; unset = the cluster's default."
    )
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount the stage pods run as; unset = the namespace's default."
    )
    image_pull_secrets: list[ObjectName] = Field(
        default_factory=list,
        description="Names of Secrets in the resource's namespace used to pull the stage and serving images.",
    )
    backoff_limit: int = Field(
        default=2, ge=0, le=20,
        description="Retries of a failed stage pod before the stage fails (Job backoffLimit; times training.nodes "
        "for multi-node training). A pod failing on bad input fails the stage at once; evicted pods do not count.",
    )
    stages: dict[Literal["ingest", "sdg", "prepare", "train", "evaluate", "export"], StagePodSpec] = Field(
        default_factory=dict, description="Per-stage image, resources and GPUs."
    )


class EmbeddingFinetuneSpec(SpecModel):
    """Desired state: where the documents come from, how questions are generated, how the model is trained,
    evaluated, exported and served, and where the stage pods run."""

    base_model: BaseModelSpec = Field(
        default_factory=BaseModelSpec,
        description="The embedding model to fine-tune. `name` and `existingClaim` are immutable. Changing "
        "`revision`, `pooling` or `maxSeqLength` re-runs every stage from ingest, `queryPrefix` or "
        "`passagePrefix` from prepare; `hfTokenSecret` re-runs nothing.",
    )
    corpus: CorpusSpec = Field(
        default_factory=CorpusSpec,
        description="The domain documents. Changing path/include/exclude/chunking/existingClaim/configMap re-runs "
        "every stage from ingest.",
    )
    queries: QueriesSpec = Field(
        default_factory=QueriesSpec,
        description="Queries you already have (search logs, labelled pairs, an FAQ), used alone or with the "
        "generated questions. A change re-runs from sdg.",
    )
    sdg: SDGSpec = Field(
        default_factory=SDGSpec,
        description="Synthetic data generation: the questions the model is trained and evaluated on. A change "
        "re-runs from sdg (openai.apiKeySecret excepted).",
    )
    split: SplitSpec = Field(
        default_factory=SplitSpec,
        description="How questions are split into train, validation (best-epoch choice) and test (the synthetic "
        "evaluation set). A change re-runs from prepare.",
    )
    mining: MiningSpec = Field(
        default_factory=MiningSpec,
        description="Hard-negative mining: the base model's nearest passages that are not a question's positives "
        "become the negatives it is contrasted with in training. A change re-runs from prepare.",
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec,
        description="Contrastive fine-tuning hyper-parameters. A change re-runs from train.",
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec,
        description="Retrieval evaluation of the base and the tuned model, and the quality gate. A change re-runs "
        "from evaluate.",
    )
    export: ExportSpec = Field(
        default_factory=ExportSpec,
        description="Export of the tuned model for serving, after a passed (or overridden) quality gate. A change "
        "re-runs export.",
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec,
        description="The inference Deployment + Service started after export when the quality gate passed "
        "(cluster only). Changes roll the Deployment; they never re-run stages.",
    )
    workspace: WorkspaceSpec = Field(
        default_factory=WorkspaceSpec,
        description="The PersistentVolumeClaim shared by every stage pod (outputs, caches) and mounted read-only "
        "by the serving pods (cluster only). Immutable except retentionPolicy.",
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec,
        description="Where and how the stage pods run (cluster only). Changes apply to Jobs created afterwards; "
        "they never re-run stages.",
    )
    queue_name: QueueName | None = Field(
        default=None, description="Kueue LocalQueue (in the resource's namespace) that admits every stage Job: "
        "the Jobs carry it as the kueue.x-k8s.io/queue-name label and are created suspended until Kueue admits "
        "them; unset = the platform's default queue (chart value policy.defaultQueue), else no queueing.")
    suspend: bool = Field(default=False, description="Pause between stages.")

    cel_rules = (CelRule(
        "!has(self.training) || !has(self.training.maxSeqLength) || self.training.maxSeqLength <= "
        "(has(self.baseModel) && has(self.baseModel.maxSeqLength) ? self.baseModel.maxSeqLength : 256)",
        "training.maxSeqLength must not exceed baseModel.maxSeqLength", field_path=".training.maxSeqLength",
        mirrors="_training_length_fits"), CelRule(
        "!has(self.split) || !has(self.split.test) || self.split.test > 0.0 || (has(self.evaluation) && "
        "has(self.evaluation.datasets) && size(self.evaluation.datasets) > 0 && (!has(self.evaluation.gate) || "
        "!has(self.evaluation.gate.dataset) || self.evaluation.gate.dataset != 'test'))",
        "split.test 0 leaves no synthetic test split: the gate must be judged on an evaluation.datasets entry",
        field_path=".split.test", mirrors="_gate_has_its_split"))

    @model_validator(mode="after")
    def _gate_has_its_split(self) -> EmbeddingFinetuneSpec:
        if self.split.test == 0 and self.evaluation.gate_dataset_name() == "test":
            raise ValueError("split.test 0 leaves no synthetic test split: the gate must be judged on an "
                             "evaluation.datasets entry (add one, and leave gate.dataset unset or name it)")
        return self

    @property
    def test_fraction(self) -> float:
        """split.test as prepare uses it. Unset: none when the gate reads a human-labelled dataset (a synthetic
        test split would then only be a report, and with supplied queries it holds back labels training could
        use: 259 of NFCorpus's 2,586 usable train queries), else DEFAULT_TEST_FRACTION. A property so that prepare's
        fingerprint can name it as a section."""
        if self.split.test is not None:
            return self.split.test
        return 0.0 if self.evaluation.gate_dataset_name() != "test" else DEFAULT_TEST_FRACTION

    @model_validator(mode="after")
    def _training_length_fits(self) -> EmbeddingFinetuneSpec:
        if self.training.max_seq_length is not None and self.training.max_seq_length > self.base_model.max_seq_length:
            raise ValueError("training.maxSeqLength must not exceed baseModel.maxSeqLength")
        return self

    def training_seq_length(self) -> int:
        """Tokens per text in training steps. Not cut by default on any device: cutting 254-token chunks to
        128 in training while scoring them whole (and batch 64 instead of 32) turned +9.7% into +4.0% on
        NFCorpus (2 CPU cores, bench/results/2026-12-07-cpu-nfcorpus-train-length-128.txt), for 2.6x faster
        steps."""
        tr = self.training
        return self.base_model.max_seq_length if tr.max_seq_length is None else tr.max_seq_length

    def training_negatives(self, device: str) -> int:
        """Hard negatives per training row on ``device`` ('cpu', 'cuda', 'cuda:0', ...): no default, since the
        'measured' preset's answer depends on it."""
        tr = self.training
        if tr.negatives is not None:
            return tr.negatives
        if tr.preset == "measured" and not device.startswith("cuda"):
            return 0
        return self.mining.negatives


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(default="eft", min_length=1, max_length=63)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError("metadata.name must be a DNS label: lowercase letters, digits and '-'")
        return v


class EmbeddingFinetune(BaseModel):
    """A whole custom resource (apiVersion/kind/metadata/spec)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    api_version: str = Field(default=f"{API_GROUP}/{API_VERSION}", alias="apiVersion")
    kind: Literal["EmbeddingFinetune"] = KIND
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: EmbeddingFinetuneSpec = Field(default_factory=EmbeddingFinetuneSpec)
    status: dict[str, Any] | None = None

    @field_validator("api_version")
    @classmethod
    def _our_group(cls, v: str) -> str:
        if v != f"{API_GROUP}/{API_VERSION}":
            raise ValueError(f"apiVersion must be {API_GROUP}/{API_VERSION}")
        return v

    @property
    def name(self) -> str:
        return self.metadata.name

    def served_model_name(self) -> str:
        return self.spec.serving.model_name or f"{self.metadata.name}-embed"


class SpecError(Exception):
    """A spec file that cannot be used; `problems` holds one line per error, with its field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after", "tagged-union") or str(item).startswith(("function-", "literal[")):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def describe_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """One readable line per error: field path, message, and the allowed values where pydantic knows them."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x in ("int", "str", "constrained-str")))
        path = _field_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path != "<root>" else prefix
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see `eft crd` or `kubectl explain embeddingfinetune.spec` for the allowed fields)"
        ctx = e.get("ctx") or {}
        if e["type"] == "string_pattern_mismatch" and ctx.get("pattern") in (OBJECT_NAME_PATTERN, _DNS_LABEL.pattern):
            msg = (f"{e.get('input')!r} is not the name of an object in the resource's namespace (lowercase "
                   "letters, digits, '-' and '.'; other namespaces cannot be named)")
        if e["type"] == "literal_error" and "expected" in ctx:
            msg = f"must be one of {ctx['expected']} (got {e.get('input')!r})"
        lines.append(f"{path}: {msg}")
    # `batchSize: 0` yields one error per union member; keep the output one line per distinct message.
    return list(dict.fromkeys(lines))


def parse_document(doc: Any, source: str = "<spec>") -> EmbeddingFinetune:
    """Accept a whole manifest (apiVersion/kind/metadata/spec) or a bare spec mapping."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError(source, [f"<root>: expected a mapping, got {type(doc).__name__}"])
    is_manifest = any(k in doc for k in ("apiVersion", "kind", "metadata", "spec"))
    try:
        if is_manifest:
            return EmbeddingFinetune.model_validate(doc)
        return EmbeddingFinetune(spec=EmbeddingFinetuneSpec.model_validate(doc))
    except ValidationError as err:
        raise SpecError(source, describe_validation_error(err, prefix="" if is_manifest else "spec")) from None


def load_spec(path: str | Path) -> EmbeddingFinetune:
    """Load a spec file; relative local paths inside it are resolved against the file's folder."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(p), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(str(p), [f"cannot read file: {exc}"]) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError(str(p), [f"invalid YAML: {exc}"]) from None
    if len(docs) > 1:
        raise SpecError(str(p), [f"expected one YAML document, found {len(docs)}"])
    efr = parse_document(docs[0] if docs else {}, str(p))
    return resolve_relative_paths(efr, p.resolve().parent)


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("builtin:")


def resolve_relative_paths(efr: EmbeddingFinetune, base: Path) -> EmbeddingFinetune:
    """Make local relative paths absolute so a spec runs the same from any working directory.

    Paths inside a PVC (existingClaim) or ConfigMap are left alone: they are resolved in the pod.
    """
    s = efr.spec
    if _is_local(s.corpus.path) and not s.corpus.existing_claim and not s.corpus.config_map:
        if not Path(s.corpus.path).is_absolute():
            s.corpus.path = str((base / s.corpus.path).resolve())
    bm = s.base_model.name
    if not s.base_model.existing_claim and (bm.startswith(("./", "../")) or bm in (".", "..")):
        s.base_model.name = str((base / bm).resolve())
    q = s.queries
    if q.path and _is_local(q.path) and not q.existing_claim and not q.config_map and not Path(q.path).is_absolute():
        q.path = str((base / q.path).resolve())
    for ds in s.evaluation.datasets:
        if _is_local(ds.path) and not Path(ds.path).is_absolute():
            ds.path = str((base / ds.path).resolve())
    return efr


def dump_manifest(efr: EmbeddingFinetune) -> dict[str, Any]:
    """The resource as the Kubernetes API would store it (camelCase, defaults filled in)."""
    out = efr.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("status", None)
    return out
