"""The bodies ``youri serve`` answers with: whole replies and server-sent event chunks, in OpenAI's shapes.

Log-probabilities come in the two shapes the API has: chat's ``{"content": [{"token", "logprob", "bytes",
"top_logprobs": [...]}]}`` and the legacy completions' ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`` (with ``echo``, the prompt's tokens first, the first of them without a log-probability:
what lm-eval's ``local-completions`` reads for log-likelihoods).
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import aclosing
from typing import AsyncIterator

from youri.serve.api import APIError
from youri.serve.engine import TokenLogprob
from youri.serve.service import Choice, Job, Server, pieces_of, usage
from youri.serve.tools import ToolStream, split_calls


def chat_logprobs(server: Server, entries: list[TokenLogprob]) -> dict:
    def one(token: int, logprob: float) -> dict:
        text, raw = server.piece(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    content = [{**one(t, lp), "top_logprobs": [one(a, alp) for a, alp in top]} for t, lp, top in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(
    server: Server, entries: list[TokenLogprob], prompt: tuple[list[int], list[TokenLogprob]] | None = None, offset=0
) -> dict:
    """The legacy shape; ``prompt``: ``(ids, scores of ids[1:])`` when echoed, listed first."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []

    def add(token: int, logprob: float | None, top: list[tuple[int, float]] | None) -> None:
        nonlocal offset
        text = server.piece(token)[0]
        tokens.append(text)
        token_logprobs.append(logprob)
        if top is None:
            top_logprobs.append(None)
        else:
            alternatives: dict[str, float] = {}
            for alt, alt_logprob in top:
                key = server.piece(alt)[0]
                alternatives[key] = max(alt_logprob, alternatives.get(key, -float("inf")))
            top_logprobs.append(alternatives)
        offsets.append(offset)
        offset += len(text)

    if prompt is not None:
        ids, scores = prompt
        add(ids[0], None, None)
        for token, logprob, top in scores:
            add(token, logprob, top)
    for token, logprob, top in entries:
        add(token, logprob, top)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}


def reply(server: Server, job: Job, choices: list[Choice], completion: int) -> dict:
    """A whole (non-streamed) reply. Its cost grows with the prompt (echo, logprobs): run off the event loop."""
    options, out = job.options, []
    for index, choice in enumerate(choices):
        logprobs = None
        if job.chat:
            if options.logprobs is not None:
                logprobs = chat_logprobs(server, choice.logprobs)
            message, reason = {"role": "assistant", "content": choice.text}, choice.finish_reason
            if job.tools:
                content, calls = split_calls(choice.text)
                if calls:
                    message = {"role": "assistant", "content": content, "tool_calls": calls}
                    reason = "tool_calls" if reason == "stop" else reason
            out.append({"index": index, "message": message, "finish_reason": reason, "logprobs": logprobs})
            continue
        prompt_ids, text = job.prompts[index // options.n], choice.text
        if options.echo:
            given = job.texts[index // options.n]
            text = (given if given is not None else server.tokenizer.decode(prompt_ids)) + text
        if options.logprobs is not None:
            prompt = (prompt_ids, choice.prompt_logprobs or []) if options.echo else None
            logprobs = completion_logprobs(server, choice.logprobs, prompt)
        out.append({"index": index, "text": text, "finish_reason": choice.finish_reason, "logprobs": logprobs})
    return {
        "id": ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex,
        "object": "chat.completion" if job.chat else "text_completion",
        "created": int(time.time()),
        "model": server.name,
        "choices": out,
        "usage": usage(job.prompt_tokens, completion),
    }


def _tool_chunk(base: dict, index: int, calls: list[dict]) -> dict:
    deltas = [{"index": i, **call} for i, call in enumerate(calls)]
    return {**base, "choices": [{"index": index, "delta": {"tool_calls": deltas}, "finish_reason": None}]}


def _sse(data: dict | str) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def stream_events(server: Server, job: Job) -> AsyncIterator[str]:
    """A streamed reply: one chunk per text delta (with its tokens' logprobs when asked for), one per finish,
    the usage chunk with ``stream_options.include_usage``, then ``[DONE]``."""
    chat, options = job.chat, job.options
    base = {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": server.name,
    }
    count = len(job.prompts) * options.n
    offsets = [0] * count

    def chunk(index: int, text: str | None, reason: str | None, logprobs=None, role: bool = False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": reason}
            if logprobs is not None:
                choice["logprobs"] = chat_logprobs(server, logprobs)
            return {**base, "choices": [choice]}
        choice = {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}
        if logprobs is not None:
            choice["logprobs"] = completion_logprobs(server, logprobs, offset=offsets[index])
            offsets[index] += sum(len(t) for t in choice["logprobs"]["tokens"])
        return {**base, "choices": [choice]}

    if chat:
        for index in range(count):
            yield _sse(chunk(index, None, None, role=True))
    completion, tools = 0, [ToolStream() for _ in range(count)] if job.tools else None
    try:
        async with aclosing(pieces_of(server, job)) as pieces:
            async for piece in pieces:
                text, reason = piece.text, piece.finish_reason
                if tools is not None:
                    text = tools[piece.index].push(text)
                if text or piece.logprobs:
                    yield _sse(chunk(piece.index, text, None, piece.logprobs))
                if reason is not None:
                    completion += piece.completion_tokens
                    if tools is not None:
                        rest, calls = tools[piece.index].finish()
                        if rest:
                            yield _sse(chunk(piece.index, rest, None))
                        if calls:
                            yield _sse(_tool_chunk(base, piece.index, calls))
                            reason = "tool_calls" if reason == "stop" else reason
                    yield _sse(chunk(piece.index, None, reason))
    except Exception as err:  # noqa: BLE001 -- the headers are sent: any error travels as an event
        error = (
            err
            if isinstance(err, APIError)
            else APIError(500, f"internal server error ({type(err).__name__})", type="server_error")
        )
        yield _sse({"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}})
        return
    if options.include_usage:
        yield _sse({**base, "choices": [], "usage": usage(job.prompt_tokens, completion)})
    yield _sse("[DONE]")
