"""Feeding batches: the ids a batch carries, the token cache standing in for per-batch tokenization, and
batches arriving in order however they are prepared."""

from __future__ import annotations

import os

import pytest
import torch

from eft.models import load_sentence_model
from eft.spec import BaseModelSpec
from eft.stages.train.batches import (
    GPU_PAD_MULTIPLE,
    EpochBatches,
    TrainingSet,
    attach_token_cache,
    batch_stream,
    tokenizer_parallelism,
    tokenizer_workers,
)
from eft.stages.train.rows import TrainRow

ROWS = [
    TrainRow("qa", "first question", "p1", "passage one", ["p2"], ["passage two"]),
    TrainRow("qa", "first question", "p2", "passage two", ["p3"], ["passage three"]),
    TrainRow("qb", "second question", "p3", "passage three", ["p1"], ["passage one"]),
]


@pytest.fixture(scope="module")
def model():
    return load_sentence_model(BaseModelSpec(max_seq_length=16), device="cpu")


def data() -> TrainingSet:
    return TrainingSet(ROWS, n_neg=1, padded=0, query_prefix="query: ", passage_prefix="passage: ")


def test_a_batch_carries_prefixed_texts_and_the_ids_of_the_false_negative_mask():
    d = data()
    assert (d.n_questions, d.n_ids) == (2, 3)
    # question index * n_ids + passage index of every positive: qa-p1, qa-p2, qb-p3
    assert d.known_pairs("cpu").tolist() == [0 * 3 + 0, 0 * 3 + 1, 1 * 3 + 2]
    b = d.batch([2, 0])
    assert b.queries == ["query: second question", "query: first question"]
    assert b.passages == ["passage: passage three", "passage: passage one", "passage: passage one",
                          "passage: passage two"]  # positives first, then each row's negatives
    assert b.row_q.tolist() == [1, 0] and b.pids.tolist() == [2, 0, 0, 1]
    assert b.features is None  # tokenized later, off the training thread
    assert len(d.texts()) == 3 + 3 * 2


def test_other_positives_join_the_mask_where_a_batch_can_hold_them():
    # qb trained on p3 only; p1 (in batches as qa's positive) is another positive of qb, p9 is in no batch
    rows = [*ROWS[:2], TrainRow("qb", "second question", "p3", "passage three", ["p1"], ["passage one"],
                                other_pos_ids=("p1", "p9"))]
    d = TrainingSet(rows, n_neg=1, padded=0, query_prefix="", passage_prefix="")
    assert d.n_ids == 3
    assert d.known_pairs("cpu").tolist() == [0 * 3 + 0, 0 * 3 + 1, 1 * 3 + 0, 1 * 3 + 2]


def test_the_token_cache_gives_the_features_per_batch_tokenization_gives(model):
    cached, plain = data(), data()
    facts = attach_token_cache(cached, model, "cpu", enabled=True)
    assert cached.cache is not None and facts["enabled"] is True
    assert (facts["texts"], facts["textSlots"]) == (5, 9)  # 2 distinct queries + 3 passages, 9 uses
    assert "padMultiple" not in facts and cached.cache.pad_multiple is None  # CPU: exact lengths
    a, b = cached.batch([0, 2]), plain.batch([0, 2]).tokenize(model)
    for got, want in zip(a.features, b.features):
        assert set(got) == set(want)
        for k, v in want.items():  # token matrices, and extras such as the model's prompt settings
            assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, k


def test_token_cache_off_and_on_a_gpu(model):
    d = data()
    off = attach_token_cache(d, model, "cpu", enabled=False)
    assert off == {"enabled": False, "summary": "off (EFT_TOKEN_CACHE=0)"}
    assert d.cache is None
    facts = attach_token_cache(d, model, "cuda:0", enabled=True)  # nothing runs on the device here
    assert facts["padMultiple"] == GPU_PAD_MULTIPLE == d.cache.pad_multiple


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_arrive_in_order_from_the_first_asked_for(model, workers):
    d = data()
    make = EpochBatches(d, [[0], [1], [2], [0, 2]])
    got = list(batch_stream(make, model, 1, 4, workers))
    assert [b.queries for b in got] == [d.batch(i).queries for i in ([1], [2], [0, 2])]
    assert all(b.features is not None for b in got)  # tokenized ahead
    assert list(batch_stream(make, model, 4, 4, workers)) == []


def test_tokenizer_workers_follow_the_setting_then_the_device(monkeypatch):
    assert tokenizer_workers("cuda", 3) == 3
    assert tokenizer_workers("cpu", 2) == 2
    assert tokenizer_workers("cuda", -1) == 0
    assert tokenizer_workers("cpu") == 0  # the model needs the cores
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert tokenizer_workers("cuda") == 8


def test_tokenizer_parallelism_is_restored(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "keep")
    with tokenizer_parallelism("cuda", 0):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "keep"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with tokenizer_parallelism("cuda", 2):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
