"""The request contract of ``youri serve``: every field of every endpoint is checked here.

One careless or hostile request must never cost another request its reply, so nothing reaches the
engine before its body passed these checks: JSON types (``"messages": 5``, ``"n": true``), ranges and
finite numbers (``temperature`` NaN or 1e-45, ``seed`` beyond 64 bits, ``repetition_penalty``
Infinity), string contents (lone surrogates), and the server's limits. A failure is an ``APIError``,
answered as an OpenAI error object ``{"error": {"message", "type", "param", "code"}}`` with status 400
(401/404/413 for the key, the model name and the body size). Nothing here does work that grows with a
request beyond reading it once: the routes call it from a worker thread, never the event loop. The sampling
ranges themselves live in
``SamplingParams.validate`` (shared with ``youri chat``); this module maps them to request fields.

OpenAI fields youri does not implement (``logit_bias``, ``presence_penalty``, ``best_of`` ...) are accepted
at their neutral value and refused otherwise, so a client never silently gets something it did not
ask for; fields unknown to the API are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from youri.prompts import PromptError, Turn, messages_to_turns
from youri.serve.engine import GenerationError, SamplingParams

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # per stop string: what may be held back of a streamed reply, at most


class APIError(Exception):
    """An error returned to the client as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class Limits:
    context: int
    max_prompt_tokens: int
    max_tokens_limit: int
    default_max_tokens: int
    max_n: int
    max_body_bytes: int
    max_prompts: int = 32  # prompts in one /v1/completions request (a batch, as lm-eval sends)


@dataclass
class Options:
    """Everything about a request except its prompt, checked (``max_tokens`` None = the server default)."""

    sampling: dict[str, Any]
    max_tokens: int | None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: no logprobs; k: each token's log-probability and its k top alternatives
    echo: bool = False  # /v1/completions: the prompt returned (and scored, with logprobs) before the completion
    json_schema: dict | None = None  # response_format: the reply must be JSON (json_object: {"type": "object"})


# ----------------------------------------------------------------------------- the body


