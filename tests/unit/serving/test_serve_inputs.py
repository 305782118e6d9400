"""What clients send to /v1/embeddings: fuzzed bodies, token-id inputs, and the real client libraries.

A real uvicorn server on loopback in a thread of this process, on the ONNX fp32 export of the bundled model.
The fuzz tests (hypothesis, bounded examples) hold the server to one rule: every request gets a 200 when
the request is valid and an OpenAI-shaped 4xx otherwise, never a 5xx, never a traceback in the log, and
the server stays ready. Validity is judged by `_valid`, written from the API's definition, not from the
server's code.
"""

from __future__ import annotations

import json
import logging
import math

import httpx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eft.serving.app import ServerConfig, create_app
from eft.serving.backends import load_backend
from tests.support.export_workspace import shared_export
from tests.support.server import ServerThread
from eft.serving.token_ids import ENCODINGS, write_tiktoken_cache

MODEL = "tiny-embed"
DIM = 384
MAX_INPUTS = 8
TEXTS = ["How many pods does a Deployment run?", "Le nœud redémarre après 30 s 🚀",
         "A StatefulSet gives each pod a stable network identity and persistent storage.", "kubectl"]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                      HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    export = shared_export(tmp_path_factory.mktemp("serve-inputs"))
    return load_backend(export, backend="onnx", variant="fp32", device="cpu", threads=2)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def server(fp32):
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with ServerThread(create_app(ServerConfig(max_inputs=MAX_INPUTS, max_request_bytes=2_000_000), fp32)) as s:
            s.records = records.records
            yield s
    finally:
        logging.getLogger().removeHandler(records)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory, monkeypatch_module):
    """tiktoken's vocabularies where tiktoken looks (clients here cannot download them)."""
    folder = write_tiktoken_cache(tmp_path_factory.mktemp("tiktoken"))
    monkeypatch_module.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _direct(backend, texts):
    return np.stack([backend.embed(backend.tokenizer.encode([t]))[0] for t in texts])


# ------------------------------------------------------------------------------------ the oracle

CL100K_SPECIAL = set(ENCODINGS["cl100k_base"]["special"].values())


def _valid_text(x) -> bool:
    if not isinstance(x, str) or x == "":
        return False
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_ids(x) -> bool:
    return (isinstance(x, list) and bool(x) and all(type(t) is int for t in x)
            and all(0 <= t < 100256 or t in CL100K_SPECIAL for t in x))


def _valid(body) -> bool:
    """Whether OpenAI's API (as this server implements it: cl100k_base token ids) accepts the body."""
    if not isinstance(body, dict) or set(body) - {"input", "model", "encoding_format", "dimensions", "user",
                                                  "input_type"}:
        return False
    if body.get("model") != MODEL or "input" not in body:
        return False
    raw = body["input"]
    if isinstance(raw, str):
        ok = _valid_text(raw)
    elif isinstance(raw, list) and raw and all(type(t) is int for t in raw):
        ok = _valid_ids(raw)
    elif isinstance(raw, list) and 0 < len(raw) <= MAX_INPUTS:
        ok = all(_valid_text(x) for x in raw) or all(_valid_ids(x) for x in raw)
    else:
        ok = False
    dims = body.get("dimensions")
    return (ok and body.get("encoding_format") in (None, "float", "base64")
            and (dims is None or (type(dims) is int and 1 <= dims <= DIM))
            and (body.get("user") is None or isinstance(body["user"], str))
            and body.get("input_type") in (None, "query", "passage", "document"))


def _inputs_of(body) -> int:
    raw = body["input"]
    return 1 if isinstance(raw, str) or all(type(t) is int for t in raw) else len(raw)


def _check(server, r: httpx.Response, body_ok: bool | None, n: int | None = None) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if body_ok is not None:
        assert (r.status_code == 200) == body_ok, (r.status_code, r.text)
    if r.status_code == 200:
        data = r.json()["data"]
        assert n is None or len(data) == n
        assert all(d["object"] == "embedding" for d in data)
    else:
        assert r.status_code in (400, 404, 413), r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
        assert isinstance(err["message"], str) and err["message"]
    bad = [rec for rec in server.records if rec.exc_info or rec.levelno >= logging.ERROR]
    assert not bad, [rec.getMessage() for rec in bad]


# ------------------------------------------------------------------------------------ strategies

# Any code point, lone surrogates (category Cs) included; plus the shapes that break naive tokenizers.
any_char = st.characters(codec=None, categories=None)
texts = st.one_of(
    st.text(any_char, max_size=40),
    st.lists(st.sampled_from(["\x00", "\u0301", "\u200f", "\u202e", "\ufeff", "🚀", "👩‍👩‍👧", "\ud800", "\udfff",
                              "a", " ", "\n", "\t", "\u05d0", "\u0627"]), max_size=30).map("".join),
    st.builds(lambda c, n: c * n, any_char, st.integers(100, 20_000)),  # one very long word
)
token_arrays = st.lists(st.one_of(st.integers(0, 100_300), st.integers(), st.sampled_from(sorted(CL100K_SPECIAL))),
                        max_size=30)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10 ** 30, 10 ** 30),
                         st.floats(allow_nan=False, allow_infinity=False), texts)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(texts, c, max_size=5),
                           max_leaves=15)
