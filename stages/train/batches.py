"""Feeding batches to the model: what a batch is, how the training rows become batches, and how batches
are tokenized ahead of the accelerator (once for the whole run from the token cache, or per batch by
worker processes or a background thread)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from eft.stages.train.rows import TrainRow, known_positives
from eft.stages.train.token_cache import TokenCache, build_token_cache

# Batch lengths on a GPU: multiples of this (see TokenCache.pad_multiple).
GPU_PAD_MULTIPLE = 32


@dataclass
class BatchTensors:
    queries: list[str]
    passages: list[str]  # local positives (one per row) then n_neg negatives per row
    row_q: torch.Tensor  # question index per row
    pids: torch.Tensor  # passage id per local passage column
    features: tuple[dict, dict] | None = None  # (queries, passages) tokenized ahead of time, see tokenize()

    def tokenize(self, model) -> BatchTensors:
        """Tokenize now (padding to the longest text of this batch); the loop does it one batch ahead in a
        background thread (the Rust tokenizer releases the GIL) so the accelerator never waits for it."""
        if self.features is None:
            self.features = (model.preprocess(self.queries), model.preprocess(self.passages))
        return self

    def pin_memory(self) -> BatchTensors:
        """Page-lock every tensor (DataLoader(pin_memory=True) calls this too). A copy to the GPU from
        ordinary (pageable) memory waits for the GPU's queue to drain first: one stall per tensor per step."""
        def pin(x):
            return x.pin_memory() if isinstance(x, torch.Tensor) else x

        self.row_q, self.pids = pin(self.row_q), pin(self.pids)
        if self.features is not None:
            self.features = tuple({k: pin(v) for k, v in f.items()} for f in self.features)
        return self


class TrainingSet:
    """The training rows, the integer ids the false-negative mask compares, and the batches made of them."""

    def __init__(self, rows: list[TrainRow], n_neg: int, padded: int, query_prefix: str, passage_prefix: str):
        self.rows = rows
        self.n_neg = n_neg  # hard negatives per row
        self.padded = padded  # of them, drawn at random because prepare found too few
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.cache: TokenCache | None = None  # see attach_token_cache
        self.qindex = {q: i for i, q in enumerate(dict.fromkeys(r.qid for r in rows))}
        self.pindex: dict[str, int] = {}
        for r in rows:
            for pid in (r.pos_id, *r.neg_ids):
                self.pindex.setdefault(pid, len(self.pindex))

    @property
    def n_questions(self) -> int:
        return len(self.qindex)

    @property
    def n_ids(self) -> int:
        return len(self.pindex)

    def known_pairs(self, device: str) -> torch.Tensor:
        """Sorted ``question_index * n_ids + passage_index`` of every (question, positive) pair, the question's
        other positives included where they appear in some batch (as another row's positive or negative)."""
        n, pindex = self.n_ids, self.pindex
        pairs = sorted({self.qindex[q] * n + pindex[p] for q, ps in known_positives(self.rows).items()
                        for p in ps if p in pindex})
        return torch.tensor(pairs, dtype=torch.long, device=device)

    def texts(self) -> list[str]:
        """Every query and passage use, prefixed: queries first, then each row's positive and negatives."""
        texts = [self.query_prefix + r.query for r in self.rows]
        return texts + [self.passage_prefix + t for r in self.rows for t in (r.pos_text, *r.neg_texts)]

    def batch(self, idx: list[int]) -> BatchTensors:
        sel = [self.rows[i] for i in idx]
        queries = [self.query_prefix + r.query for r in sel]
        pp = self.passage_prefix
        passages = [pp + r.pos_text for r in sel] + [pp + t for r in sel for t in r.neg_texts]
        pids = [self.pindex[r.pos_id] for r in sel] + [self.pindex[p] for r in sel for p in r.neg_ids]
        cache = self.cache
        return BatchTensors(
            queries=queries,
            passages=passages,
            row_q=torch.tensor([self.qindex[r.qid] for r in sel], dtype=torch.long),
            pids=torch.tensor(pids, dtype=torch.long),
            features=None if cache is None else (cache.features(queries), cache.features(passages)),
        )


@dataclass
class EpochBatches:
    """Batch ``i`` of one epoch on demand (what batch_stream and its worker processes call)."""

    data: TrainingSet
    batches: list[list[int]]  # row indices per batch

    def __call__(self, i: int) -> BatchTensors:
        return self.data.batch(self.batches[i])


