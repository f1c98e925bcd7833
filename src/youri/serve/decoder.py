"""The forward passes behind ``youri.serve.engine``: a static KV cache and a lean Llama decode step.

A batch is a set of rows (one request each) that share one column index: prompts are left-padded so
that every row's newest token sits in the same column, and a decode step writes one new column for
all rows. Two implementations of that interface (``rows``, ``prefill``, ``decode``, ``keep``):

* ``StaticLlama`` -- the families whose ``youri.families`` row says ``lean_decoder`` (Llama, Mistral, Qwen2,
  Qwen3: Llama's math, q/k/v biases and QK-norm included) when no sliding window is narrower than the
  context. K/V live in preallocated ``[rows, kv_heads, columns, head_dim]`` buffers written in place (grown
  by doubling, compacted when padding piles up on the left), validity is one boolean ``[rows, columns]``
  mask, rotary tables are computed once. A step is Llama's math on the model's own weights, resolved once into bare
  calls (``LeanLayer``): at youri's sizes a step costs what its op dispatches and ``nn.Module`` calls
  cost, not its FLOPs.

  - RMSNorm runs as ``F.rms_norm`` (bit-identical to Hugging Face's module in fp32; half precision keeps
    its rounding order), SiLU as ``F.silu``, the embedding as ``F.embedding``; activations stay 2-D.
  - Small plain ``nn.Linear`` layers (``FUSE_MAX_ELEMENTS``) run as one matmul over a transposed copy:
    q, k, v and copies of q and k with their output rows permuted as ``rotate_half`` permutes them, so
    rotary is ``qk * cos + rotated * sin`` with no slicing; gate and up stacked; o, down and the LM head
    alone. Small bias-free GPTQ ``QuantLinear`` layers on youri's int4 kernels (``ROW_KERNELS``) are stacked the
    same way into one kernel call (``youri.runtime.kernels.stack_rows``: the same codes; a rotated row's
    sign goes into its scale). The plan is rebuilt when a parameter was changed or replaced, a hook was
    added or removed, or a GPTQ layer's kernel was re-prepared (checked at each prefill).
  - Anything else -- another GPTQ layer, a hooked or wrapped module, a large layer -- is called as the
    module it is, with Hugging Face's ``rotate_half``.
  - Rows that started in the same column (a single stream) decode with a view of the rotary tables and
    no attention mask.
  - A model whose every projection runs on youri's int4 row kernels (a GPTQ twin on a CPU) decodes all its
    layers, for all rows, in one C call (``youri.serve.native_step``): the same kernel calls, no PyTorch op
    between them.

  Logits equal Hugging Face's forward up to fp32 rounding (tests/test_decoder.py). Hugging Face's own
  forward rebuilds a 4-D mask, concatenates its cache and wraps outputs on every step; at the tiny demo
  shape youri's greedy decode is 2.4-2.9x its ``generate`` (benchmarks/decode_speed.py).
* ``DynamicHF`` (``youri.serve.dynamic_decoder``) -- any other causal LM, through its own forward and a
  ``DynamicCache`` (the engine's previous path), so a model the lean step does not know still generates correctly.

Prefill takes all newcomers in one call; newcomers are merged into the running batch by placing their
K/V in the columns that line up with it (shifting the running rows right once when a prompt is longer).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from transformers.activations import SiLUActivation
from transformers.models.llama.modeling_llama import LlamaRMSNorm, rotate_half
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from youri.families import UnsupportedModelError, family_of
from youri.runtime import kernels
from youri.runtime.quant_linear import QuantLinear
from youri.serve.dynamic_decoder import DynamicHF
from youri.serve.native_step import NativeStep, hooked


def make_batch(model, max_context: int):
    """The fastest batch implementation that supports ``model`` over ``max_context`` tokens."""
    return StaticLlama(model, max_context) if StaticLlama.supports(model, max_context) else DynamicHF(model)


def decoder_line(model, max_context: int) -> str:
    """One line saying which forward ``make_batch`` runs for ``model``, and why not the lean one."""
    why = StaticLlama.unsupported(model, max_context)
    if why is None:
        return f"youri: decoder: lean static-cache step ({family_of(model.config).name})"
    return f"youri: decoder: transformers' own forward with a dynamic cache ({why})"


def _lean_lacks(family) -> list[str]:
    """What a family row computes that the lean step does not (Llama's math, plus biases and QK-norm)."""
    return [
        what
        for what, needed in (
            ("1 + w norms", family.norm_offset),
            ("embedding scale", family.embed_scale),
            ("soft-capping", family.soft_capping),
        )
        if needed
    ]


# ----------------------------------------------------------------------------- static cache, lean step


class StaticLlama:
    """Rows of requests over preallocated K/V buffers; ``decode`` is one column for every row."""

    def __init__(self, model, max_context: int, *, rows: int = 1, columns: int = 64):
        self.model, self.inner = model, model.model
        self.layers = list(self.inner.layers)
        attention = self.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.head_dim = attention.head_dim
        self.kv_heads = model.config.num_key_value_heads
        self.gqa = attention.num_key_value_groups > 1
        self._build_plan()
        embed = self.inner.embed_tokens.weight
        self.device, self.dtype = embed.device, embed.dtype
        self.max_context = max_context
        positions = torch.arange(max_context + 1, device=self.device)[None]
        cos, sin = self.inner.rotary_emb(embed[:1], positions)  # the model's own tables (rope scaling included)
        self.cos, self.sin = cos[0], sin[0]
        with torch.inference_mode():  # the buffers are only ever touched in inference mode
            self._allocate(rows, columns)
        self.reset()

    @staticmethod
    def supports(model, max_context: int) -> bool:
        return StaticLlama.unsupported(model, max_context) is None

    @staticmethod
    def unsupported(model, max_context: int) -> str | None:
        """Why the lean step would not compute ``model`` exactly over ``max_context`` tokens (None: it does)."""
        config = getattr(model, "config", None)
        try:
            family = family_of(config)
        except UnsupportedModelError:
            return f"model_type {getattr(config, 'model_type', None)!r} is not a youri family"
        if not family.lean_decoder:
            return f"{family.name}: the lean step has no {', '.join(_lean_lacks(family)) or 'plan'}"
        if not (hasattr(model, "model") and hasattr(model.model, "rotary_emb")):
            return f"{type(model).__name__} has no model.rotary_emb"
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") == "dynamic":
            return "dynamic rope scaling"
        window, types = getattr(config, "sliding_window", None), getattr(config, "layer_types", None)
        if window and (types is None or "sliding_attention" in types) and window < max_context:
            return f"{family.name}: sliding window of {window} tokens < context of {max_context}"
        return None

    def _build_plan(self) -> None:
        """Resolve every module the step calls into bare functions, stacking small projections (``LeanLayer``)."""
        self._plan = [LeanLayer(layer, self.heads, self.kv_heads, self.head_dim) for layer in self.layers]
        self._embed = _embedding(self.inner.embed_tokens)
        self._norm, self._lm_head = _rms_norm(self.inner.norm), _lm_head(self.model.lm_head)
        self._native = self._native_step()
        self._built_from = _model_state(self.model)

    def _native_step(self) -> NativeStep | None:
        """The one-call C decode step when every layer runs on youri's int4 row kernels in fp32 (else None)."""
        embed = self.inner.embed_tokens.weight
        if embed.dtype != torch.float32 or embed.device.type != "cpu":
            return None
        if NativeStep.unsupported(self.model, self.head_dim, RMS_NORMS, SILU) is not None:
            return None
        return NativeStep(self.layers, self.heads, self.kv_heads, self.head_dim)

    def _refresh_plan(self) -> None:
        """Rebuild the plan if, since it was built, a parameter was changed in place or replaced (the stacked
        projections are copies) or a module gained or lost a hook. Checked once per prefill, not per token."""
        if not _same_state(_model_state(self.model), self._built_from):
            self._build_plan()

    @property
    def fused(self) -> list[tuple[str, ...]]:
        """Per layer, which projections run as one stacked matmul (empty: the model's own modules)."""
        return [layer.fused for layer in self._plan]

    # -- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        self.rows = 0
        self.length = 0  # columns in use: [low, length)
        self.starts = []

    @property
    def starts(self) -> list[int]:
        """Each row's first real column (left of it: padding)."""
        return self._starts

    @starts.setter
    def starts(self, value: list[int]) -> None:
        self._starts = list(value)
        self._start_columns = torch.tensor(self._starts, dtype=torch.long, device=self.device)[:, None]  # per step
        self._starts_int32 = torch.tensor(self._starts, dtype=torch.int32)  # the C step's (CPU only)
        # Rows that start in the same column sit at the same position and see only real tokens in the window
        # (each row's valid columns are [start, length)): a decode step then needs no gather and no mask.
        self._same_start = len(set(self._starts)) == 1

    @property
    def low(self) -> int:
        return min(self.starts) if self.starts else self.length

    def _allocate(self, rows: int, columns: int) -> None:
        shape = (rows, self.kv_heads, columns, self.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.valid = torch.zeros((rows, columns), dtype=torch.bool, device=self.device)

    def _reserve(self, rows: int, columns: int) -> None:
        """Room for ``rows`` rows and column index ``columns - 1``: compact left padding first, then grow."""
        capacity_rows, capacity_columns = self.valid.shape
        if columns > capacity_columns and self.low > 0:
            shift = self.low
            self._move_columns(-shift)
            columns -= shift
        if rows <= capacity_rows and columns <= capacity_columns:
            return
        old = (self.keys, self.values, self.valid)
        grow = lambda need, have: have if need <= have else max(need, 2 * have)  # noqa: E731 -- doubling: amortised
        self._allocate(grow(rows, capacity_rows), grow(columns, capacity_columns))
        used = slice(0, self.length)
        for new, kept in zip(self.keys + self.values, old[0] + old[1]):
            new[: self.rows, :, used] = kept[: self.rows, :, used]
        self.valid[: self.rows, used] = old[2][: self.rows, used]

    def _move_columns(self, shift: int) -> None:
        """Move the running rows' columns ``[low, length)`` by ``shift`` (right when positive)."""
        low, length, rows = self.low, self.length, self.rows
        source, target = slice(low, length), slice(low + shift, length + shift)
        for buffer in self.keys + self.values:
            buffer[:rows, :, target] = buffer[:rows, :, source].clone()
        moved = self.valid[:rows, source].clone()
        self.valid[:rows, min(low, low + shift) : max(length, length + shift)] = False
        self.valid[:rows, target] = moved
        self.starts = [s + shift for s in self.starts]
        self.length += shift

    # -- steps ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], pad_id: int, prefix: list | None = None) -> torch.Tensor:
        """Append one row per prompt (all prompts in one forward); logits ``[len(prompts), vocab]``.

        ``prefix`` (one prompt only): per layer the ``(keys, values)`` of its first tokens, from ``prompt_kv``
        (the prefix cache): they are placed in the row and only the rest of the prompt is computed."""
        self._refresh_plan()
        count, width = len(prompts), max(len(p) for p in prompts)
        cached = 0 if prefix is None else prefix[0][0].shape[-2]
        assert cached == 0 or count == 1, "a cached prefix is prefilled alone"
        if self.rows and width > self.length:
            self._reserve(self.rows, width + 1)
            self._move_columns(width - self.length)  # the running rows move right once
        end = max(self.length, width)
        self._reserve(self.rows + count, end + 1)
        first = end - width  # the newcomers' columns: [first, end)
        rows = slice(self.rows, self.rows + count)
        ids = torch.full((count, width - cached), pad_id, dtype=torch.long)
        starts = []
        self.valid[rows] = False
        for keys, values, (k, v) in zip(self.keys, self.values, prefix or ()):
            keys[self.rows, :, first : first + cached], values[self.rows, :, first : first + cached] = k, v
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt[cached:], dtype=torch.long)
            starts.append(end - len(prompt))
            self.valid[self.rows + row, end - len(prompt) : end] = True
        start = torch.tensor(starts, device=self.device)
        columns = torch.arange(first + cached, end, device=self.device)  # the columns computed
        positions = (columns[None] - start[:, None]).clamp(min=0)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()[cached:]
        # Padding queries see only themselves (no row of the mask is empty, so no NaN); real tokens
        # never see padding keys.
        eye = torch.eye(width, dtype=torch.bool, device=self.device)[cached:]
        mask = (causal & self.valid[rows, None, first:end]) | eye
        logits = self._forward(
            ids.to(self.device), positions, rows, slice(first + cached, end), slice(first, end), mask[:, None]
        )
        self.rows += count
        self.starts += starts
        self.length = end
        return logits

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per row (``tokens [rows]``) -> logits ``[rows, vocab]``."""
        self._reserve(self.rows, self.length + 1)
        column, rows = self.length, slice(0, self.rows)
        self.valid[rows, column] = True
        window = slice(self.low, column + 1)
        if self._native is not None:  # every layer of every row in one C call
            x = self._embed(tokens).to(torch.float32).contiguous()
            self._native.step(x, self.keys, self.values, column, self._starts_int32, self.cos, self.sin)
            self.length += 1
            return self._lm_head(self._norm(x))
        if self._same_start:
            positions, mask = column - self._starts[0], None
        else:
            positions, mask = column - self._start_columns, self.valid[rows, None, None, window]
        logits = self._forward(tokens[:, None], positions, rows, slice(column, column + 1), window, mask)
        self.length += 1
        return logits

    @torch.inference_mode()
    def prompt_kv(self, row: int, begin: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, copies of ``(keys, values)`` of tokens ``[begin, end)`` of ``row``'s prompt (for the prefix
        cache: keys are stored after rotary, at their positions in the prompt)."""
        columns = slice(self.starts[row] + begin, self.starts[row] + end)
        return [(k[row, :, columns].clone(), v[row, :, columns].clone()) for k, v in zip(self.keys, self.values)]

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (finished or cancelled requests); order is kept."""
        if not rows:
            self.reset()
            return
        index = torch.tensor(rows, device=self.device)
        used, count = slice(self.low, self.length), len(rows)
        for buffer in self.keys + self.values:
            buffer[:count, :, used] = buffer[index, :, used]
        self.valid[:count] = self.valid[index]
        self.starts = [self.starts[i] for i in rows]
        self.rows = count

    def _forward(self, ids, positions, rows: slice, write: slice, window: slice, mask) -> torch.Tensor:
        """Llama's decoder over ``ids [n, T]``: K/V written to columns ``write``, attention over ``window``.

        ``positions``: ``[n, T]`` rotary positions, or one int when every row is at the same position (a
        decode step of rows that started together: a view of the tables instead of a gather)."""
        count, width = ids.shape
        x = self._embed(ids.reshape(-1))  # [tokens, hidden]: 2-D all the way (3-D matmuls cost a reshape each)
        cos, sin = self.cos[positions], self.sin[positions]
        if not isinstance(positions, int):
            cos, sin = cos[:, None], sin[:, None]  # [n, 1, T, head_dim]: broadcast over heads
        heads = self.heads
        for keys, values, layer in zip(self.keys, self.values, self._plan):
            qk, v = layer.qkv(layer.norm1(x), cos, sin, count, width)  # rotary applied to queries and keys
            keys[rows, :, write] = qk[:, heads:]
            values[rows, :, write] = v
            out = F.scaled_dot_product_attention(
                qk[:, :heads],
                keys[rows, :, window],
                values[rows, :, window],
                attn_mask=mask,
                scale=layer.scale,
                enable_gqa=self.gqa,
            )
            x = x + layer.o_proj(out.transpose(1, 2).reshape(count * width, -1))
            x = x + layer.mlp(layer.norm2(x))
        return self._lm_head(self._norm(x.view(count, width, -1)[:, -1]))


FUSE_MAX_ELEMENTS = 1 << 20
"""Linears are copied (stacked, transposed) only while the copy has at most this many elements (4 MiB in fp32):
past this size the matmul takes far longer than the dispatch and the copy would cost memory for nothing."""

SILU = (torch.nn.SiLU, SiLUActivation)
RMS_NORMS = (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Qwen3RMSNorm)
"""Transformers' copies of Llama's RMSNorm (``weight * x / rms(x)``, the same source line for line)."""


class LeanLayer:
    """One decoder layer's callables, resolved once at build time (no ``nn.Module`` attribute lookups or calls
    per step). Every callable takes 2-D ``[tokens, features]`` activations. ``fused`` names what became one
    matmul: ``qkv`` (with the rotary halves, see ``_rotated``) and ``gate_up``."""

    __slots__ = ("norm1", "qkv", "o_proj", "scale", "norm2", "mlp", "fused")

    def __init__(self, layer, heads: int, kv_heads: int, head_dim: int):
        attention, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = _rms_norm(layer.input_layernorm), _rms_norm(layer.post_attention_layernorm)
        self.o_proj, self.scale = _linear(attention.o_proj), attention.scaling
        fused_qkv = _fused_qkv(attention, heads, kv_heads, head_dim)
        fused_mlp = _fused_mlp(mlp)
        self.qkv = fused_qkv or _separate_qkv(attention, head_dim)
        self.mlp = fused_mlp or _separate_mlp(mlp)
        self.fused = tuple(name for name, done in (("qkv", fused_qkv), ("gate_up", fused_mlp)) if done)


def _model_state(model) -> tuple[list, list]:
    """Every parameter with its version counter (bumped by in-place writes), and every module's hook ids and
    GPTQ kernel weight (a new one after each ``prepare_kernel``: the stacked int4 copies follow it)."""
    # Inference tensors keep no version counter (they cannot change outside inference mode anyway).
    params = [(p, None if p.is_inference() else p._version) for p in model.parameters()]
    hooks = [
        (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), m.kernel_weight if type(m) is QuantLinear else None)
        for m in model.modules()
    ]
    return params, hooks


def _same_state(now: tuple[list, list], then: tuple[list, list]) -> bool:
    (params, hooks), (old_params, old_hooks) = now, then
    return (
        hooks == old_hooks
        and len(params) == len(old_params)
        and all(p is q and v == w for (p, v), (q, w) in zip(params, old_params))
    )


def _plain(module) -> bool:
    """A plain ``nn.Linear`` (not a GPTQ ``QuantLinear``, a LoRA wrapper or a hooked module)."""
    return type(module) is torch.nn.Linear and not hooked(module)


def _call(module):
    """A plain ``nn.Linear`` as a bare ``F.linear`` (the module-call machinery costs as much as a tiny matmul);
    anything else -- a GPTQ ``QuantLinear``, a hooked module -- is called as the module it is."""
    return partial(F.linear, weight=module.weight, bias=module.bias) if _plain(module) else module


@torch.no_grad()
def _dense(weights: list[torch.Tensor], biases: list[torch.Tensor] | None):
    """``h @ cat(weights).T (+ bias)`` with the stacked weight stored transposed: for one token (a matrix-vector
    product) MKL's kernel over a contiguous ``[in, out]`` matrix runs ~1.5x faster than ``F.linear``'s."""
    weight_t = torch.cat([w.detach() for w in weights]).t().contiguous()
    if biases is None:
        return partial(torch.mm, mat2=weight_t)
    bias = torch.cat([b.detach() for b in biases])
    return lambda h: torch.addmm(bias, h, weight_t)


def _stacked(modules, extra: tuple = ()):
    """One matmul over the outputs of plain linears (plus ``extra`` ``(weight, bias)`` rows), or None when a
    module is not plain, the biases differ in kind or the copy would be too large."""
    if not all(_plain(m) for m in modules) or len({m.bias is None for m in modules}) > 1:
        return None
    parts = [(m.weight, m.bias) for m in modules] + list(extra)
    if sum(w.numel() for w, _ in parts) > FUSE_MAX_ELEMENTS:
        return None
    return _dense([w for w, _ in parts], None if modules[0].bias is None else [b for _, b in parts])


def _linear(module):
    """One linear as the fastest call that keeps its numerics: a transposed copy when small, else ``_call``."""
    return _stacked((module,)) or _int4_stacked(((module, None),)) or _call(module)


def _lm_head(module):
    """The LM head through youri's fp16 matmul when its fp32 weights are all exactly fp16 (a GPTQ twin's, an fp16
    checkpoint's): the largest matrix of a decode step read at half the bytes, the same products (fp32 sums)."""
    if _plain(module) and module.bias is None and (half := kernels.half_weight(module.weight)) is not None:
        return partial(kernels.half_matmul, weight=half)
    return _linear(module)


