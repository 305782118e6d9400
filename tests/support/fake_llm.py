"""An in-process, scriptable OpenAI-compatible Chat Completions server for tests.

It speaks enough of the protocol for the real `openai` client: POST /v1/chat/completions answers a
chat.completion object (id, object, created, model, choices[].message, usage) and GET /v1/models lists
one model. By default it answers well, built from the prompt (the format of eft/stages/sdg/prompts.py):

* a generation request (chunks as ``<chunk id="C1" ...>``) gets one single-hop question per chunk and,
  when there are 2+ chunks, one question over the first two; each question's text quotes the first
  QUOTE characters of every chunk it cites, so a test can check its positives;
* a judge request (pairs as ``<pair n="1">``) gets score `good_score` for every pair, or `low_score`
  when the question contains `low_marker`.

Script failures with `add(Rule(...))`: the first rule that matches a request (kind, prompt substring)
and still has `times` left decides the answer: "status" (an HTTP error with headers, e.g. 429 +
Retry-After), "content" (a 200 whose message content is the given text, e.g. malformed JSON), "sleep"
(wait, then answer normally: past the client's timeout this is a timeout). `reject_response_format`
answers 400 to any request with response_format; `api_key` makes a wrong bearer token a 401;
`delay` slows every answer. Every request is recorded in `requests` (kind, chunk texts by alias, status,
monotonic time, response_format, usage).

    with FakeLLM() as llm:
        spec.sdg.openai.base_url = llm.base_url
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

QUOTE = 24
_CHUNK = re.compile(r'<chunk id="(C\d+)"[^>]*>\n(.*?)\n</chunk>', re.DOTALL)
_PAIR = re.compile(r'<pair n="(\d+)">\s*\nQuestion: (.*?)\nAnswered by: (.*?)\n</pair>', re.DOTALL)


@dataclass
class Rule:
    action: str  # "status" | "content" | "sleep"
    kind: str | None = None  # "generate" | "judge" | None (any)
    contains: str | None = None  # substring of the user prompt
    times: int | None = 1  # None: forever
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"
    content: str = ""
    seconds: float = 0.0
    hits: int = 0

    def matches(self, kind: str, prompt: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.kind is not None and self.kind != kind:
            return False
        return self.contains is None or self.contains in prompt


@dataclass
class Request:
    kind: str
    chunks: dict[str, str]  # alias -> chunk text
    status: int
    time: float
    response_format: Any
    usage: dict[str, int] | None
    prompt: str

    @property
    def texts(self) -> frozenset[str]:
        return frozenset(self.chunks.values())


def quote(text: str) -> str:
    return " ".join(text.split())[:QUOTE]


class FakeLLM:
    def __init__(self, model: str = "fake-model"):
        self.model = model
        self.rules: list[Rule] = []
        self.requests: list[Request] = []
        self.other_paths: list[str] = []  # POSTs to anything but /v1/chat/completions (answered 404)
        self.reject_response_format = False
        self.api_key: str | None = None
        self.delay = 0.0
        self.good_score = 9
        self.low_score = 3
        self.low_marker = "LOWQ"
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.split("?")[0].rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "created": 0, "owned_by": "fake"}]})
                else:
                    self._send(404, {"error": {"message": "not found", "type": "not_found", "code": 404}})

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
                    with fake._lock:
                        fake.other_paths.append(self.path)
                    self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}})
                    return
                status, payload, headers = fake._answer(body, self.headers.get("authorization", ""))
                self._send(status, payload, headers)

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-llm")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # ---------------------------------------------------------------- scripting
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def count(self, kind: str | None = None, status: int | None = None) -> int:
        return sum(1 for r in self.requests if (kind is None or r.kind == kind)
                   and (status is None or r.status == status))

    def tokens(self) -> dict[str, int]:
        out = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for r in self.requests:
            for k in out:
                out[k] += (r.usage or {}).get(k, 0)
        return out

    # ---------------------------------------------------------------- answers
    def _answer(self, body: dict[str, Any], auth: str) -> tuple[int, Any, dict[str, str]]:
        msgs = body.get("messages") or []
        prompt = "\n".join(str(m.get("content", "")) for m in msgs if m.get("role") == "user")
        kind = "judge" if "<pair n=" in prompt else "generate"
        chunks = dict(_CHUNK.findall(prompt))
        rf = body.get("response_format")
        with self._lock:
            rule = next((r for r in self.rules if r.matches(kind, prompt)), None)
            if rule is not None:
                rule.hits += 1
        rec = Request(kind, chunks, 200, time.monotonic(), rf, None, prompt)

        def finish(status: int, payload: Any, headers: dict[str, str] | None = None):
            rec.status = status
            with self._lock:
                self.requests.append(rec)
            return status, payload, headers or {}

        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return finish(401, _error("Incorrect API key provided", "invalid_request_error", "invalid_api_key"))
        if self.reject_response_format and rf is not None:
            return finish(400, _error("response_format is not supported by this model", "BadRequestError",
                                      None, param="response_format"))
        if self.delay:
            time.sleep(self.delay)
        content: str | None = None
        if rule is not None:
            if rule.action == "status":
                return finish(rule.status, _error(rule.message, "scripted", str(rule.status)), rule.headers)
            if rule.action == "content":
                content = rule.content
            elif rule.action == "sleep":
                time.sleep(rule.seconds)
        if content is None:
            content = self._judge(prompt) if kind == "judge" else self._generate(chunks)
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": max(1, len(content) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rec.usage = usage
        return finish(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage,
        })

    def _generate(self, chunks: dict[str, str]) -> str:
        qs = [{"question": f"What about {quote(t)}?", "hops": [[a]]} for a, t in chunks.items()]
        if len(chunks) >= 2:
            (a1, t1), (a2, t2) = list(chunks.items())[:2]
            qs.append({"question": f"How does {quote(t1)} relate to {quote(t2)}?", "hops": [[a1], [a2]]})
        return json.dumps({"questions": qs})

    def _judge(self, prompt: str) -> str:
        scores = []
        for n, q, _cited in _PAIR.findall(prompt):
            s = self.low_score if self.low_marker and self.low_marker in q else self.good_score
            scores.append({"n": int(n), "relevance": s, "accuracy": s, "context_support": s, "clarity": s,
                           "overall": s, "reason": "scripted"})
        return json.dumps({"scores": scores})


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
