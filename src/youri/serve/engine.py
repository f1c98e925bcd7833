"""Text generation: THE sampling numerics, clean incremental detokenisation and a dynamic batcher.

``youri chat``, ``youri serve`` and the serving benchmark all generate through this module; prompts
come from ``youri.prompts`` (never hand-built strings).

* ``SamplingParams`` / ``next_tokens`` -- repetition penalty, temperature, top-k, top-p (in the
  order Hugging Face applies them), greedy when ``temperature == 0``, one seeded ``torch.Generator``
  per request so that a seed gives the same text alone or in a batch.
* ``IncrementalDecoder`` -- streaming text from token ids. Japanese characters often arrive as 2-3
  SentencePiece byte-fallback pieces (``<0xE3><0x81><0x82>`` = "あ"); text is only emitted once it
  decodes without a trailing U+FFFD, and the streamed pieces always concatenate to the final text.
* ``Engine`` -- continuous batching over a causal LM: one left-padded batch of rows on a static KV
  cache (``youri.serve.decoder``: a lean Llama step, or the model's own forward for other
  architectures); new requests are prefilled together in one forward and merged into the running
  batch between decode steps, finished ones leave it at once. Per-step work does not grow with the
  context (besides attention itself). ``generate``/``stream`` run one request through the same code.

Tiny CPU use::

    from youri.serve.engine import SamplingParams, generate
    out = generate(model, tokenizer, prompt_ids, SamplingParams(temperature=0, max_new_tokens=32))
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from youri.serve.decoder import decoder_line, make_batch
from youri.serve.prefix_cache import PrefixCache


class GenerationError(ValueError):
    """Sampling settings or a prompt that generation cannot honour (``field``: the setting at fault)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


# Ranges outside which sampling is undefined or its float32 numerics break (``logits / 1e-45`` is inf,
# softmax of inf is NaN); 0.01 is also vLLM's temperature floor. Seeds: what torch.Generator accepts.
TEMPERATURE_RANGE = (0.01, 100.0)
REPETITION_PENALTY_RANGE = (0.01, 100.0)
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the context
    seed: int | None = None

    def validate(self, *, min_new_tokens: int = 1) -> "SamplingParams":
        """Check every setting's type and range (finite numbers only), naming the field at fault
        (``max_new_tokens`` may be 0 only where the caller scores the prompt: ``min_new_tokens=0``)."""
        _check_int("max_new_tokens", self.max_new_tokens, min_new_tokens)
        _check_number("temperature", self.temperature, *TEMPERATURE_RANGE, zero=True)
        _check_number("top_p", self.top_p, 0.0, 1.0)
        if self.top_p == 0:
            raise GenerationError("top_p must be in (0, 1], got 0", field="top_p")
        _check_int("top_k", self.top_k, 0)
        _check_number("repetition_penalty", self.repetition_penalty, *REPETITION_PENALTY_RANGE)
        if self.seed is not None:
            _check_int("seed", self.seed, *SEED_RANGE)
        return self


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenerationError(f"{name} must be an integer, got {value!r}", field=name)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise GenerationError(f"{name} must be {bounds}, got {value}", field=name)


