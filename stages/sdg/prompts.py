"""Prompts for the LLM question writer and judge, and tolerant parsing of their answers.

The model sees chunks under short aliases (C1, C2, ...) rather than their corpus ids: aliases are
cheap in tokens and easy to copy exactly; `Alias` maps them back and rejects anything else.

Wire format (tests/support/fake_llm.py mirrors it; change both together):

* generation: every chunk is ``<chunk id="C1" title="...">\\ntext\\n</chunk>``; the answer is
  ``{"questions": [{"question": "...", "hops": [["C1"], ["C2"]]}, ...]}``.
* judge: every pair is ``<pair n="1">\\nQuestion: ...\\nAnswered by: C1, C2\\n</pair>``; the answer is
  ``{"scores": [{"n": 1, "relevance": 9, "accuracy": 8, "context_support": 9, "clarity": 9,
  "overall": 9, "reason": "..."}]}``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Bump when a prompt or answer format changes: journaled answers of an older version are not reused.
PROMPT_VERSION = "1"

CRITERIA = ("relevance", "accuracy", "context_support", "clarity")


class MalformedOutput(ValueError):
    """The model's answer could not be used (not JSON, wrong shape, nothing valid in it)."""


# --------------------------------------------------------------------------------------- prompts

GENERATE_SYSTEM = (
    "You write search questions for training a retrieval (text embedding) model. You are given numbered "
    "document chunks. Write questions a real user of this documentation would type, each answerable ONLY "
    "from the chunks you cite. Do not mention 'the chunk', 'the passage', 'the text' or 'the document' in a "
    "question; do not copy long phrases verbatim; vary the wording and the question types (what, how, why, "
    "which, when, troubleshooting). Answer with a single JSON object and nothing else."
)

JUDGE_SYSTEM = (
    "You are a strict judge of question/context pairs used to train a retrieval model. For each pair you "
    "score, from 1 (worst) to 10 (best): relevance (a real user would plausibly ask it about this "
    "material), accuracy (the cited chunks really contain the answer; the question presumes nothing false), "
    "context_support (every cited chunk is needed and together they suffice, no outside knowledge needed), "
    "clarity (self-contained, unambiguous, grammatical, no references to 'the passage'), and overall. "
    "Answer with a single JSON object and nothing else."
)


def _attr(s: str) -> str:
    return re.sub(r"\s+", " ", s).replace('"', "'").strip()


def render_chunks(chunks: list[dict[str, Any]]) -> str:
    parts = []
    for i, c in enumerate(chunks, 1):
        title = _attr(str(c.get("title") or ""))[:200]
        text = str(c.get("text") or "").strip()
        parts.append(f'<chunk id="C{i}" title="{title}">\n{text}\n</chunk>')
    return "\n\n".join(parts)


def generation_messages(chunks: list[dict[str, Any]], n_questions: int, max_hops: int) -> list[dict[str, str]]:
    k = len(chunks)
    hops = min(max_hops, k)
    aliases = ", ".join(f"C{i}" for i in range(1, k + 1))
    if hops >= 2:
        mix = (
            f"Mix single-hop questions (answered by one chunk) with multi-hop questions that need facts from "
            f"2 to {hops} different chunks combined (about half of them multi-hop when the chunks are related; "
            f"write a multi-hop question only when the chunks genuinely connect). Every chunk should be needed "
            f"by at least one question."
        )
    else:
        mix = "Every question is single-hop: answered by one chunk."
    user = (
        f"Chunks:\n\n{render_chunks(chunks)}\n\n"
        f"Write exactly {n_questions} questions. {mix}\n"
        f"For each question list its hops in order: one list per hop, naming the chunk(s) that answer that "
        f"step, using only the ids {aliases}.\n"
        'Answer format: {"questions": [{"question": "...", "hops": [["C1"]]}, '
        '{"question": "...", "hops": [["C1"], ["C2"]]}]}'
    )
    return [{"role": "system", "content": GENERATE_SYSTEM}, {"role": "user", "content": user}]