def _int4_stacked(parts):
    """One int4 kernel call over small GPTQ layers' outputs -- ``parts``: ``(module, rotate_half heads or None)``
    -- or None when a layer is not a small bias-free ``QuantLinear`` on that kernel (it is then called as the
    module it is). Exact: the stacked weight holds the same codes, a rotated row's sign in its scale."""
    modules = [module for module, _ in parts]
    if not all(type(m) is QuantLinear and not hooked(m) and m.bias is None for m in modules):
        return None
    if sum(m.in_features * m.out_features for m in modules) > FUSE_MAX_ELEMENTS:
        return None
    weights = [m.kernel_weight for m in modules]
    if any(w is None for w in weights):
        return None
    if len(parts) == 1 and parts[0][1] is None:  # one layer as it is: its own weight, no copy
        return partial(kernels.matmul, weight=weights[0]) if weights[0].kernel in kernels.ROW_KERNELS else None
    stacked = kernels.stack_rows([(w, *_rotation(w.out_features, heads)) for w, (_, heads) in zip(weights, parts)])
    return None if stacked is None else partial(kernels.matmul, weight=stacked)


def _rotation(rows: int, heads: int | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The output-row order and signs of ``rotate_half`` over ``heads`` heads -- the one statement of it, used
    on fp weights (``_rotated``) and on int4 rows (signs into their scales); ``(None, None)``: rows as they are."""
    if heads is None:
        return None, None
    halves = torch.arange(rows).view(heads, 2, -1)
    sign = torch.ones(heads, 2, halves.shape[-1])
    sign[:, 0] = -1  # rotate_half(x) = cat(-x2, x1) per head
    return halves[:, [1, 0]].reshape(-1), sign.reshape(-1)


def _rms_norm(module):
    """Llama's RMSNorm as ``F.rms_norm`` (one call instead of eight; bit-identical to the module in fp32).
    Half precision keeps Hugging Face's order: normalise in fp32, round, then scale."""
    if type(module) not in RMS_NORMS or hooked(module):
        return module
    weight, eps = module.weight, module.variance_epsilon
    shape = (weight.shape[-1],)
    if weight.dtype == torch.float32:
        return partial(F.rms_norm, normalized_shape=shape, weight=weight, eps=eps)
    return lambda x: weight * F.rms_norm(x.float(), shape, eps=eps).to(x.dtype)


def _embedding(module):
    plain = type(module) is torch.nn.Embedding and not hooked(module) and module.max_norm is None
    return partial(F.embedding, weight=module.weight) if plain else module


def _activation(module):
    return F.silu if type(module) in SILU and not hooked(module) else module


def _rotated(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Output rows permuted and negated as ``rotate_half`` does to each head's outputs: ``x @ rotated(W).T ==
    rotate_half(x @ W.T)`` (a permutation and a sign flip), so rotary needs no slicing and concatenation per step."""
    order, sign = _rotation(tensor.shape[0], heads)
    return tensor.detach()[order.to(tensor.device)] * sign.to(tensor).view(-1, *[1] * (tensor.dim() - 1))


def _fused_qkv(attention, heads: int, kv_heads: int, head_dim: int):
    """q, k, v and the rotate_half of q and k from one matmul: rotary is then ``qk * cos + rotated * sin``."""
    q, k, v = attention.q_proj, attention.k_proj, attention.v_proj
    if _plain(q) and _plain(k):
        rotations = (
            (_rotated(q.weight, heads), None if q.bias is None else _rotated(q.bias, heads)),
            (_rotated(k.weight, kv_heads), None if k.bias is None else _rotated(k.bias, kv_heads)),
        )
        matmul = _stacked((q, k, v), rotations)
    else:
        matmul = _int4_stacked(((q, None), (k, None), (v, None), (q, heads), (k, kv_heads)))
    norm = _qk_norm(attention, heads, kv_heads, head_dim)
    if matmul is None or norm is False:
        return None
    qk, qkv = heads + kv_heads, heads + 2 * kv_heads  # output heads: [q | k | v | rotated q | rotated k]

    def project(h, cos, sin, count: int, width: int):
        out = matmul(h).view(count, width, -1, head_dim).transpose(1, 2)
        queries_keys, rotated = out[:, :qk], out[:, qkv:]
        if norm is not None:
            queries_keys, rotated = norm(queries_keys, rotated)
        return queries_keys * cos + rotated * sin, out[:, qk:qkv]

    return project


def _qk_norm(attention, heads: int, kv_heads: int, head_dim: int):
    """Qwen3's RMSNorm of each query and key head (before rotary) over ``[q | k]`` heads and their ``rotate_half``
    copies: None without QK-norm, False when the norms are not plain ``RMS_NORMS`` (the per-module path then
    calls them). ``rotate_half`` permutes and negates within a head, which leaves its RMS as it is, so the
    rotated copy is normalised by the same factor with its weight permuted the same way: exact."""
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    if q_norm is None and k_norm is None:
        return None
    if not all(type(m) in RMS_NORMS and not hooked(m) for m in (q_norm, k_norm)):
        return False
    if q_norm.variance_epsilon != k_norm.variance_epsilon:
        return False
    eps = q_norm.variance_epsilon
    with torch.no_grad():
        weight = torch.cat([q_norm.weight.expand(heads, head_dim), k_norm.weight.expand(kv_heads, head_dim)])
        order, _ = _rotation(head_dim, 1)
        weight, weight_rotated = weight[None, :, None], weight[:, order.to(weight.device)][None, :, None]

    def norm(queries_keys, rotated):
        dtype = queries_keys.dtype
        factor = torch.rsqrt(queries_keys.float().pow(2).mean(-1, keepdim=True) + eps)  # as Hugging Face's module
        normed = weight * (queries_keys.float() * factor).to(dtype)
        return normed, weight_rotated * (rotated.float() * factor).to(dtype)

    return norm


def _separate_qkv(attention, head_dim: int):
    """The per-module path (GPTQ ``QuantLinear``, hooks, large layers): QK-norms where the model has them, then
    Llama's rotary on q and k at once."""
    q_proj, k_proj, v_proj = map(_linear, (attention.q_proj, attention.k_proj, attention.v_proj))
    q_norm, k_norm = (_rms_norm(getattr(attention, name, None) or torch.nn.Identity()) for name in ("q_norm", "k_norm"))

    def project(h, cos, sin, count: int, width: int):
        q = q_norm(q_proj(h).view(count, width, -1, head_dim)).transpose(1, 2)
        k = k_norm(k_proj(h).view(count, width, -1, head_dim)).transpose(1, 2)
        qk = torch.cat([q, k], dim=1)
        return qk * cos + rotate_half(qk) * sin, v_proj(h).view(count, width, -1, head_dim).transpose(1, 2)

    return project


def _fused_mlp(mlp):
    """Gate and up projections as one matmul, then Llama's ``down(act(gate) * up)``."""
    matmul = _stacked((mlp.gate_proj, mlp.up_proj)) or _int4_stacked(((mlp.gate_proj, None), (mlp.up_proj, None)))
    if matmul is None:
        return None
    act, down = _activation(mlp.act_fn), _linear(mlp.down_proj)

    def forward(h):
        gate, up = matmul(h).chunk(2, dim=-1)
        return down(act(gate) * up)

    return forward


def _separate_mlp(mlp):
    act, gate, up, down = _activation(mlp.act_fn), *map(_linear, (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    return lambda h: down(act(gate(h)) * up(h))