async def read_body(request, limit: int) -> bytes:
    """The raw request body, at most ``limit`` bytes (413 above; nothing more is read)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(
            413, f"the request body has {length} bytes; this server accepts at most {limit}", code="request_too_large"
        )
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, f"the request body exceeds {limit} bytes", code="request_too_large")
    return bytes(raw)


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object (CPU work that grows with the body: the routes run it off the event loop)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:  # also: nesting too deep, integers of over 4300 digits
        raise APIError(400, f"the request body is not valid JSON: {str(err)[:200]}", code="invalid_json") from err
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _type_error(name: str, expected: str, value: Any) -> APIError:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return APIError(400, f"'{name}' must be {expected}, got {shown}", param=name, code="invalid_type")


def _value_error(name: str, message: str) -> APIError:
    return APIError(400, message, param=name, code="invalid_value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(value: Any, name: str) -> int | None:
    if value is not None and not _is_int(value):
        raise _type_error(name, "an integer", value)
    return value


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(name, "a number", value)
    if not math.isfinite(value):
        raise _value_error(name, f"'{name}' must be a finite number, got {value}")
    return value


def _boolean(value: Any, name: str) -> bool:
    if value is not None and not isinstance(value, bool):
        raise _type_error(name, "true or false", value)
    return bool(value)


def unicode_text(value: Any, name: str) -> str:
    """A string that is valid Unicode (JSON escapes can smuggle lone surrogates into Python strings)."""
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _value_error(name, f"'{name}' is not valid Unicode (a lone surrogate at character {err.start})") from err
    return value


# Implemented nowhere in youri: each is accepted at its neutral value(s) only (None is always neutral).
UNSUPPORTED = {
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "best_of": (1,),
    "suffix": ("",),
    "functions": ([],),
    "function_call": ("none",),
}


def _neutral(value: Any, neutral: tuple) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):  # False is not 0 here: JSON false and 0 are different values
        return any(n is value for n in neutral)
    return any(not isinstance(n, bool) and value == n for n in neutral)


def _refuse_unsupported(body: dict) -> None:
    for name, neutral in UNSUPPORTED.items():
        if not _neutral(body.get(name), neutral):
            raise APIError(
                400,
                f"'{name}' is not supported by this server (leave it out or send its default)",
                param=name,
                code="unsupported_parameter",
            )


def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP_STRINGS:
        raise _type_error("stop", f"a string or a list of 1 to {MAX_STOP_STRINGS} strings", value)
    for stop in stops:
        if not unicode_text(stop, "stop"):
            raise _value_error("stop", "'stop' strings must not be empty")
        if len(stop) > MAX_STOP_CHARS:
            raise _value_error("stop", f"a 'stop' string has {len(stop)} characters; at most {MAX_STOP_CHARS}")
    return stops


def _stream_options(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _value_error("stream_options", "'stream_options' is only allowed with \"stream\": true")
    if not isinstance(options, dict):
        raise _type_error("stream_options", 'an object such as {"include_usage": true}', options)
    return _boolean(options.get("include_usage"), "stream_options.include_usage")


# The request field behind each SamplingParams field (for error messages that name what the client sent).
PARAM_OF = {
    "max_new_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
}


MAX_LOGPROBS = 20  # top alternatives per token (OpenAI's top_logprobs limit)


def _logprobs(body: dict, chat: bool) -> int | None:
    """Chat: ``logprobs`` true/false and ``top_logprobs`` 0-20; text completions: ``logprobs`` 0-20 (the legacy
    API's number of alternatives). None when no logprobs are wanted."""
    if chat:
        wanted = _boolean(body.get("logprobs"), "logprobs")
        top = _integer(body.get("top_logprobs"), "top_logprobs")
        if top is not None and not wanted:
            raise _value_error("top_logprobs", "'top_logprobs' needs \"logprobs\": true")
        name, value = "top_logprobs", (top or 0) if wanted else None
    else:
        name, value = "logprobs", _integer(body.get("logprobs"), "logprobs")
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise _value_error(name, f"'{name}' must be between 0 and {MAX_LOGPROBS}, got {value}")
    return value


def parse_options(body: dict, *, chat: bool = True) -> Options:
    """Every non-prompt field of a chat or text completion request, type-checked."""
    _refuse_unsupported(body)
    if chat and body.get("echo") not in (None, False):
        raise APIError(400, "'echo' is a /v1/completions field", param="echo", code="unsupported_parameter")
    max_tokens = _integer(body.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        max_tokens = _integer(body.get("max_completion_tokens"), "max_completion_tokens")
    sampling = {name: _number(body.get(name), name) for name in ("temperature", "top_p", "repetition_penalty")}
    sampling.update(top_k=_integer(body.get("top_k"), "top_k"), seed=_integer(body.get("seed"), "seed"))
    n = _integer(body.get("n"), "n")
    stream = _boolean(body.get("stream"), "stream")
    return Options(
        sampling={k: v for k, v in sampling.items() if v is not None},
        max_tokens=max_tokens,
        n=1 if n is None else n,
        stream=stream,
        include_usage=_stream_options(body, stream),
        stop=_stop(body),
        logprobs=_logprobs(body, chat),
        echo=_echo(body, stream),
        json_schema=_response_format(body),
    )


def _response_format(body: dict) -> dict | None:
    """``{"type": "text"}``, ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}`` (OpenAI's shapes); the schema itself is compiled (and refused) by the server."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object", "json_schema"):
        raise _type_error("response_format", '{"type": "text" | "json_object" | "json_schema", ...}', value)
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return {"type": "object"}
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _type_error("response_format.json_schema", 'an object {"name", "schema", "strict"}', spec)
    schema = spec.get("schema", {})
    if not isinstance(schema, (dict, bool)):
        raise _type_error("response_format.json_schema.schema", "a JSON Schema object", schema)
    return schema if isinstance(schema, dict) else {}


def _echo(body: dict, stream: bool) -> bool:
    echo = _boolean(body.get("echo"), "echo")
    if echo and stream:
        raise _value_error("echo", "'echo' is not supported with \"stream\": true")
    return echo


def params_for(options: Options, prompt_tokens: int, limits: Limits) -> SamplingParams:
    """The engine's settings for a request, within the server's limits and ``SamplingParams``' ranges."""
    if prompt_tokens > limits.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server accepts at most {limits.max_prompt_tokens}",
            param="messages",
            code="context_length_exceeded",
        )
    room = limits.context - prompt_tokens
    max_tokens = options.max_tokens
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, room)
    elif max_tokens > limits.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}; this server accepts at most {limits.max_tokens_limit}",
            param="max_tokens",
            code="max_tokens_exceeded",
        )
    elif max_tokens > room:
        raise APIError(
            400,
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the {limits.context}-token context",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if not 1 <= options.n <= limits.max_n:
        raise APIError(400, f"n is {options.n}; this server accepts 1 to {limits.max_n}", param="n", code="n_exceeded")
    params = SamplingParams(max_new_tokens=max_tokens, **{"temperature": 1.0, **options.sampling})
    try:  # max_tokens 0: only the echoed prompt (scored, with logprobs), as lm-eval asks for it
        return params.validate(min_new_tokens=0 if options.echo else 1)
    except GenerationError as err:
        param = PARAM_OF.get(err.field or "", err.field)
        raise APIError(
            400, str(err).replace("max_new_tokens", "max_tokens"), param=param, code="invalid_value"
        ) from err


# ----------------------------------------------------------------------------- prompts


def chat_turns(body: dict) -> list[Turn]:
    """``messages``: a non-empty list of ``{"role", "content"}`` objects with valid Unicode text."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", 'a non-empty list of {"role", "content"} objects', messages)
    for i, message in enumerate(messages):
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            unicode_text(message["content"], f"messages[{i}].content")
    try:
        return messages_to_turns(messages, where="messages")
    except PromptError as err:
        raise APIError(400, str(err), param="messages", code="invalid_value") from err


def completion_prompts(body: dict, vocab_size: int, max_prompts: int) -> list[str | list[int]]:
    """``prompt``: a non-empty string or token-id list, or a list of up to ``max_prompts`` of them (a batch:
    choice ``i * n + j`` is the ``j``-th completion of prompt ``i``). Token ids must be in ``[0, vocab_size)``."""
    prompt = body.get("prompt")
    expected = "a non-empty string, a list of token ids, or a list of those"
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise _type_error("prompt", expected, prompt)
    if len(prompts) > max_prompts:
        raise _value_error(
            "prompt", f"'prompt' holds {len(prompts)} prompts; this server accepts at most {max_prompts}"
        )
    for i, one in enumerate(prompts):
        name = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(one, str) and one:
            unicode_text(one, name)
        elif isinstance(one, list) and one and all(_is_int(t) for t in one):
            if not all(0 <= t < vocab_size for t in one):
                raise _value_error(name, f"'{name}' holds token ids outside the vocabulary [0, {vocab_size})")
        else:
            raise _type_error(name, expected, one)
    return prompts


def model_name(body: dict) -> str:
    name = body.get("model")
    if not isinstance(name, str):
        raise _type_error("model", "the served model's name (a string)", name)
    return name
