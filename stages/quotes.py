"""Remove from validation and test passages the sentences their questions quote verbatim.

Why: a question that copies a sentence of its passage (the offline generator's sentence and bridge questions
do; human queries and good LLM questions do not) is found by matching the copy, so a split made of such
questions rewards a model for lexical copying and cannot see one that got worse at meaning. With the quoted
sentences gone, the question must be matched to the rest of its passage, as in the inverse cloze task
(Lee et al., 2019). Hand-written here: no library ships this for BEIR folders. Sentences are split as ingest
splits them (eft.stages.chunking), so the sentence a generator cut from a chunk is found again whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from eft.stages.chunking import split_sentences

# Shorter sentences are phrases a question may share by chance ("in this study"), not a copy.
MIN_QUOTE_WORDS = 5
# A passage left with fewer words than this is kept whole: nothing would be left to match by meaning.
MIN_REST_WORDS = 8


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def remove_quoted(text: str, questions: list[str]) -> tuple[str, int]:
    """(text without the sentences any of `questions` quotes, how many were removed); paragraphs kept."""
    quoted_in = [_norm(q) for q in questions]
    paragraphs, removed = [], 0
    for para in text.split("\n\n"):
        kept = []
        for sentence in split_sentences(" ".join(para.split())):
            s = _norm(sentence)
            if len(s.split()) >= MIN_QUOTE_WORDS and any(s in q for q in quoted_in):
                removed += 1
            else:
                kept.append(sentence)
        if kept:
            paragraphs.append(" ".join(kept))
    return "\n\n".join(paragraphs), removed


@dataclass
class QuoteStats:
    sentences: int = 0  # quoted sentences removed
    passages: int = 0  # passages that lost at least one
    kept_whole: int = 0  # passages left whole because removing their quotes would leave almost nothing

    def describe(self) -> dict[str, int]:
        return {"sentences": self.sentences, "passages": self.passages, "keptWhole": self.kept_whole}


def unquote_passages(corpus: list[dict], questions: list[dict]) -> tuple[list[dict], QuoteStats]:
    """A copy of `corpus` whose rows that are positives of `questions` lose the sentences those questions quote.

    `questions`: the validation and test questions ({"text", "positives"}); rows nobody quotes are returned as
    they are (the same objects). The title is never touched: it is the document's, not the passage's.
    """
    quoting: dict[str, list[str]] = {}
    for q in questions:
        for pid in q["positives"]:
            quoting.setdefault(pid, []).append(q["text"])
    stats = QuoteStats()
    out = []
    for row in corpus:
        texts = quoting.get(row["_id"])
        if not texts:
            out.append(row)
            continue
        rest, removed = remove_quoted(row.get("text") or "", texts)
        if removed and len(rest.split()) < MIN_REST_WORDS:
            stats.kept_whole += 1
            out.append(row)
        elif removed:
            stats.sentences += removed
            stats.passages += 1
            out.append({**row, "text": rest})
        else:
            out.append(row)
    return out, stats
