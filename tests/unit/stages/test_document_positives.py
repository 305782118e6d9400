"""queries.documentPositives: which chunks of a document-level label train as positives."""

import numpy as np
import pytest

from eft.stages.document_positives import Narrowing, trained_positive_rows

ROW_OF = {"a0": 0, "a1": 1, "a2": 2, "b0": 3, "c0": 4}
# the query is e0; each passage's score with it is its first coordinate
P_EMB = np.array([[0.2, 1, 0], [0.7, 0, 1], [0.5, 1, 1], [0.1, 0, 0], [0.3, 1, 0]], dtype=np.float32)
Q = np.array([1, 0, 0], dtype=np.float32)


def pick(question, rule="bestChunk"):
    tally = Narrowing(rule)
    return trained_positive_rows(question, ROW_OF, Q, P_EMB, tally), tally


def test_a_document_label_trains_on_its_chunk_the_base_model_scores_highest():
    q = {"positives": ["a0", "a1", "a2", "b0"], "positiveGroups": [["a0", "a1", "a2"], ["b0"]]}
    rows, tally = pick(q)
    assert rows == [1, 3]  # a1 scores 0.7 of a's three chunks; b's single chunk trains as it is
    assert tally.describe() == {"rule": "bestChunk", "labelsOverSeveralChunks": 1, "chunksNotTrainedOn": 2}


def test_every_chunk_keeps_every_positive():
    q = {"positives": ["a0", "a1", "a2", "b0"], "positiveGroups": [["a0", "a1", "a2"], ["b0"]]}
    rows, tally = pick(q, "everyChunk")
    assert rows == [0, 1, 2, 3] and tally.groups == tally.left_out == 0


def test_questions_without_groups_keep_every_positive():
    # a generated multi-hop question: its positives are distinct chunks, each one needed
    rows, tally = pick({"positives": ["a0", "b0", "c0"]})
    assert rows == [0, 3, 4] and tally.left_out == 0


def test_positives_outside_every_group_and_chunks_that_are_no_positive():
    # c0 came from no group (kept); a2-gone is not in the corpus and a1 is not among the question's usable
    # positives (prepare dropped it), so neither is chosen though a1 scores highest: each group is a0 alone
    q = {"positives": ["a0", "c0"], "positiveGroups": [["a0", "a2-gone"], ["a0", "a1"]]}
    rows, tally = pick(q)
    assert rows == [0, 4]
    assert tally.groups == tally.left_out == 0


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="bestChunk, everyChunk"):
        pick({"positives": ["a0"]}, "firstChunk")
