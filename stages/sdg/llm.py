"""A Chat Completions client with eft's own retry policy, rate limit and token accounting.

The openai client's built-in retries are disabled (max_retries=0) so that this module's policy is the
one in force: bounded retries with exponential backoff and jitter on 429 (honouring Retry-After and
retry-after-ms), 5xx, timeouts, connection errors and unusable (malformed) answers; immediate failure
on other 4xx; a FatalLLMError on 401/403/404, which no other bundle would survive either.
Thread-safe: one client serves all worker threads.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import openai

from eft.stages.sdg.prompts import MalformedOutput

T = TypeVar("T")

# Backoff: BACKOFF_BASE_S * 2**attempt, capped, times a jitter factor in [0.5, 1]. Tests shrink these.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# A Retry-After longer than this is capped (a misbehaving proxy must not park a worker for hours).
RETRY_AFTER_MAX_S = 300.0
PLACEHOLDER_KEY = "not-needed"


class FatalLLMError(Exception):
    """The server refuses every request (bad key, wrong URL or model): stop the whole stage."""


class RequestFailed(Exception):
    """One request failed for good (retries exhausted or not retryable); carries what it cost."""

    def __init__(self, message: str, usage: "Usage | None" = None, retries: int = 0):
        super().__init__(message)
        self.usage = usage or Usage()
        self.retries = retries


class Aborted(Exception):
    """The stage is stopping (another worker hit a fatal error)."""


def is_openai_host(base_url: str) -> bool:
    host = (urlparse(base_url).hostname or "").lower()
    return host == "api.openai.com" or host.endswith(".openai.com")


def describe(exc: BaseException) -> str:
    """One line for humans (journal failures file, StageFailed)."""
    if isinstance(exc, openai.APIStatusError):
        msg = getattr(exc, "message", "") or str(exc)
        return f"HTTP {exc.status_code}: {' '.join(str(msg).split())[:300]}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"connection error{': ' + ' '.join(str(cause).split())[:200] if cause else ''}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def retry_after_seconds(exc: BaseException) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _is_response_format_rejection(exc: openai.BadRequestError) -> bool:
    text = f"{getattr(exc, 'message', '')} {exc.body} {getattr(exc, 'param', '')}".lower()
    return any(s in text for s in ("response_format", "response format", "json_object", "guided_json",
                                   "json mode"))


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, u: Any) -> None:
        if u is None:
            return
        p = int(getattr(u, "prompt_tokens", 0) or 0)
        c = int(getattr(u, "completion_tokens", 0) or 0)
        t = int(getattr(u, "total_tokens", 0) or 0) or p + c
        self.prompt_tokens += p
        self.completion_tokens += c
        self.total_tokens += t

    def merge(self, d: dict[str, int] | "Usage") -> None:
        d = d if isinstance(d, dict) else d.as_dict()
        self.prompt_tokens += int(d.get("prompt_tokens", 0))
        self.completion_tokens += int(d.get("completion_tokens", 0))
        self.total_tokens += int(d.get("total_tokens", 0))

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class CallResult:
    value: Any
    usage: Usage = field(default_factory=Usage)
    retries: int = 0


class RateLimiter:
    """Spaces request starts evenly: at most `per_minute` starts in any minute."""

    def __init__(self, per_minute: int | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now and stop.wait(slot - now):
            raise Aborted()


class ChatClient:
    def __init__(self, cfg, stop: threading.Event | None = None, client: Any = None):
        """cfg: eft.spec.OpenAISpec. The API key comes from the environment variable cfg.api_key_env."""
        import os

        self.cfg = cfg
        self.stop = stop or threading.Event()
        key = os.environ.get(cfg.api_key_env, "").strip()
        if not key:
            if is_openai_host(cfg.base_url):
                raise FatalLLMError(
                    f"environment variable {cfg.api_key_env} is empty or unset; {cfg.base_url} needs an API key "
                    f"(set it, or sdg.openai.apiKeySecret in a cluster)"
                )
            key = PLACEHOLDER_KEY
        self.client = client or openai.OpenAI(
            base_url=cfg.base_url, api_key=key, timeout=cfg.timeout_seconds, max_retries=0
        )
        self.json_mode = bool(cfg.json_mode)
        self.limiter = RateLimiter(cfg.requests_per_minute)
        self._lock = threading.Lock()
        self.json_mode_fallbacks = 0

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.stop.wait(seconds):
            raise Aborted()

    def backoff(self, attempt: int, exc: BaseException | None) -> float:
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** attempt)) * random.uniform(0.5, 1.0)
        ra = retry_after_seconds(exc) if exc is not None else None
        if ra is not None:
            # The server said when: wait that long (plus a little jitter so workers do not stampede).
            delay = min(RETRY_AFTER_MAX_S, ra) + random.uniform(0.0, min(1.0, 0.1 * ra + 0.05))
        return delay

    def call(self, messages: list[dict[str, str]], parse: Callable[[str | None], T],
             temperature: float | None = None) -> CallResult:
        """One Chat Completions request, parsed by `parse`, retried per the policy. Usage counts every answer."""
        res = CallResult(None)
        attempt = 0
        last: BaseException | None = None
        while True:
            if self.stop.is_set():
                raise Aborted()
            self.limiter.wait(self.stop)
            json_mode = self.json_mode
            kwargs: dict[str, Any] = {
                "model": self.cfg.model,
                "messages": messages,
                "temperature": self.cfg.temperature if temperature is None else temperature,
            }
            if json_mode:
                kwargs["response_format"] = {"type": "json_object"}
            retryable = True
            try:
                resp = self.client.chat.completions.create(**kwargs)
                res.usage.add(getattr(resp, "usage", None))
                choices = getattr(resp, "choices", None) or []
                if not choices:
                    raise MalformedOutput("answer has no choices")
                content = choices[0].message.content
                res.value = parse(content)
                return res
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise FatalLLMError(self._fatal_message(exc)) from exc
            except openai.BadRequestError as exc:
                if json_mode and _is_response_format_rejection(exc):
                    with self._lock:  # remember for every later request; not counted as a retry
                        if self.json_mode:
                            self.json_mode = False
                            self.json_mode_fallbacks += 1
                    continue
                last, retryable = exc, False
            except openai.RateLimitError as exc:
                last = exc
            except openai.APIStatusError as exc:
                last, retryable = exc, exc.status_code >= 500 or exc.status_code in (408, 409)
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last = exc
            except MalformedOutput as exc:
                last = exc
            except openai.APIResponseValidationError as exc:
                last = exc
            if not retryable or attempt >= self.cfg.max_retries:
                tries = attempt + 1
                raise RequestFailed(f"{describe(last)} (after {tries} attempt{'s' if tries > 1 else ''})",
                                    res.usage, res.retries) from last
            self._sleep(self.backoff(attempt, last))
            attempt += 1
            res.retries += 1

    def _fatal_message(self, exc: openai.APIStatusError) -> str:
        base = f"the LLM server at {self.cfg.base_url} answered {describe(exc)}"
        if exc.status_code == 401:
            return f"{base}: check the API key in ${self.cfg.api_key_env} (sdg.openai.apiKeyEnv)"
        if exc.status_code == 403:
            return f"{base}: the API key in ${self.cfg.api_key_env} may not use model {self.cfg.model!r}"
        return (f"{base}: check sdg.openai.baseURL (an OpenAI-compatible API, usually ending in /v1) and "
                f"sdg.openai.model ({self.cfg.model!r})")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # pragma: no cover - best effort
            pass
