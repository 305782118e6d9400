"""Prometheus metrics of the embedding server (one registry per app, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "eft_request_duration_seconds", "Time to answer a /v1/embeddings request.",
            ["status"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("eft_requests_total", "Embedding requests answered, by HTTP status.", ["status"],
                                registry=r)
        self.errors = Counter("eft_errors_total", "Requests answered with an error, by error code.", ["code"],
                              registry=r)
        self.inputs = Counter("eft_inputs_total", "Texts embedded.", registry=r)
        self.tokens = Counter("eft_tokens_total", "Tokens embedded (prompt tokens, after truncation).", registry=r)
        self.truncated = Counter("eft_truncated_inputs_total", "Texts cut to the model's maximum length.", registry=r)
        self.queue_depth = Gauge("eft_queue_depth", "Texts waiting for or in a forward pass.", registry=r)
        self.batch_size = Histogram("eft_batch_size", "Texts per forward pass.", buckets=BATCH_BUCKETS, registry=r)
        self.batch_tokens = Histogram("eft_batch_tokens", "Real tokens per forward pass.", buckets=TOKEN_BUCKETS,
                                      registry=r)
        self.batch_padding = Counter("eft_batch_padding_tokens_total", "Padding tokens computed in forward passes.",
                                     registry=r)
        self.batch_latency = Histogram("eft_batch_duration_seconds", "Time of one forward pass.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("eft_ready", "1 when the model is loaded and warmed up.", registry=r)

    def observe_batch(self, size: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)
        self.batch_padding.inc(max(0, padded_tokens - tokens))
        self.batch_latency.observe(seconds)
