"""Tiny random Llama models and tokenizers for tests and benchmarks: hermetic, CPU, seconds.

The one factory every test file and benchmark builds its models with (``tests/conftest.py`` wraps it
in fixtures), so shapes differ only where a caller says why::

    from youri.testing import random_llama, save_random_llama
    model = random_llama(vocab_size=32000)                                  # hidden 64, 2 layers
    folder = save_random_llama(tmp / "m", tokenizer, hidden_size=128, chat_template="chat")
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from youri.model import load_tokenizer, save_model
from youri.prompts import install_chat_template

TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""The default shape: the smallest Llama that still has GQA, two layers and Llama 2's special ids."""

FAMILY_SHAPES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
    "gemma3_text": {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8},
}
"""Per ``youri.families`` row, what its tiny model adds to ``TINY_SHAPE`` (Gemma: short windows, so that the
sliding layers differ from the global ones within a test's few dozen tokens)."""


def random_llama(vocab_size: int = 32000, *, seed: int = 0, fast_init: bool = False, **shape: Any) -> LlamaForCausalLM:
    """A randomly initialised fp32 ``LlamaForCausalLM``; ``shape`` overrides ``TINY_SHAPE`` (LlamaConfig fields).

    ``fast_init``: N(0, 0.02) weights and unit norms filled in place on a model built on the meta device,
    because transformers' own initialisation of a 1B-parameter model takes minutes on 2 cores.
    """
    config = LlamaConfig(**{**TINY_SHAPE, "vocab_size": vocab_size, **shape})
    if fast_init:
        model = _filled_llama(config, seed)
    else:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).float()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.eos_token_id
    return model


def random_family_model(model_type: str, tokenizer: Any, *, seed: int = 0, **shape: Any):
    """A tiny random fp32 model of a ``youri.families`` family, built with transformers' own config and model
    classes, its embedding rows = ``len(tokenizer)`` and its special ids the tokenizer's (Qwen has no BOS)."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    fields = {**TINY_SHAPE, **FAMILY_SHAPES[model_type], **ids, "vocab_size": len(tokenizer), **shape}
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = ids["pad_token_id"]
    return model


def _filled_llama(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0) if name.endswith("norm.weight") else param.normal_(0, 0.02, generator=generator)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were left on meta
    return model


def save_random_llama(
    out: str | os.PathLike,
    tokenizer: Any,
    *,
    seed: int = 0,
    chat_template: str = "",
    **shape: Any,
) -> Path:
    """A model folder as youri's stages write one: safetensors weights, config, generation config, tokenizer.

    ``tokenizer``: a tokenizer or a tokenizer folder; the vocabulary size follows it. ``chat_template``:
    ``chat`` or ``instruction`` installs youri's template inside ``tokenizer_config.json``, as ``youri sft`` does.
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    model = random_llama(len(tokenizer), seed=seed, **shape)
    out = save_model(model, None, out)
    if chat_template:
        install_chat_template(tokenizer, chat_template)
    tokenizer.save_pretrained(str(out), save_jinja_files=False)
    return out


def char_tokenizer(text: str, out: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over the characters of ``text`` (ids 0-2: <unk>, <s>, </s>).

    Built in process from nothing (no shared data); saved to ``out`` when given.
    """
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(sorted(set(text)))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if out is not None:
        tokenizer.save_pretrained(str(out))
    return tokenizer


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free 127.0.0.1 port by a daemon thread (a real HTTP peer for a client under test);
    yields the base URL ``http://127.0.0.1:PORT``, and shuts the server down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
    """Answer a request of ``handler`` with ``payload`` as a JSON body."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
