"""DynamicBatcher on its own: how texts are grouped into forward passes, where rows and errors go, back-pressure
and shutdown.

A fake backend embeds a text as [its first token id, its length, 0, 0], so every row says which text it came
from. Most tests queue all their requests before the worker starts (with max_wait_ms=0 the worker then takes
exactly what is queued), so how texts are grouped does not depend on thread timing.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from eft.serving.batcher import Closed, DynamicBatcher, Overloaded

DIM = 4
# Bounds a broken batcher turns into a failure instead of a hang; nothing waits for them to pass.
DEADLINE_S = 60.0


def text(tag: int, length: int) -> list[int]:
    """A tokenized text whose embedding row is [tag, length, 0, 0]."""
    return [tag] * length


class FakeBackend:
    def __init__(self, fail_on: set[int] = frozenset(), gate: threading.Event | None = None):
        self.info = SimpleNamespace(dimension=DIM)
        self.calls: list[list[list[int]]] = []
        self.fail_on = fail_on
        self.raised: list[Exception] = []
        self.gate = gate  # a forward pass waits for it
        self.entered = threading.Event()  # set when a forward pass starts

    def embed(self, rows) -> np.ndarray:
        rows = [list(r) for r in rows]
        self.calls.append(rows)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(DEADLINE_S)
        if any(r[0] in self.fail_on for r in rows):
            exc = RuntimeError(f"inference failed on {[r[0] for r in rows]}")
            self.raised.append(exc)
            raise exc
        return np.array([[r[0], len(r), 0, 0] for r in rows], dtype=np.float32)

    def lengths(self) -> list[list[int]]:
        return [[len(r) for r in call] for call in self.calls]

    def tags(self) -> list[list[int]]:
        return [[r[0] for r in call] for call in self.calls]


class FakeMetrics:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.batches: list[tuple[int, int, int]] = []
        self.seconds: list[float] = []
        self.queue_depth = SimpleNamespace(set=self.depths.append)

    def observe_batch(self, size: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batches.append((size, tokens, padded_tokens))
        self.seconds.append(seconds)


def expected(ids: list[list[int]]) -> np.ndarray:
    return np.array([[r[0], len(r), 0, 0] for r in ids], dtype=np.float32).reshape(len(ids), DIM)


@pytest.fixture
def make():
    """make(backend, **limits): a batcher (not started) that is stopped after the test."""
    made: list[DynamicBatcher] = []

    def _make(backend: Any, **kw: Any) -> DynamicBatcher:
        kw.setdefault("max_wait_ms", 0.0)
        b = DynamicBatcher(backend, **kw)
        made.append(b)
        return b

    yield _make
    for b in made:
        b.stop(timeout=DEADLINE_S)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


async def queued(batcher: DynamicBatcher, *requests: list[list[int]]) -> list[asyncio.Task]:
    """Tasks embedding `requests`, returned once every text is on the batcher's queue."""
    tasks = [asyncio.ensure_future(batcher.embed(ids)) for ids in requests]
    want = batcher.pending + sum(len(ids) for ids in requests)
    while batcher.pending < want and not all(t.done() for t in tasks):
        await asyncio.sleep(0)
    return tasks


async def embed_all(batcher: DynamicBatcher, *requests: list[list[int]]) -> list[Any]:
    """Queue every request, then start the worker: one collection round sees them all."""
    tasks = await queued(batcher, *requests)
    batcher.start()
    return await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------ grouping


def test_rows_come_back_in_input_order_however_texts_were_grouped(make):
    backend = FakeBackend()
    b = make(backend)
    a_ids = [text(1, 30), text(2, 5), text(3, 17)]
    b_ids = [text(4, 5), text(5, 30)]
    a, c = run(embed_all(b, a_ids, b_ids))
    np.testing.assert_array_equal(a, expected(a_ids))
    np.testing.assert_array_equal(c, expected(b_ids))
    assert a.dtype == np.float32 and a.shape == (3, DIM)
    # Sorted by length across requests; split where padding would exceed 25% of the real tokens.
    assert backend.lengths() == [[5, 5], [17], [30, 30]]
    assert sorted(backend.tags()[0]) == [2, 4]


