"""splits: the question split, the chunk and document splits' groups, fill and fallbacks, and the leak counts."""

import pytest

from eft.stages.splits import (documents_seen_in_training, question_groups, seen_in_training, split_by_chunk,
                               split_by_document, split_questions, target_sizes)


def test_question_split_is_deterministic_and_disjoint():
    qids = [f"q{i}" for i in range(200)]
    a = split_questions(qids, 0.05, 0.1, 42)
    b = split_questions(list(reversed(qids)), 0.05, 0.1, 42)
    assert a == b
    assert (len(a["test"]), len(a["dev"]), len(a["train"])) == (20, 10, 170)
    assert not (set(a["test"]) & set(a["dev"])) and not (set(a["train"]) & set(a["test"]))
    assert split_questions(qids, 0.05, 0.1, 7) != a


def test_target_sizes_keep_a_test_question_and_a_dev_question_where_they_can():
    assert target_sizes(2, 0.05, 0.1) == (0, 0)
    assert target_sizes(3, 0.05, 0.1) == (1, 0)
    assert target_sizes(20, 0.01, 0.1) == (2, 1)
    assert target_sizes(20, 0.0, 0.1) == (2, 0)
    assert target_sizes(20, 0.05, 0.0) == (0, 1)  # split.test 0: no test split at all


@pytest.mark.parametrize("split", ["question", "chunk", "document"])
def test_a_test_fraction_of_zero_puts_every_held_out_question_in_validation(split):
    positives = {f"q{i}": [f"p{i}"] for i in range(40)}
    if split == "question":
        splits = split_questions(list(positives), 0.1, 0.0, 7)
    elif split == "chunk":
        splits = split_by_chunk(positives, lambda p: p, 0.1, 0.0, 7).splits
    else:
        splits = split_by_document(positives, lambda p: p, lambda p: p, 0.1, 0.0, 7).splits
    assert splits["test"] == [] and len(splits["dev"]) == 4 and len(splits["train"]) == 36


def siblings(n_chunks: int, per_chunk: int) -> dict[str, list[str]]:
    """``per_chunk`` questions about each chunk, as SDG writes them."""
    return {f"c{c}-q{k}": [f"c{c}"] for c in range(n_chunks) for k in range(per_chunk)}


def test_groups_join_siblings_multi_hop_questions_and_copies():
    pos = {"a1": ["A"], "a2": ["A"], "b": ["B"], "ab": ["A", "B"], "c": ["C"], "d": ["D"], "copy-of-d": ["D2"]}
    key = {"D2": "D"}.get
    assert question_groups(pos, lambda p: key(p, p)) == [["a1", "a2", "ab", "b"], ["c"], ["copy-of-d", "d"]]


@pytest.mark.parametrize("seed", range(5))
def test_no_held_out_positive_is_a_training_positive(seed):
    pos = siblings(100, 3)
    for c in range(0, 98, 7):  # bridges between neighbouring chunks, as the offline generator writes
        pos[f"bridge{c}"] = [f"c{c}", f"c{c + 1}"]
    plan = split_by_chunk(pos, str, 0.05, 0.1, seed)
    trained = {p for q in plan.splits["train"] for p in pos[q]}
    for s in ("dev", "test"):
        assert plan.splits[s] and not ({p for q in plan.splits[s] for p in pos[q]} & trained), s
    assert sorted(q for v in plan.splits.values() for q in v) == sorted(pos)
    assert abs(len(plan.splits["test"]) - round(len(pos) * 0.1)) <= 6  # whole groups: near the target
    seen = seen_in_training(plan.splits, pos, str)
    assert seen["test"]["positivesSeenInTraining"] == seen["test"]["questionsWithSeenPositive"] == 0
    # a bridge joins two chunks of 3 questions each: groups of 7
    assert plan.by == "chunk" and plan.largest_group == 7 and plan.fallback is None


def test_the_question_split_leaks_what_the_chunk_split_keeps_out():
    pos = siblings(100, 3)
    seen = seen_in_training(split_questions(list(pos), 0.05, 0.1, 42), pos, str)
    assert seen["test"]["questionsWithSeenPositive"] > seen["test"]["questions"] / 2  # most test questions leak
    assert seen["test"]["positivesSeenInTraining"] > 0


def test_chunk_split_is_deterministic_for_a_seed_and_changes_with_it():
    pos = siblings(50, 2)
    a = split_by_chunk(pos, str, 0.1, 0.2, 1).splits
    assert a == split_by_chunk(dict(reversed(list(pos.items()))), str, 0.1, 0.2, 1).splits
    assert a != split_by_chunk(pos, str, 0.1, 0.2, 2).splits


