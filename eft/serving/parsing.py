"""Reading a POST /v1/embeddings body into an EmbeddingRequest, or an OpenAI-shaped ApiError.

Bodies are parsed and checked by hand (not through pydantic models) so that every malformed request
gets a 4xx in OpenAI's error shape — {"error": {"message", "type", "param", "code"}} — naming the
offending parameter, and nothing a client sends reaches the model as something it did not mean:
  * JSON is strict: duplicate keys (which parsers resolve differently), NaN / Infinity (not JSON),
    integers past Python's 4,300-digit limit and nesting past the parser's depth are 400s;
  * a string holding a lone UTF-16 surrogate (``"\\ud800"`` is valid JSON but not Unicode text: no
    UTF-8 encoding exists for it, and the tokenizer cannot read it) is a 400 naming the input and the
    character position. It is refused rather than replaced with U+FFFD because the usual cause is a
    client cutting a string inside a surrogate pair (an emoji), and a silently altered text would
    give an embedding of something the client never sent;
  * token-id arrays are accepted as OpenAI defines them and decoded as eft/serving/token_ids.py says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ALLOWED_FIELDS = ("input", "model", "encoding_format", "dimensions", "user", "input_type")
INPUT_TYPES = {"query": "query", "passage": "passage", "document": "passage"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or {400: "invalid_request", 404: "not_found", 413: "payload_too_large",
                             503: "service_unavailable"}.get(status, "error")
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


@dataclass
class EmbeddingRequest:
    texts: list[str] | None  # one of texts / token_ids is set
    token_ids: list[list[int]] | None
    model: str
    encoding_format: str
    dimensions: int | None
    input_type: str | None

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


class _StrictJsonError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _StrictJsonError(f"duplicate key {k!r} in a JSON object")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise _StrictJsonError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except _StrictJsonError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON body: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past the digit limit
        raise ApiError(400, f"malformed JSON body: {exc}", code="invalid_json") from None


def type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_token_array(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(_is_int(t) for t in x)


def check_unicode(text: str, where: str) -> None:
    """400 for a string that is not Unicode text (a lone surrogate); see the module docstring."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"{where} contains a lone UTF-16 surrogate (\\u{ord(text[exc.start]):04x} at character "
                       f"{exc.start}), which is not valid Unicode; send well-formed text (this usually means a "
                       "string was cut inside a surrogate pair, e.g. in the middle of an emoji)",
                       param="input", code="invalid_unicode") from None


def parse_input(raw: Any, max_inputs: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """(texts, None) or (None, token-id arrays) from the 'input' field."""
    if isinstance(raw, str):
        _check_text(raw, "'input'")
        return [raw], None
    if not isinstance(raw, list):
        raise ApiError(400, f"'input' must be a string, an array of strings or token-id arrays, got {type_name(raw)}",
                       param="input", code="invalid_type")
    if not raw:
        raise ApiError(400, "'input' must not be an empty array", param="input", code="empty_input")
    if all(_is_int(x) for x in raw):
        return None, [raw]  # one input as token ids
    if len(raw) > max_inputs:
        raise ApiError(400, f"too many inputs: {len(raw)}, the maximum per request is {max_inputs}",
                       param="input", code="too_many_inputs")
    if all(isinstance(x, list) for x in raw):
        for i, x in enumerate(raw):
            if not x:
                raise ApiError(400, f"'input[{i}]' must not be an empty array", param="input", code="empty_input")
            bad = next((t for t in x if not _is_int(t)), _OK)
            if bad is not _OK:
                raise ApiError(400, f"'input[{i}]' must be an array of integers (token ids), found {type_name(bad)}",
                               param="input", code="invalid_type")
        return None, raw
    for i, x in enumerate(raw):
        if not isinstance(x, str):
            mixed = " (strings and token-id arrays cannot be mixed in one request)" if isinstance(x, list) else ""
            raise ApiError(400, f"'input[{i}]' must be a string, got {type_name(x)}{mixed}", param="input",
                           code="invalid_type")
        _check_text(x, f"'input[{i}]'")
    return raw, None


_OK = object()


def _check_text(text: str, where: str) -> None:
    if text == "":
        raise ApiError(400, f"{where} must not be an empty string", param="input", code="empty_input")
    check_unicode(text, where)


def parse_request(payload: Any, max_inputs: int, served_name: str, dim: int) -> EmbeddingRequest:
    if not isinstance(payload, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type_name(payload)}")
    unknown = [k for k in payload if k not in ALLOWED_FIELDS]
    if unknown:
        name = unknown[0]
        shown = name if name.isascii() and len(name) <= 64 else repr(name[:64])
        raise ApiError(400, f"Unrecognized request argument supplied: {shown}", param=shown, code="unknown_parameter")
    if "model" not in payload:
        raise ApiError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    model = payload["model"]
    if not isinstance(model, str):
        raise ApiError(400, f"'model' must be a string, got {type_name(model)}", param="model", code="invalid_type")
    if model != served_name:
        shown = model if len(model) <= 200 else model[:200] + "..."
        raise ApiError(404, f"The model {shown!r} does not exist; this server serves '{served_name}'", param="model",
                       code="model_not_found")
    if "input" not in payload:
        raise ApiError(400, "you must provide an input parameter", param="input", code="missing_required_parameter")
    texts, token_ids = parse_input(payload["input"], max_inputs)
    fmt = payload.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {_short(fmt)}",
                       param="encoding_format", code="invalid_value")
    dims = payload.get("dimensions")
    if dims is not None:
        if not _is_int(dims):
            raise ApiError(400, f"'dimensions' must be an integer, got {type_name(dims)}", param="dimensions",
                           code="invalid_type")
        if dims < 1 or dims > dim:
            raise ApiError(400, f"'dimensions' must be between 1 and {dim} (the model's dimension), got "
                           f"{_short(dims)}", param="dimensions", code="invalid_value")
    user = payload.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, f"'user' must be a string, got {type_name(user)}", param="user", code="invalid_type")
    itype = payload.get("input_type")
    if itype is not None:
        if not isinstance(itype, str) or itype not in INPUT_TYPES:
            raise ApiError(400, f"'input_type' must be 'query' or 'passage', got {_short(itype)}", param="input_type",
                           code="invalid_value")
        itype = INPUT_TYPES[itype]
    return EmbeddingRequest(texts, token_ids, model, fmt, dims, itype)


def _short(v: Any) -> str:
    """A client value quoted in an error message, bounded (a 1 MB string or a 4,000-digit number stays out)."""
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."
