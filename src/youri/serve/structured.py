"""Constrained decoding for ``response_format`` (and forced tool calls) with llguidance.

Why llguidance: of the three maintained grammar engines (xgrammar, llguidance, outlines-core) it is the
one with no torch or transformers pin (a Rust wheel), it takes JSON Schema and Lark grammars alike
(``%json`` inside Lark: the tool-call wrapper), compiles lazily (no per-schema precompute over the
vocabulary, so a request's first token is not delayed by its schema) and is what llama.cpp and vLLM
use. Its per-token mask costs ~15 us on one CPU core for the Llama 2 vocabulary
(``benchmarks/serve_concurrency.py --structured`` measures the cost of a whole constrained request).

A ``Constraint`` is one request's matcher: ``mask`` turns its logits' disallowed tokens to -inf (the
allowed set comes as a bitmask; the end-of-sequence token is allowed exactly when the text is
complete), ``accept`` advances it by the sampled token; ``finished``: the grammar admits nothing more.
"""

from __future__ import annotations

import threading

import llguidance
import llguidance.hf
import torch
from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

JSON_DEFAULTS = {"whitespace_flexible": False}  # compact JSON: no unbounded runs of spaces from a weak model


class GrammarError(ValueError):
    """A schema or grammar llguidance cannot compile (the message says why)."""


class Grammars:
    """Compiles grammars for one tokenizer (the llguidance tokenizer is built once, on first use: ~1 s)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self._hf, self._vocab, self._eos = tokenizer, vocab_size, sorted(eos_ids)
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._vocab, eos_token=self._eos[0])
            return self._tokenizer

    def json_schema(self, schema: dict) -> str:
        return self._checked(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS))

    def lark(self, grammar: str) -> str:
        return self._checked(llguidance.LLMatcher.grammar_from_lark(grammar))

    def _checked(self, grammar: str) -> str:
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise GrammarError(error.splitlines()[0][:300])
        return grammar

    def constraint(self, grammar: str) -> "Constraint":
        return Constraint(llguidance.LLMatcher(self.tokenizer, grammar), self._vocab)


class Constraint:
    def __init__(self, matcher, vocab_size: int):
        self.matcher, self.vocab = matcher, vocab_size
        self._bits = allocate_token_bitmask(1, vocab_size)
        self._shifts = torch.arange(32, dtype=torch.int32)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """A copy of ``logits [V]`` with every token the grammar does not allow next at -inf."""
        fill_next_token_bitmask(self.matcher, self._bits)
        allowed = ((self._bits[0, :, None] >> self._shifts) & 1).flatten()[: logits.shape[-1]].bool()
        return logits.float().masked_fill(~allowed.to(logits.device), float("-inf"))

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        return self.matcher.is_stopped()
