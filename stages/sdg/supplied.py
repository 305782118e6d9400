"""Supplied queries (spec.queries): real queries with their relevant passages, matched to the corpus's chunks and
written as questions in the same shape as generated ones.

Sources: a BEIR folder (queries.jsonl + qrels/<split>.tsv, graded above 0 = relevant) or a .jsonl file of
``{"query": text, "ids": [...], "passages": [text, ...]}`` rows (ids, passages or both; ``_id`` optional).
Read through fsspec like the corpus, so local paths, s3://, gs:// and https:// all work.

What a relevant id or passage becomes (the chunks of ingest/corpus.jsonl are the unit of retrieval):
- a chunk id → that chunk;
- a document: a corpus file's path relative to corpus.path, a .jsonl corpus row as ``file#_id``, or that row's
  bare ``_id`` → every chunk cut from it;
- a passage text → the chunk with that text (whitespace and case aside), else every chunk containing it.
A label that names several chunks is kept as a group (the row's ``positiveGroups``): every chunk of it is relevant
for scoring, and prepare trains on all of them or on the one the base model finds closest
(queries.documentPositives).
What matches nothing is counted in sdg/stats.json; a query left without a positive is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from eft.spec import QueriesSpec
from eft.textutil import content_id, normalize_ws, passage_text

QUESTION_PREFIX = "supplied:"  # question ids: never collide with generated ones


class SuppliedQueriesError(ValueError):
    """The source is missing, malformed or matches nothing; the message says which and where."""


@dataclass
class RawQuery:
    qid: str
    text: str
    ids: list[str] = field(default_factory=list)
    passages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _open(path: str):
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    if not fs.exists(root):
        raise SuppliedQueriesError(f"queries.path {path} does not exist")
    return fs, root.rstrip("/")


def _read_text(fs, full: str, shown: str) -> str:
    try:
        with fs.open(full, "rb") as f:
            return f.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SuppliedQueriesError(f"{shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise SuppliedQueriesError(f"cannot read {shown}: {exc.strerror or exc}") from None


def _jsonl_rows(text: str, shown: str) -> list[tuple[int, Any]]:
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise SuppliedQueriesError(f"{shown} line {i} is not JSON: {exc.msg}") from None
    return rows


def _string_list(row: dict, key: str, where: str) -> list[str]:
    v = row.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) for x in v):
        raise SuppliedQueriesError(f"{where}: '{key}' must be a list of strings")
    return [str(x) for x in v]


def read_jsonl_queries(text: str, shown: str) -> list[RawQuery]:
    out = []
    for i, row in _jsonl_rows(text, shown):
        where = f"{shown} line {i}"
        if not isinstance(row, dict) or not isinstance(row.get("query"), str):
            raise SuppliedQueriesError(f"{where}: expected an object with a 'query' string, "
                                       "and 'ids' and/or 'passages'")
        ids, passages = _string_list(row, "ids", where), _string_list(row, "passages", where)
        if not ids and not passages:
            raise SuppliedQueriesError(f"{where}: the query has neither 'ids' nor 'passages'")
        out.append(RawQuery(str(row.get("_id", i)), row["query"], ids, passages))
    return out


def read_beir_queries(fs, root: str, split: str, shown: str) -> list[RawQuery]:
    queries_file, qrels_file = f"{root}/queries.jsonl", f"{root}/qrels/{split}.tsv"
    for f, rel in ((queries_file, "queries.jsonl"), (qrels_file, f"qrels/{split}.tsv")):
        if not fs.exists(f):
            raise SuppliedQueriesError(f"{shown}: missing {rel} (a BEIR folder needs queries.jsonl and "
                                       f"qrels/<split>.tsv; queries.split is '{split}')")
    texts = {}
    for i, row in _jsonl_rows(_read_text(fs, queries_file, f"{shown}/queries.jsonl"), f"{shown}/queries.jsonl"):
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            raise SuppliedQueriesError(f"{shown}/queries.jsonl line {i}: expected {{\"_id\", \"text\"}}")
        texts[str(row["_id"])] = row["text"]
    relevant: dict[str, list[str]] = {}
    lines = _read_text(fs, qrels_file, f"{shown}/qrels/{split}.tsv").splitlines()
    for i, line in enumerate(lines, 1):
        parts = line.split("\t")
        if i == 1 and parts[0] == "query-id" or not line.strip():
            continue
        try:
            qid, doc, grade = parts[0], parts[1], float(parts[2])
        except (IndexError, ValueError):
            raise SuppliedQueriesError(f"{shown}/qrels/{split}.tsv line {i}: expected query-id<TAB>corpus-id<TAB>"
                                       "score") from None
        if grade > 0:
            relevant.setdefault(qid, []).append(doc)
    missing = sorted(set(relevant) - set(texts))
    if missing:
        raise SuppliedQueriesError(f"{shown}/qrels/{split}.tsv names {len(missing)} queries missing from "
                                   f"queries.jsonl (first: {missing[:3]})")
    return [RawQuery(q, texts[q], docs) for q, docs in relevant.items()]


def read_queries(spec: QueriesSpec) -> list[RawQuery]:
    fs, root = _open(spec.path)
    if fs.isdir(root):
        return read_beir_queries(fs, root, spec.split, spec.path)
    if not root.endswith(".jsonl"):
        raise SuppliedQueriesError(f"queries.path {spec.path}: expected a BEIR folder or a .jsonl file")
    return read_jsonl_queries(_read_text(fs, root, spec.path), spec.path)


def source_fingerprint(spec: QueriesSpec) -> str:
    """Names, sizes and modification times of the files read (a re-run notices an edited file)."""
    from eft.stages.ingest_readers import files_fingerprint

    if not spec.path:
        return "none"
    try:
        fs, root = _open(spec.path)
    except SuppliedQueriesError:
        return "missing"
    return files_fingerprint(fs, [(f, f) for f in (sorted(fs.find(root)) if fs.isdir(root) else [root])])


# --------------------------------------------------------------------------- matching


class ChunkIndex:
    """Lookups from what a user may call a passage to the chunks of ingest/corpus.jsonl."""

    def __init__(self, chunks: list[dict]):
        self.chunks = chunks
        self.by_name: dict[str, list[str]] = {}
        self.by_text: dict[str, list[str]] = {}
        for c in chunks:
            cid = c["_id"]
            self._add(self.by_name, cid, cid)
            source = (c.get("metadata") or {}).get("source")
            if source:
                self._add(self.by_name, source, cid)
                if "#" in source:  # a row of a .jsonl corpus: also its bare _id
                    self._add(self.by_name, source.rsplit("#", 1)[1], cid)
            self._add(self.by_text, content_id(c.get("text") or ""), cid)
            self._add(self.by_text, content_id(passage_text(c)), cid)
        self._normalized: list[tuple[str, str]] | None = None

    @staticmethod
    def _add(table: dict[str, list[str]], key: str, cid: str) -> None:
        ids = table.setdefault(key, [])
        if cid not in ids:
            ids.append(cid)

    def by_id(self, name: str) -> list[str]:
        return self.by_name.get(name, [])

    def by_passage(self, text: str) -> list[str]:
        exact = self.by_text.get(content_id(text))
        if exact:
            return exact
        needle = normalize_ws(text).lower()
        if not needle:
            return []
        if self._normalized is None:  # built on the first inexact passage only
            self._normalized = [(c["_id"], normalize_ws(passage_text(c)).lower()) for c in self.chunks]
        return [cid for cid, hay in self._normalized if needle in hay]


@dataclass
class MatchReport:
    read: int = 0
    kept: int = 0
    without_text: int = 0
    without_positive: int = 0
    duplicate_ids: int = 0
    positives: int = 0
    unmatched_ids: list[str] = field(default_factory=list)
    unmatched_passages: int = 0

    def stats(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "withoutText": self.without_text,
                "withoutPositive": self.without_positive, "duplicateIds": self.duplicate_ids,
                "positives": self.positives, "unmatchedIds": len(self.unmatched_ids),
                "unmatchedIdExamples": self.unmatched_ids[:5], "unmatchedPassages": self.unmatched_passages}


def match_queries(raw: list[RawQuery], index: ChunkIndex) -> tuple[list[dict], MatchReport]:
    """Questions (sdg/questions.jsonl rows) for the queries with at least one positive chunk."""
    rep = MatchReport(read=len(raw))
    seen: set[str] = set()
    out = []
    for q in raw:
        if q.qid in seen:
            rep.duplicate_ids += 1
            continue
        seen.add(q.qid)
        if not q.text.strip():
            rep.without_text += 1
            continue
        groups: list[list[str]] = []  # one per label that matched: the chunks it names
        for name in q.ids:
            found = index.by_id(name)
            if not found:
                rep.unmatched_ids.append(name)
            groups.append(found)
        for text in q.passages:
            found = index.by_passage(text)
            rep.unmatched_passages += not found
            groups.append(found)
        groups = [g for g in groups if g]
        positives = list(dict.fromkeys(c for g in groups for c in g))
        if not positives:
            rep.without_positive += 1
            continue
        rep.positives += len(positives)
        row = {"_id": QUESTION_PREFIX + q.qid, "text": q.text.strip(), "hops": 1, "positives": positives,
               "score": None, "backend": "supplied"}
        if any(len(g) > 1 for g in groups):
            # with queries.documentPositives: bestChunk prepare trains on one chunk of each such label
            row["positiveGroups"] = groups
        out.append(row)
    rep.kept = len(out)
    return out, rep


def supplied_questions(spec: QueriesSpec, chunks: list[dict]) -> tuple[list[dict], dict[str, Any]]:
    """Read and match; raises SuppliedQueriesError when nothing usable comes out."""
    raw = read_queries(spec)
    questions, rep = match_queries(raw, ChunkIndex(chunks))
    if not questions:
        hint = (f" (ids not found, first: {rep.unmatched_ids[:3]}; an id must name a chunk, a corpus file or a "
                ".jsonl corpus row's _id)" if rep.unmatched_ids else "")
        raise SuppliedQueriesError(f"none of the {rep.read} queries in {spec.path} has a relevant passage in the "
                                   f"corpus{hint}")
    return questions, rep.stats()
