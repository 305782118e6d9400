"""Assigning questions to the train, dev (validation) and test splits, and measuring what leaks across them.

Two ways (``split.by``):

- ``question``: each question on its own. Sibling questions written about one chunk then land on both
  sides, so a test question's passage is usually a training positive too and the test split partly
  measures memorisation.
- ``chunk`` (the default): questions are grouped by the passages they are answered by. Two questions share a
  group when they share a positive passage, or positives with the same text under different ids; a
  multi-hop question joins the groups of all its chunks. Whole groups go to one split, so no dev or test
  positive is ever a training positive.

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
    """(test, dev) question counts for ``n`` questions: at least one test question from 3 questions on, at
    least one dev question from 20 on when validation is asked for."""
    n_test = max(1, round(n * test)) if n >= 3 else 0
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


def question_groups(positives: dict[str, list[str]], key: Callable[[str], str]) -> list[list[str]]:
    """The questions (by id) grouped by shared positive passages; ``key`` maps a passage id to what makes two
    passages the same (its text), so copies under other ids join too. Each group sorted, groups in order of
    their first id."""
    uf = _Groups()
    for pids in positives.values():
        uf.join(key(p) for p in pids)
    members: dict[str, list[str]] = {}
    for qid, pids in positives.items():
        members.setdefault(uf.find(key(pids[0])), []).append(qid)
    return sorted((sorted(m) for m in members.values()), key=lambda m: m[0])


@dataclass
class SplitPlan:
    """Question ids per split and how they were placed."""

    splits: dict[str, list[str]]
    by: str
    groups: int | None = None  # with by 'chunk': groups of questions that share passages
    largest_group: int | None = None
    fallback: str | None = None  # why a 'chunk' split fell back to 'question'

    def describe(self) -> dict:
        out = {"by": self.by, "groups": self.groups, "largestGroup": self.largest_group, "fallback": self.fallback}
        return {k: v for k, v in out.items() if v is not None}


def split_by_chunk(positives: dict[str, list[str]], key: Callable[[str], str], validation: float, test: float,
                   seed: int) -> SplitPlan:
    """Whole groups of questions per split (see the module doc). Falls back to the question split, saying why,
    when the groups cannot fill the held-out splits: a single group (any split then puts a positive on both
    sides), or one group so large that the test or validation split would get under half its target."""
    groups = question_groups(positives, key)
    n = len(positives)
    largest = max((len(g) for g in groups), default=0)
    n_test, n_dev = target_sizes(n, validation, test)
    if len(groups) < 2 and n_test:
        why = (f"all {n} questions share passages (one group), so no split keeps test positives out of training: "
               "split by question instead")
        return SplitPlan(split_questions(list(positives), validation, test, seed), by="question", groups=len(groups),
                         largest_group=largest, fallback=why)
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
        why = (f"the largest group of questions sharing passages holds {largest} of {n} questions, so whole groups "
               f"fill only {' and '.join(short)} wanted: split by question instead")
        return SplitPlan(split_questions(list(positives), validation, test, seed), by="question", groups=len(groups),
                         largest_group=largest, fallback=why)
    return SplitPlan({s: sorted(v) for s, v in out.items()}, by="chunk", groups=len(groups), largest_group=largest)


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
