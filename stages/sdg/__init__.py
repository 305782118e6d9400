"""sdg: synthetic questions tied to the chunks that answer them (an LLM through an OpenAI-compatible API,
or the offline pseudo-query generator), judged, filtered and deduplicated → sdg/questions.jsonl; with
spec.queries, the supplied queries matched to chunks (stages/sdg/supplied.py), alone or added to them."""

from __future__ import annotations

import json

from eft.models import load_sentence_model
from eft.pipeline import StageContext, StageFailed, read_stage_jsonl
from eft.spec import EmbeddingFinetuneSpec
from eft.stages.sdg.bundles import select_chunks
from eft.workspace import StageResult, write_json_atomic


def input_fingerprint(spec: EmbeddingFinetuneSpec) -> str:
    """The supplied queries' files (spec.queries), the stage's only input outside the workspace."""
    from eft.stages.sdg.supplied import source_fingerprint

    return source_fingerprint(spec.queries)


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.sdg
    all_chunks = read_stage_jsonl(ctx.input("ingest") / "corpus.jsonl", "sdg")
    supplied, supplied_stats = _supplied(ctx, all_chunks)
    if supplied is not None and ctx.spec.queries.use == "only":
        generated, stats, dropped, chunks = [], {}, 0, all_chunks
        ctx.progress(f"{len(supplied)} supplied queries, nothing generated (queries.use: only)")
    else:
        chunks = select_chunks(all_chunks, spec.max_chunks, spec.seed)
        generated, stats, dropped = _generate(ctx, chunks)
    kept = generated + (supplied or [])
    with open(ctx.out / "questions.jsonl", "w", encoding="utf-8") as f:
        for q in kept:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    hops: dict[str, int] = {}
    for q in kept:
        hops[str(q["hops"])] = hops.get(str(q["hops"]), 0) + 1
    backend = "supplied" if not generated else spec.backend + ("+supplied" if supplied else "")
    stats = {**stats, "chunks": len(chunks), "nearDuplicatesDropped": dropped, "questions": len(kept), "hops": hops,
             "backend": backend, "generated": len(generated), **({"supplied": supplied_stats} if supplied else {})}
    write_json_atomic(ctx.out / "stats.json", stats)
    counts = {"questions": len(kept), "chunks": len(chunks), "duplicates": dropped}
    if supplied:
        counts["supplied"] = len(supplied)
    for key in ("rejected", "failed_bundles", "total_tokens"):
        if key in stats:
            counts[key] = stats[key]
    return StageResult(counts=counts, details={"hops": hops}, summary=f"{len(kept)} questions ({backend})")


def _supplied(ctx: StageContext, chunks: list[dict]) -> tuple[list[dict] | None, dict]:
    """spec.queries matched to the chunks (None when no queries are supplied)."""
    from eft.stages.sdg.supplied import SuppliedQueriesError, supplied_questions

    if not ctx.spec.queries.path:
        return None, {}
    try:
        questions, stats = supplied_questions(ctx.spec.queries, chunks)
    except SuppliedQueriesError as exc:
        raise StageFailed("sdg", f"queries: {exc}") from None
    dropped = stats["read"] - stats["kept"]
    ctx.progress(f"supplied queries: {stats['kept']} of {stats['read']} matched to chunks ({stats['positives']} "
                 f"positives){f'; {dropped} dropped without a positive, see sdg/stats.json' if dropped else ''}")
    return questions, stats


def _generate(ctx: StageContext, chunks: list[dict]) -> tuple[list[dict], dict, int]:
    """Questions from the backend, near-duplicates dropped: (kept, backend stats, dropped)."""
    spec = ctx.spec.sdg
    ctx.progress(f"{len(chunks)} chunks, backend {spec.backend}")
    model = load_sentence_model(ctx.spec.base_model, device=ctx.settings.device)  # bundling (openai) and deduplication share it
    if spec.backend == "offline":
        from eft.stages.sdg.offline import generate

        questions, stats = generate(chunks, spec.questions_per_chunk, spec.max_hops, spec.seed)
    else:
        from eft.stages.sdg.openai_backend import generate

        questions, stats = generate(ctx, chunks, ctx.work / "journal", embedder=model)
    if not questions:
        raise StageFailed("sdg", f"no questions survived generation and judging ({stats})")

    from eft.stages.sdg.dedup import dedup_questions

    prefix = ctx.spec.base_model.query_prefix
    emb = model.encode([prefix + q["text"] for q in questions], batch_size=64, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=False)
    kept, dropped = dedup_questions(questions, emb, spec.dedup_threshold)
    ctx.progress(f"{len(kept)} questions kept, {dropped} near-duplicates dropped")
    return kept, stats, dropped
