"""ingest: documents → markup stripped → token-budgeted chunks with stable ids → BEIR corpus.jsonl."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

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
    chunker = _chunker(spec)
    report = ReadReport()
    written = _write_corpus(ctx, chunker, report)
    _report_skipped(ctx, report)
    if written.chunks == 0:
        raise StageFailed("ingest", _no_chunks_message(spec, report))
    stats = {
        "files": report.files_seen,
        "documents": report.documents,
        "skipped": report.skipped,
        "chunks": written.chunks,
        "duplicateChunksRemoved": written.duplicates,
        "maxTokens": chunker.max_tokens,
        "overlapTokens": chunker.overlap_tokens,
        "tokenHistogram": {str(k): v for k, v in sorted(written.token_hist.items())},
    }
    write_json_atomic(ctx.out / "stats.json", stats)
    return StageResult(
        counts={"files": report.files_seen, "documents": report.documents, "skipped": len(report.skipped),
                "chunks": written.chunks, "duplicates": written.duplicates},
        summary=f"{written.chunks} chunks from {report.documents} documents",
    )


def _chunker(spec: EmbeddingFinetuneSpec) -> Chunker:
    """A chunker on the base model's tokenizer, its budget and overlap fitted to the encoder."""
    try:
        tok = load_tokenizer(spec.base_model.name)
    except Exception as exc:
        raise StageFailed("ingest", f"cannot load the tokenizer of base model {spec.base_model.name}: {exc}") from exc
    max_tokens = effective_max_tokens(spec, tok)
    overlap = min(spec.corpus.chunking.overlap_tokens, max_tokens - 1)
    return Chunker(tok, max_tokens, overlap, spec.corpus.chunking.min_tokens)


@dataclass
class _Written:
    """What went into corpus.jsonl."""

    chunks: int = 0
    duplicates: int = 0  # chunks whose exact text was already written (same content id)
    token_hist: Counter[int] = field(default_factory=Counter)  # chunks per 32-token bucket


def _write_corpus(ctx: StageContext, chunker: Chunker, report: ReadReport) -> _Written:
    """corpus.jsonl: every document's chunks, each text once; unreadable inputs fail the stage."""
    try:
        with open(ctx.out / "corpus.jsonl", "w", encoding="utf-8") as out:
            return _write_chunks(ctx, chunker, report, out)
    except FileNotFoundError as exc:
        raise StageFailed("ingest", str(exc)) from None
    except PermissionError as exc:
        raise StageFailed("ingest", f"cannot read corpus: {exc}") from None


def _write_chunks(ctx: StageContext, chunker: Chunker, report: ReadReport, out: TextIO) -> _Written:
    spec = ctx.spec
    written = _Written()
    seen: set[str] = set()
    for doc in read_documents(spec.corpus, report):
        pieces = chunker.chunk(doc.text)
        if not pieces:
            report.skip(doc.source, f"shorter than chunking.minTokens ({spec.corpus.chunking.min_tokens})")
        for pos, text in enumerate(pieces):
            cid = content_id(text)
            if cid in seen:
                written.duplicates += 1
                continue
            seen.add(cid)
            n = chunker.count(text)
            written.token_hist[min(n // 32 * 32, 4096)] += 1
            row = {"_id": cid, "title": doc.title, "text": text,
                   "metadata": {"source": doc.source, "position": pos, "tokens": n}}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            written.chunks += 1
        if report.documents and report.documents % 200 == 0:
            ctx.progress(f"{report.documents} documents, {written.chunks} chunks")
    return written


def _report_skipped(ctx: StageContext, report: ReadReport) -> None:
    for s in report.skipped[:20]:
        ctx.progress(f"skipped {s['source']}: {s['reason']}")
    if len(report.skipped) > 20:
        ctx.progress(f"... and {len(report.skipped) - 20} more skipped files (see ingest/stats.json)")


def _no_chunks_message(spec: EmbeddingFinetuneSpec, report: ReadReport) -> str:
    first = report.skipped[0] if report.skipped else None
    return (f"no usable chunks from {spec.corpus.path}: {report.files_seen} file(s) matched {spec.corpus.include}, "
            f"{len(report.skipped)} skipped" + (f" (first: {first['source']}: {first['reason']})" if first else ""))