def _check_number(name: str, value, low: float, high: float, *, zero: bool = False) -> None:
    """A finite number in ``[low, high]`` (or exactly 0 when ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationError(f"{name} must be a number, got {value!r}", field=name)
    if not (math.isfinite(value) and (low <= value <= high or (zero and value == 0))):
        bounds = f"0 or between {low} and {high}" if zero else f"between {low} and {high}"
        raise GenerationError(f"{name} must be {bounds}, got {value}", field=name)


# ----------------------------------------------------------------------------- sampling numerics


def seen_mask(context: list[int], vocab_size: int, device=None) -> torch.Tensor:
    """``[V]`` booleans: which ids occur in ``context`` (the repetition penalty's set, kept per request)."""
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    mask[torch.tensor(context, dtype=torch.long, device=device)] = True
    return mask


def next_token(
    logits: torch.Tensor, context: list[int] | torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> int:
    """One token from one row of logits ``[V]`` (float32), given the ids seen so far (a list or a ``seen_mask``)."""
    logits = logits.float().clone()
    if params.repetition_penalty != 1.0 and len(context):
        seen = context if isinstance(context, torch.Tensor) else seen_mask(context, logits.numel(), logits.device)
        penalized = torch.where(logits < 0, logits * params.repetition_penalty, logits / params.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        logits[order[drop]] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return generator


# ----------------------------------------------------------------------------- detokenisation


class IncrementalDecoder:
    """Token ids in, clean text deltas out (the offsets scheme of vLLM's detokenizer).

    Decoding a short window ``ids[prefix:]`` and subtracting ``ids[prefix:read]`` keeps each step
    cheap and makes SentencePiece's leading-space handling cancel out; a delta is emitted only when
    it does not end in U+FFFD, i.e. once a multi-byte character is complete.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # everything emitted so far
        self._prefix = self._read = 0
        self._before: str | None = None  # the text of ids[prefix:read], kept while that window stands

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self._before is None:  # decoded once per window, not per token (a character's 2-3 byte pieces)
            self._before = self._decode(self.ids[self._prefix : self._read])
        before = self._before
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd") or not after.startswith(before):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read, self._before = self._read, len(self.ids), None
        self.text += delta
        return delta

    def finish(self) -> str:
        """The rest of the text; an unfinished character at the very end (cut by a limit) is dropped."""
        full = self._decode(self.ids).rstrip("\ufffd")
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += delta
        return delta


# ----------------------------------------------------------------------------- requests


SCORE_CHUNK = 256  # prompt positions scored per log-softmax (echo)

TokenLogprob = tuple[int, float, list[tuple[int, float]]]
"""A token, its log-probability under the model (log-softmax of its raw logits), and the top alternatives."""


def token_logprobs(logits: torch.Tensor, targets: list[int], top: int) -> list[TokenLogprob]:
    """``logits [n, V]`` predict ``targets[i]``: each target's log-probability and the ``top`` most likely ids."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)].tolist()
    if top:
        values, ids = torch.topk(logprobs, top, dim=-1)
        alternatives = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        alternatives = [[] for _ in targets]
    return [(t, c, a) for t, c, a in zip(targets, chosen, alternatives)]


@dataclass
class Event:
    """What the engine reports for a request after a step: a text delta, and the end."""

    text: str
    finish_reason: str | None = None  # "stop" (</s>), "length" (max_new_tokens or context) or "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # the tokens sampled since the last event (when asked for)
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt[1:] scored (when asked for), in the first event


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Event], None]
    generated: list[int] = field(default_factory=list)
    decoder: IncrementalDecoder | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # seen_mask of prompt + generated, updated per token (penalty only)
    logprobs: int | None = None  # report each sampled token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # score the prompt first (echo), with this many alternatives
    pending: list[TokenLogprob] = field(default_factory=list)  # logprobs not yet reported
    constraint: object | None = None  # a grammar's matcher (``youri.serve.structured.Constraint``): mask, accept
    cancelled: bool = False
    done: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # the engine drops it before its next step


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


# ----------------------------------------------------------------------------- engine


class Engine:
    """Continuous batching over one causal LM, on a static KV cache (``youri.serve.decoder``).

    ``submit`` is thread-safe; ``step`` (or the background thread from ``start``) admits waiting
    requests -- prefilled together in one forward, their rows merged into the running batch -- or
    advances every running request by one token. ``max_batch_size=1`` serves one request at a time
    (the unbatched baseline).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 16,
        max_context: int | None = None,
        prefix_cache_tokens: int = 0,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_batch_size = max_batch_size
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 4096
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.batch = make_batch(model, self.max_context)
        self.decoder_line = decoder_line(model, self.max_context)  # chat and serve print it once
        # Prompt prefixes reused across requests (``youri.serve.prefix_cache``), where the batch can place them.
        supported = prefix_cache_tokens > 0 and hasattr(self.batch, "prompt_kv")
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if supported else None
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._reset_batch()
        self.stats = {"steps": 0, "prefills": 0, "max_batch": 0, "decoder": type(self.batch).__name__}

    def _reset_batch(self) -> None:
        self.active: list[Request] = []
        self._admitting: list[Request] = []
        self.last: list[int] = []  # the token each row feeds next
        self.batch.reset()

    # -- public -----------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        on_event: Callable[[Event], None],
        *,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        constraint=None,
    ) -> Request:
        """Queue a request; ``logprobs``/``prompt_logprobs``: report log-probabilities with that many alternatives
        (``prompt_logprobs`` also allows ``max_new_tokens=0``: the prompt scored, nothing generated)."""
        params.validate(min_new_tokens=0 if prompt_logprobs is not None else 1)
        if not prompt_ids:
            raise GenerationError("the prompt is empty")
        if len(prompt_ids) >= self.max_context:
            raise GenerationError(
                f"the prompt has {len(prompt_ids)} tokens; the model's context is {self.max_context} tokens"
            )
        vocab = getattr(self.model.config, "vocab_size", None)
        if min(prompt_ids) < 0 or (vocab and max(prompt_ids) >= vocab):  # would fail the whole batch's forward
            raise GenerationError(f"the prompt holds token ids outside the vocabulary [0, {vocab})")
        request = Request(list(prompt_ids), params, on_event, logprobs=logprobs, prompt_logprobs=prompt_logprobs)
        request.constraint = constraint
        request.on_event = _isolated(request, on_event)
        with self._wake:
            self._waiting.append(request)
            self._wake.notify()
        return request

    def step(self) -> bool:
        """One prefill (of newcomers) or one decode step; False when there was nothing to do."""
        with self._lock:
            room = self.max_batch_size - len(self.active)
            newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        newcomers = [r for r in newcomers if not self._drop_if_cancelled(r) and self._prepared(r)]
        self._admitting = newcomers  # failed too if the step raises before they join the batch
        with torch.inference_mode():
            newcomers = [r for r in newcomers if self._scored(r)]
            if newcomers:
                self._prefill(newcomers)
            elif self.active:
                self._decode()
            else:
                return False
        self.stats["steps"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(self.active))
        return True

    def start(self) -> "Engine":
        """Run ``step`` in a daemon thread until ``stop``."""
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="youri-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- internals --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self.active:
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as err:  # keep serving: fail the requests in flight, not the process
                self._fail_all(err)

    def _fail_all(self, err: Exception) -> None:
        """A failure of the batch itself (the forward pass): every request in it ends with the error."""
        for request in {id(r): r for r in self.active + self._admitting}.values():
            if not request.done:
                self._fail(request, err)
        self._reset_batch()

    # -- one request's failure stays its own --------------------------------------------------
    # What depends on a single request's settings (its generator, its sampling) runs under these
    # guards: the request that raised ends with an error event and the batch goes on without it.
    def _fail(self, request: Request, err: Exception) -> None:
        request.done = True
        request.on_event(
            Event("", f"error: {type(err).__name__}: {err}", len(request.prompt_ids), len(request.generated))
        )

    def _prepared(self, request: Request) -> bool:
        """Give a newcomer its decoder and seeded generator; False (after an error event) if that fails."""
        try:
            request.decoder = IncrementalDecoder(self.tokenizer)
            request.generator = make_generator(request.params.seed, self.device)
        except Exception as err:  # noqa: BLE001 -- this request's settings, not the engine's
            self._fail(request, err)
            return False
        return True

    def _sample(self, request: Request, logits: torch.Tensor, greedy: int) -> int:
        if request.constraint is not None:  # only what the grammar allows next (eos once the text is complete)
            logits = request.constraint.mask(logits)
            greedy = int(torch.argmax(logits))
        if request.params.temperature == 0 and request.params.repetition_penalty == 1.0:
            return greedy
        if request.seen is None:  # kept per request: no per-step work that grows with the context
            request.seen = seen_mask(request.prompt_ids, logits.shape[-1], logits.device)
        token = next_token(logits, request.seen, request.params, request.generator)
        request.seen[token] = True
        return token

    def _scored(self, request: Request) -> bool:
        """Score an echoed prompt with the model's own forward (its log-softmax, exactly); False when the
        request ends there (``max_new_tokens == 0``)."""
        if request.prompt_logprobs is None:
            return True
        ids = request.prompt_ids
        logits = self.model(torch.tensor([ids], device=self.device)).logits[0, :-1]
        scores = []  # in chunks of positions: the float32 log-softmax never spans the whole prompt at once
        for begin in range(0, len(ids) - 1, SCORE_CHUNK):
            part = slice(begin, begin + SCORE_CHUNK)
            scores += token_logprobs(logits[part], ids[1:][part], request.prompt_logprobs)
        if request.params.max_new_tokens == 0:
            request.done = True
            request.on_event(Event("", "length", len(ids), 0, [], scores))
            return False
        request.on_event(Event("", None, len(ids), 0, None, scores))
        return True

    def _drop_if_cancelled(self, request: Request) -> bool:
        if request.cancelled:
            request.done = True
            request.on_event(Event("", "cancelled", len(request.prompt_ids), len(request.generated)))
        return request.cancelled

    def _forward(self, step: str, *args) -> torch.Tensor:
        """The one place the engine runs the model: the batch's ``prefill`` or ``decode``."""
        return getattr(self.batch, step)(*args)

    def _prefill(self, requests: list[Request]) -> None:
        """Prefill newcomers in one forward (a newcomer whose prompt starts with a cached prefix: alone, computing
        only the rest); the batch appends them as rows after the running ones."""
        cache = self.prefix_cache
        found = [cache.lookup(r.prompt_ids) if cache else (0, None) for r in requests]
        groups = [([r for r, (hit, _) in zip(requests, found) if not hit], 0, None)]
        groups += [([r], hit, kv) for r, (hit, kv) in zip(requests, found) if hit]
        for group, cached, kv in groups:
            if not group:
                continue
            prompts = [r.prompt_ids for r in group]
            logits = (
                self._forward("prefill", prompts, self.pad_id)
                if kv is None
                else self._forward("prefill", prompts, self.pad_id, kv)
            )
            self.stats["prefills"] += 1
            self.active += group
            self.last += [0] * len(group)
            offset = len(self.active) - len(group)
            if cache:
                for row, request in enumerate(group, start=offset):
                    cache.store(request.prompt_ids, cached, lambda b, e, row=row: self.batch.prompt_kv(row, b, e))
            self._advance(logits, range(offset, offset + len(group)))

    def _decode(self) -> None:
        logits = self._forward("decode", torch.tensor(self.last, device=self.device))
        self._advance(logits, range(len(self.active)))

    def _advance(self, logits: torch.Tensor, rows) -> None:
        """Sample ``rows`` (``logits[i]`` belongs to ``rows[i]``), report events, drop finished or cancelled rows."""
        argmax = logits.argmax(-1).tolist()  # one device sync for all plain-greedy rows
        scored = self._logprobs(logits, rows)
        for logits_row, row in enumerate(rows):
            request = self.active[row]
            if request.cancelled:
                continue
            try:
                token = self._sample(request, logits[logits_row], argmax[logits_row])
            except Exception as err:  # noqa: BLE001 -- this request's sampling settings: end it alone
                self._fail(request, err)
                continue
            self.last[row] = token
            if request.logprobs is not None:
                logprobs, top_values, top_ids = scored
                top = request.logprobs
                alternatives = list(zip(top_ids[logits_row][:top], top_values[logits_row][:top]))
                request.pending.append((token, float(logprobs[logits_row, token]), alternatives))
            if token in self.eos_ids:
                self._finish(request, "stop")
                continue
            request.generated.append(token)
            delta = request.decoder.push(token)
            full = len(request.prompt_ids) + len(request.generated) >= self.max_context
            if request.constraint is not None:
                try:
                    request.constraint.accept(token)
                except Exception as err:  # noqa: BLE001 -- this request's grammar: end it alone
                    self._fail(request, err)
                    continue
                if request.constraint.finished:
                    self._finish(request, "stop", delta)
                    continue
            if len(request.generated) >= request.params.max_new_tokens or full:
                self._finish(request, "length", delta)
            elif delta:
                request.on_event(Event(delta, logprobs=self._reported(request)))
        keep = [i for i, r in enumerate(self.active) if not r.done and not self._drop_if_cancelled(r)]
        if len(keep) < len(self.active):
            self._select(keep)

    def _logprobs(self, logits: torch.Tensor, rows):
        """For the rows that report logprobs: the log-softmax of all rows and the top alternatives, in one
        batched call each (not per row); None when no row asks."""
        wanted = [self.active[row].logprobs for row in rows if self.active[row].logprobs is not None]
        if not wanted:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = max(wanted)
        values, ids = torch.topk(logprobs, top, dim=-1) if top else (logprobs[:, :0], logprobs[:, :0].long())
        return logprobs.cpu(), values.tolist(), ids.tolist()

    def _finish(self, request: Request, reason: str, pending: str = "") -> None:
        request.done = True
        text = pending + request.decoder.finish()
        request.on_event(Event(text, reason, len(request.prompt_ids), len(request.generated), self._reported(request)))

    @staticmethod
    def _reported(request: Request) -> list[TokenLogprob] | None:
        """The logprobs gathered since the last event (None when the request did not ask)."""
        if request.logprobs is None:
            return None
        pending, request.pending = request.pending, []
        return pending

    def _select(self, keep: list[int]) -> None:
        self.active = [self.active[i] for i in keep]
        self.last = [self.last[i] for i in keep]
        self.batch.keep(keep)


def _isolated(request: Request, on_event: Callable[[Event], None]) -> Callable[[Event], None]:
    """``on_event`` that cannot raise into the engine: a consumer that fails (its client is gone)
    cancels its own request and nobody else's."""

    def emit(event: Event) -> None:
        try:
            on_event(event)
        except Exception:  # noqa: BLE001 -- whatever the consumer does wrong stays with its request
            request.cancelled = True

    return emit


def _eos_ids(model, tokenizer) -> set[int]:
    """Stop tokens: the generation config's eos (int or list) and the tokenizer's ``</s>``."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if not ids:
        raise GenerationError("neither the generation config nor the tokenizer names an eos token")
    return ids


# ----------------------------------------------------------------------------- one request


def _events(engine: Engine, prompt_ids: list[int], params: SamplingParams) -> Iterator[tuple[Request, Event]]:
    events: list[Event] = []
    request = engine.submit(prompt_ids, params, events.append)
    while not request.done:
        engine.step()
        while events:
            yield request, events.pop(0)


def stream(
    model, tokenizer, prompt_ids: list[int], params: SamplingParams, *, engine: Engine | None = None
) -> Iterator[str]:
    """Text deltas for one prompt, generated in this thread (the batcher with one request)."""
    for _, event in _events(engine or Engine(model, tokenizer, max_batch_size=1), prompt_ids, params):
        if event.text:
            yield event.text


def generate(
    model, tokenizer, prompt_ids: list[int], params: SamplingParams, *, engine: Engine | None = None
) -> Completion:
    """The whole completion for one prompt (exactly the concatenation of ``stream``'s deltas)."""
    parts, request, end = [], None, None
    engine = engine or Engine(model, tokenizer, max_batch_size=1)
    for request, event in _events(engine, prompt_ids, params):  # noqa: B007 -- the last request is used below
        parts.append(event.text)
        end = event if event.finish_reason is not None else end
    assert request is not None and end is not None
    return Completion("".join(parts), list(request.generated), end.finish_reason, len(prompt_ids))
