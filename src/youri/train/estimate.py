"""Back-of-envelope model arithmetic: parameter count, training FLOPs per token, MFU, memory per GPU.

Used by the training loop (the MFU column of the log) and by ``youri pretrain --dry_run true``.

**FLOPs per token (training, forward + backward)** = ``6 * N + 12 * L * d * T`` (the PaLM appendix B
convention, as in nanoGPT/nanochat): ``N`` is the number of parameters that take part in matmuls —
all parameters except the input embedding table (a lookup) — counted 2 FLOPs per multiply-add and
x3 for forward + backward; the second term is the attention score and value matmuls (QK^T and AV:
2 matmuls x 2 FLOPs x d x T per token per layer, x3), not halved for the causal mask.
**MFU** = achieved FLOPs/s (tokens/s x FLOPs per token) / (devices x peak dense bf16 FLOPs/s).
Activation-checkpoint recomputation is *not* counted as useful work (so MFU drops when it is on).
"""

from __future__ import annotations

from typing import Any

# Dense bf16 peak (no sparsity), TFLOP/s per device, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0,
    "GH200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
}

# Shapes for a dry run when the model folder is not on this machine (HF config.json fields).
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
    ),
    "llama-2-13b": dict(
        vocab_size=32000,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        tie_word_embeddings=False,
    ),
}


def _get(config: Any, name: str, default: Any = None) -> Any:
    return config.get(name, default) if isinstance(config, dict) else getattr(config, name, default)


def param_counts(config: Any) -> dict[str, int]:
    """Parameters of a Llama-family model from its HF config (dict or ``PretrainedConfig``)."""
    V, d, ff, L = (_get(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"))
    heads = _get(config, "num_attention_heads")
    kv = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    layer = attn + 3 * d * ff + 2 * d  # gate, up, down + two RMSNorms
    embed = V * d
    head = 0 if _get(config, "tie_word_embeddings", False) else V * d
    return {"total": embed + L * layer + d + head, "embedding": embed, "per_layer": layer, "lm_head": head}


def flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token: ``6 * (N - embedding) + 12 * L * d * T`` (see module docstring)."""
    counts = param_counts(config)
    matmul_params = counts["total"] - counts["embedding"] + (counts["embedding"] if counts["lm_head"] == 0 else 0)
    L, d = _get(config, "num_hidden_layers"), _get(config, "hidden_size")
    return 6.0 * matmul_params + 12.0 * L * d * seq_len


def peak_flops(device_name: str, override_tflops: float = 0.0) -> float | None:
    """Peak bf16 FLOP/s of one device: the override, else a known GPU name, else None (CPU: n/a)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    for name, tflops in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):  # "H100 PCIe" before "H100"
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def memory_per_gpu(
    config: Any, *, world: int, micro_batch: int, seq_len: int, activation_checkpointing: bool, param_bytes: int = 2
) -> dict[str, float]:
    """Rough training memory (bytes) per GPU under FSDP2 full sharding with fp32 master weights + AdamW.

    States: 4 (fp32 weight) + 4 (fp32 grad) + 8 (Adam moments) bytes per parameter, divided by the
    world. Transient: two all-gathered decoder layers (current + prefetch) and the root unit in
    ``param_bytes``. Activations (Korthikanti et al. 2022, flash attention so no s^2 term):
    ``34 * b * s * d`` bytes per layer, or only each layer's input (``2 * b * s * d``) plus one layer
    when checkpointed. Logits: bf16 + fp32 upcast + fp32 grad of ``b * s * V``.
    """
    counts = param_counts(config)
    L, d, V = _get(config, "num_hidden_layers"), _get(config, "hidden_size"), _get(config, "vocab_size")
    states = 16.0 * counts["total"] / world
    gathered = param_bytes * (2 * counts["per_layer"] + counts["embedding"] + counts["lm_head"])
    tokens = micro_batch * seq_len
    per_layer_act = 34.0 * tokens * d
    acts = (L * 2.0 * tokens * d + per_layer_act) if activation_checkpointing else L * per_layer_act
    logits = 10.0 * tokens * V
    return {
        "states": states,
        "gathered_params": gathered,
        "activations": acts,
        "logits": logits,
        "total": states + gathered + acts + logits,
    }
