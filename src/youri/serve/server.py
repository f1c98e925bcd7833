"""``youri serve MODEL``: an OpenAI-compatible HTTP server with dynamic batching, and a web chat page.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` SSE or not),
``POST /v1/completions``, ``GET /health`` and the chat page at ``/``. Requests from concurrent
clients share one continuously batched forward pass (``youri.serve.engine.Engine``). Chat messages are
rendered by ``youri.prompts`` (``system/user/assistant -> 設定/ユーザー/システム``, role-forging
guard included); ``/v1/completions`` takes raw text. Extensions: ``top_k`` and ``repetition_penalty``.

Binds 127.0.0.1 unless told otherwise; ``--api_key`` (or env ``YOURI_API_KEY``) requires
``Authorization: Bearer KEY`` on ``/v1/*``. Over-limit or malformed requests get OpenAI-style error
objects (``{"error": {"message", "type", "param", "code"}}``) with 400/401/404/413/422.

Tiny CPU::

    youri serve runs/demo/sft_chat --port 8000
    python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='x'); \\
      print(c.chat.completions.create(model='sft_chat', messages=[{'role': 'user', 'content': 'こんにちは'}]))"

GPU: ``youri serve runs/youri-7b/sft_chat --device cuda --dtype bfloat16 --max_batch_size 64``, or for
large-scale serving ``vllm serve runs/youri-7b/sft_chat`` (the stage folder carries the chat template
and generation config vLLM reads; see docs/serving.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterator

import uvicorn
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from youri.config import NonNegativeInt, PositiveInt, Range
from youri.prompts import PromptError, messages_to_turns
from youri.serve.engine import Engine, Event, GenerationError, SamplingParams
from youri.serve.inference import ChatError, encode_turns, load_for_inference, prompt_kind


@dataclass
class Config:
    model: str = field(default="", metadata={"positional": True})
    """Model folder: a youri SFT stage folder (fp or GPTQ) or a local HF Llama checkpoint."""
    host: str = "127.0.0.1"
    """Address to bind (0.0.0.0 exposes the server to the network: set an api_key)."""
    port: Annotated[int, Range(min=0, max=65535)] = 8000
    """TCP port (0 = any free port)."""
    api_key: str = ""
    """Require 'Authorization: Bearer KEY' on /v1/* (default: env YOURI_API_KEY; empty = open)."""
    served_model_name: str = ""
    """The model id clients send (default: the folder name)."""
    max_batch_size: PositiveInt = 16
    """Most requests generated together; 1 serves one request at a time (no batching)."""
    max_context: NonNegativeInt = 0
    """Context window in tokens (0 = the model's max_position_embeddings)."""
    max_prompt_tokens: NonNegativeInt = 0
    """Longest accepted prompt in tokens (0 = the context window minus one)."""
    max_tokens_limit: PositiveInt = 2048
    """Largest accepted max_tokens."""
    default_max_tokens: PositiveInt = 256
    """max_tokens when a request gives none (capped by the room left in the context)."""
    max_n: PositiveInt = 4
    """Largest accepted n (completions per request)."""
    max_body_bytes: PositiveInt = 1_000_000
    """Largest accepted request body (413 above)."""
    device: str = ""
    """cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)."""
    dtype: str = "auto"
    """Weights dtype: auto (as saved), float32, bfloat16 or float16."""


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


# ----------------------------------------------------------------------------- request parsing

_SAMPLING_FIELDS = {
    "temperature": (float, 1.0),
    "top_p": (float, 1.0),
    "top_k": (int, 0),
    "repetition_penalty": (float, 1.0),
    "seed": (int, None),
    "n": (int, 1),
}


def _field(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if isinstance(value, bool) or not ok:
        raise APIError(
            422,
            f"'{name}' must be {'a number' if kind is float else 'an integer'}, got {value!r}",
            param=name,
            code="invalid_type",
        )
    return value


@dataclass
class Limits:
    context: int
    max_prompt_tokens: int
    max_tokens_limit: int
    default_max_tokens: int
    max_n: int
    max_body_bytes: int


def parse_sampling(body: dict, prompt_tokens: int, limits: Limits) -> tuple[SamplingParams, int]:
    """``(params, n)`` from an OpenAI request body, enforcing the server's limits."""
    values = {name: _field(body, name, kind, default) for name, (kind, default) in _SAMPLING_FIELDS.items()}
    max_tokens = _field(body, "max_completion_tokens", int, None)
    max_tokens = _field(body, "max_tokens", int, max_tokens)
    room = limits.context - prompt_tokens
    if prompt_tokens > limits.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt has {prompt_tokens} tokens; this server accepts at most {limits.max_prompt_tokens}",
            param="messages",
            code="context_length_exceeded",
        )
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
    n = values.pop("n")
    if not 1 <= n <= limits.max_n:
        raise APIError(400, f"n is {n}; this server accepts 1 to {limits.max_n}", param="n", code="n_exceeded")
    params = SamplingParams(max_new_tokens=max_tokens, **values)
    try:
        params.validate()
    except GenerationError as err:
        raise APIError(400, str(err)) from err
    return params, n


# ----------------------------------------------------------------------------- the app


class Server:
    """The app's state: engine, tokenizer, limits, served name and key."""

    def __init__(self, engine: Engine, *, name: str, limits: Limits, api_key: str = ""):
        self.engine, self.tokenizer, self.name, self.limits, self.api_key = (
            engine,
            engine.tokenizer,
            name,
            limits,
            api_key,
        )
        self.kind = prompt_kind(self.tokenizer)
        self.created = int(time.time())

    def check_model(self, body: dict) -> None:
        model = body.get("model")
        if model != self.name:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this server serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    def chat_prompt(self, body: dict) -> list[int]:
        try:
            turns = messages_to_turns(body.get("messages") or [], where="messages")
            if not turns:
                raise PromptError("messages: give at least one message")
            return encode_turns(turns, self.tokenizer, self.kind)
        except PromptError as err:
            raise APIError(400, str(err), param="messages") from err

    def text_prompt(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise APIError(400, "'prompt' must be one non-empty string", param="prompt")
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int) -> tuple[asyncio.Queue, list]:
        """Queue ``n`` generations; events arrive on one asyncio queue as ``(index, Event)``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []
        for index in range(n):
            seeded = SamplingParams(**{**params.__dict__, "seed": None if params.seed is None else params.seed + index})
            handles.append(
                self.engine.submit(
                    prompt_ids, seeded, lambda event, i=index: loop.call_soon_threadsafe(queue.put_nowait, (i, event))
                )
            )
        return queue, handles


async def _read_json(request, limit: int) -> dict:
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
    try:
        body = json.loads(bytes(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise APIError(400, f"the request body is not valid JSON: {err}", code="invalid_json") from err
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _check_error(event: Event) -> None:
    if event.finish_reason and event.finish_reason.startswith("error"):
        raise APIError(500, f"generation failed: {event.finish_reason}", type="server_error")


async def _collect(server: Server, prompt_ids: list[int], params: SamplingParams, n: int) -> tuple[list, int]:
    queue, handles = server.submit(prompt_ids, params, n)
    texts, reasons, completion = [""] * n, [None] * n, 0
    try:
        while any(r is None for r in reasons):
            index, event = await queue.get()
            _check_error(event)
            texts[index] += event.text
            if event.finish_reason is not None:
                reasons[index] = event.finish_reason
                completion += event.completion_tokens
    finally:
        for handle in handles:
            handle.cancel()  # a no-op for finished ones; frees the batch when the client went away
    return list(zip(texts, reasons)), completion


def _sse(data: dict | str) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def _stream(server: Server, prompt_ids, params, n, *, chat: bool, include_usage: bool) -> Iterator[str]:
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    base = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.name,
    }

    def chunk(index: int, text: str | None, reason: str | None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": reason}]}
        return {**base, "choices": [{"index": index, "text": text or "", "finish_reason": reason}]}

    queue, handles = server.submit(prompt_ids, params, n)
    try:
        if chat:
            for index in range(n):
                yield _sse(chunk(index, None, None, role=True))
        open_rows, completion = n, 0
        while open_rows:
            index, event = await queue.get()
            if event.finish_reason and event.finish_reason.startswith("error"):
                yield _sse(
                    {"error": {"message": event.finish_reason, "type": "server_error", "param": None, "code": None}}
                )
                return
            if event.text:
                yield _sse(chunk(index, event.text, None))
            if event.finish_reason is not None:
                open_rows -= 1
                completion += event.completion_tokens
                yield _sse(chunk(index, None, event.finish_reason))
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(len(prompt_ids), completion)})
        yield _sse("[DONE]")
    finally:
        for handle in handles:
            handle.cancel()


def create_app(server: Server):
    """The FastAPI app around a ``Server`` (its engine thread runs for the app's lifetime)."""

    @asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="youri", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    web = resources.files("youri.serve") / "web"

    def authorize(request: Request) -> None:
        if server.api_key and request.headers.get("authorization", "") != f"Bearer {server.api_key}":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def handle(request: Request, *, chat: bool):
        try:
            authorize(request)
            body = await _read_json(request, server.limits.max_body_bytes)
            server.check_model(body)
            prompt_ids = server.chat_prompt(body) if chat else server.text_prompt(body)
            params, n = parse_sampling(body, len(prompt_ids), server.limits)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise APIError(422, f"'stream' must be true or false, got {stream!r}", param="stream")
            if stream:
                options = body.get("stream_options") or {}
                usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
                return StreamingResponse(
                    _stream(server, prompt_ids, params, n, chat=chat, include_usage=usage),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            results, completion = await _collect(server, prompt_ids, params, n)
        except APIError as err:
            return err.response()
        if chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
                for i, (text, reason) in enumerate(results)
            ]
        else:
            choices = [
                {"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                for i, (text, reason) in enumerate(results)
            ]
        return JSONResponse(
            {
                "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": server.name,
                "choices": choices,
                "usage": _usage(len(prompt_ids), completion),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            authorize(request)
        except APIError as err:
            return err.response()
        return {
            "object": "list",
            "data": [
                {
                    "id": server.name,
                    "object": "model",
                    "created": server.created,
                    "owned_by": "youri",
                    "max_model_len": server.limits.context,
                }
            ],
        }

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": server.name,
            "batching": server.engine.max_batch_size > 1,
            "running": len(server.engine.active),
            **server.engine.stats,
        }

    @app.get("/")
    async def page():
        return FileResponse(str(web / "index.html"), media_type="text/html; charset=utf-8")

    @app.get("/web/{name}")
    async def asset(name: str):
        if name not in {"chat.js", "chat.css"}:
            return JSONResponse(
                {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}},
                status_code=404,
            )
        return FileResponse(str(web / name))

    return app


def build_server(cfg: Config) -> Server:
    """Load the model and wrap it in a ``Server`` with the configured limits and key."""
    model, tokenizer = load_for_inference(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if cfg.max_batch_size < 1:
        raise ChatError(f"max_batch_size must be >= 1, got {cfg.max_batch_size}")
    engine = Engine(model, tokenizer, max_batch_size=cfg.max_batch_size, max_context=cfg.max_context or None)
    context = engine.max_context
    limits = Limits(
        context=context,
        max_prompt_tokens=min(cfg.max_prompt_tokens or context - 1, context - 1),
        max_tokens_limit=cfg.max_tokens_limit,
        default_max_tokens=cfg.default_max_tokens,
        max_n=cfg.max_n,
        max_body_bytes=cfg.max_body_bytes,
    )
    name = cfg.served_model_name or Path(cfg.model).resolve().name
    return Server(engine, name=name, limits=limits, api_key=cfg.api_key or os.environ.get("YOURI_API_KEY", ""))


@contextmanager
def running(cfg: Config, server: Server | None = None) -> Iterator[str]:
    """Serve in a background thread (tests, benchmarks); yields the base URL and always shuts down."""

    server = server or build_server(cfg)
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host=cfg.host, port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="youri-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {cfg.host}:{cfg.port}")
        time.sleep(0.01)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{cfg.host}:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def run(cfg: Config, *, overwrite: bool = False) -> None:
    del overwrite  # serving writes no stage folder

    server = build_server(cfg)
    if cfg.host not in {"127.0.0.1", "localhost", "::1"} and not server.api_key:
        print(f"youri serve: warning: listening on {cfg.host} without an api_key", flush=True)
    print(f"youri serve: '{server.name}' on http://{cfg.host}:{cfg.port} (chat page at /, API at /v1)", flush=True)
    uvicorn.run(create_app(server), host=cfg.host, port=cfg.port, log_level="info")
