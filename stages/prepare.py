"""prepare: split questions (eft.stages.splits), embed with the base model, mine hard negatives, unroll multi-hop questions.

Outputs (see docs): train.jsonl (one row per question x positive, sharing the question's negatives),
beir/ (corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv) and stats.json.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eft.models import load_sentence_model, pick_device
from eft.pipeline import StageContext, StageFailed, read_stage_jsonl
from eft.stages.document_positives import Narrowing, trained_positive_rows
from eft.stages.mining import mine
from eft.stages.quotes import QuoteStats, unquote_passages
from eft.stages.sdg.offline import WORD_EXTRACT_KINDS
from eft.stages.splits import (SPLITS, SplitPlan, documents_seen_in_training, seen_in_training, split_by_chunk,
                               split_by_document, split_questions)
from eft.textutil import content_id, passage_text
from eft.workspace import StageResult, write_json_atomic

def _write_jsonl(path: Path, rows) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def _write_qrels(path: Path, questions: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in questions:
            for pid in q["positives"]:
                f.write(f"{q['_id']}\t{pid}\t1\n")


def encode(model, texts: list[str], progress, what: str) -> np.ndarray:
    progress(f"embedding {len(texts)} {what}")
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False).astype(np.float32)


def build_index(emb: np.ndarray, device: str | None = None):
    """Exact inner-product index; on the GPU when faiss has GPU support and `device` (or the default) is cuda."""
    from eft.vector_index import flat_ip_index

    index = flat_ip_index(emb.shape[1], gpu=pick_device(device) == "cuda")
    index.add(emb)
    return index


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec
    corpus = read_stage_jsonl(ctx.input("ingest") / "corpus.jsonl", "prepare")
    questions = read_stage_jsonl(ctx.input("sdg") / "questions.jsonl", "prepare")
    row_of = {c["_id"]: i for i, c in enumerate(corpus)}
    usable, unknown_positive = _usable_questions(questions, row_of)
    by_id: dict[str, dict] = {}
    for q in usable:
        by_id.setdefault(q["_id"], q)  # duplicated ids: keep the first
    positives = {q: by_id[q]["positives"] for q in by_id}
    plan = _split(ctx, corpus, row_of, positives)
    splits = plan.splits
    extracts = _drop_held_out_word_extracts(ctx, by_id, splits) if spec.split.remove_quotes else None

    train_qs = [by_id[q] for q in splits["train"]]
    p_emb, q_emb = _embed(ctx, corpus, train_qs)
    narrowing = Narrowing(spec.queries.document_positives)
    positives_rows = [trained_positive_rows(q, row_of, q_emb[i], p_emb, narrowing)
                      for i, q in enumerate(train_qs)]
    if narrowing.groups:
        ctx.progress(f"{narrowing.groups} labels named several chunks: training on the chunk the base model finds "
                     f"closest ({narrowing.left_out} chunks left out of training, still relevant when scored; "
                     f"queries.documentPositives: {narrowing.rule})")
    # Every positive and its exact-text copies, trained on or not, is never a negative.
    dup_rows = _duplicate_rows(corpus, row_of, train_qs)
    ctx.progress(f"mining {spec.mining.negatives} negatives from {spec.mining.candidates} candidates, "
                 f"margin {spec.mining.margin}")
    mined = mine(q_emb, p_emb, positives_rows, spec.mining.negatives, spec.mining.candidates, spec.mining.margin,
                 excluded=[set(d) for d in dup_rows], index=build_index(p_emb, ctx.settings.device))
    policy = _NegativesPolicy(spec.mining.negatives, spec.mining.fewer_than_negatives, p_emb,
                              random.Random(spec.split.seed))
    rows = _training_rows(corpus, train_qs, positives_rows, dup_rows, mined, q_emb, policy, row_of)

    n_rows = _write_jsonl(ctx.out / "train.jsonl", rows)
    quotes = _write_beir(ctx.out / "beir", corpus, by_id, splits, spec.split.remove_quotes)
    if quotes:
        ctx.progress(f"removed {quotes.sentences} quoted sentences from {quotes.passages} validation and test "
                     f"passages ({quotes.kept_whole} kept whole: too little left)")
    stats = {
        "questions": {s: len(splits[s]) for s in SPLITS},
        "split": {**plan.describe(),
                  "seenInTraining": seen_in_training(splits, positives, _text_key(corpus, row_of)),
                  "documentsSeenInTraining": documents_seen_in_training(splits, positives,
                                                                        _document_key(corpus, row_of)),
                  "quotesRemoved": {**quotes.describe(), "wordExtractsLeftOut": extracts} if quotes else None,
                  "questionSources": question_sources(by_id, splits)},
        "questionsWithoutPositiveInCorpus": unknown_positive,
        "trainRows": n_rows,
        "multiHopTrainQuestions": sum(1 for q in train_qs if len(q["positives"]) > 1),
        "documentPositives": narrowing.describe(),
        **policy.stats(),
        "margin": spec.mining.margin,
    }
    write_json_atomic(ctx.out / "stats.json", stats)
    return StageResult(
        counts={"train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(splits["test"]),
                "rows": n_rows, "short": policy.short, "dropped": policy.dropped},
        details=stats,
        summary=f"{n_rows} training rows, {len(splits['test'])} test questions",
    )


def question_sources(by_id: dict[str, dict], splits: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Per split, how many questions each source wrote (sdg's `backend`: offline, openai, supplied): the
    evaluate stage does not accept a test split of offline questions alone as the gate's evidence."""
    return {s: dict(sorted(Counter(by_id[q].get("backend") or "unknown" for q in splits[s]).items()))
            for s in SPLITS}


