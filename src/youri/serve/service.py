"""What ``youri serve`` does with a checked request: the ``Server`` state (engine, tokenizer, limits,
served name, key), prompt encoding, and the generation helpers the routes answer with (collected or
streamed as server-sent events, ``stop`` strings applied, every generation cancelled when its client goes)."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator

from youri.prompts import PromptError
from youri.serve.api import (
    APIError,
    Limits,
    Options,
    chat_turns,
    completion_prompts,
    model_name,
    params_for,
    parse_json,
    parse_options,
    unicode_text,
)
from youri.serve.engine import Engine, SamplingParams, TokenLogprob
from youri.serve.inference import encode_turns, prompt_kind
from youri.serve.metrics import Metrics
from youri.serve.stops import StopText
from youri.serve.structured import GrammarError, Grammars
from youri.serve.tools import grammar as tool_grammar
from youri.serve.tools import parse_tools
from youri.serve.tools import render as render_tools


@dataclass
class Job:
    """A checked generation request: its prompt(s), the engine's settings and the request's options."""

    prompts: list[list[int]]
    params: SamplingParams
    options: Options
    chat: bool
    texts: list[str | None] = field(default_factory=list)  # each prompt's text when it came as text (echo)
    constraints: list | None = None  # one grammar matcher per choice (response_format, a forced tool call)
    tools: bool = False  # parse <tool_call> blocks of the reply into tool_calls

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


@dataclass
class Piece:
    """What a choice gained: text (``stop`` strings applied), the end, and log-probabilities when asked for."""

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


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
        self.vocab_size = getattr(engine.model.config, "vocab_size", None) or len(self.tokenizer)
        self._pieces: dict[int, tuple[str, list[int]]] = {}
        self.metrics = Metrics(engine)
        self.grammars = Grammars(self.tokenizer, self.vocab_size, engine.eos_ids)

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

    def encode_text(self, text: str) -> list[int]:
        # Raw text is text: a literal "</s>" in it stays characters, never the eos id.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def prepare(self, raw: bytes, *, chat: bool) -> Job:
        """Parse, check and encode a generation request. Its cost grows with the request (JSON, the chat
        template, the tokenizer), so the routes run it in a worker thread, never on the event loop."""
        body = parse_json(raw)
        self.check_model(body)
        options = parse_options(body, chat=chat)
        tools, tool_choice = parse_tools(body) if chat else (None, "none")
        if tools is not None:
            prompts, texts = [render_tools(self.tokenizer, body.get("messages"), tools)], [None]
        elif chat:
            prompts, texts = [self.chat_prompt(body)], [None]
        else:
            given = completion_prompts(body, self.vocab_size, self.limits.max_prompts)
            prompts = [self.encode_text(p) if isinstance(p, str) else list(p) for p in given]
            texts = [p if isinstance(p, str) else None for p in given]
        params = params_for(options, max(len(p) for p in prompts), self.limits)
        job = Job(prompts, params, options, chat, texts, tools=tools is not None and tool_choice != "none")
        forced = tool_grammar(self.tokenizer, tools, tool_choice) if tools is not None else None
        if forced is not None and options.json_schema is not None:
            raise APIError(400, "'response_format' cannot be combined with a forced tool call", param="response_format")
        try:
            if forced is not None:
                grammar = self.grammars.lark(forced)
            elif options.json_schema is not None:
                grammar = self.grammars.json_schema(options.json_schema)
            else:
                return job
        except GrammarError as err:
            param = "tools" if forced is not None else "response_format.json_schema.schema"
            raise APIError(400, f"the JSON schema cannot be enforced: {err}", param=param) from err
        job.constraints = [self.grammars.constraint(grammar) for _ in range(len(prompts) * options.n)]
        return job

    def tokenize(self, raw: bytes) -> dict:
        body = parse_json(raw)
        if "messages" in body:
            ids = self.chat_prompt(body)
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise APIError(
                    400, "'prompt' must be a string (or send 'messages')", param="prompt", code="invalid_type"
                )
            special = body.get("add_special_tokens", True)
            if not isinstance(special, bool):
                raise APIError(400, "'add_special_tokens' must be true or false", param="add_special_tokens")
            ids = self.tokenizer(unicode_text(text, "prompt"), add_special_tokens=special, split_special_tokens=True)[
                "input_ids"
            ]
        return {"count": len(ids), "max_model_len": self.limits.context, "tokens": ids}

    def detokenize(self, raw: bytes) -> dict:
        tokens = parse_json(raw).get("tokens")
        if not isinstance(tokens, list) or not all(type(t) is int and 0 <= t < self.vocab_size for t in tokens):
            raise APIError(
                400,
                f"'tokens' must be a list of token ids in [0, {self.vocab_size})",
                param="tokens",
                code="invalid_value",
            )
        return {"prompt": self.tokenizer.decode(tokens)}

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        n: int,
        *,
        queue: asyncio.Queue | None = None,
        first: int = 0,
        constraints: list | None = None,
        **scoring,
    ) -> tuple[asyncio.Queue, list]:
        """Queue ``n`` generations; events arrive on one asyncio queue as ``(first + index, Event)``
        (``scoring``: ``logprobs``/``prompt_logprobs`` for ``Engine.submit``)."""
        loop = asyncio.get_running_loop()
        queue = queue if queue is not None else asyncio.Queue()
        handles = []
        for index in range(n):
            # One seed per choice; torch takes seeds modulo 2**64 (negative ones too), so this never overflows.
            seed = None if params.seed is None else (params.seed + index) % 2**64
            seeded = SamplingParams(**{**params.__dict__, "seed": seed})
            emit = lambda event, i=first + index: loop.call_soon_threadsafe(queue.put_nowait, (i, event))  # noqa: E731
            constraint = None if constraints is None else constraints[index]
            handles.append(self.engine.submit(prompt_ids, seeded, emit, constraint=constraint, **scoring))
        return queue, handles

    def piece(self, token: int) -> tuple[str, list[int]]:
        """A token's text on its own and its bytes (a byte-fallback piece ``<0xE3>`` is the byte 0xE3)."""
        if token not in self._pieces:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            text = self.tokenizer.convert_tokens_to_string([piece]) if piece is not None else ""
            if piece and piece.startswith("\u2581") and not text.startswith(" "):
                text = " " + text  # SentencePiece drops a leading space when a piece stands alone
            byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece or "")
            self._pieces[token] = (text, [int(byte.group(1), 16)] if byte else list(text.encode("utf-8")))
        return self._pieces[token]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def pieces_of(server: Server, job: Job) -> AsyncIterator[Piece]:
    """What each choice gains as the engine reports, ``stop`` strings applied; every generation is cancelled
    when this ends, also when the client went away."""
    options, queue, handles = job.options, asyncio.Queue(), []
    echo_scores = options.echo and options.logprobs is not None
    scoring = {
        "logprobs": options.logprobs,
        "prompt_logprobs": options.logprobs if echo_scores else (0 if job.params.max_new_tokens == 0 else None),
    }
    metrics, start, seen = server.metrics, time.perf_counter(), {}
    metrics.prompt_tokens.inc(job.prompt_tokens)
    try:
        for prompt_ids in job.prompts:
            if job.constraints is not None:
                scoring["constraints"] = job.constraints[len(handles) : len(handles) + options.n]
            handles += server.submit(prompt_ids, job.params, options.n, queue=queue, first=len(handles), **scoring)[1]
        stops = [StopText(options.stop) for _ in handles]
        running = set(range(len(handles)))
        while running:
            index, event = await queue.get()
            if event.text:  # latency histograms: first text, then time per token between deltas
                now, tokens = time.perf_counter(), len(handles[index].generated)
                if index not in seen:
                    metrics.ttft.observe(now - start)
                elif tokens > seen[index][1]:
                    metrics.itl.observe((now - seen[index][0]) / (tokens - seen[index][1]))
                seen[index] = (now, tokens)
            if event.finish_reason is not None:
                metrics.completion_tokens.inc(len(handles[index].generated))
            if index not in running:
                continue  # the "cancelled" echo of a choice that ended at a stop string
            if event.finish_reason and event.finish_reason.startswith("error"):
                raise APIError(500, f"generation failed: {event.finish_reason}", type="server_error")
            text = stops[index].push(event.text)
            scores = {"logprobs": event.logprobs, "prompt_logprobs": event.prompt_logprobs if echo_scores else None}
            if stops[index].hit:
                running.discard(index)
                handles[index].cancel()
                yield Piece(index, text, "stop", len(handles[index].generated), **scores)
            elif event.finish_reason is not None:
                running.discard(index)
                yield Piece(index, text + stops[index].flush(), event.finish_reason, event.completion_tokens, **scores)
            elif text or event.logprobs or scores["prompt_logprobs"]:
                yield Piece(index, text, **scores)
    finally:
        for handle in handles:
            handle.cancel()  # a no-op for finished ones; frees the batch when the client went away


@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] | None = None


async def collect(server: Server, job: Job) -> tuple[list[Choice], int]:
    """Every choice whole, and the completion tokens of all of them."""
    choices, completion = [Choice() for _ in range(len(job.prompts) * job.options.n)], 0
    async with aclosing(pieces_of(server, job)) as pieces:
        async for piece in pieces:
            choice = choices[piece.index]
            choice.text += piece.text
            choice.finish_reason = piece.finish_reason or choice.finish_reason
            choice.logprobs += piece.logprobs or []
            choice.prompt_logprobs = piece.prompt_logprobs or choice.prompt_logprobs
            completion += piece.completion_tokens
    return choices, completion
