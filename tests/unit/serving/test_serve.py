"""The embedding server, end to end: real uvicorn on loopback, the real `openai` client, real ONNX Runtime.

One export of the bundled model (tests.support.export_workspace.shared_export) serves every test; servers run in
a thread of this process (sharing one loaded backend) except where the command line itself is tested.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from eft.serving.app import ServerConfig, create_app
from eft.serving.backends import Backend, OnnxBackend, TorchBackend, load_backend
from eft.serving.manifest import ModelRefused
from tests.support.export_workspace import shared_export
from tests.support.server import ServerThread

MODEL = "tiny-embed"
TEXTS = [
    "How many pods does a Deployment run?",
    "A StatefulSet gives each pod a stable network identity and persistent storage.",
    "kubectl",
    "The strategy used to replace existing pods with new ones, for example a rolling update with a maximum number "
    "of unavailable pods and a maximum surge.",
]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return shared_export(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def fp32(export_dir) -> OnnxBackend:
    return load_backend(export_dir, backend="onnx", variant="fp32", device="cpu", threads=2)


@pytest.fixture(scope="module")
def int8(export_dir) -> OnnxBackend:
    return load_backend(export_dir, backend="onnx", variant="int8", device="cpu", threads=2)


@pytest.fixture(scope="module")
def server(fp32):
    with ServerThread(create_app(ServerConfig(max_wait_ms=5.0), fp32)) as s:
        yield s


@pytest.fixture(scope="module")
def strict_server(fp32):
    """Small limits, 400 on too-long inputs, prefixes set for input_type."""
    cfg = ServerConfig(max_inputs=4, on_too_long="error", max_request_bytes=20_000, max_input_tokens=32,
                       query_prefix="query: ", passage_prefix="passage: ")
    with ServerThread(create_app(cfg, fp32)) as s:
        yield s


def _direct(backend: Backend, texts: list[str]) -> np.ndarray:
    return np.stack([backend.embed(backend.tokenizer.encode([t]))[0] for t in texts])


# ------------------------------------------------------------------------------------ OpenAI API


def test_openai_client_base64(server, fp32):
    sent: list[dict] = []
    hook = httpx.Client(event_hooks={"request": [lambda r: sent.append(json.loads(r.read()))]})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", http_client=hook, max_retries=0)
    r = client.embeddings.create(model=MODEL, input=TEXTS)
    assert sent[-1]["encoding_format"] == "base64"  # the SDK asks for base64 when numpy is installed
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    np.testing.assert_allclose(got, _direct(fp32, TEXTS), atol=1e-5)
    assert r.model == MODEL
    want_tokens = sum(len(x) for x in fp32.tokenizer.encode(TEXTS))
    assert r.usage.prompt_tokens == r.usage.total_tokens == want_tokens
    one = client.embeddings.create(model=MODEL, input=TEXTS[0])
    np.testing.assert_allclose(one.data[0].embedding, got[0], atol=1e-5)


def test_float_over_plain_http(server, fp32):
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": TEXTS[:2], "user": "someone"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    assert isinstance(body["data"][0]["embedding"], list)
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), _direct(fp32, TEXTS[:2]), atol=1e-5)
    b64 = httpx.post(server.url + "/v1/embeddings",
                     json={"model": MODEL, "input": TEXTS[:2], "encoding_format": "base64"}).json()
    dec = np.frombuffer(base64.b64decode(b64["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(dec, np.array(body["data"][1]["embedding"], dtype=np.float32))


def test_dimensions(server, fp32):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    r = client.embeddings.create(model=MODEL, input=TEXTS[:3], dimensions=64)
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (3, 64)
    full = _direct(fp32, TEXTS[:3])[:, :64]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    same = client.embeddings.create(model=MODEL, input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384


def test_input_type_applies_prefixes(strict_server, fp32):
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="x", max_retries=0)
    text = "how do I pause a rollout"
    q = client.embeddings.create(model=MODEL, input=text, extra_body={"input_type": "query"})
    p = client.embeddings.create(model=MODEL, input=text, extra_body={"input_type": "passage"})
    plain = client.embeddings.create(model=MODEL, input=text)
    np.testing.assert_allclose(q.data[0].embedding, _direct(fp32, ["query: " + text])[0], atol=1e-5)
    np.testing.assert_allclose(p.data[0].embedding, _direct(fp32, ["passage: " + text])[0], atol=1e-5)
    np.testing.assert_allclose(plain.data[0].embedding, _direct(fp32, [text])[0], atol=1e-5)
    assert q.usage.prompt_tokens == len(fp32.tokenizer.encode(["query: " + text])[0]) > plain.usage.prompt_tokens


def test_models(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="other-model", input="x")
    assert e.value.body["code"] == "model_not_found"


# ------------------------------------------------------------------------------------ bad input

LONG = "pods " * 100  # > 32 tokens (the strict server's limit)

BAD = {
    "empty list": ({"model": MODEL, "input": []}, 400, "input"),
    "empty string": ({"model": MODEL, "input": ""}, 400, "input"),
    "empty string in list": ({"model": MODEL, "input": ["a", ""]}, 400, "input"),
    "non-string in list": ({"model": MODEL, "input": ["a", 3]}, 400, "input"),
    "null in list": ({"model": MODEL, "input": ["a", None]}, 400, "input"),
    "object input": ({"model": MODEL, "input": {"text": "a"}}, 400, "input"),
    "number input": ({"model": MODEL, "input": 7}, 400, "input"),
    "lone surrogate": ({"model": MODEL, "input": "a\ud800b"}, 400, "input"),
    "lone surrogate in list": ({"model": MODEL, "input": ["fine", "\udfff"]}, 400, "input"),
    "token id not in vocabulary": ({"model": MODEL, "input": [101, 10 ** 12]}, 400, "input"),
    "negative token id": ({"model": MODEL, "input": [[5, -1]]}, 400, "input"),
    "empty token array": ({"model": MODEL, "input": [[1, 2], []]}, 400, "input"),
    "text mixed with token ids": ({"model": MODEL, "input": ["a", [1, 2]]}, 400, "input"),
    "float in token array": ({"model": MODEL, "input": [[1, 2.5]]}, 400, "input"),
    "missing input": ({"model": MODEL}, 400, "input"),
    "missing model": ({"input": "a"}, 400, "model"),
    "model not a string": ({"model": 3, "input": "a"}, 400, "model"),
    "unknown model": ({"model": "gpt-4", "input": "a"}, 404, "model"),
    "too many inputs": ({"model": MODEL, "input": ["a"] * 5}, 400, "input"),
    "too long": ({"model": MODEL, "input": ["short", LONG]}, 400, "input"),
    "bad encoding_format": ({"model": MODEL, "input": "a", "encoding_format": "int8"}, 400, "encoding_format"),
    "dimensions zero": ({"model": MODEL, "input": "a", "dimensions": 0}, 400, "dimensions"),
    "dimensions above native": ({"model": MODEL, "input": "a", "dimensions": 385}, 400, "dimensions"),
    "dimensions string": ({"model": MODEL, "input": "a", "dimensions": "64"}, 400, "dimensions"),
    "dimensions bool": ({"model": MODEL, "input": "a", "dimensions": True}, 400, "dimensions"),
    "dimensions float": ({"model": MODEL, "input": "a", "dimensions": 64.5}, 400, "dimensions"),
    "bad input_type": ({"model": MODEL, "input": "a", "input_type": "question"}, 400, "input_type"),
    "user not a string": ({"model": MODEL, "input": "a", "user": 5}, 400, "user"),
    "unknown field": ({"model": MODEL, "input": "a", "input_typ": "query"}, 400, "input_typ"),
    "body is a list": ([{"model": MODEL, "input": "a"}], 400, None),
    "body is a string": ("hello", 400, None),
    "body is null": (None, 400, None),
}


def _check_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    return err


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_json_requests(strict_server, case):
    body, status, param = BAD[case]
    r = httpx.post(strict_server.url + "/v1/embeddings", content=json.dumps(body),
                   headers={"content-type": "application/json"})
    _check_error(r, status, param)


@pytest.mark.parametrize("raw", [b"{", b'{"model": "tiny-embed", "input": ["a",]}', b"\xff\xfe\x00garbage", b"",
                                 b"[" * 100_00 + b"]" * 100_00,
                                 b'{"model": "tiny-embed", "input": "a", "input": "b"}',
                                 b'{"model": "tiny-embed", "input": "a", "dimensions": NaN}',
                                 b'{"model": "tiny-embed", "input": "a", "dimensions": ' + b"9" * 5000 + b"}"],
                         ids=["truncated", "trailing comma", "not utf-8", "empty body", "deep nesting",
                              "duplicate key", "NaN", "integer past the digit limit"])
def test_malformed_bodies(strict_server, raw):
    r = httpx.post(strict_server.url + "/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    _check_error(r, 400)


def test_oversize_payload_413(strict_server):
    big = json.dumps({"model": MODEL, "input": ["word " * 1000] * 4})
    assert len(big) > 20_000
    err = _check_error(httpx.post(strict_server.url + "/v1/embeddings", content=big), 413)
    assert err["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(10):
            yield b" " * 4096

    _check_error(httpx.post(strict_server.url + "/v1/embeddings", content=chunks()), 413)


def test_openai_client_sees_errors(strict_server):
    client = openai.OpenAI(base_url=strict_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input=[])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input=[[1, 2, 10 ** 9]])
    assert e.value.body["code"] == "invalid_token_id" and "cl100k_base" in e.value.body["message"]


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/embeddings")
    _check_error(r, 405)
    _check_error(httpx.get(server.url + "/v2/whatever"), 404)


def test_truncation_mode_counts_real_tokens(server, fp32):
    text = "replicas " * 400
    r = httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": [text, "x"]})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 256 + len(fp32.tokenizer.encode(["x"])[0])
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], _direct(fp32, [text])[0], atol=1e-5)


# ------------------------------------------------------------------------------------ batching


def test_32_concurrent_clients_match_single_calls(server, fp32):
    rng = np.random.default_rng(0)
    words = " ".join(TEXTS).split()
    requests = []
    for i in range(32):
        n = 1 if i % 3 else int(rng.integers(2, 5))
        requests.append([" ".join(rng.choice(words, int(rng.integers(2, 60)))) for _ in range(n)])
    singles = [_direct(fp32, texts) for texts in requests]
    before = _metric(server, "eft_batch_size_count")

    async def go():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            async def one(texts):
                r = await c.post("/v1/embeddings", json={"model": MODEL, "input": texts, "encoding_format": "base64"})
                assert r.status_code == 200, r.text
                data = r.json()["data"]
                assert [d["index"] for d in data] == list(range(len(texts)))
                return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in data])
            return await asyncio.gather(*(one(t) for t in requests))

    results = asyncio.run(go())
    for got, want in zip(results, singles):
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    passes = _metric(server, "eft_batch_size_count") - before
    texts = sum(len(t) for t in requests)
    assert passes < texts, f"no batching: {passes} forward passes for {texts} texts"


def _metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_int8_answers_do_not_depend_on_batch_mates(int8):
    """Dynamic int8 scales activations per forward pass, so the backend runs int8 one text per pass."""
    ids = int8.tokenizer.encode(TEXTS)
    alone = np.stack([int8.embed([x])[0] for x in ids])
    np.testing.assert_array_equal(int8.embed(ids), alone)
    np.testing.assert_array_equal(int8.embed(ids[::-1])[::-1], alone)
    # What batching int8 would do (the reason for the above): the same text moves measurably.
    int8.row_by_row = False
    try:
        together = int8.embed(ids)
    finally:
        int8.row_by_row = True
    assert not np.allclose(together, alone, atol=1e-4)


class _Flaky(Backend):
    """Wraps a backend: slow forward passes, and a failure for texts containing 'boom'."""

    def __init__(self, inner: Backend, delay: float = 0.0):
        self.inner, self.delay = inner, delay
        self.info, self.tokenizer, self.pad_id = inner.info, inner.tokenizer, inner.pad_id
        self.boom = set(inner.tokenizer.encode(["boom"])[0][1:-1])

    def embed(self, batch):
        time.sleep(self.delay)
        if any(self.boom & set(x) for x in batch):
            raise RuntimeError("inference exploded")
        return self.inner.embed(batch)


def test_backend_failure_is_a_500_json_not_a_crash(fp32):
    with ServerThread(create_app(ServerConfig(max_wait_ms=0), _Flaky(fp32))) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": ["boom"]})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        ok = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": ["fine"]})
        assert ok.status_code == 200


def test_overload_503(fp32):
    cfg = ServerConfig(max_queue=2, max_wait_ms=0, max_batch_size=1)
    with ServerThread(create_app(cfg, _Flaky(fp32, delay=0.3))) as s:
        async def go():
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
                                              for _ in range(4)))
        answers = asyncio.run(go())
        codes = sorted(r.status_code for r in answers)
        assert codes[0] == 200 and 503 in codes, codes
        bad = next(r for r in answers if r.status_code == 503)
        assert bad.json()["error"]["code"] == "overloaded" and bad.headers["retry-after"] == "1"


# ------------------------------------------------------------------------------------ lifecycle


def test_health_and_metrics(server):
    assert httpx.get(server.url + "/health/live").status_code == 200
    ready = httpx.get(server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": ["metrics please"]})
    httpx.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": []})
    text = httpx.get(server.url + "/metrics").text
    for name in ("eft_request_duration_seconds_bucket", "eft_batch_size_bucket", "eft_queue_depth",
                 "eft_tokens_total", 'eft_errors_total{code="empty_input"}', 'eft_requests_total{status="200"}'):
        assert name in text, name


def test_ready_only_after_load_and_warmup(fp32):
    gate = threading.Event()

    def loader():
        gate.wait(30)
        return fp32

    s = ServerThread(create_app(ServerConfig(), loader)).start(ready=False)
    try:
        assert httpx.get(s.url + "/health/live").status_code == 200
        r = httpx.get(s.url + "/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        e = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": "a"})
        assert e.status_code == 503 and e.json()["error"]["code"] == "model_loading"
        gate.set()
        deadline = time.monotonic() + 30
        while httpx.get(s.url + "/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": "a"}).status_code == 200
    finally:
        s.stop()


def test_shutdown_while_loading_does_not_hang(fp32):
    gate = threading.Event()

    def loader():
        gate.wait(30)
        return fp32

    s = ServerThread(create_app(ServerConfig(), loader)).start(ready=False)
    t0 = time.monotonic()
    s.stop(timeout=20)
    assert not s.thread.is_alive() and time.monotonic() - t0 < 10
    gate.set()


class _Gated(_Flaky):
    """Forward passes wait while the test holds the gate closed: requests stay in flight as long as it needs.

    The gate starts open, so the server's warm-up passes go through (closed, each of the three would wait out
    the 30 s timeout before the server turned ready); the test closes it once the server is ready."""

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, batch):
        self.gate.wait(30)
        return self.inner.embed(batch)


def _queue_depth(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith("eft_queue_depth ")))


def test_graceful_shutdown_drains_in_flight(fp32):
    backend = _Gated(fp32)
    s = ServerThread(create_app(ServerConfig(max_wait_ms=0, max_batch_size=1), backend)).start()
    backend.gate.clear()  # warmed up and ready: from now on every forward pass waits for the test
    results: list[int] = []

    def call(i):
        r = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": [f"text {i}"]}, timeout=30)
        results.append(r.status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    # all four accepted and in flight (not a fixed sleep: a loaded machine may take longer to send them)
    deadline = time.monotonic() + 20
    while _queue_depth(s.url) < 4:
        assert time.monotonic() < deadline, "the four requests never were in flight at once"
        time.sleep(0.05)
    stopping = threading.Thread(target=s.stop)
    stopping.start()
    time.sleep(0.2)  # the shutdown has begun while every request still waits for its forward pass
    backend.gate.set()
    stopping.join(30)
    for t in threads:
        t.join(30)
    assert results == [200] * 4


# ------------------------------------------------------------------------------------ backends, files


def test_onnx_matches_pytorch(export_dir, fp32, int8):
    torch_backend = load_backend(export_dir, backend="torch", device="cpu", threads=2)
    assert isinstance(torch_backend, TorchBackend)
    texts = TEXTS + ["word " * 300]
    ref = _direct(torch_backend, texts)
    cos32 = (ref * _direct(fp32, texts)).sum(1)
    assert cos32.min() >= 0.9999, cos32
    cos8 = (ref * _direct(int8, texts)).sum(1)
    assert cos8.min() >= 0.98, cos8
    # And through a server: the torch backend on a plain sentence-transformers folder.
    from eft.models import resolve_model_path

    plain = load_backend(Path(resolve_model_path("bundled")), backend="auto", device="cpu", threads=2,
                         model_name="minilm")
    assert isinstance(plain, TorchBackend)
    with ServerThread(create_app(ServerConfig(), plain)) as s:
        r = httpx.post(s.url + "/v1/embeddings", json={"model": "minilm", "input": texts})
        got = np.array([d["embedding"] for d in r.json()["data"]])
    assert ((got * _direct(fp32, texts)).sum(1) >= 0.9999).all()


def test_default_variant_is_int8_on_cpu(export_dir):
    b = load_backend(export_dir, device="cpu", threads=1)
    assert (b.kind, b.variant) == ("onnx", "int8")
    with pytest.raises(ModelRefused, match="not exported"):
        load_backend(export_dir, variant="fp16", device="cpu")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")  # the fallback itself
def test_gpu_provider_that_falls_back_to_cpu(export_dir, monkeypatch, caplog):
    """onnxruntime answers on the CPU when its CUDA provider cannot start: auto serves on CPU, cuda refuses."""
    import onnxruntime as ort

    from eft.serving import backends

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("the CPU fallback is provoked only where CUDA cannot start; this onnxruntime has a CUDA "
                    "provider that may (CI's CPU-only onnxruntime runs the test)")
    monkeypatch.setattr(backends, "ort_providers", lambda device: ["CPUExecutionProvider"] if device == "cpu"
                        else ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with caplog.at_level("WARNING", logger="eft.serving"):
        b = load_backend(export_dir, device="auto", threads=1, verify=False)
    assert (b.device, b.variant) == ("cpu", "int8")  # chosen again for the CPU
    assert "the CUDA provider did not start; serving on CPU" in caplog.text
    with pytest.raises(ModelRefused, match="could not start its CUDAExecutionProvider provider"):
        load_backend(export_dir, device="cuda", threads=1, verify=False)


def test_trt_cache_setting_reaches_the_tensorrt_provider(export_dir, monkeypatch):
    from eft.serving import backends, cli

    # $EFT_TRT_CACHE → ServeSettings → the server's backend loader
    wired: list[str | None] = []
    monkeypatch.setenv("EFT_TRT_CACHE", "/srv/trt-cache")
    monkeypatch.setattr(cli, "_configure_process", lambda log_level: None)  # leaves this process's logging be
    monkeypatch.setattr(cli, "preflight", lambda args: "onnx")
    monkeypatch.setattr(cli, "_serve", lambda args, kind, trt_cache: wired.append(trt_cache) or [])
    assert cli.main(["--model", str(export_dir)]) == 0
    assert wired == ["/srv/trt-cache"]

    # the loader → load_backend → OnnxBackend → TensorRT provider options (the session ends up on CPU here)
    asked: list[tuple] = []
    monkeypatch.setattr(backends, "ort_providers", lambda device: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(backends, "_tensorrt_providers",
                        lambda m, vfile, max_batch, fp16, cache: asked.append((vfile, fp16, cache)) or
                        ["CPUExecutionProvider"])
    args = cli.build_parser().parse_args(["--model", str(export_dir), "--device", "tensorrt", "--threads", "1"])
    with pytest.raises(ModelRefused, match="could not start its TensorRT provider"):
        cli._backend_loader(args, "onnx", "/srv/trt-cache")()
    assert asked == [("model.onnx", True, "/srv/trt-cache")]  # the fp32 graph; TensorRT builds fp16 from it


def test_tensorrt_engine_cache_folder(export_dir):
    from eft.serving.backends import _tensorrt_providers
    from eft.serving.manifest import load_manifest

    m = load_manifest(export_dir)
    given = _tensorrt_providers(m, "model.onnx", 32, True, "/srv/trt-cache")
    assert given[0][0] == "TensorrtExecutionProvider" and given[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert given[0][1]["trt_engine_cache_path"] == "/srv/trt-cache" and given[0][1]["trt_fp16_enable"] is True
    default = _tensorrt_providers(m, "model.onnx", 32, False, None)[0][1]["trt_engine_cache_path"]
    sha = m["files"]["model.onnx"]["sha256"][:12]
    assert Path(default).parent == Path(tempfile.gettempdir()) and Path(default).name == f"eft-trt-cache-{sha}"


def test_serve_flags_default_to_the_serve_settings(monkeypatch):
    from eft.serving.cli import build_parser
    from eft.settings import ServeSettings

    args = build_parser(ServeSettings(host="127.0.0.1", port=9000, log_level="debug")).parse_args(["--model", "m"])
    assert (args.host, args.port, args.log_level) == ("127.0.0.1", 9000, "debug")
    monkeypatch.setenv("EFT_SERVE_PORT", "1234")  # read by ServeSettings.from_env, never by the parser
    args = build_parser().parse_args(["--model", "m"])
    assert (args.host, args.port, args.log_level) == ("0.0.0.0", 8000, "info")


def _serve_cli(model: Path, *args: str, timeout: float = 60,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eft.cli", "serve", "--model", str(model), "--host", "127.0.0.1",
                           "--port", "1", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})})


@pytest.mark.parametrize("damage", ["tampered", "truncated", "missing"])
def test_damaged_model_file_refused_at_start(export_dir, tmp_path, damage):
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    target = copy / ("model.int8.onnx" if damage == "tampered" else "model.onnx")
    if damage == "tampered":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncated":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size // 2)
    else:
        (copy / "tokenizer.json").unlink()
    p = _serve_cli(copy)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    want = {"tampered": "does not match its sha256", "truncated": "is truncated", "missing": "is missing"}[damage]
    assert want in line
    assert "refusing" in line or damage == "missing"


def test_cli_refusals_are_one_line(export_dir, tmp_path):
    p = _serve_cli(tmp_path / "nowhere")
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = _serve_cli(export_dir, "--variant", "fp16")
    assert p.returncode == 2 and "fp16 was not exported" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("name,value,want", [
    ("EFT_SERVE_PORT", "eighty", "$EFT_SERVE_PORT must be an integer, got 'eighty'"),
    ("EFT_LOG_LEVEL", "loud", "$EFT_LOG_LEVEL must be one of debug, info, warning, error, got 'loud'"),
])
def test_cli_malformed_setting_is_one_line(tmp_path, name, value, want):
    p = _serve_cli(tmp_path / "nowhere", env={name: value})
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {want}"]


def test_smoke_check(export_dir):
    from eft.serving.smoke import smoke_check

    line = smoke_check(export_dir)
    assert line.startswith("smoke check OK"), line
    assert "dim 384" in line and "stopped cleanly" in line