def _text_key(corpus: list[dict], row_of: dict[str, int]):
    """Passage id -> what makes two passages the same: their text (copies under other ids are one passage)."""
    return lambda pid: content_id(passage_text(corpus[row_of[pid]]))


def _drop_held_out_word_extracts(ctx: StageContext, by_id: dict[str, dict], splits: dict[str, list[str]]) -> int:
    """Leave the offline generator's word-extract questions (eft.stages.sdg.offline.WORD_EXTRACT_KINDS) out of
    dev and test, in place; how many. Kept where leaving them out would empty a held-out split that had some.

    They are not moved to train: their documents are held out, and training on them would leak those."""
    dropped = 0
    for s in ("dev", "test"):
        kept = [q for q in splits[s] if not (by_id[q].get("backend") == "offline"
                                             and by_id[q].get("kind") in WORD_EXTRACT_KINDS)]
        if kept or not splits[s]:
            dropped += len(splits[s]) - len(kept)
            splits[s] = kept
        else:
            ctx.progress(f"warning: every {s} question is a word extract (offline keywords or title); kept them")
    if dropped:
        ctx.progress(f"left {dropped} word-extract questions (offline keywords and title) out of validation and test")
    return dropped


def _document_key(corpus: list[dict], row_of: dict[str, int]):
    """Passage id -> the source document ingest cut it from (the passage itself when ingest did not say)."""
    return lambda pid: (corpus[row_of[pid]].get("metadata") or {}).get("source") or pid


def _split(ctx: StageContext, corpus: list[dict], row_of: dict[str, int],
           positives: dict[str, list[str]]) -> SplitPlan:
    sp, test = ctx.spec.split, ctx.spec.test_fraction
    if sp.by == "question":
        plan = SplitPlan(split_questions(list(positives), sp.validation, test, sp.seed), by="question")
    elif sp.by == "chunk":
        plan = split_by_chunk(positives, _text_key(corpus, row_of), sp.validation, test, sp.seed)
    else:
        plan = split_by_document(positives, _text_key(corpus, row_of), _document_key(corpus, row_of),
                                 sp.validation, test, sp.seed)
    if plan.fallback:
        ctx.progress(f"warning: {plan.fallback}")
    shared = "passages or documents" if plan.by == "document" else "passages"
    groups = f" ({plan.groups} groups of questions sharing {shared})" if plan.groups else ""
    ctx.progress(", ".join(f"{s} {len(plan.splits[s])}" for s in SPLITS) + f" questions, split by {plan.by}{groups}")
    return plan


def _usable_questions(questions: list[dict], row_of: dict[str, int]) -> tuple[list[dict], int]:
    """Questions with text and a positive in the corpus (their positives deduplicated), and how many had none.

    A question whose positives are not in the corpus cannot be trained or scored: it is dropped and counted.
    """
    usable, unknown_positive = [], 0
    for q in questions:
        pos = [p for p in dict.fromkeys(q.get("positives") or []) if p in row_of]
        if not q.get("text") or not pos:
            unknown_positive += 1
            continue
        usable.append({**q, "positives": pos})
    if len(usable) < 3:
        raise StageFailed("prepare", f"only {len(usable)} usable question(s) (of {len(questions)}; "
                          f"{unknown_positive} had no positive in the corpus): need at least 3 to split")
    return usable, unknown_positive


