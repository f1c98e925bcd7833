"""``youri serve MODEL``: an OpenAI-compatible HTTP server with dynamic batching, and a web chat page.

Endpoints (``youri.serve.routes``): ``GET /v1/models``, ``POST /v1/chat/completions`` (``stream`` SSE or not;
``logprobs``, ``response_format``, ``tools``), ``POST /v1/completions`` (token-id prompts, ``echo``,
``logprobs``), ``/tokenize``, ``/detokenize``, ``GET /health``, ``GET /metrics`` and the chat page at ``/``.
A prompt prefix seen before is not recomputed (``--prefix_cache_tokens``). Requests from concurrent
clients share one continuously batched forward pass (``youri.serve.engine.Engine``). Chat messages are
rendered by ``youri.prompts`` (``system/user/assistant -> 設定/ユーザー/システム``, role-forging
guard included); ``/v1/completions`` takes raw text or token ids. Extensions: ``top_k`` and ``repetition_penalty``.

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

import os
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator

import uvicorn
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from youri.config import NonNegativeInt, PositiveInt, Range
from youri.serve.api import APIError, Limits
from youri.serve.engine import Engine
from youri.serve.inference import ChatError, load_for_inference
from youri.serve.routes import router
from youri.serve.service import Server

__all__ = ["Config", "Server", "build_server", "create_app", "run", "running"]


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
    prefix_cache_tokens: NonNegativeInt = 8192
    """Prompt-prefix K/V kept across requests, in tokens (LRU; 0 = off): a persona or few-shot prefix re-sent
    with every request is computed once. Memory per token: layers x 2 x kv_heads x head_dim x dtype bytes
    (0.5 MB for Llama 2 7B in fp16: 4 GB at 8192)."""
    device: str = ""
    """cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)."""
    dtype: str = "auto"
    """Weights dtype: auto (as saved), float32, bfloat16 or float16."""


def create_app(server: Server):
    """The FastAPI app around a ``Server``: the routes of ``youri.serve.routes`` (its engine thread runs for the
    app's lifetime); every error is an OpenAI error object, never plain text."""

    @asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        try:
            yield
        finally:
            server.engine.stop()

    app = FastAPI(title="youri", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.include_router(router)

    @app.middleware("http")
    async def count(request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        server.metrics.requests.labels(getattr(route, "path", "unknown"), str(response.status_code)).inc()
        return response

    app.add_exception_handler(APIError, lambda request, err: err.response())
    # Unknown routes, wrong methods and the server's own bugs answer OpenAI error objects too, never text.
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)  # Starlette still logs the traceback
    return app


async def _http_error(request, err: HTTPException):
    return APIError(err.status_code, str(err.detail), code="not_found" if err.status_code == 404 else None).response()


async def _server_error(request, err: Exception):
    return APIError(500, f"internal server error ({type(err).__name__})", type="server_error").response()


def build_server(cfg: Config) -> Server:
    """Load the model and wrap it in a ``Server`` with the configured limits and key."""
    model, tokenizer = load_for_inference(cfg.model, device=cfg.device, dtype=cfg.dtype)
    if cfg.max_batch_size < 1:
        raise ChatError(f"max_batch_size must be >= 1, got {cfg.max_batch_size}")
    engine = Engine(
        model,
        tokenizer,
        max_batch_size=cfg.max_batch_size,
        max_context=cfg.max_context or None,
        prefix_cache_tokens=cfg.prefix_cache_tokens,
    )
    print(engine.decoder_line, file=sys.stderr, flush=True)  # which forward generates, once
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
