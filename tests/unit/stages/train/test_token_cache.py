"""The train stage's token cache gives exactly the features the model's own tokenizer gives."""

from __future__ import annotations

import random

import pytest
import torch
from eft.stages.train.token_cache import build_token_cache

from eft.models import load_sentence_model
from eft.spec import BaseModelSpec

WORDS = "glimmeric zorblat unit attribute value the of is kubernetes pod replica node taint Ünïcode 東京 -".split()


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]
    return out + ["x", "query: " + out[0], out[1]]  # a one-token text, a prefixed text and a repeat


@pytest.fixture(scope="module")
def model():
    return load_sentence_model(BaseModelSpec(max_seq_length=32), device="cpu")


def test_cached_features_equal_the_models_tokenization(model):
    data = texts(300)
    cache = build_token_cache(model, data, chunk=50)  # several chunks, each padded differently
    assert cache is not None
    assert len(cache) == len(set(data))
    rng = random.Random(1)
    for _ in range(20):
        batch = rng.sample(data, rng.randint(1, 40))
        got, want = cache.features(batch), model.preprocess(batch)
        assert set(got) == set(want)
        for k, v in want.items():
            if isinstance(v, torch.Tensor):
                assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
            else:
                assert got[k] == v
    # truncation to maxSeqLength is kept, not undone
    assert cache.features([max(data, key=len)])["input_ids"].shape[1] == 32


def test_left_padding_tokenizers_are_cached_faithfully(model):
    model.tokenizer.padding_side = "left"
    try:
        data = texts(60, seed=3)
        cache = build_token_cache(model, data, chunk=16)
        assert cache is not None and not cache.right_padding
        batch = data[:25]
        got, want = cache.features(batch), model.preprocess(batch)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["attention_mask"], want["attention_mask"])
        assert want["attention_mask"][:, 0].min() == 0  # the batch really was padded on the left
    finally:
        model.tokenizer.padding_side = "right"


class OddModel:
    """A model whose features are not token-id matrices (e.g. an image or float features)."""

    tokenizer = None

    def preprocess(self, texts):
        return {"attention_mask": torch.ones(len(texts), 3, dtype=torch.long),
                "pixel_values": torch.zeros(len(texts), 3, 2, 2)}


class LyingModel:
    """Features that change with the batch they are in: the cache must notice and step aside."""

    tokenizer = None

    def __init__(self):
        self.calls = 0

    def preprocess(self, texts):
        self.calls += 1
        ids = torch.full((len(texts), 4), self.calls, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_cache_steps_aside_when_it_cannot_be_faithful(model):
    assert build_token_cache(OddModel(), ["a", "b"]) is None
    assert build_token_cache(LyingModel(), ["a", "b", "c"]) is None
    assert build_token_cache(model, []) is None
    assert build_token_cache(model, texts(50), max_tokens=100) is None  # would be too large


def test_length_buckets_pad_with_masked_positions_and_keep_embeddings(model):
    data = texts(80, seed=5)
    cache = build_token_cache(model, data)
    cache.pad_multiple = 8
    batch = [t for t in data if 3 < len(model.tokenizer(t)["input_ids"]) < 20][:6]
    exact, bucketed = model.preprocess(batch), cache.features(batch)
    w, wb = exact["input_ids"].shape[1], bucketed["input_ids"].shape[1]
    assert wb % 8 == 0 and w <= wb < w + 8
    assert torch.equal(bucketed["input_ids"][:, :w], exact["input_ids"])
    assert bucketed["attention_mask"][:, w:].sum() == 0
    assert (bucketed["input_ids"][:, w:] == model.tokenizer.pad_token_id).all()
    model.eval()
    with torch.no_grad():
        a = model(exact)["sentence_embedding"]
        b = model(bucketed)["sentence_embedding"]
    assert torch.allclose(a, b, atol=1e-5)
    # never wider than the longest cached text (i.e. never past maxSeqLength)
    assert cache.features([max(data, key=len)])["input_ids"].shape[1] == 32