inputs = st.one_of(texts, st.lists(texts, max_size=MAX_INPUTS + 2), token_arrays,
                   st.lists(token_arrays, max_size=MAX_INPUTS + 2), json_values)
bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), json_values), "input": inputs},
    optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64", None, "int8"]), json_values),
              "dimensions": st.one_of(st.integers(-5, DIM + 5), st.just(None), json_values),
              "user": st.one_of(st.text(any_char, max_size=20), json_values),
              "input_type": st.one_of(st.sampled_from(["query", "passage", "document", "question"]), json_values),
              "inpt": json_values})


def _post(http, body) -> httpx.Response:
    # ensure_ascii: lone surrogates travel as \\udxxx escapes, as a JSON encoder in any language writes them
    return http.post("/v1/embeddings", content=json.dumps(body), headers={"content-type": "application/json"})


# ------------------------------------------------------------------------------------ fuzz


@FUZZ
@given(body=bodies)
def test_fuzzed_requests_are_answered_by_the_api_definition(server, http, body):
    ok = _valid(body)
    _check(server, _post(http, body), ok, _inputs_of(body) if ok else None)


@FUZZ
@given(body=json_values)
def test_any_json_value_as_the_body(server, http, body):
    _check(server, _post(http, body), _valid(body))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes(server, http, raw):
    r = http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    try:
        body = json.loads(raw)
    except ValueError:
        _check(server, r, False)
    else:  # some byte strings are JSON ("1", "[]", ...): judged like any body
        _check(server, r, _valid(body))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.sampled_from(["model", "input", "user"]), min_size=3, max_size=6))
def test_duplicate_keys_are_refused(server, http, pairs):
    values = {"model": json.dumps(MODEL), "input": json.dumps("text"), "user": json.dumps("u")}
    raw = "{" + ", ".join(f'"{k}": {values[k]}' for k in pairs) + "}"
    dup = len(set(pairs)) < len(pairs)
    r = http.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    if dup:
        _check(server, r, False)
        assert "duplicate key" in r.json()["error"]["message"]
    else:
        _check(server, r, {"model", "input"} <= set(pairs), 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 200_000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting(server, http, depth, opener):
    closer = "]" if opener == "[" else "}"
    raw = '{"model": "tiny-embed", "input": ' + opener * depth + "1" + closer * depth + "}"
    _check(server, http.post("/v1/embeddings", content=raw), opener == "[" and depth <= 2, None)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(digits=st.integers(1, 20_000), field=st.sampled_from(["dimensions", "input"]), sign=st.sampled_from(["", "-"]))
def test_huge_and_negative_numbers(server, http, digits, field, sign):
    number = sign + "9" * digits
    value = number if field == "dimensions" else f"[{number}]"
    rest = '"input": "x"' if field == "dimensions" else ""
    raw = '{"model": "tiny-embed", ' + (rest + ", " if rest else "") + f'"{field}": {value}' + "}"
    valid = False
    if digits <= 4300:  # Python's int parsing limit; beyond it the body is refused as JSON
        n = int(number)
        valid = 1 <= n <= DIM if field == "dimensions" else (0 <= n < 100256 or n in CL100K_SPECIAL)
    _check(server, http.post("/v1/embeddings", content=raw), valid, 1 if valid else None)


def test_server_still_ready_and_clean_after_fuzzing(server, http, fp32):
    # Runs after the fuzz tests (file order): nothing they sent left the server unready or its log dirty.
    assert http.get("/health/ready").json()["status"] == "ready"
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS})
    np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], _direct(fp32, TEXTS), atol=1e-5)
    assert not [rec for rec in server.records if rec.exc_info or rec.levelno >= logging.ERROR]


def test_lone_surrogate_message_names_input_and_position(http):
    r = http.post("/v1/embeddings", content=json.dumps({"model": MODEL, "input": ["ok", "ab\ud83d"]}))
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "invalid_unicode" and err["param"] == "input"
    assert "'input[1]'" in err["message"] and "\\ud83d at character 2" in err["message"]
    # A well-formed pair (the same emoji, complete) is fine.
    assert http.post("/v1/embeddings", content=json.dumps({"model": MODEL, "input": "ab\U0001F680"})).status_code == 200


# ------------------------------------------------------------------------------------ token ids