@contextlib.contextmanager
def _env(key: str, value: str) -> Iterator[None]:
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def attach_token_cache(data: TrainingSet, model, device: str, enabled: bool) -> dict[str, Any]:
    """Tokenize every distinct query and passage once (token_cache.py) into ``data.cache``; returns the facts
    for the manifest ('summary': the progress line)."""
    if not enabled:
        return {"enabled": False, "summary": "off (EFT_TOKEN_CACHE=0)"}
    texts = data.texts()
    t0 = time.perf_counter()
    with _env("TOKENIZERS_PARALLELISM", "true"):  # once, before training: every core may tokenize
        cache = build_token_cache(model, texts)
    seconds = round(time.perf_counter() - t0, 2)
    if cache is None:
        return {"enabled": False, "seconds": seconds, "summary": f"off (tokenizing per batch; see the log), {seconds}s"}
    data.cache = cache
    facts: dict[str, Any] = {
        "enabled": True, "texts": len(cache), "tokens": cache.tokens, "textSlots": len(texts), "seconds": seconds,
        "summary": f"{len(cache)} distinct texts for {len(texts)} uses, {cache.tokens} tokens, {seconds}s"}
    if device.startswith("cuda"):
        cache.pad_multiple = facts["padMultiple"] = GPU_PAD_MULTIPLE
    return facts


def tokenizer_workers(device: str, setting: int | None = None) -> int:
    """Processes that tokenize batches ahead of the accelerator; ``setting`` (settings.train_workers)
    overrides the choice.

    On a GPU the tokenizer, not the model, bounds a small encoder's throughput (measured on an H200 VM:
    ~600 ms to tokenize 640 passages of 256 tokens on one core vs 76 ms for their bf16 forward and
    backward), so up to 8 worker processes tokenize whole batches in parallel. On CPU the model needs
    the cores: one background thread tokenizes the next batch instead (0 workers).
    """
    if setting is not None:
        return max(0, setting)
    if not device.startswith("cuda"):
        return 0
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 2))


def tokenizer_parallelism(device: str, workers: int) -> contextlib.AbstractContextManager[None]:
    """Rust tokenizer threads: off in worker processes (parallelism comes from the processes and forking
    after threaded use makes the library warn), on when the main process tokenizes on a GPU machine."""
    return _env("TOKENIZERS_PARALLELISM", "false" if workers > 0 or not device.startswith("cuda") else "true")


class _BatchSet(torch.utils.data.Dataset):
    def __init__(self, make: Callable[[int], BatchTensors], model):
        self.make, self.model = make, model

    def __getitem__(self, i: int) -> BatchTensors:
        return self.make(i).tokenize(self.model)


def batch_stream(make: Callable[[int], BatchTensors], model, first: int, end: int, workers: int,
                 pin: bool = False):
    """Yield ``make(i).tokenize(model)`` for i in [first, end), prepared ahead of use: by ``workers`` forked
    processes (a DataLoader; batches arrive in order) or, with 0 workers, by one background thread one
    batch ahead (the Rust tokenizer releases the GIL); with ``pin`` (a CUDA device) in page-locked memory.
    Close the generator before using the tokenizer elsewhere (validation): closing waits for the
    background thread."""
    if first >= end:
        return
    if workers > 0:
        yield from _worker_stream(make, model, first, end, workers, pin)
        return
    from concurrent.futures import ThreadPoolExecutor

    def ready(i: int) -> BatchTensors:
        b = make(i).tokenize(model)
        return b.pin_memory() if pin else b

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eft-tokenize") as pool:
        ahead = pool.submit(ready, first)
        for i in range(first, end):
            batch = ahead.result()
            ahead = pool.submit(ready, i + 1) if i + 1 < end else None
            yield batch
            if ahead is None:
                break


def _worker_stream(make, model, first: int, end: int, workers: int, pin: bool):
    import multiprocessing as mp

    return torch.utils.data.DataLoader(
        _BatchSet(make, model), batch_size=None, sampler=range(first, end), num_workers=workers,
        prefetch_factor=2, multiprocessing_context=mp.get_context("fork"), collate_fn=lambda b: b,
        pin_memory=pin,
        generator=torch.Generator())  # its own seed source: the global RNG (dropout) stays as on CPU
