"""Assigning questions to the train, dev (validation) and test splits, and measuring what leaks across them.

Two ways (``split.by``):

- ``question``: each question on its own. Sibling questions written about one chunk then land on both
  sides, so a test question's passage is usually a training positive too and the test split partly
  measures memorisation.
- ``chunk``: questions are grouped by the passages they are answered by. Two questions share a group when
  they share a positive passage, or positives with the same text under different ids; a multi-hop question
  joins the groups of all its chunks. Whole groups go to one split, so no dev or test positive is ever a
  training positive.
- ``document`` (the default): as ``chunk``, and chunks cut from one source document join one group too. Every
  chunk carries its document's title and vocabulary, so a test chunk whose sibling chunk was a training
  positive is half seen: on an NFCorpus subset, every test question of the chunk split had such a sibling.
  When documents are too few or too large to fill the held-out splits, it falls back to ``chunk``.

The group assignment is a small greedy fill written here (no library splits by connected components of a
question-passage graph with target fractions): groups in a seeded shuffle, each into test while it fits the
test target, then into dev while it fits that one, else into train.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

SPLITS = ("train", "dev", "test")


def target_sizes(n: int, validation: float, test: float) -> tuple[int, int]:
    """(test, dev) question counts for ``n`` questions: at least one test question from 3 questions on when a
    test split is asked for, at least one dev question from 20 on when validation is."""
    n_test = max(1, round(n * test)) if n >= 3 and test > 0 else 0
    n_dev = round(n * validation) if n >= 3 else 0
    if validation > 0 and n >= 20:
        n_dev = max(1, n_dev)
    return n_test, n_dev


def split_questions(qids: list[str], validation: float, test: float, seed: int) -> dict[str, list[str]]:
    """Split by question id (never by row), deterministically for a seed."""
    order = sorted(qids)
    random.Random(seed).shuffle(order)
    n_test, n_dev = target_sizes(len(order), validation, test)
    return {"test": order[:n_test], "dev": order[n_test: n_test + n_dev], "train": order[n_test + n_dev:]}


class _Groups:
    """Union-find over passage keys (path halving)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        root = self.find(keys[0])
        for k in keys[1:]:
            other = self.find(k)
            if other != root:
                self.parent[other] = root


def question_groups(positives: dict[str, list[str]], key: Callable[[str], str],
                    also: Callable[[str], str] | None = None) -> list[list[str]]:
    """The questions (by id) grouped by shared positive passages; ``key`` maps a passage id to what makes two
    passages the same (its text), so copies under other ids join too; ``also`` (optional) maps it to a second
    thing whose sharers join (its source document). Each group sorted, groups in order of their first id."""
    uf = _Groups()
    for pids in positives.values():
        uf.join(key(p) for p in pids)
        if also is not None:
            for p in pids:
                uf.join([key(p), "\0" + also(p)])  # prefixed: a document name never meets a text key
    members: dict[str, list[str]] = {}
    for qid, pids in positives.items():
        members.setdefault(uf.find(key(pids[0])), []).append(qid)
    return sorted((sorted(m) for m in members.values()), key=lambda m: m[0])


@dataclass
class SplitPlan:
    """Question ids per split and how they were placed."""

    splits: dict[str, list[str]]
    by: str
    groups: int | None = None  # with by 'document' or 'chunk': groups of questions that share passages (documents)
    largest_group: int | None = None
    fallback: str | None = None  # why a 'document' or 'chunk' split fell back to a finer one

    def describe(self) -> dict:
        out = {"by": self.by, "groups": self.groups, "largestGroup": self.largest_group, "fallback": self.fallback}
        return {k: v for k, v in out.items() if v is not None}


def split_by_document(positives: dict[str, list[str]], key: Callable[[str], str], document: Callable[[str], str],
                      validation: float, test: float, seed: int) -> SplitPlan:
    """Whole groups of questions sharing passages or source documents per split; falls back to
    ``split_by_chunk`` (and from there, maybe, to the question split), saying why, when the groups cannot fill
    the held-out splits."""
    groups = question_groups(positives, key, document)
    largest = max((len(g) for g in groups), default=0)
    splits, why = _fill(groups, largest, len(positives), validation, test, seed, "documents")
    if why is None:
        return SplitPlan(splits, by="document", groups=len(groups), largest_group=largest)
    finer = split_by_chunk(positives, key, validation, test, seed)
    why += ": split by chunk instead"
    return SplitPlan(finer.splits, by=finer.by, groups=finer.groups, largest_group=finer.largest_group,
                     fallback=why if finer.fallback is None else f"{why}; then {finer.fallback}")