def test_max_batch_size_caps_texts_per_pass(make):
    backend = FakeBackend()
    b = make(backend, max_batch_size=4)
    ids = [text(i, 8) for i in range(10)]
    (out,) = run(embed_all(b, ids))
    np.testing.assert_array_equal(out, expected(ids))
    assert [len(c) for c in backend.calls] == [4, 4, 2]


def test_max_batch_tokens_caps_padded_tokens_and_a_longer_text_runs_alone(make):
    backend = FakeBackend()
    b = make(backend, max_batch_tokens=30)
    ids = [text(i, 10) for i in range(6)] + [text(9, 40)]
    (out,) = run(embed_all(b, ids))
    np.testing.assert_array_equal(out, expected(ids))
    assert backend.lengths() == [[10, 10, 10], [10, 10, 10], [40]]


@pytest.mark.parametrize("max_padding,passes", [(0.25, [[10, 10], [30]]), (10.0, [[10, 10, 30]])])
def test_padding_limit_starts_a_new_pass(make, max_padding, passes):
    backend = FakeBackend()
    b = make(backend, max_padding=max_padding)
    ids = [text(1, 30), text(2, 10), text(3, 10)]
    (out,) = run(embed_all(b, ids))
    np.testing.assert_array_equal(out, expected(ids))
    assert backend.lengths() == passes


def test_worker_waits_for_more_texts_once_it_has_one(make):
    """With a long max_wait the first text waits for the next request; a full collection starts the pass."""
    backend = FakeBackend()
    b = make(backend, max_batch_size=4, max_wait_ms=DEADLINE_S * 1000)  # collects up to 4 x 4 texts
    b.start()

    async def main():
        first = asyncio.ensure_future(b.embed([text(1, 8)]))
        await asyncio.sleep(0)
        rest = [text(100 + i, 8) for i in range(15)]
        return await asyncio.gather(first, b.embed(rest)), rest

    (one, many), rest = run(main())
    np.testing.assert_array_equal(one, expected([text(1, 8)]))
    np.testing.assert_array_equal(many, expected(rest))
    # One collection of 16 texts, in passes of 4: the first request's text shares the first pass.
    assert [len(c) for c in backend.calls] == [4, 4, 4, 4]
    assert backend.tags()[0][0] == 1


def test_a_lone_request_is_answered_when_max_wait_runs_out(make):
    backend = FakeBackend()
    b = make(backend, max_wait_ms=20)
    b.start()
    out = run(b.embed([text(7, 3)]))
    np.testing.assert_array_equal(out, expected([text(7, 3)]))
    assert backend.calls == [[text(7, 3)]]


def test_empty_request_needs_no_worker(make):
    b = make(FakeBackend())  # never started
    out = run(b.embed([]))
    assert out.shape == (0, DIM) and out.dtype == np.float32
    assert b.pending == 0


# ------------------------------------------------------------------------------ errors, cancellation


def test_backend_error_reaches_exactly_the_callers_of_that_pass(make):
    backend = FakeBackend(fail_on={1})
    b = make(backend)
    a_ids, b_ids, c_ids = [text(1, 5)], [text(2, 5)], [text(3, 40)]
    got_a, got_b, got_c = run(embed_all(b, a_ids, b_ids, c_ids))
    assert backend.lengths() == [[5, 5], [40]]  # A and B share the failing pass, C has its own
    (raised,) = backend.raised
    assert got_a is raised and got_b is raised
    np.testing.assert_array_equal(got_c, expected(c_ids))
    b.stop()
    assert b.pending == 0


def test_a_failed_request_costs_no_further_forward_passes(make):
    backend = FakeBackend(fail_on={1})
    b = make(backend)
    failing = [text(1, 5), text(9, 40)]  # its second text is in a later pass
    other = [text(2, 40)]
    a, ok = run(embed_all(b, failing, other))
    assert isinstance(a, RuntimeError)
    np.testing.assert_array_equal(ok, expected(other))
    assert backend.calls == [[text(1, 5)], [text(2, 40)]]
    b.stop()
    assert b.pending == 0


