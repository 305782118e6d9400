"""The fp32 ONNX graph against PyTorch: held-out test texts of every length, embedded both ways and compared
by cosine, batched together and one at a time (padding must not change an embedding)."""

from __future__ import annotations

from typing import Any

import numpy as np

from eft.textutil import passage_text


def validation_texts(st: Any, corpus: dict, queries: dict, max_len: int) -> dict[str, list[str]]:
    """Held-out test texts: short (queries), medium (passages), and one that reaches max_seq_length."""
    qids = sorted(queries)[:8]
    short = [queries[q] for q in qids if queries[q].strip()]
    docs = [passage_text(corpus[d]) for d in sorted(corpus)[:200]]
    docs = [d for d in docs if d]
    medium = docs[:8]
    long_ = ""
    pool = docs or short or ["kubernetes pod container"]
    i = 0
    tok = st.tokenizer
    while len(tok(long_, truncation=False, verbose=False)["input_ids"]) <= max_len + 8:
        long_ = (long_ + " " + pool[i % len(pool)]).strip()
        i += 1
        if i > 10_000:  # pragma: no cover - pathological tokenizer
            break
    return {"short": short or ["what is a pod?"], "medium": medium or pool[:1], "max": [long_]}


def flat_texts(texts: dict[str, list[str]]) -> list[str]:
    """The validation texts in one list, group after group."""
    return [t for group in texts.values() for t in group]


def compare_with_pytorch(st: Any, backend: Any, texts: dict[str, list[str]], threshold: float) -> dict[str, Any]:
    """Cosine of ONNX vs PyTorch per text, batched together and one at a time (the worse of the two counts)."""
    from eft.onnx_export import cosine_rows

    all_texts = flat_texts(texts)
    ref = st.encode(all_texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False)
    ids = backend.tokenizer.encode(all_texts, truncate=True)
    batched = backend.embed(ids)
    single = np.concatenate([backend.embed([x]) for x in ids])
    cos = np.minimum(cosine_rows(ref, batched), cosine_rows(ref, single))
    per_group: dict[str, float] = {}
    i = 0
    for name, group in texts.items():
        per_group[name] = round(float(cos[i : i + len(group)].min()), 7)
        i += len(group)
    lengths = [len(x) for x in ids]
    return {"min_cosine": round(float(cos.min()), 7), "by_length": per_group, "texts": len(all_texts),
            "token_lengths": {"min": min(lengths), "max": max(lengths)}, "threshold": threshold}
