"""``youri serve MODEL``: an OpenAI-compatible HTTP server with dynamic batching, and a web chat page.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` SSE or not),
``POST /v1/completions``, ``GET /health`` and the chat page at ``/``. Requests from concurrent
clients share one continuously batched forward pass (``youri.serve.engine.Engine``). Chat messages are
rendered by ``youri.prompts`` (``system/user/assistant -> 設定/ユーザー/システム``, role-forging
guard included); ``/v1/completions`` takes raw text. Extensions: ``top_k`` and ``repetition_penalty``.

Binds 127.0.0.1 unless told otherwise; ``--api_key`` (or env ``YOURI_API_KEY``) requires
``Authorization: Bearer KEY`` on ``/v1/*``. Every field of every request is checked before anything
reaches the engine (``youri.serve.api``); an over-limit, malformed or hostile request gets an
OpenAI-style error object (``{"error": {"message", "type", "param", "code"}}``) with 400/401/404/405/413,
and never affects the requests generating beside it. Anything else that goes wrong still answers an
error object (500), never plain text. ``stop`` strings are applied to the streamed text.

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
import socket
import threading
import time
import uuid
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from youri.config import NonNegativeInt, PositiveInt, Range
from youri.prompts import PromptError
from youri.serve.api import (
    APIError,
    Limits,
    Options,
    StopText,
    chat_turns,
    completion_text,
    model_name,
    params_for,
    parse_options,
    read_json,
)
from youri.serve.engine import Engine, SamplingParams
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
        model = model_name(body)
        if model != self.name:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this server serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    def chat_prompt(self, body: dict) -> list[int]:
        turns = chat_turns(body)
        try:
            return encode_turns(turns, self.tokenizer, self.kind)
        except PromptError as err:  # e.g. an instruction model sent a multi-turn chat
            raise APIError(400, str(err), param="messages", code="invalid_value") from err

    def text_prompt(self, body: dict) -> list[int]:
        # Raw text is text: a literal "</s>" in it stays characters, never the eos id.
        return self.tokenizer(completion_text(body), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def submit(self, prompt_ids: list[int], params: SamplingParams, n: int) -> tuple[asyncio.Queue, list]:
        """Queue ``n`` generations; events arrive on one asyncio queue as ``(index, Event)``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []
        for index in range(n):
            # One seed per choice; torch takes seeds modulo 2**64 (negative ones too), so this never overflows.
            seed = None if params.seed is None else (params.seed + index) % 2**64
            seeded = SamplingParams(**{**params.__dict__, "seed": seed})
            handles.append(
                self.engine.submit(
                    prompt_ids, seeded, lambda event, i=index: loop.call_soon_threadsafe(queue.put_nowait, (i, event))
                )
            )
        return queue, handles


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _choices(
    server: Server, prompt_ids: list[int], params: SamplingParams, options: Options
) -> AsyncIterator[tuple[int, str, str | None, int]]:
    """``(choice, text, finish_reason, completion_tokens)`` as the engine reports, ``stop`` strings
    applied; every generation is cancelled when this ends, also when the client went away."""
    queue, handles = server.submit(prompt_ids, params, options.n)
    stops = [StopText(options.stop) for _ in range(options.n)]
    running = set(range(options.n))
    try:
        while running:
            index, event = await queue.get()
            if index not in running:
                continue  # the "cancelled" echo of a choice that ended at a stop string
            if event.finish_reason and event.finish_reason.startswith("error"):
                raise APIError(500, f"generation failed: {event.finish_reason}", type="server_error")
            text = stops[index].push(event.text)
            if stops[index].hit:
                running.discard(index)
                handles[index].cancel()
                yield index, text, "stop", len(handles[index].generated)
            elif event.finish_reason is not None:
                running.discard(index)
                yield index, text + stops[index].flush(), event.finish_reason, event.completion_tokens
            elif text:
                yield index, text, None, 0
    finally:
        for handle in handles:
            handle.cancel()  # a no-op for finished ones; frees the batch when the client went away


async def _collect(server: Server, prompt_ids: list[int], params: SamplingParams, options: Options):
    texts, reasons, completion = [""] * options.n, [None] * options.n, 0
    async with aclosing(_choices(server, prompt_ids, params, options)) as choices:
        async for index, text, reason, tokens in choices:
            texts[index] += text
            reasons[index] = reason or reasons[index]
            completion += tokens
    return list(zip(texts, reasons)), completion


def _sse(data: dict | str) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def _stream(server: Server, prompt_ids, params, options: Options, *, chat: bool) -> AsyncIterator[str]:
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

    if chat:
        for index in range(options.n):
            yield _sse(chunk(index, None, None, role=True))
    completion = 0
    try:
        async with aclosing(_choices(server, prompt_ids, params, options)) as choices:
            async for index, text, reason, tokens in choices:
                if text:
                    yield _sse(chunk(index, text, None))
                if reason is not None:
                    completion += tokens
                    yield _sse(chunk(index, None, reason))
    except Exception as err:  # noqa: BLE001 -- the headers are sent: any error travels as an event
        error = (
            err
            if isinstance(err, APIError)
            else APIError(500, f"internal server error ({type(err).__name__})", type="server_error")
        )
        yield _sse({"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}})
        return
    if options.include_usage:
        yield _sse({**base, "choices": [], "usage": _usage(len(prompt_ids), completion)})
    yield _sse("[DONE]")


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

    # Unknown routes, wrong methods and the server's own bugs answer OpenAI error objects too, never text.
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return APIError(
            err.status_code, str(err.detail), code="not_found" if err.status_code == 404 else None
        ).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception):  # Starlette still logs the traceback
        return APIError(500, f"internal server error ({type(err).__name__})", type="server_error").response()

    web = resources.files("youri.serve") / "web"

    def authorize(request: Request) -> None:
        if server.api_key and request.headers.get("authorization", "") != f"Bearer {server.api_key}":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    async def handle(request: Request, *, chat: bool):
        try:
            authorize(request)
            body = await read_json(request, server.limits.max_body_bytes)
            server.check_model(body)
            options = parse_options(body)
            prompt_ids = server.chat_prompt(body) if chat else server.text_prompt(body)
            params = params_for(options, len(prompt_ids), server.limits)
            if options.stream:
                return StreamingResponse(
                    _stream(server, prompt_ids, params, options, chat=chat),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            results, completion = await _collect(server, prompt_ids, params, options)
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
    # Bound here, before the banner, so that --port 0 prints the port the system chose.
    sock = socket.create_server((cfg.host, cfg.port), family=socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    port = sock.getsockname()[1]
    print(f"youri serve: '{server.name}' on http://{cfg.host}:{port} (chat page at /, API at /v1)", flush=True)
    config = uvicorn.Config(create_app(server), host=cfg.host, port=port, log_level="info")
    uvicorn.Server(config).run(sockets=[sock])