def test_cl100k_token_ids_embed_the_text_they_encode(http, fp32, tiktoken_cache):
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base")
    ids = [enc.encode(t) for t in TEXTS]
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": ids})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, _direct(fp32, TEXTS), atol=1e-5)
    # usage counts the served model's tokens, not the client's
    assert r.json()["usage"]["prompt_tokens"] == sum(len(x) for x in fp32.tokenizer.encode(TEXTS))
    one = http.post("/v1/embeddings", json={"model": MODEL, "input": ids[1]}).json()["data"]
    assert len(one) == 1
    np.testing.assert_allclose(one[0]["embedding"], got[1], atol=1e-5)


@pytest.mark.parametrize("mode", ["o200k_base", "model", "reject"])
def test_token_id_modes(fp32, tiktoken_cache, mode):
    import tiktoken

    with ServerThread(create_app(ServerConfig(token_ids=mode), fp32)) as s:
        if mode == "o200k_base":
            ids = [tiktoken.get_encoding("o200k_base").encode(t) for t in TEXTS]
        else:  # the model's own ids, without special tokens (they are added when re-encoded)
            ids = [x[1:-1] for x in fp32.tokenizer.encode(TEXTS)]
        r = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": ids})
        if mode == "reject":
            err = r.json()["error"]
            assert r.status_code == 400 and err["code"] == "token_ids_not_supported"
            assert "check_embedding_ctx_length=False" in err["message"]
            return
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        # o200k: the text the ids encode; model: the ids themselves, exactly as the text's own encoding
        np.testing.assert_allclose(got, _direct(fp32, TEXTS), atol=1e-5)
        if mode == "model":  # longer than the model's limit: cut like text
            long_text = "replicas " * 400
            r = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": fp32.tokenizer.encode_bare(long_text)})
            assert r.json()["usage"]["prompt_tokens"] == fp32.info.max_length
            np.testing.assert_allclose(r.json()["data"][0]["embedding"], _direct(fp32, [long_text])[0], atol=1e-5)
        big = httpx.post(s.url + "/v1/embeddings", json={"model": MODEL, "input": [[10 ** 7]]})
        assert big.status_code == 400 and big.json()["error"]["code"] == "invalid_token_id"


# ------------------------------------------------------------------------------------ real clients


def _recording_client(sent: list):
    return httpx.Client(event_hooks={"request": [lambda req: sent.append(json.loads(req.read()))]})


def test_langchain_openai_embeddings_with_defaults(server, fp32, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    sent: list = []
    # Only where the server is and what it serves; every other setting at LangChain's default.
    emb = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key="unused",
                           http_client=_recording_client(sent))
    docs = np.array(emb.embed_documents(TEXTS))
    np.testing.assert_allclose(docs, _direct(fp32, TEXTS), atol=1e-5)
    assert all(isinstance(x, list) and all(type(t) is int for t in x) for x in sent[0]["input"]), \
        "LangChain's default path sends token ids"
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]), docs[0], atol=1e-5)
    # And its text path, for users who turn the token counting off.
    plain = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key="unused",
                             check_embedding_ctx_length=False, http_client=_recording_client(sent))
    np.testing.assert_allclose(plain.embed_documents(TEXTS), docs, atol=1e-5)
    assert sent[-1]["input"] == TEXTS


def test_langchain_long_text_is_chunked_and_averaged(server, fp32, tiktoken_cache):
    """Past LangChain's embedding_ctx_length it splits a text into token chunks and averages their embeddings."""
    import tiktoken
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model=MODEL, base_url=server.url + "/v1", api_key="unused", embedding_ctx_length=8)
    text = TEXTS[2]
    ids = tiktoken.get_encoding("cl100k_base").encode(text)
    chunks = [ids[i:i + 8] for i in range(0, len(ids), 8)]
    enc = tiktoken.get_encoding("cl100k_base")
    parts = _direct(fp32, [enc.decode(c) for c in chunks])
    want = np.average(parts, axis=0, weights=[len(c) for c in chunks])
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(emb.embed_query(text), want, atol=1e-5)


def test_llama_index_openai_embedding(server, fp32):
    from llama_index.embeddings.openai import OpenAIEmbedding

    emb = OpenAIEmbedding(model_name=MODEL, api_base=server.url + "/v1", api_key="unused")
    np.testing.assert_allclose(emb.get_text_embedding_batch(TEXTS), _direct(fp32, TEXTS), atol=1e-5)
    np.testing.assert_allclose(emb.get_query_embedding(TEXTS[0]), _direct(fp32, TEXTS[:1])[0], atol=1e-5)


def test_openai_client_text_and_token_ids(server, fp32, tiktoken_cache):
    import tiktoken

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    r = client.embeddings.create(model=MODEL, input=TEXTS)
    np.testing.assert_allclose([d.embedding for d in r.data], _direct(fp32, TEXTS), atol=1e-5)
    ids = tiktoken.get_encoding("cl100k_base").encode(TEXTS[1])
    t = client.embeddings.create(model=MODEL, input=[ids])
    np.testing.assert_allclose(t.data[0].embedding, r.data[1].embedding, atol=1e-5)
    assert math.isclose(np.linalg.norm(t.data[0].embedding), 1.0, rel_tol=1e-5)
