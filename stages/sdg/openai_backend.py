"""SDG through an OpenAI-compatible Chat Completions server (NIM, vLLM, OpenAI): the production path.

For each bundle of 1..max_hops related chunks (stages/sdg/bundles.py) one call writes
questions_per_chunk x len(bundle) questions of 1..max_hops hops citing chunk aliases, and a second
call judges every (question, cited chunks) pair; pairs scoring at least sdg.minQualityScore stay.

Crash safety: every finished phase of a bundle is appended (fsync'ed) to <journal>/openai-journal.jsonl,
keyed by a bundle id that hashes the bundle's chunk ids with the model, prompt version and question
settings. A rerun loads the journal and sends nothing for a bundle already judged (and only the judge
call for a bundle whose questions were written but not judged). Bundles that fail for good are
appended to <journal>/openai-failures.jsonl with the reason, skipped, and tried again on a rerun.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from eft.pipeline import StageFailed
from eft.stages.sdg import bundles as bundling
from eft.stages.sdg.journal import Journal
from eft.stages.sdg.llm import Aborted, ChatClient, FatalLLMError, RequestFailed, Usage
from eft.stages.sdg.prompts import (
    PROMPT_VERSION,
    Alias,
    generation_messages,
    judge_messages,
    parse_judgments,
    parse_questions,
)
from eft.workspace import read_json, write_json_atomic

STAGE = "sdg"
JOURNAL_FILE = "openai-journal.jsonl"
FAILURES_FILE = "openai-failures.jsonl"
BUNDLES_FILE = "openai-bundles.json"
# Give up early when this many bundles failed and none succeeded: the endpoint is unusable.
FAIL_FAST_BUNDLES = 5
JUDGE_TEMPERATURE = 0.0

Embedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Bundle:
    index: int
    id: str
    chunk_ids: tuple[str, ...]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _embedder_from(model: Any, prefix: str) -> Embedder:
    if hasattr(model, "encode"):
        def embed(texts: list[str]) -> np.ndarray:
            return model.encode([prefix + t for t in texts], batch_size=32, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return embed
    return model  # already a callable texts -> vectors


def _model_key(spec) -> str:
    bm = spec.base_model
    return json.dumps([bm.name, bm.revision, bm.pooling, bm.max_seq_length, bm.passage_prefix])


def _load_bundles(ctx, selected: list[dict[str, Any]], journal: Path, embedder: Any) -> list[list[str]]:
    """The bundling of `selected` (chunk ids per bundle), reusing the one saved in the journal folder."""
    sdg = ctx.spec.sdg
    key = bundling.selection_key(selected, sdg.max_hops, sdg.seed, _model_key(ctx.spec))
    path = journal / BUNDLES_FILE
    if path.is_file():
        try:
            saved = read_json(path)
            if saved.get("key") == key:
                return [list(b) for b in saved["bundles"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    embed = None
    if sdg.max_hops > 1 and len(selected) > 1:
        if embedder is None:
            from eft.models import load_sentence_model

            ctx.progress(f"embedding {len(selected)} chunks with the base model to bundle related ones")
            embedder = load_sentence_model(ctx.spec.base_model, device=ctx.settings.device)
        embed = _embedder_from(embedder, ctx.spec.base_model.passage_prefix)
    groups = bundling.build_bundles(selected, sdg.max_hops, sdg.seed, embed)
    out = [[str(selected[i]["_id"]) for i in g] for g in groups]
    write_json_atomic(path, {"key": key, "bundles": out})
    return out


def _config_key(sdg) -> str:
    blob = json.dumps([PROMPT_VERSION, sdg.openai.model, sdg.questions_per_chunk, sdg.max_hops])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def generate(ctx, chunks: list[dict], journal: Path, *, embedder: Any = None) -> tuple[list[dict], dict]:
    """Questions for `chunks` from the LLM at ctx.spec.sdg.openai, judged and filtered; and stats.

    chunks: BEIR corpus rows {"_id","title","text","metadata":{"source","position"}}. journal: a folder
    that survives crashes (resume state). embedder: optional SentenceTransformer (or texts -> vectors
    callable) for bundling; default: the spec's base model. Returns (questions, stats); questions are
    {"_id","text","hops","positives","score","backend":"openai","judge":{...},"bundle"} with
    score >= sdg.min_quality_score, in bundle order. Raises StageFailed when no bundle can be done.
    """
    sdg = ctx.spec.sdg
    if sdg.openai is None:
        raise StageFailed(STAGE, "backend 'openai' needs the sdg.openai block (at least baseURL and model)")
    journal = Path(journal)
    journal.mkdir(parents=True, exist_ok=True)

    by_id = _unique_by_id(chunks)
    selected = bundling.select_chunks(list(by_id.values()), sdg.max_chunks, sdg.seed)
    stats = _empty_stats(len(selected), sdg.openai.json_mode)
    if not selected:
        return [], stats
    bundles = _make_bundles(ctx, selected, journal, embedder)
    stats["bundles"] = len(bundles)
    run = _Run(ctx, by_id, bundles, journal)
    pending = run.pending()
    if pending:
        stats["json_mode"] = run.ask_llm(pending)
    questions = run.kept_questions(stats)
    ctx.progress(f"openai: {stats['kept']} questions kept of {stats['generated']} generated from "
                 f"{stats['bundles'] - stats['failed_bundles']}/{stats['bundles']} bundles "
                 f"({stats['failed_bundles']} failed), {stats['total_tokens']} tokens")
    return questions, stats


def _unique_by_id(chunks: list[dict]) -> dict[str, dict[str, Any]]:
    """The chunks by id; a repeated id keeps its first chunk."""
    by_id: dict[str, dict[str, Any]] = {}
    for c in chunks:
        by_id.setdefault(str(c["_id"]), c)
    return by_id


def _empty_stats(n_chunks: int, json_mode: bool) -> dict[str, Any]:
    return {
        "chunks": n_chunks, "bundles": 0, "generated": 0, "judged": 0, "kept": 0, "rejected": 0,
        "invalid": 0, "failed_bundles": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
        "total_tokens": 0, "resumed_bundles": 0,
        "json_mode": bool(json_mode),
    }


def _make_bundles(ctx, selected: list[dict[str, Any]], journal: Path, embedder: Any) -> list[Bundle]:
    groups = _load_bundles(ctx, selected, journal, embedder)
    ckey = _config_key(ctx.spec.sdg)
    return [Bundle(i, bundling.bundle_id(g, ckey), tuple(g)) for i, g in enumerate(groups)]


@dataclass
class _Cost:
    """Tokens and retries spent on one bundle, whether it succeeded or not."""

    usage: Usage = field(default_factory=Usage)
    retries: int = 0

    def add(self, usage: Usage | dict[str, int], retries: int) -> None:
        self.usage.merge(usage)
        self.retries += retries


@dataclass
class _Outcome:
    """One bundle's result: its judged journal record, or the error that made it fail."""

    cost: _Cost
    record: dict[str, Any] | None = None
    error: str = ""


