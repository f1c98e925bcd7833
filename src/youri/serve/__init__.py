"""Inference: talking to the models.

- ``engine``    — the one place for sampling, streaming detokenisation and continuous batching.
- ``api``       — the request contract of ``youri serve``: every field of every endpoint checked, OpenAI errors.
- ``stops``     — ``stop`` strings matched incrementally (linear in the text produced).
- ``prefix_cache`` — an exact, LRU-bounded cache of prompt-prefix K/V reused across requests.
- ``decoder``   — the engine's forward: a static KV cache and a lean Llama step (the model's own forward otherwise).
- ``native_step`` — the lean step's one-call C decode (all layers) of one sequence of a GPTQ model on youri's kernels.
- ``dynamic_decoder`` — the engine's forward for any other causal LM: its own forward over a ``DynamicCache``.
- ``inference`` — loading a stage folder for inference and encoding conversations with its prompt format.
- ``chat``      — the ``youri chat`` stage (terminal).
- ``service``   — what ``youri serve`` does with a checked request: ``Server`` state, collected and streamed replies.
- ``replies``   — whole replies and event-stream chunks in OpenAI's shapes (logprobs: chat and legacy).
- ``structured`` — constrained decoding (response_format JSON schemas, forced tool calls) with llguidance.
- ``metrics``   — Prometheus metrics of ``youri serve``.
- ``tools``     — tool calls: tools rendered by the model's template, <tool_call> blocks parsed, forced calls.
- ``routes``    — the endpoints of ``youri serve``, one function each on a FastAPI ``APIRouter``.
- ``server``    — the ``youri serve`` stage (OpenAI-compatible HTTP API and the web chat page in ``web/``).
"""
