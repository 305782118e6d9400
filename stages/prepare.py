"""prepare: split questions, embed with the base model, mine hard negatives, unroll multi-hop questions.

Outputs (see docs): train.jsonl (one row per question x positive, sharing the question's negatives),
beir/ (corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv) and stats.json.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from eft.models import load_sentence_model, pick_device
from eft.pipeline import StageContext, StageFailed, read_stage_jsonl
from eft.stages.mining import mine
from eft.textutil import content_id, passage_text
from eft.workspace import StageResult, write_json_atomic

SPLITS = ("train", "dev", "test")


def split_questions(qids: list[str], validation: float, test: float, seed: int) -> dict[str, list[str]]:
    """Split by question id (never by row), deterministically for a seed.

    At least one test question whenever there are 3 or more questions, so evaluation always has data.
    """
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_test = max(1, round(n * test)) if n >= 3 else 0
    n_dev = round(n * validation) if n >= 3 else 0
    if validation > 0 and n >= 20:
        n_dev = max(1, n_dev)
    return {"test": order[:n_test], "dev": order[n_test : n_test + n_dev], "train": order[n_test + n_dev :]}


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


def build_index(emb: np.ndarray):
    """Exact inner-product index; on the GPU when faiss has GPU support and a GPU is present."""
    from eft.vector_index import flat_ip_index

    index = flat_ip_index(emb.shape[1], gpu=pick_device() == "cuda")
    index.add(emb)
    return index


def run(ctx: StageContext) -> StageResult:
    spec = ctx.spec
    corpus = read_stage_jsonl(ctx.input("ingest") / "corpus.jsonl", "prepare")
    questions = read_stage_jsonl(ctx.input("sdg") / "questions.jsonl", "prepare")
    row_of = {c["_id"]: i for i, c in enumerate(corpus)}

    # Questions whose positives are not in the corpus cannot be trained or scored: drop and count them.
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
    by_id = {}
    for q in usable:
        by_id.setdefault(q["_id"], q)  # duplicated ids: keep the first
    splits = split_questions(list(by_id), spec.split.validation, spec.split.test, spec.split.seed)
    ctx.progress(", ".join(f"{s} {len(splits[s])}" for s in SPLITS) + " questions")

    model = load_sentence_model(spec.base_model)
    passages = [spec.base_model.passage_prefix + passage_text(c) for c in corpus]
    p_emb = encode(model, passages, ctx.progress, "passages")
    train_qs = [by_id[q] for q in splits["train"]]
    q_emb = encode(model, [spec.base_model.query_prefix + q["text"] for q in train_qs], ctx.progress, "train questions")

    # Exact-text duplicates of a positive under another id are positives too, never negatives.
    by_text: dict[str, list[int]] = {}
    for i, c in enumerate(corpus):
        by_text.setdefault(content_id(passage_text(c)), []).append(i)
    dup_rows = [sorted({j for p in q["positives"] for j in by_text[content_id(passage_text(corpus[row_of[p]]))]})
                for q in train_qs]
    positives_rows = [[row_of[p] for p in q["positives"]] for q in train_qs]
    ctx.progress(f"mining {spec.mining.negatives} negatives from {spec.mining.candidates} candidates, "
                 f"margin {spec.mining.margin}")
    mined = mine(q_emb, p_emb, positives_rows, spec.mining.negatives, spec.mining.candidates, spec.mining.margin,
                 excluded=[set(d) for d in dup_rows], index=build_index(p_emb))

    rng = random.Random(spec.split.seed)
    policy = spec.mining.fewer_than_negatives
    hist: Counter[int] = Counter()
    short = padded = dropped = widened = filtered = 0
    rows = []
    for qi, (q, qpos, m) in enumerate(zip(train_qs, positives_rows, mined)):
        negs = list(m.negatives)
        hist[len(negs)] += 1
        widened += m.widened
        filtered += m.filtered
        if len(negs) < spec.mining.negatives:
            short += 1
            if policy == "drop":
                dropped += 1
                continue
            if policy == "pad-random":
                # Random passages, still under the margin bound, so padding never adds a likely positive.
                banned = set(qpos) | set(negs) | set(dup_rows[qi])
                tries = 0
                while len(negs) < spec.mining.negatives and tries < 50 * spec.mining.negatives:
                    tries += 1
                    cand = rng.randrange(len(corpus))
                    if cand not in banned and float(p_emb[cand] @ q_emb[qi]) <= m.threshold:
                        negs.append(cand)
                        banned.add(cand)
                padded += 1
        neg_rows = [{"_id": corpus[i]["_id"], "text": passage_text(corpus[i])} for i in negs]
        for p in qpos:
            rows.append({"qid": q["_id"], "query": q["text"], "hops": q.get("hops", len(qpos)),
                         "positive": {"_id": corpus[p]["_id"], "text": passage_text(corpus[p])},
                         "negatives": neg_rows})
    if not rows:
        raise StageFailed("prepare", "no training rows left after mining (mining.fewerThanNegatives: drop removed "
                          "every question); lower mining.negatives or use pad-random")

    n_rows = _write_jsonl(ctx.out / "train.jsonl", rows)
    beir = ctx.out / "beir"
    beir.mkdir()
    _write_jsonl(beir / "corpus.jsonl", ({"_id": c["_id"], "title": c.get("title", ""), "text": c["text"]}
                                         for c in corpus))
    _write_jsonl(beir / "queries.jsonl", ({"_id": q["_id"], "text": q["text"],
                                           "metadata": {"split": s, "hops": q.get("hops", 1)}}
                                          for s in SPLITS for q in (by_id[x] for x in splits[s])))
    for s in SPLITS:
        _write_qrels(beir / "qrels" / f"{s}.tsv", [by_id[x] for x in splits[s]])

    stats = {
        "questions": {s: len(splits[s]) for s in SPLITS},
        "questionsWithoutPositiveInCorpus": unknown_positive,
        "trainRows": n_rows,
        "multiHopTrainQuestions": sum(1 for q in train_qs if len(q["positives"]) > 1),
        "negativesPerQuestion": {str(k): v for k, v in sorted(hist.items())},
        "questionsWithFewerNegatives": short,
        "fewerThanNegativesPolicy": policy,
        "questionsPadded": padded,
        "questionsDropped": dropped,
        "questionsSearchWidened": widened,
        "candidatesFilteredByMargin": filtered,
        "margin": spec.mining.margin,
    }
    write_json_atomic(ctx.out / "stats.json", stats)
    return StageResult(
        counts={"train": len(splits["train"]), "dev": len(splits["dev"]), "test": len(splits["test"]),
                "rows": n_rows, "short": short, "dropped": dropped},
        details=stats,
        summary=f"{n_rows} training rows, {len(splits['test'])} test questions",
    )