def test_one_group_falls_back_to_the_question_split_and_says_why():
    pos = {f"q{i}": ["same"] for i in range(10)}
    plan = split_by_chunk(pos, str, 0.1, 0.2, 0)
    assert plan.by == "question" and plan.groups == 1 and "one group" in plan.fallback
    assert plan.splits["test"] and plan.splits["train"]


def test_groups_larger_than_the_test_target_still_give_a_test_split():
    pos = {**{f"big{i}": ["X"] for i in range(12)}, **{f"mid{i}": ["Y"] for i in range(3)}}
    plan = split_by_chunk(pos, str, 0.0, 0.1, 0)  # test target 2: both groups are larger
    assert plan.by == "chunk" and plan.splits["test"] == [f"mid{i}" for i in range(3)]  # the smaller group
    assert plan.splits["train"] == sorted(f"big{i}" for i in range(12))


def test_a_group_that_swallows_most_questions_falls_back_and_says_why():
    # real queries with dozens of relevant passages each: most of them join one group
    pos = {f"q{i}": ["hub", f"p{i}"] for i in range(95)} | {f"lone{i}": [f"l{i}"] for i in range(5)}
    plan = split_by_chunk(pos, str, 0.05, 0.1, 0)
    assert plan.by == "question" and plan.largest_group == 95
    assert "holds 95 of 100 questions" in plan.fallback and "fill only dev 0 of 5 wanted" in plan.fallback
    assert len(plan.splits["test"]) == 10 and len(plan.splits["dev"]) == 5


def document_of(pid: str) -> str:
    """Chunks c0..c99 cut from documents of four chunks each: c0-c3 from doc0, c4-c7 from doc1, ..."""
    return f"doc{int(pid[1:]) // 4}"


@pytest.mark.parametrize("seed", range(5))
def test_the_document_split_keeps_every_chunk_of_a_held_out_document_out_of_training(seed):
    pos = siblings(100, 3)
    plan = split_by_document(pos, str, document_of, 0.05, 0.1, seed)
    assert plan.by == "document" and plan.groups == 25 and plan.largest_group == 12 and plan.fallback is None
    trained = {document_of(p) for q in plan.splits["train"] for p in pos[q]}
    for s in ("dev", "test"):
        assert plan.splits[s] and not ({document_of(p) for q in plan.splits[s] for p in pos[q]} & trained), s
    assert sorted(q for v in plan.splits.values() for q in v) == sorted(pos)
    seen = documents_seen_in_training(plan.splits, pos, document_of)
    assert seen["test"]["documentsSeenInTraining"] == seen["test"]["questionsWithSeenDocument"] == 0
    assert seen["test"]["questions"] == len(plan.splits["test"]) and seen["test"]["documents"] == len(plan.splits["test"]) // 12


def test_the_chunk_split_leaves_sibling_chunks_of_test_documents_in_training():
    pos = siblings(100, 3)
    plan = split_by_chunk(pos, str, 0.05, 0.1, 0)
    seen = documents_seen_in_training(plan.splits, pos, document_of)
    assert seen_in_training(plan.splits, pos, str)["test"]["positivesSeenInTraining"] == 0
    assert seen["test"]["questionsWithSeenDocument"] > seen["test"]["questions"] / 2  # the leak a document split removes


def test_too_few_documents_fall_back_to_the_chunk_split_and_say_why():
    pos = siblings(40, 3)  # 40 chunks of 2 documents: one document would be half the questions
    plan = split_by_document(pos, str, lambda p: f"doc{int(p[1:]) // 20}", 0.05, 0.1, 0)
    assert plan.by == "chunk" and plan.groups == 40 and plan.largest_group == 3
    assert plan.fallback.startswith("the largest group of questions sharing documents holds 60 of 120 questions")
    assert plan.fallback.endswith("split by chunk instead")
    one = split_by_document(pos, str, lambda p: "only-doc", 0.05, 0.1, 0)
    assert one.by == "chunk" and "all 120 questions share documents (one group)" in one.fallback
    # ... and a chunk split that cannot be made either falls back once more, saying both
    same = {f"q{i}": ["same"] for i in range(10)}
    both = split_by_document(same, str, lambda p: "doc", 0.1, 0.2, 0)
    assert both.by == "question" and both.fallback.count("one group") == 2 and "; then " in both.fallback