class _Run:
    """One generate() call: its bundles, what the journal already holds for them, and what the LLM costs.

    Worker threads run `_do_bundle` and the LLM calls under it; everything else runs on the calling thread.
    """

    def __init__(self, ctx, by_id: dict[str, dict[str, Any]], bundles: list[Bundle], journal: Path):
        self.ctx, self.sdg, self.cfg = ctx, ctx.spec.sdg, ctx.spec.sdg.openai
        self.by_id, self.bundles = by_id, bundles
        self.journal = Journal(journal / JOURNAL_FILE)
        self.failures = Journal(journal / FAILURES_FILE)
        self.generated: dict[str, dict[str, Any]] = {}
        self.judged: dict[str, dict[str, Any]] = {}
        self.usage, self.retries = Usage(), 0
        self.fail_count, self.last_error = 0, ""
        self.resumed = 0  # bundles judged before this call
        self._lock = threading.Lock()
        self._resume()

    # ------------------------------------------------------------------ journal
    def _resume(self) -> None:
        """Take the first journaled record of each phase of this run's bundles, and what it cost."""
        wanted = {b.id for b in self.bundles}
        for rec in self.journal.records():
            bid = rec.get("bundle")
            if bid not in wanted:
                continue
            phase = rec.get("phase")
            target = self.judged if phase == "judged" else self.generated if phase == "generated" else None
            if target is None or bid in target:
                continue
            target[bid] = rec
            self.usage.merge(rec.get("usage") or {})
            self.retries += int(rec.get("retries", 0))
        self.resumed = len(self.judged)
        if self.judged:
            self.ctx.progress(f"resuming: {len(self.judged)}/{len(self.bundles)} bundles already done "
                              f"(journal {self.journal.path})")

    def pending(self) -> list[Bundle]:
        return [b for b in self.bundles if b.id not in self.judged]

    # ------------------------------------------------------------------ LLM calls (worker threads)
    def _do_bundle(self, client: ChatClient, b: Bundle) -> _Outcome:
        texts = [self.by_id[cid] for cid in b.chunk_ids]
        alias = Alias(list(b.chunk_ids))
        cost = _Cost()
        phase = "generate"
        try:
            rec = self.generated.get(b.id)
            if rec is None:
                rec = self._ask_questions(client, b, texts, alias, cost)
            phase = "judge"
            return _Outcome(cost, record=self._judge(client, b, texts, alias, rec["questions"], cost))
        except FatalLLMError:
            client.stop.set()  # before this worker takes the next bundle
            raise
        except RequestFailed as exc:
            cost.add(exc.usage, exc.retries)
            self.failures.append({"bundle": b.id, "chunks": list(b.chunk_ids), "phase": phase,
                                  "reason": str(exc), "time": _now()})
            return _Outcome(cost, error=str(exc))

    def _ask_questions(self, client: ChatClient, b: Bundle, texts: list[dict], alias: Alias,
                       cost: _Cost) -> dict[str, Any]:
        """The generation call: questions_per_chunk questions per chunk of the bundle, journaled."""
        max_hops = self.sdg.max_hops
        n = self.sdg.questions_per_chunk * len(texts)
        r = client.call(generation_messages(texts, n, max_hops), lambda t: parse_questions(t, alias, max_hops))
        cost.add(r.usage, r.retries)
        qs, invalid = r.value
        qs = [dict(q, _id=f"{b.id}-{i}") for i, q in enumerate(qs)]
        rec = {"bundle": b.id, "phase": "generated", "chunks": list(b.chunk_ids), "questions": qs,
               "invalid": invalid, "usage": r.usage.as_dict(), "retries": r.retries, "time": _now()}
        self.journal.append(rec)
        with self._lock:
            self.generated[b.id] = rec
        return rec

    def _judge(self, client: ChatClient, b: Bundle, texts: list[dict], alias: Alias, qs: list[dict[str, Any]],
               cost: _Cost) -> dict[str, Any]:
        """The judge call: a score for every question of the bundle, journaled."""
        r = client.call(judge_messages(texts, qs, alias), lambda t: parse_judgments(t, len(qs)),
                        temperature=JUDGE_TEMPERATURE)
        cost.add(r.usage, r.retries)
        out = []
        for i, q in enumerate(qs, 1):
            j = r.value.get(i)
            out.append(dict(q, judge=j, score=None if j is None else j["overall"]))
        rec = {"bundle": b.id, "phase": "judged", "chunks": list(b.chunk_ids), "questions": out,
               "usage": r.usage.as_dict(), "retries": r.retries, "time": _now()}
        self.journal.append(rec)
        return rec

    # ------------------------------------------------------------------ the pool (calling thread)
    def ask_llm(self, pending: list[Bundle]) -> bool:
        """Generate and judge the pending bundles on cfg.concurrency threads; returns whether JSON mode held."""
        stop = threading.Event()
        try:
            client = ChatClient(self.cfg, stop)
        except FatalLLMError as exc:
            raise StageFailed(STAGE, str(exc)) from None
        ex = ThreadPoolExecutor(max_workers=max(1, min(self.cfg.concurrency, len(pending))),
                                thread_name_prefix="eft-sdg-llm")
        futs: set[Future] = {ex.submit(self._do_bundle, client, b) for b in pending}
        clean = False
        try:
            self._collect(futs)
            clean = True
        finally:
            stop.set()
            # Workers still waiting on the network notice `stop` and quit; do not wait for them on errors.
            ex.shutdown(wait=clean, cancel_futures=True)
            if clean:
                client.close()
        if self.fail_count and not self.judged:
            raise StageFailed(STAGE, f"all {self.fail_count} bundles failed (LLM at {self.cfg.base_url}, model "
                                     f"{self.cfg.model!r}); last error: {self.last_error}")
        return client.json_mode

    def _collect(self, futs: set[Future]) -> None:
        """Take outcomes as they finish, reporting progress; raises StageFailed on a fatal error or fail-fast."""
        total = len(self.bundles)
        every = max(1, min(25, total // 20))
        done = len(self.judged)
        t0 = time.monotonic()
        while futs:
            finished, futs = wait(futs, return_when=FIRST_COMPLETED)
            for f in finished:
                try:
                    outcome = f.result()
                except FatalLLMError as exc:
                    raise StageFailed(STAGE, str(exc)) from None
                except Aborted:
                    continue
                self._count(outcome)
                done += 1
                if done % every == 0 or done == total:
                    kept = sum(_kept(r, self.sdg.min_quality_score) for r in self.judged.values())
                    self.ctx.progress(f"openai: {done}/{total} bundles, {kept} questions kept, {self.fail_count} "
                                      f"failed, {self.usage.total_tokens} tokens, {time.monotonic() - t0:.0f}s")

    def _count(self, outcome: _Outcome) -> None:
        if outcome.record is not None:
            self.judged[outcome.record["bundle"]] = outcome.record
        else:
            self.last_error = outcome.error
            self.fail_count += 1
        self.usage.merge(outcome.cost.usage)
        self.retries += outcome.cost.retries
        if not self.judged and self.fail_count >= FAIL_FAST_BUNDLES:
            raise StageFailed(
                STAGE, f"the first {self.fail_count} bundles all failed, giving up (LLM at {self.cfg.base_url}, "
                       f"model {self.cfg.model!r}); last error: {self.last_error}")

    # ------------------------------------------------------------------ output
    def kept_questions(self, stats: dict[str, Any]) -> list[dict[str, Any]]:
        """The judged questions scoring at least sdg.min_quality_score, in bundle order; fills in `stats`."""
        threshold = self.sdg.min_quality_score
        questions: list[dict[str, Any]] = []
        for b in self.bundles:
            rec = self.judged.get(b.id)
            if rec is None:
                stats["failed_bundles"] += 1
                continue
            stats["invalid"] += int((self.generated.get(b.id) or {}).get("invalid", 0))
            for q in rec["questions"]:
                stats["generated"] += 1
                if q.get("judge") is not None:
                    stats["judged"] += 1
                if q.get("score") is not None and q["score"] >= threshold:
                    questions.append({"_id": q["_id"], "text": q["text"], "hops": q["hops"],
                                      "positives": list(q["positives"]), "score": q["score"], "backend": "openai",
                                      "judge": q["judge"], "bundle": b.id})
                else:
                    stats["rejected"] += 1
        stats["resumed_bundles"] = self.resumed
        stats["kept"] = len(questions)
        stats["retries"] = self.retries
        stats.update(self.usage.as_dict())
        return questions


def _kept(rec: dict[str, Any], threshold: float) -> int:
    return sum(1 for q in rec["questions"] if q.get("score") is not None and q["score"] >= threshold)