def judge_messages(chunks: list[dict[str, Any]], questions: list[dict[str, Any]], alias: "Alias"
                   ) -> list[dict[str, str]]:
    pairs = []
    for n, q in enumerate(questions, 1):
        cited = ", ".join(alias.alias_of(cid) for cid in q["positives"])
        pairs.append(f'<pair n="{n}">\nQuestion: {_attr(q["text"])}\nAnswered by: {cited}\n</pair>')
    user = (
        f"Chunks:\n\n{render_chunks(chunks)}\n\nPairs to judge:\n\n" + "\n\n".join(pairs) + "\n\n"
        f"Score all {len(questions)} pairs. Answer format: "
        '{"scores": [{"n": 1, "relevance": 8, "accuracy": 9, "context_support": 7, "clarity": 9, '
        '"overall": 8, "reason": "one short sentence"}]}'
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------- aliases

class Alias:
    """C1..Ck <-> the bundle's chunk ids. Anything not naming a bundle chunk resolves to None."""

    def __init__(self, chunk_ids: list[str]):
        self.ids = list(chunk_ids)
        self._by_alias = {f"C{i}": cid for i, cid in enumerate(self.ids, 1)}
        self._by_id = {cid: a for a, cid in self._by_alias.items()}

    def alias_of(self, chunk_id: str) -> str:
        return self._by_id[chunk_id]

    def resolve(self, token: Any) -> str | None:
        if isinstance(token, bool):
            return None
        if isinstance(token, int):
            return self._by_alias.get(f"C{token}")
        if not isinstance(token, str):
            return None
        raw = token.strip()
        if raw in self._by_id:  # the model echoed a real chunk id
            return raw
        t = raw.strip("[]()<>{}\"'`*. ").upper()
        t = re.sub(r"^(CHUNK|CONTEXT|PASSAGE|DOC)\s*#?\s*", "C", t)
        t = re.sub(r"\s+", "", t)
        if t.isdigit():
            t = "C" + t
        if re.fullmatch(r"C0*\d+", t):
            t = "C" + str(int(t[1:]))
        return self._by_alias.get(t)


# ------------------------------------------------------------------------------ tolerant JSON

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _strip_trailing_commas(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _TRAILING_COMMA.sub(r"\1", s)
    return s


def parse_json_loose(text: str | None) -> Any:
    """JSON out of an LLM answer: tolerates code fences, prose around it, trailing commas."""
    if text is None or not str(text).strip():
        raise MalformedOutput("empty answer")
    s = str(text).strip().lstrip("\ufeff")
    candidates = [s]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(s)]
    if s.startswith("```"):  # an unterminated fence (answer cut short)
        candidates.append(s.split("\n", 1)[-1])
    dec = json.JSONDecoder()
    for cand in candidates:
        for variant in (cand, _strip_trailing_commas(cand)):
            try:
                return json.loads(variant)
            except json.JSONDecodeError:
                pass
    # Prose around the JSON: the longest JSON object or array that decodes from some '{' or '['.
    best, best_len = None, 0
    for cand in candidates:
        variant = _strip_trailing_commas(cand)
        for m in re.finditer(r"[\[{]", variant):
            try:
                obj, end = dec.raw_decode(variant, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, (dict, list)) and obj and end - m.start() > best_len:
                best, best_len = obj, end - m.start()
    if best is not None:
        return best
    raise MalformedOutput(f"answer is not JSON: {s[:120]!r}")


def _items(obj: Any, keys: tuple[str, ...]) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), list):
                return obj[k]
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        if any(k in obj for k in ("question", "overall", "relevance")):
            return [obj]  # a single item not wrapped in a list
    raise MalformedOutput(f"expected a JSON list or an object with {keys[0]!r}, got {type(obj).__name__}")


# ------------------------------------------------------------------------------ generation answer

def _hop_tokens(hop: Any) -> list[Any]:
    if isinstance(hop, dict):
        for k in ("chunks", "chunk_ids", "ids", "chunk", "chunk_id", "id", "context", "source"):
            if k in hop:
                return _hop_tokens(hop[k])
        return []
    if isinstance(hop, list):
        out: list[Any] = []
        for x in hop:
            out += _hop_tokens(x)
        return out
    if isinstance(hop, str) and re.search(r"[,;]|\band\b", hop):
        return [t for t in re.split(r"[,;]|\band\b", hop) if t.strip()]
    return [hop]


