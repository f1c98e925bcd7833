"""What ``youri serve`` does with a checked request: the ``Server`` state (engine, tokenizer, limits,
served name, key), prompt encoding, and the generation helpers the routes answer with (collected or
streamed as server-sent events, ``stop`` strings applied, every generation cancelled when its client goes)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator

from youri.prompts import PromptError
from youri.serve.api import (
    APIError,
    Limits,
    Options,
    chat_turns,
    completion_text,
    model_name,
    params_for,
    parse_json,
    parse_options,
)
from youri.serve.engine import Engine, SamplingParams
from youri.serve.inference import encode_turns, prompt_kind
from youri.serve.stops import StopText


@dataclass
class Job:
    """A checked generation request: its prompt, the engine's settings and the request's options."""

    prompt_ids: list[int]
    params: SamplingParams
    options: Options


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

    def prepare(self, raw: bytes, *, chat: bool) -> Job:
        """Parse, check and encode a generation request. Its cost grows with the request (JSON, the chat
        template, the tokenizer), so the routes run it in a worker thread, never on the event loop."""
        body = parse_json(raw)
        self.check_model(body)
        options = parse_options(body)
        prompt_ids = self.chat_prompt(body) if chat else self.text_prompt(body)
        return Job(prompt_ids, params_for(options, len(prompt_ids), self.limits), options)

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


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
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


async def collect(server: Server, prompt_ids: list[int], params: SamplingParams, options: Options):
    texts, reasons, completion = [""] * options.n, [None] * options.n, 0
    async with aclosing(_choices(server, prompt_ids, params, options)) as choices:
        async for index, text, reason, tokens in choices:
            texts[index] += text
            reasons[index] = reason or reasons[index]
            completion += tokens
    return list(zip(texts, reasons)), completion


def _sse(data: dict | str) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def stream_events(server: Server, prompt_ids, params, options: Options, *, chat: bool) -> AsyncIterator[str]:
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
        yield _sse({**base, "choices": [], "usage": usage(len(prompt_ids), completion)})
    yield _sse("[DONE]")