def _embed(ctx: StageContext, corpus: list[dict], train_qs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Every passage and the train questions, embedded by the base model with its prefixes."""
    base = ctx.spec.base_model
    model = load_sentence_model(base, device=ctx.settings.device)
    passages = [base.passage_prefix + passage_text(c) for c in corpus]
    p_emb = encode(model, passages, ctx.progress, "passages")
    q_emb = encode(model, [base.query_prefix + q["text"] for q in train_qs], ctx.progress, "train questions")
    return p_emb, q_emb


def _duplicate_rows(corpus: list[dict], row_of: dict[str, int], train_qs: list[dict]) -> list[list[int]]:
    """Per train question, every corpus row with the exact text of one of its positives (the positives included).

    Exact-text duplicates of a positive under another id are positives too, never negatives.
    """
    by_text: dict[str, list[int]] = {}
    for i, c in enumerate(corpus):
        by_text.setdefault(content_id(passage_text(c)), []).append(i)
    return [sorted({j for p in q["positives"] for j in by_text[content_id(passage_text(corpus[row_of[p]]))]})
            for q in train_qs]


@dataclass
class _NegativesPolicy:
    """mining.fewerThanNegatives applied to each question's mined negatives, with counts of what it did."""

    wanted: int
    rule: str  # keep, drop or pad-random
    p_emb: np.ndarray
    rng: random.Random
    hist: Counter[int] = field(default_factory=Counter)
    short: int = 0
    padded: int = 0
    dropped: int = 0
    widened: int = 0
    filtered: int = 0

    def negatives(self, m: Any, q_vec: np.ndarray, banned: set[int]) -> list[int] | None:
        """Negative rows for one question (`m`: its mining result), or None when the policy drops it.

        `banned`: rows that can never be a negative (its positives and their duplicates)."""
        negs = list(m.negatives)
        self.hist[len(negs)] += 1
        self.widened += m.widened
        self.filtered += m.filtered
        if len(negs) >= self.wanted:
            return negs
        self.short += 1
        if self.rule == "drop":
            self.dropped += 1
            return None
        if self.rule == "pad-random":
            self._pad(negs, q_vec, m.threshold, banned | set(negs))
            self.padded += 1
        return negs

    def _pad(self, negs: list[int], q_vec: np.ndarray, threshold: float, banned: set[int]) -> None:
        # Random passages, still under the margin bound, so padding never adds a likely positive.
        tries = 0
        while len(negs) < self.wanted and tries < 50 * self.wanted:
            tries += 1
            cand = self.rng.randrange(len(self.p_emb))
            if cand not in banned and float(self.p_emb[cand] @ q_vec) <= threshold:
                negs.append(cand)
                banned.add(cand)

    def stats(self) -> dict[str, Any]:
        return {
            "negativesPerQuestion": {str(k): v for k, v in sorted(self.hist.items())},
            "questionsWithFewerNegatives": self.short,
            "fewerThanNegativesPolicy": self.rule,
            "questionsPadded": self.padded,
            "questionsDropped": self.dropped,
            "questionsSearchWidened": self.widened,
            "candidatesFilteredByMargin": self.filtered,
        }


def _training_rows(corpus: list[dict], train_qs: list[dict], positives_rows: list[list[int]],
                   dup_rows: list[list[int]], mined: list, q_emb: np.ndarray,
                   policy: _NegativesPolicy, row_of: dict[str, int]) -> list[dict]:
    """One row per train question x trained positive; a question's rows share its negatives. Positives it does
    not train on (queries.documentPositives) ride along as `otherPositives`, so training never treats them as
    in-batch negatives of that question."""
    rows = []
    for qi, (q, qpos, m) in enumerate(zip(train_qs, positives_rows, mined)):
        negs = policy.negatives(m, q_emb[qi], set(qpos) | set(dup_rows[qi]))
        if negs is None:
            continue
        neg_rows = [{"_id": corpus[i]["_id"], "text": passage_text(corpus[i])} for i in negs]
        trained = set(qpos)
        others = [p for p in q["positives"] if row_of[p] not in trained]
        for p in qpos:
            row = {"qid": q["_id"], "query": q["text"], "hops": q.get("hops", len(q["positives"])),
                   "positive": {"_id": corpus[p]["_id"], "text": passage_text(corpus[p])},
                   "negatives": neg_rows}
            if others:
                row["otherPositives"] = others
            rows.append(row)
    if not rows:
        raise StageFailed("prepare", "no training rows left after mining (mining.fewerThanNegatives: drop removed "
                          "every question); lower mining.negatives or use pad-random")
    return rows


def _write_beir(beir: Path, corpus: list[dict], by_id: dict[str, dict], splits: dict[str, list[str]],
                remove_quotes: bool) -> QuoteStats | None:
    """corpus.jsonl, queries.jsonl (every split, tagged) and qrels/{train,dev,test}.tsv; with `remove_quotes`,
    the corpus's dev and test passages lose the sentences their questions quote (eft.stages.quotes)."""
    beir.mkdir()
    quotes = None
    if remove_quotes:
        corpus, quotes = unquote_passages(corpus, [by_id[x] for s in ("dev", "test") for x in splits[s]])
    _write_jsonl(beir / "corpus.jsonl", ({"_id": c["_id"], "title": c.get("title", ""), "text": c["text"]}
                                         for c in corpus))
    _write_jsonl(beir / "queries.jsonl", ({"_id": q["_id"], "text": q["text"],
                                           "metadata": {"split": s, "hops": q.get("hops", 1),
                                                        "source": q.get("backend") or "unknown"}}
                                          for s in SPLITS for q in (by_id[x] for x in splits[s])))
    for s in SPLITS:
        _write_qrels(beir / "qrels" / f"{s}.tsv", [by_id[x] for x in splits[s]])
    return quotes