def test_a_cancelled_request_is_not_computed(make):
    backend = FakeBackend()
    b = make(backend)

    async def main():
        gone, kept = await queued(b, [text(1, 6), text(2, 6)], [text(3, 6)])
        gone.cancel()
        await asyncio.sleep(0)
        b.start()
        return gone, await kept

    gone, out = run(main())
    assert gone.cancelled()
    np.testing.assert_array_equal(out, expected([text(3, 6)]))
    assert backend.tags() == [[3]]
    b.stop()
    assert b.pending == 0


# ------------------------------------------------------------------------------ back-pressure


def test_queue_limit_refuses_a_request_that_does_not_fit(make):
    backend = FakeBackend()
    b = make(backend, max_queue=5)

    async def main():
        first = await queued(b, [text(1, 4)] * 3)
        with pytest.raises(Overloaded, match="3 texts are queued"):
            await b.embed([text(2, 4)] * 3)
        second = await queued(b, [text(3, 4)] * 2)  # exactly fills the queue
        assert b.pending == 5
        with pytest.raises(Overloaded):
            await b.embed([text(4, 4)])
        b.start()
        return await asyncio.gather(*first, *second)

    x, y = run(main())
    np.testing.assert_array_equal(x, expected([text(1, 4)] * 3))
    np.testing.assert_array_equal(y, expected([text(3, 4)] * 2))
    assert sorted(t for call in backend.tags() for t in call) == [1, 1, 1, 3, 3]


def test_a_request_bigger_than_the_queue_limit_is_served_when_the_queue_is_empty(make):
    backend = FakeBackend()
    b = make(backend, max_queue=2)
    ids = [text(i, 3) for i in range(8)]
    b.start()
    np.testing.assert_array_equal(run(b.embed(ids)), expected(ids))
    b.stop()
    assert b.pending == 0


def test_metrics_see_queue_depth_and_every_pass(make):
    metrics = FakeMetrics()
    b = make(FakeBackend(), metrics=metrics)
    run(embed_all(b, [text(1, 3), text(2, 5)]))
    b.stop()
    assert metrics.batches == [(2, 8, 10)]  # texts, real tokens, padded tokens
    assert all(s >= 0 for s in metrics.seconds)
    assert metrics.depths[0] == 2 and metrics.depths[-1] == 0


# ------------------------------------------------------------------------------ shutdown


def test_stop_finishes_what_is_queued_then_refuses_new_work(make):
    gate = threading.Event()
    backend = FakeBackend(gate=gate)
    b = make(backend)
    requests = [[text(1, 4)], [text(2, 9), text(3, 2)], [text(4, 30)]]

    async def main():
        b.start()
        first = asyncio.ensure_future(b.embed(requests[0]))
        await asyncio.to_thread(backend.entered.wait, DEADLINE_S)  # the worker is in its first pass
        rest = await queued(b, *requests[1:])
        b.stop(timeout=0)  # the stop signal is queued behind the other requests
        gate.set()
        b._thread.join(DEADLINE_S)
        assert not b._thread.is_alive()
        results = await asyncio.gather(first, *rest)
        with pytest.raises(Closed):
            await b.embed([text(5, 4)])
        return results

    for ids, out in zip(requests, run(main())):
        np.testing.assert_array_equal(out, expected(ids))
    assert b.pending == 0
    b.stop()  # a second stop is a no-op


def test_stop_does_not_wait_out_max_wait(make):
    """A worker waiting for more texts takes the stop signal as the end of its collection."""
    backend = FakeBackend()
    b = make(backend, max_wait_ms=10 * DEADLINE_S * 1000)
    b.start()

    async def main():
        (task,) = await queued(b, [text(1, 4)])
        b.stop(timeout=DEADLINE_S)
        assert not b._thread.is_alive()
        return await task

    np.testing.assert_array_equal(run(main()), expected([text(1, 4)]))
