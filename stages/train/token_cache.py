"""Tokenize every distinct training text once, then build each batch's features by padding cached ids.

Why our own: the train stage sees the same passages many times (a passage is the positive of several
questions, a hard negative of many more, and every epoch repeats them all), and on a GPU the tokenizer,
not the model, bounds a small encoder's throughput (an H200 VM needed ~600 ms to tokenize 640 passages of
256 tokens on one core vs 76 ms for their bf16 forward and backward). Tokenizing the distinct texts once,
through the model's own ``preprocess`` in large chunks (the Rust tokenizer uses every core), and
collating batches from the cache with numpy removes that cost from every step.

The cache is checked against the model's own per-batch tokenization on a sample of texts before use;
any difference (a tokenizer that pads on an unusual side, extra features, ...) turns it off and the
stage tokenizes per batch as before, so the features a model sees never depend on the cache.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

# Past this many cached tokens the cache would hold gigabytes (three int32 arrays per token): per-batch
# tokenization then stays in charge.
MAX_CACHED_TOKENS = 150_000_000


class TokenCache:
    """Ragged arrays of each distinct text's unpadded features (input_ids, attention_mask, ...)."""

    def __init__(self, keys: list[str], pad_values: dict[str, int], extras: dict[str, Any], right_padding: bool):
        self.keys = keys
        self.pad_values = pad_values
        self.extras = extras
        self.right_padding = right_padding
        self.index: dict[str, int] = {}
        self._chunks: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        self._lengths: list[int] = []
        self._total = 0
        self.flat: dict[str, np.ndarray] = {}
        self.offsets = np.zeros(1, dtype=np.int64)
        self.longest = 0
        # Pad each batch to a multiple of this (None: to its longest text, exactly as model.preprocess).
        # On a GPU every new (batch, length) shape costs kernel selection and cuDNN attention plans (an
        # H200 ran the first steps of a fresh run at 1/5 of the steady speed); a few length buckets keep
        # the shapes few. Padded positions are masked, so embeddings do not change.
        self.pad_multiple: int | None = None

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return len(self.index)

    def _add(self, texts: list[str], features: dict[str, Any]) -> None:
        valid = features["attention_mask"].numpy().astype(bool)
        # Boolean indexing walks the padded chunk row by row, so it yields each text's tokens in order and
        # back to back whichever side the padding is on: a compact copy, the padded chunk can go.
        for k in self.keys:
            self._chunks[k].append(features[k].numpy()[valid].astype(np.int32))
        for t in texts:
            self.index[t] = len(self.index)
        self._lengths.extend(valid.sum(axis=1).tolist())
        self._total += int(valid.sum())

    def _freeze(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self._lengths, dtype=np.int64)])
        self.longest = max(self._lengths, default=0)
        self.flat = {k: (np.concatenate(v) if v else np.zeros(0, np.int32)) for k, v in self._chunks.items()}
        self._chunks, self._lengths = {}, []

    def features(self, texts: list[str]) -> dict[str, Any]:
        """The model's features for ``texts``, padded to the longest of them (as ``model.preprocess`` does)."""
        import torch

        ids = np.fromiter((self.index[t] for t in texts), dtype=np.int64, count=len(texts))
        starts, ends = self.offsets[ids], self.offsets[ids + 1]
        lengths = ends - starts
        width = int(lengths.max()) if len(texts) else 0
        if self.pad_multiple and width:
            width = min(-(-width // self.pad_multiple) * self.pad_multiple, max(width, self.longest))
        # Gather positions: row r holds tokens starts[r] .. ends[r]-1, placed left (right padding) or right.
        cols = np.arange(width)[None, :]
        valid = cols < lengths[:, None] if self.right_padding else cols >= (width - lengths)[:, None]
        src = (starts[:, None] + (cols if self.right_padding else cols - (width - lengths)[:, None]))
        src = np.where(valid, src, 0)
        out: dict[str, Any] = {}
        for k in self.keys:
            flat = self.flat[k]
            vals = flat[src] if len(flat) else np.zeros(src.shape, np.int32)
            out[k] = torch.from_numpy(np.where(valid, vals, self.pad_values[k]).astype(np.int64))
        out.update(self.extras)
        return out


def _split_features(features: dict[str, Any]) -> tuple[list[str], dict[str, Any]] | None:
    import torch

    keys, extras = [], {}
    for k, v in features.items():
        if isinstance(v, torch.Tensor):
            if v.ndim != 2 or v.dtype not in (torch.int64, torch.int32):
                return None
            keys.append(k)
        else:
            extras[k] = v
    if "attention_mask" not in keys:
        return None
    return keys, extras


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    if set(a) != set(b):
        return False
    for k, v in a.items():
        w = b[k]
        if isinstance(v, torch.Tensor) or isinstance(w, torch.Tensor):
            if not (isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor)):
                return False
            if v.shape != w.shape or not torch.equal(v.to(torch.int64), w.to(torch.int64)):
                return False
        elif v != w:
            return False
    return True


def build_token_cache(model, texts: Iterable[str], *, chunk: int = 2048, check: int = 64,
                      max_tokens: int = MAX_CACHED_TOKENS) -> TokenCache | None:
    """Tokenize the distinct ``texts`` with ``model.preprocess``; None when the cache cannot stand in for
    per-batch tokenization (checked on a sample) or would be too large."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return None
    tok = getattr(model, "tokenizer", None)
    right = getattr(tok, "padding_side", "right") != "left"
    cache: TokenCache | None = None
    for start in range(0, len(distinct), chunk):
        part = distinct[start:start + chunk]
        feats = model.preprocess(part)
        split = _split_features(feats)
        if split is None:
            log.info("token cache off: the model's features are not plain token id matrices")
            return None
        keys, extras = split
        if cache is None:
            pad_id = getattr(tok, "pad_token_id", None)
            pads = {k: (int(pad_id) if k == "input_ids" and pad_id is not None else 0) for k in keys}
            cache = TokenCache(keys, pads, extras, right)
        elif keys != cache.keys or extras != cache.extras:
            log.info("token cache off: features differ between chunks")
            return None
        cache._add(part, feats)
        if cache._total > max_tokens:
            log.info("token cache off: over %d tokens", max_tokens)
            return None
    assert cache is not None
    cache._freeze()
    # The proof that the cache is faithful: identical features to the model's own tokenization, on the
    # shortest, the longest and a spread of texts between (so padding is exercised).
    by_len = np.argsort(cache.offsets[1:] - cache.offsets[:-1], kind="stable")
    pick = sorted(set(by_len[np.linspace(0, len(by_len) - 1, num=min(check, len(by_len))).astype(int)].tolist()))
    sample = [distinct[i] for i in pick]
    for group in (sample, sample[::-1][: max(1, len(sample) // 2)]):
        if not _same(cache.features(group), model.preprocess(group)):
            log.info("token cache off: cached features differ from the model's own tokenization")
            return None
    return cache
