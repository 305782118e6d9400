"""ingest: documents → markup stripped → token-budgeted chunks with stable ids → BEIR corpus.jsonl."""

from __future__ import annotations

import json
from collections import Counter

from eft.models import load_tokenizer
from eft.pipeline import StageContext, StageFailed
from eft.spec import EmbeddingFinetuneSpec
from eft.stages.chunking import Chunker
from eft.stages.ingest_readers import ReadReport, corpus_fingerprint, read_documents
from eft.textutil import content_id
from eft.workspace import StageResult, write_json_atomic


def input_fingerprint(spec: EmbeddingFinetuneSpec) -> str:
    return corpus_fingerprint(spec.corpus)


def effective_max_tokens(spec: EmbeddingFinetuneSpec, tokenizer) -> int:
    """The chunk budget, capped so a chunk plus special tokens and the passage prefix fits the encoder."""
    prefix = len(tokenizer(spec.base_model.passage_prefix, add_special_tokens=False)["input_ids"])
    room = spec.base_model.max_seq_length - 2 - prefix
    return max(8, min(spec.corpus.chunking.max_tokens, room))


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec
    try:
        tok = load_tokenizer(spec.base_model.name)
    except Exception as exc:
        raise StageFailed("ingest", f"cannot load the tokenizer of base model {spec.base_model.name}: {exc}") from exc
    max_tokens = effective_max_tokens(spec, tok)
    overlap = min(spec.corpus.chunking.overlap_tokens, max_tokens - 1)
    chunker = Chunker(tok, max_tokens, overlap, spec.corpus.chunking.min_tokens)
    report = ReadReport()
    seen: set[str] = set()
    duplicates = 0
    token_hist: Counter[int] = Counter()
    chunks_out = 0
    out_path = ctx.out / "corpus.jsonl"
    try:
        with open(out_path, "w", encoding="utf-8") as out:
            for doc in read_documents(spec.corpus, report):
                pieces = chunker.chunk(doc.text)
                if not pieces:
                    report.skip(doc.source, f"shorter than chunking.minTokens ({spec.corpus.chunking.min_tokens})")
                for pos, text in enumerate(pieces):
                    cid = content_id(text)
                    if cid in seen:
                        duplicates += 1
                        continue
                    seen.add(cid)
                    n = chunker.count(text)
                    token_hist[min(n // 32 * 32, 4096)] += 1
                    row = {"_id": cid, "title": doc.title, "text": text,
                           "metadata": {"source": doc.source, "position": pos, "tokens": n}}
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    chunks_out += 1
                if report.documents and report.documents % 200 == 0:
                    ctx.progress(f"{report.documents} documents, {chunks_out} chunks")
    except FileNotFoundError as exc:
        raise StageFailed("ingest", str(exc)) from None
    except PermissionError as exc:
        raise StageFailed("ingest", f"cannot read corpus: {exc}") from None
    for s in report.skipped[:20]:
        ctx.progress(f"skipped {s['source']}: {s['reason']}")
    if len(report.skipped) > 20:
        ctx.progress(f"... and {len(report.skipped) - 20} more skipped files (see ingest/stats.json)")
    if chunks_out == 0:
        where = spec.corpus.path
        raise StageFailed(
            "ingest",
            f"no usable chunks from {where}: {report.files_seen} file(s) matched {spec.corpus.include}, "
            f"{len(report.skipped)} skipped" + (f" (first: {report.skipped[0]['source']}: {report.skipped[0]['reason']})"
                                                 if report.skipped else ""),
        )
    stats = {
        "files": report.files_seen,
        "documents": report.documents,
        "skipped": report.skipped,
        "chunks": chunks_out,
        "duplicateChunksRemoved": duplicates,
        "maxTokens": max_tokens,
        "overlapTokens": overlap,
        "tokenHistogram": {str(k): v for k, v in sorted(token_hist.items())},
    }
    write_json_atomic(ctx.out / "stats.json", stats)
    return StageResult(
        counts={"files": report.files_seen, "documents": report.documents, "skipped": len(report.skipped),
                "chunks": chunks_out, "duplicates": duplicates},
        summary=f"{chunks_out} chunks from {report.documents} documents",
    )
