"""The model families youri handles, one row each: every fact a stage needs about a base's architecture.

A stage never branches on ``model_type`` itself; it asks ``family_of(config)`` and reads the row. Adding a
base is one ``Family(...)`` row in ``FAMILIES`` (plus, where llama.cpp names things differently, its GGUF
facts here). An unsupported ``model_type`` is one line naming the supported ones (``UnsupportedModelError``).

Facts per row (all from the families' transformers modelling code and llama.cpp's ``convert_hf_to_gguf.py``):

- ``decoder_layer``: the transformers class of one block (FSDP2 wraps each), under ``model.layers``.
- ``sequential``: GPTQ's true-sequential groups inside a block (AutoGPTQ/GPTQModel's order); every family here
  names its projections the Llama way.
- ``qkv_bias``: q/k/v carry biases (Qwen2); ``None``: the config's ``attention_bias`` says.
- ``qk_norm``: RMS norms on each head's queries and keys before RoPE (Qwen3, Gemma 3).
- ``norm_offset``: Gemma stores RMSNorm weights as ``w`` and multiplies by ``1 + w``; llama.cpp stores ``1 + w``.
- ``layer_norms``: the norms inside one block (Gemma 2/3 have four).
- ``embed_scale``: embeddings are multiplied by ``sqrt(hidden_size)`` (Gemma).
- ``soft_capping``: attention/final logits may be soft-capped (``attn_logit_softcapping``,
  ``final_logit_softcapping``: Gemma 2; Gemma 3 keeps only the final one, usually off).
- ``sliding_window``: some or all layers attend to a window only (Mistral, Gemma 2/3; Qwen's is off by default).
- ``gguf_arch`` / ``gguf_rope_permute``: llama.cpp's architecture name, and whether its converter permutes
  q/k rows to the interleaved RoPE (the ``llama`` architecture only; the others run NeoX-style RoPE).
- ``lean_decoder``: ``youri.serve.decoder``'s static-cache step computes this family exactly (Llama's math with
  optional q/k/v biases and QK-norm) where no sliding window is narrower than the context; others run transformers' own
  forward with a dynamic cache, and chat/serve say so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from youri.config import ConfigError

LLAMA_SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")
GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


class UnsupportedModelError(ConfigError):
    """A checkpoint whose architecture youri does not handle (a configuration error: one line, exit status 2)."""


@dataclass(frozen=True)
class Family:
    name: str
    """How people call it (README, messages)."""
    model_types: tuple[str, ...]
    """The ``config.json`` ``model_type`` values of this family."""
    decoder_layer: str
    gguf_arch: str
    sequential: tuple[tuple[str, ...], ...] = LLAMA_SEQUENTIAL
    qkv_bias: bool | None = None
    qk_norm: bool = False
    norm_offset: float = 0.0
    layer_norms: tuple[str, ...] = LLAMA_NORMS
    embed_scale: bool = False
    soft_capping: bool = False
    sliding_window: bool = False
    gguf_rope_permute: bool = False
    lean_decoder: bool = False

    @property
    def model_type(self) -> str:
        return self.model_types[0]

    @property
    def projections(self) -> tuple[str, ...]:
        """Every linear GPTQ quantizes in one block, in true-sequential order."""
        return sum(self.sequential, ())

    def has_qkv_bias(self, config: Mapping[str, Any]) -> bool:
        return bool(config.get("attention_bias", False)) if self.qkv_bias is None else self.qkv_bias


FAMILIES: tuple[Family, ...] = (
    Family("Llama 2/3", ("llama",), "LlamaDecoderLayer", "llama", gguf_rope_permute=True, lean_decoder=True),
    Family(
        "Mistral",
        ("mistral",),
        "MistralDecoderLayer",
        "llama",
        sliding_window=True,
        gguf_rope_permute=True,
        lean_decoder=True,
    ),
    Family(
        "Qwen2/2.5", ("qwen2",), "Qwen2DecoderLayer", "qwen2", qkv_bias=True, sliding_window=True, lean_decoder=True
    ),
    Family("Qwen3", ("qwen3",), "Qwen3DecoderLayer", "qwen3", qk_norm=True, sliding_window=True, lean_decoder=True),
    Family(
        "Gemma 2",
        ("gemma2",),
        "Gemma2DecoderLayer",
        "gemma2",
        norm_offset=1.0,
        layer_norms=GEMMA_NORMS,
        embed_scale=True,
        soft_capping=True,
        sliding_window=True,
    ),
    Family(
        "Gemma 3",
        ("gemma3_text",),
        "Gemma3DecoderLayer",
        "gemma3",
        qk_norm=True,
        norm_offset=1.0,
        layer_norms=GEMMA_NORMS,
        embed_scale=True,
        soft_capping=True,
        sliding_window=True,
    ),
)
_BY_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}
SUPPORTED_MODEL_TYPES = tuple(_BY_TYPE)


def family_of(config: Mapping[str, Any] | Any, where: str = "config.json") -> Family:
    """The row for a ``config.json`` dict or a transformers config; ``where`` names the file in the error."""
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    family = _BY_TYPE.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"{where}: model_type {model_type!r} is not supported; youri handles {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return family


def head_dim(config: Mapping[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def linear_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection GPTQ quantizes in one decoder block of ``config``'s family."""
    family_of(config)
    hidden, inter, heads = config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]
    q, kv = heads * head_dim(config), (config.get("num_key_value_heads") or heads) * head_dim(config)
    return {
        "self_attn.q_proj": (hidden, q),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (q, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }


def norm_elements(config: Mapping[str, Any]) -> int:
    """Weights of every RMSNorm in the model (the block norms, QK-norms and the final norm)."""
    family = family_of(config)
    per_layer = len(family.layer_norms) * config["hidden_size"] + (2 * head_dim(config) if family.qk_norm else 0)
    return per_layer * config["num_hidden_layers"] + config["hidden_size"]


def decoder_layers(model) -> list:
    """The transformer blocks of a HF causal LM of a supported family (``model.model.layers``)."""
    family_of(model.config, type(model).__name__)
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise UnsupportedModelError(f"{type(model).__name__}: no model.layers; youri handles decoder-only causal LMs")
    return list(layers)
