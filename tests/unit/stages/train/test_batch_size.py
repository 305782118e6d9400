"""The batch-size choice: the spec's number, a CPU default, or the probe's halving search on a GPU."""

from __future__ import annotations

import torch

from eft.stages.train.batch_size import (
    CPU_BATCH_TOKENS,
    CPU_BATCH_TOKENS_BF16,
    CPU_DEFAULT_BATCH,
    MIN_AUTO_BATCH,
    GPU_PROBE_START,
    choose_batch_size,
    largest_fitting,
    probe_query_length,
    probe_start,
    rows_used_per_epoch,
)
from eft.stages.train import modeling
from eft.stages.train.distributed import DistInfo
from eft.stages.train.loss import LossConfig
from eft.stages.train.rows import TrainRow

KW = dict(n_neg=1, max_len=16, query_len=8, info=DistInfo(device="cpu"),
          cfg=LossConfig(scale=20.0, n_neg=1, in_batch=True, known_pairs=torch.zeros(0, dtype=torch.long), n_ids=1))


def test_halving_stops_at_the_first_size_that_fits():
    asked = []

    def fits(b):
        asked.append(b)
        return b <= 100, b * 2**30

    chosen, trials = largest_fitting(512, fits)
    assert chosen == 64 and asked == [512, 256, 128, 64]
    assert trials[0] == {"batchSize": 512, "fits": False, "peakGiB": 512.0}
    assert trials[-1] == {"batchSize": 64, "fits": True, "peakGiB": 64.0}
    assert largest_fitting(4, lambda b: (False, 0)) == (0, [{"batchSize": b, "fits": False, "peakGiB": 0.0}
                                                            for b in (4, 2, 1)])


def test_the_probe_starts_at_a_power_of_two_within_the_limit():
    assert probe_start(10_000) == GPU_PROBE_START
    assert probe_start(256) == 256
    assert probe_start(200) == 200  # a capped limit: never above it
    assert probe_start(0) == 1


def test_spec_sizes_are_kept_up_to_one_row_per_question():
    c = choose_batch_size(64, None, max_rows=40, **KW)
    assert (c.batch_size, c.requested, c.method) == (40, 64, "spec")
    assert c.as_dict() == {"requested": 64, "chosen": 40, "method": "spec"}


def test_auto_on_a_cpu_is_a_modest_default():
    c = choose_batch_size("auto", None, max_rows=10_000, **KW)
    assert (c.batch_size, c.method) == (CPU_DEFAULT_BATCH, "cpu-default")
    assert choose_batch_size("auto", None, max_rows=5, **KW).batch_size == 5


def test_auto_on_a_cpu_keeps_the_tokens_of_a_batch_bounded(monkeypatch):
    """Longer training texts, fewer rows: memory grows with rows x tokens, less steeply under bf16."""
    def sizes(native_bf16: bool) -> dict[int, int]:
        monkeypatch.setattr(modeling, "cpu_has_native_bf16", lambda: native_bf16)
        return {n: choose_batch_size("auto", None, max_rows=10_000, **{**KW, "max_len": n}).batch_size
                for n in (64, 128, 256, 512, 4096)}

    fp32, bf16 = sizes(False), sizes(True)
    assert fp32 == {64: 64, 128: 64, 256: 32, 512: 16, 4096: MIN_AUTO_BATCH}
    assert bf16 == {64: 64, 128: 64, 256: 64, 512: 32, 4096: MIN_AUTO_BATCH}
    assert all(b * n <= CPU_BATCH_TOKENS for n, b in fp32.items() if b > MIN_AUTO_BATCH)
    assert all(b * n <= CPU_BATCH_TOKENS_BF16 for n, b in bf16.items() if b > MIN_AUTO_BATCH)


def test_rows_used_per_epoch_caps_each_question():
    rows = [TrainRow(q, "x", f"p{i}", "t", [], []) for i, q in enumerate("aaab")]
    assert rows_used_per_epoch(rows, None) == 4
    assert rows_used_per_epoch(rows, 2) == 3


def test_queries_are_probed_at_their_real_length():
    class Tok:
        def __call__(self, texts):
            return {"input_ids": [t.split() for t in texts]}

    class Model:
        tokenizer = Tok()

    rows = [TrainRow("a", "one two three", "p", "t", [], []), TrainRow("b", "one", "p", "t", [], [])]
    assert probe_query_length(Model(), rows, "query: ", max_len=16) == 4  # the prefix counts
    assert probe_query_length(Model(), rows, "query: ", max_len=3) == 3
