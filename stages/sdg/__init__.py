"""sdg: synthetic questions tied to the chunks that answer them (an LLM through an OpenAI-compatible API,
or the offline pseudo-query generator), judged, filtered and deduplicated → sdg/questions.jsonl."""

from __future__ import annotations

import json

from eft.models import load_sentence_model
from eft.pipeline import StageContext, StageFailed, read_stage_jsonl
from eft.stages.sdg.bundles import select_chunks
from eft.workspace import StageResult, write_json_atomic


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec.sdg
    chunks = read_stage_jsonl(ctx.input("ingest") / "corpus.jsonl", "sdg")
    chunks = select_chunks(chunks, spec.max_chunks, spec.seed)
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
    with open(ctx.out / "questions.jsonl", "w", encoding="utf-8") as f:
        for q in kept:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    hops: dict[str, int] = {}
    for q in kept:
        hops[str(q["hops"])] = hops.get(str(q["hops"]), 0) + 1
    stats = {**stats, "chunks": len(chunks), "nearDuplicatesDropped": dropped, "questions": len(kept), "hops": hops,
             "backend": spec.backend}
    write_json_atomic(ctx.out / "stats.json", stats)
    counts = {"questions": len(kept), "chunks": len(chunks), "duplicates": dropped}
    for key in ("rejected", "failed_bundles", "total_tokens"):
        if key in stats:
            counts[key] = stats[key]
    return StageResult(counts=counts, details={"hops": hops}, summary=f"{len(kept)} questions ({spec.backend})")
