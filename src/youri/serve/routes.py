"""The endpoints of ``youri serve``: one function each on one ``APIRouter``.

The API key is one dependency (``authorized``) on every ``/v1`` route; an ``APIError`` raised anywhere
in a route (or its dependencies) is answered as an OpenAI error object by the app's handler
(``youri.serve.server.create_app``). Adding an endpoint is one function here and one test.
"""

from __future__ import annotations

from functools import partial
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Request  # module level: FastAPI resolves the annotations here
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from youri.serve.api import APIError, read_body
from youri.serve.replies import reply, stream_events
from youri.serve.service import Server, collect

router = APIRouter()
WEB = resources.files("youri.serve") / "web"


def served(request: Request) -> Server:
    return request.app.state.server


def authorized(request: Request) -> Server:
    """The server, once the request carries its API key (when it has one)."""
    server = served(request)
    if server.api_key and request.headers.get("authorization", "") != f"Bearer {server.api_key}":
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
    return server


Authorized = Annotated[Server, Depends(authorized)]
Served = Annotated[Server, Depends(served)]


async def _generate(server: Server, request: Request, *, chat: bool):
    raw = await read_body(request, server.limits.max_body_bytes)
    job = await run_in_threadpool(partial(server.prepare, raw, chat=chat))  # grows with the request: off the loop
    if job.options.stream:
        return StreamingResponse(
            stream_events(server, job), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    choices, completion = await collect(server, job)
    return JSONResponse(await run_in_threadpool(reply, server, job, choices, completion))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, server: Authorized):
    return await _generate(server, request, chat=True)


@router.post("/v1/completions")
async def completions(request: Request, server: Authorized):
    return await _generate(server, request, chat=False)


@router.get("/v1/models")
async def models(server: Authorized):
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


@router.get("/health")
async def health(server: Served):
    return {
        "status": "ok",
        "model": server.name,
        "batching": server.engine.max_batch_size > 1,
        "running": len(server.engine.active),
        **server.engine.stats,
    }


@router.get("/metrics")
async def metrics(server: Served):
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize")
async def tokenize(request: Request, server: Authorized):
    """vLLM's shape: ``{"prompt": str, "add_special_tokens": true}`` or ``{"messages": [...]}`` (rendered by
    the chat template) -> ``{"count", "max_model_len", "tokens"}``."""
    raw = await read_body(request, server.limits.max_body_bytes)
    return await run_in_threadpool(server.tokenize, raw)


@router.post("/detokenize")
async def detokenize(request: Request, server: Authorized):
    """``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
    raw = await read_body(request, server.limits.max_body_bytes)
    return await run_in_threadpool(server.detokenize, raw)


@router.get("/")
async def page():
    return FileResponse(str(WEB / "index.html"), media_type="text/html; charset=utf-8")


@router.get("/web/{name}")
async def asset(name: str):
    if name not in {"chat.js", "chat.css"}:
        raise APIError(404, "not found")
    return FileResponse(str(WEB / name))