def split_by_chunk(positives: dict[str, list[str]], key: Callable[[str], str], validation: float, test: float,
                   seed: int) -> SplitPlan:
    """Whole groups of questions per split (see the module doc). Falls back to the question split, saying why,
    when the groups cannot fill the held-out splits (see ``_fill``)."""
    groups = question_groups(positives, key)
    largest = max((len(g) for g in groups), default=0)
    splits, why = _fill(groups, largest, len(positives), validation, test, seed, "passages")
    if why is None:
        return SplitPlan(splits, by="chunk", groups=len(groups), largest_group=largest)
    return SplitPlan(split_questions(list(positives), validation, test, seed), by="question", groups=len(groups),
                     largest_group=largest, fallback=f"{why}: split by question instead")


def _fill(groups: list[list[str]], largest: int, n: int, validation: float, test: float, seed: int,
          shared: str) -> tuple[dict[str, list[str]] | None, str | None]:
    """(question ids per split, None), whole groups in a seeded shuffle; or (None, why not) when the groups
    cannot fill the held-out splits: a single group (any split then puts a positive on both sides), or one group
    so large that the test or validation split would get under half its target. ``shared``: what the groups'
    questions share, and ``largest``, the size of the largest group, are for the message."""
    n_test, n_dev = target_sizes(n, validation, test)
    if len(groups) < 2 and n_test:
        return None, (f"all {n} questions share {shared} (one group), so no split keeps test positives out of "
                      "training")
    order = list(groups)
    random.Random(seed).shuffle(order)
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for g in order:
        if len(out["test"]) + len(g) <= n_test:
            out["test"] += g
        elif len(out["dev"]) + len(g) <= n_dev:
            out["dev"] += g
        else:
            out["train"] += g
    if n_test and not out["test"]:
        _smallest_group_to_test(order, out)
    short = [f"{s} {len(out[s])} of {want}" for s, want in (("test", n_test), ("dev", n_dev))
             if len(out[s]) * 2 < want]
    if short:  # one group holds most questions (real queries often share many relevant passages)
        return None, (f"the largest group of questions sharing {shared} holds {largest} of {n} questions, so whole "
                      f"groups fill only {' and '.join(short)} wanted")
    return {s: sorted(v) for s, v in out.items()}, None


def _smallest_group_to_test(order: list[list[str]], out: dict[str, list[str]]) -> None:
    """Every group is larger than the test target: the smallest group that leaves training questions moves to
    test (a test split larger than asked beats none)."""
    for g in sorted(order, key=len):
        members = set(g)
        train = [q for q in out["train"] if q not in members]
        if train:
            out["test"] = list(g)
            out["train"] = train
            out["dev"] = [q for q in out["dev"] if q not in members]
            return


def seen_in_training(splits: dict[str, list[str]], positives: dict[str, list[str]],
                     key: Callable[[str], str]) -> dict[str, dict[str, int]]:
    """Per held-out split: its questions with a positive that is also a training positive, and its distinct
    positive passages that are training positives (both 0 under a chunk split)."""
    trained = {key(p) for q in splits["train"] for p in positives[q]}
    out = {}
    for s in ("dev", "test"):
        qs = splits.get(s, [])
        passages = {key(p) for q in qs for p in positives[q]}
        out[s] = {"questions": len(qs),
                  "questionsWithSeenPositive": sum(1 for q in qs if any(key(p) in trained for p in positives[q])),
                  "positives": len(passages),
                  "positivesSeenInTraining": len(passages & trained)}
    return out


def documents_seen_in_training(splits: dict[str, list[str]], positives: dict[str, list[str]],
                               document: Callable[[str], str]) -> dict[str, dict[str, int]]:
    """Per held-out split: its questions about a source document that training also had a positive from, and
    its distinct documents that are (0 under a document split; the chunk split leaves them)."""
    seen = seen_in_training(splits, positives, document)
    return {s: {"questions": v["questions"], "questionsWithSeenDocument": v["questionsWithSeenPositive"],
                "documents": v["positives"], "documentsSeenInTraining": v["positivesSeenInTraining"]}
            for s, v in seen.items()}