def parse_questions(text: str | None, alias: Alias, max_hops: int) -> tuple[list[dict[str, Any]], int]:
    """Questions from a generation answer as {"text", "hops", "positives"}; also the number rejected.

    A question is rejected when it names a chunk outside the bundle, names none, or needs more than
    max_hops chunks. Raises MalformedOutput when nothing usable is in the answer (worth a retry).
    """
    items = _items(parse_json_loose(text), ("questions", "items", "data", "results"))
    out: list[dict[str, Any]] = []
    rejected = 0
    seen: set[str] = set()
    for it in items:
        if not isinstance(it, dict):
            rejected += 1
            continue
        q = next((it[k] for k in ("question", "text", "query", "q") if isinstance(it.get(k), str)), "")
        q = re.sub(r"\s+", " ", q).strip()
        hops_raw = next((it[k] for k in ("hops", "positives", "chunks", "chunk_ids", "sources", "context")
                         if k in it), None)
        if not q or hops_raw is None:
            rejected += 1
            continue
        hops = hops_raw if isinstance(hops_raw, list) else [hops_raw]
        positives: list[str] = []
        bad = False
        for hop in hops:
            for tok in _hop_tokens(hop):
                cid = alias.resolve(tok)
                if cid is None:
                    bad = True
                elif cid not in positives:
                    positives.append(cid)
        if bad or not positives or len(positives) > max_hops or q.lower() in seen:
            rejected += 1
            continue
        seen.add(q.lower())
        out.append({"text": q, "hops": len(positives), "positives": positives})
    if not out:
        raise MalformedOutput(f"no usable question in the answer ({len(items)} item(s), {rejected} rejected)")
    return out, rejected


# ------------------------------------------------------------------------------ judge answer

def _score(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        m = re.match(r"\s*(-?\d+(?:\.\d+)?)", v)
        if not m:
            return None
        x = float(m.group(1))
    elif isinstance(v, dict):
        return _score(v.get("score"))
    else:
        return None
    if not math.isfinite(x):
        return None
    return min(10.0, max(1.0, x))


_ALT = {
    "relevance": ("relevance", "relevant"),
    "accuracy": ("accuracy", "accurate", "correctness"),
    "context_support": ("context_support", "contextSupport", "context support", "support", "groundedness",
                        "context"),
    "clarity": ("clarity", "clear"),
    "overall": ("overall", "overall_score", "score", "total"),
}


def parse_judgments(text: str | None, n_pairs: int) -> dict[int, dict[str, Any]]:
    """Scores per pair number (1-based) from a judge answer. Raises MalformedOutput if none parse."""
    items = _items(parse_json_loose(text), ("scores", "judgments", "judgements", "results", "pairs",
                                            "evaluations", "ratings"))
    out: dict[int, dict[str, Any]] = {}
    positional = len(items) == n_pairs
    for pos, it in enumerate(items, 1):
        if not isinstance(it, dict):
            continue
        n = None
        for k in ("n", "id", "pair", "index", "number"):
            if k in it:
                try:
                    n = int(str(it[k]).strip().lstrip("#"))
                except ValueError:
                    n = None
                break
        if n is None and positional:
            n = pos
        if n is None or not 1 <= n <= n_pairs or n in out:
            continue
        scores: dict[str, Any] = {}
        for crit, names in _ALT.items():
            for name in names:
                if name in it and (s := _score(it[name])) is not None:
                    scores[crit] = s
                    break
        have = [scores[c] for c in CRITERIA if c in scores]
        if "overall" not in scores:
            if not have:
                continue
            scores["overall"] = round(sum(have) / len(have), 2)
        reason = it.get("reason") or it.get("explanation") or it.get("rationale")
        if isinstance(reason, str) and reason.strip():
            scores["reason"] = reason.strip()[:300]
        out[n] = scores
    if not out:
        raise MalformedOutput(f"no usable score in the judge answer ({len(items)} item(s))")
    return out
