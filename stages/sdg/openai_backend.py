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
from dataclasses import dataclass
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
            embedder = load_sentence_model(ctx.spec.base_model)
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
    spec = ctx.spec
    sdg = spec.sdg
    cfg = sdg.openai
    if cfg is None:
        raise StageFailed(STAGE, "backend 'openai' needs the sdg.openai block (at least baseURL and model)")
    journal = Path(journal)
    journal.mkdir(parents=True, exist_ok=True)

    by_id: dict[str, dict[str, Any]] = {}
    for c in chunks:
        by_id.setdefault(str(c["_id"]), c)
    selected = bundling.select_chunks(list(by_id.values()), sdg.max_chunks, sdg.seed)
    stats: dict[str, Any] = {
        "chunks": len(selected), "bundles": 0, "generated": 0, "judged": 0, "kept": 0, "rejected": 0,
        "invalid": 0, "failed_bundles": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
        "total_tokens": 0, "resumed_bundles": 0,
        "json_mode": bool(cfg.json_mode),
    }
    if not selected:
        return [], stats

    groups = _load_bundles(ctx, selected, journal, embedder)
    ckey = _config_key(sdg)
    bundles = [Bundle(i, bundling.bundle_id(g, ckey), tuple(g)) for i, g in enumerate(groups)]
    stats["bundles"] = len(bundles)
    wanted = {b.id for b in bundles}

    jr = Journal(journal / JOURNAL_FILE)
    failures = Journal(journal / FAILURES_FILE)
    generated: dict[str, dict[str, Any]] = {}
    judged: dict[str, dict[str, Any]] = {}
    usage, retries = Usage(), 0
    for rec in jr.records():
        bid = rec.get("bundle")
        if bid not in wanted:
            continue
        target = judged if rec.get("phase") == "judged" else generated if rec.get("phase") == "generated" else None
        if target is None or bid in target:
            continue
        target[bid] = rec
        usage.merge(rec.get("usage") or {})
        retries += int(rec.get("retries", 0))
    stats["resumed_bundles"] = len(judged)
    pending = [b for b in bundles if b.id not in judged]
    if judged:
        ctx.progress(f"resuming: {len(judged)}/{len(bundles)} bundles already done (journal {jr.path})")

    lock = threading.Lock()
    fail_count, last_error = 0, ""

    if pending:
        stop = threading.Event()
        try:
            client = ChatClient(cfg, stop)
        except FatalLLMError as exc:
            raise StageFailed(STAGE, str(exc)) from None
        qpc, max_hops = sdg.questions_per_chunk, sdg.max_hops

        def work(b: Bundle) -> tuple[str, Any]:
            texts = [by_id[cid] for cid in b.chunk_ids]
            alias = Alias(list(b.chunk_ids))
            spent, tries = Usage(), 0
            phase = "generate"
            try:
                rec = generated.get(b.id)
                if rec is None:
                    n = qpc * len(texts)
                    r = client.call(generation_messages(texts, n, max_hops),
                                    lambda t: parse_questions(t, alias, max_hops))
                    spent.merge(r.usage)
                    tries += r.retries
                    qs, invalid = r.value
                    qs = [dict(q, _id=f"{b.id}-{i}") for i, q in enumerate(qs)]
                    rec = {"bundle": b.id, "phase": "generated", "chunks": list(b.chunk_ids), "questions": qs,
                           "invalid": invalid, "usage": r.usage.as_dict(), "retries": r.retries, "time": _now()}
                    jr.append(rec)
                    with lock:
                        generated[b.id] = rec
                phase = "judge"
                qs = rec["questions"]
                r = client.call(judge_messages(texts, qs, alias), lambda t: parse_judgments(t, len(qs)),
                                temperature=JUDGE_TEMPERATURE)
                spent.merge(r.usage)
                tries += r.retries
                out = []
                for i, q in enumerate(qs, 1):
                    j = r.value.get(i)
                    out.append(dict(q, judge=j, score=None if j is None else j["overall"]))
                jrec = {"bundle": b.id, "phase": "judged", "chunks": list(b.chunk_ids), "questions": out,
                        "usage": r.usage.as_dict(), "retries": r.retries, "time": _now()}
                jr.append(jrec)
                return "ok", (jrec, spent, tries)
            except FatalLLMError:
                stop.set()  # before this worker takes the next bundle
                raise
            except RequestFailed as exc:
                spent.merge(exc.usage)
                tries += exc.retries
                failures.append({"bundle": b.id, "chunks": list(b.chunk_ids), "phase": phase,
                                 "reason": str(exc), "time": _now()})
                return "failed", (str(exc), spent, tries)

        total = len(bundles)
        every = max(1, min(25, total // 20))
        done = len(judged)
        t0 = time.monotonic()
        ex = ThreadPoolExecutor(max_workers=max(1, min(cfg.concurrency, len(pending))),
                                thread_name_prefix="eft-sdg-llm")
        futs: set[Future] = {ex.submit(work, b) for b in pending}
        clean = False
        try:
            while futs:
                finished, futs = wait(futs, return_when=FIRST_COMPLETED)
                for f in finished:
                    try:
                        status, payload = f.result()
                    except FatalLLMError as exc:
                        raise StageFailed(STAGE, str(exc)) from None
                    except Aborted:
                        continue
                    if status == "ok":
                        rec, spent, tries = payload
                        judged[rec["bundle"]] = rec
                    else:
                        last_error, spent, tries = payload
                        fail_count += 1
                    usage.merge(spent)
                    retries += tries
                    done += 1
                    if not judged and fail_count >= FAIL_FAST_BUNDLES:
                        raise StageFailed(
                            STAGE, f"the first {fail_count} bundles all failed, giving up (LLM at {cfg.base_url}, "
                                   f"model {cfg.model!r}); last error: {last_error}")
                    if done % every == 0 or done == total:
                        kept = sum(_kept(r, sdg.min_quality_score) for r in judged.values())
                        ctx.progress(f"openai: {done}/{total} bundles, {kept} questions kept, {fail_count} failed, "
                                     f"{usage.total_tokens} tokens, {time.monotonic() - t0:.0f}s")
            clean = True
        finally:
            stop.set()
            # Workers still waiting on the network notice `stop` and quit; do not wait for them on errors.
            ex.shutdown(wait=clean, cancel_futures=True)
            if clean:
                client.close()
        stats["json_mode"] = client.json_mode
        if fail_count and not judged:
            raise StageFailed(STAGE, f"all {fail_count} bundles failed (LLM at {cfg.base_url}, model "
                                     f"{cfg.model!r}); last error: {last_error}")

    questions: list[dict[str, Any]] = []
    for b in bundles:
        rec = judged.get(b.id)
        if rec is None:
            stats["failed_bundles"] += 1
            continue
        g = generated.get(b.id)
        stats["invalid"] += int((g or {}).get("invalid", 0))
        for q in rec["questions"]:
            stats["generated"] += 1
            if q.get("judge") is not None:
                stats["judged"] += 1
            if q.get("score") is not None and q["score"] >= sdg.min_quality_score:
                questions.append({"_id": q["_id"], "text": q["text"], "hops": q["hops"],
                                  "positives": list(q["positives"]), "score": q["score"], "backend": "openai",
                                  "judge": q["judge"], "bundle": b.id})
            else:
                stats["rejected"] += 1
    stats["kept"] = len(questions)
    stats["retries"] = retries
    stats.update(usage.as_dict())
    ctx.progress(f"openai: {stats['kept']} questions kept of {stats['generated']} generated from "
                 f"{stats['bundles'] - stats['failed_bundles']}/{stats['bundles']} bundles "
                 f"({stats['failed_bundles']} failed), {stats['total_tokens']} tokens")
    return questions, stats


def _kept(rec: dict[str, Any], threshold: float) -> int:
    return sum(1 for q in rec["questions"] if q.get("score") is not None and q["score"] >= threshold)
