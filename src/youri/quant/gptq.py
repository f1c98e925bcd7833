"""GPTQ numerics, once: the quantizer, round-to-nearest, the GPTQ v1 packer/unpacker and ``QuantLinear``.

The on-disk layout is the standard GPTQ v1 checkpoint format (AutoGPTQ / GPTQModel ``checkpoint_format:
gptq``, what ``transformers`` with a GPTQ backend and vLLM load) for a linear layer with ``K`` inputs,
``N`` outputs, ``b`` bits and group size ``g``:

    qweight  int32 [K*b/32, N]   codes packed along K
    qzeros   int32 [K/g, N*b/32] (zero - 1) packed along N  -- v1 stores zero minus one
    scales   fp16  [K/g, N]
    g_idx    int32 [K]           group of each input column (not monotone with act-order)

Packing is a little-endian bit stream per column: value ``j`` occupies bits ``[b*j, b*j+b)`` of the
concatenated 32-bit words. For 2/4/8 bits that is "value j in word j*b//32 at shift (j*b) % 32";
for 3 bits it is exactly AutoGPTQ's 10+1/1+10+1/1+10 scheme over three words per 32 values, so one
packer serves every width. Dequantisation: ``W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])``.

v1 cannot store a zero of 0 (``0 - 1`` does not fit in ``b`` bits; AutoGPTQ's asymmetric v1 checkpoints
corrupt it silently), so the asymmetric quantizer here keeps zeros in ``[1, 2^b - 1]``.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from youri.quant import kernels

SUPPORTED_BITS = (2, 3, 4, 8)


class QuantConfigError(ValueError):
    """Settings that cannot give a valid GPTQ v1 checkpoint (bits, group size, shapes)."""


def check_shape(in_features: int, out_features: int, bits: int, group_size: int, name: str = "layer") -> int:
    """Validate one linear layer for GPTQ v1 and return its effective group size (``-1`` -> all of K)."""
    if bits not in SUPPORTED_BITS:
        raise QuantConfigError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}")
    group = in_features if group_size == -1 else group_size
    if group <= 0 or in_features % group:
        raise QuantConfigError(
            f"{name}: input size {in_features} is not divisible by group_size {group_size}; "
            "GPTQ loaders and kernels need whole groups (use a multiple of the group size)"
        )
    if (in_features * bits) % 32 or (out_features * bits) % 32:
        raise QuantConfigError(
            f"{name}: shape [{out_features}, {in_features}] cannot be packed at {bits} bits "
            f"into int32 words (both sizes × {bits} must be multiples of 32)"
        )
    return group


def quant_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (output channel) scale and integer zero for the columns in ``w`` (GPTQ's min/max quantizer)."""
    maxq = 2**bits - 1
    xmin = w.min(dim=1).values.clamp(max=0)
    xmax = w.max(dim=1).values.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    dead = (xmin == 0) & (xmax == 0)
    xmin, xmax = xmin.masked_fill(dead, -1.0), xmax.masked_fill(dead, 1.0)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.round(-xmin / scale).clamp(1, maxq)  # v1 stores zero-1: keep zero >= 1
    return scale, zero


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = True,
    damp: float = 0.01,
    act_order: bool = False,
    block_size: int = 128,
    scale_search: bool = True,
):
    """GPTQ (Frantar et al. 2022) of one weight ``W`` [N, K] given the Hessian ``H`` = 2/n Σ x xᵀ [K, K].

    Returns ``(codes int32 [N, K], scales [K/g, N], zeros int32 [K/g, N], g_idx int32 [K])`` with columns in
    the original order. Follows the reference algorithm (AutoGPTQ/GPTQModel ``fasterquant``): dead
    inputs zeroed, ``damp × mean(diag H)`` added, upper Cholesky factor of H⁻¹, lazy column blocks whose
    error is fed to the remaining columns, and group parameters taken when a group starts.

    Two departures the stored format allows (measured in benchmarks/gptq_quality.py): with ``scale_search``
    each group's scale is chosen per output row among shrunken min/max ranges by the error the GPTQ pass
    over that group leaves (``search_group_params``), and scales are rounded to fp16 before any code is
    chosen, so the codes fit the scales the checkpoint stores.
    """
    N, K = W.shape
    group = check_shape(K, N, bits, group_size)
    W, H = W.detach().clone().float(), H.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(K, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    codes = torch.zeros(N, K, device=W.device)
    scales, zeros = [], []
    maxq = 2**bits - 1
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        diag = torch.diagonal(Hinv1)
        for i in range(i2 - i1):
            if (i1 + i) % group == 0:  # new group: parameters from the error-updated weights
                cols = W1[:, i : i + group]
                if i + group > i2 - i1:  # the group runs past this block: its tail is still in W
                    cols = torch.cat([cols, W[:, i2 : i1 + i + group]], dim=1)
                if scale_search and group <= SEARCH_MAX_GROUP:
                    g0, g1 = i1 + i, i1 + i + group
                    scale, zero = search_group_params(cols, Hinv[g0:g1, g0:g1], bits, sym)
                else:
                    scale, zero = quant_params(cols, bits, sym)
                    scale = scale.half().float()
                scales.append(scale)
                zeros.append(zero)
            w = W1[:, i]
            q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
            Q1[:, i] = q
            err = (w - scale * (q - zero)) / diag[i]
            Err1[:, i] = err
            # Hinv1 is upper triangular: row i is zero left of column i, so updating the whole
            # block row-rank-1 (one kernel, fixed shape) equals updating columns i: only.
            W1.addr_(err, Hinv1[i], alpha=-1)
        codes[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    invperm = torch.argsort(perm)
    g_idx = (torch.arange(K, device=W.device) // group)[invperm]
    return (
        codes[:, invperm].to(torch.int32),
        torch.stack(scales),
        torch.stack(zeros).to(torch.int32),
        g_idx.to(torch.int32),
    )


# Shrink factors of the min/max range tried per group: clipping the few largest weights buys a finer step
# for all the others. 1.0 (plain GPTQ's choice) is a candidate, so a group never errs more than without.
SEARCH_SHRINK = tuple(1 - 0.025 * i for i in range(16))
# A group's trial passes cost len(SEARCH_SHRINK) × N × g² multiply-adds; above this many columns
# (per-channel quantization of wide layers) they cost more than GPTQ itself, and min/max is kept.
SEARCH_MAX_GROUP = 1024


def search_group_params(
    cols: torch.Tensor, Hinv: torch.Tensor, bits: int, sym: bool, shrink: tuple[float, ...] = SEARCH_SHRINK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output row, the (scale, zero) among shrunken min/max ranges whose GPTQ pass over the group errs least.

    ``cols`` [N, g] are the group's error-updated weights and ``Hinv`` [g, g] its block of the upper Cholesky
    factor of H⁻¹. Candidates are scored by ``group_gptq_error``: the Hessian-weighted error with the error
    feedback inside the group, not the plain weight error of GPTQModel's ``mse`` option.
    """
    params = [quant_params(cols * p, bits, sym) for p in shrink]
    scale = torch.stack([s for s, _ in params]).half().float()  # [C, N], as the checkpoint will store them
    zero = torch.stack([z for _, z in params])
    best = group_gptq_error(cols, Hinv, scale, zero, bits).argmin(dim=0, keepdim=True)
    return scale.gather(0, best).squeeze(0), zero.gather(0, best).squeeze(0)


def group_gptq_error(
    cols: torch.Tensor, Hinv: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int
) -> torch.Tensor:
    """[C, N]: the error GPTQ leaves on ``cols`` [N, g] with each candidate ``scale``/``zero`` [C, N].

    GPTQ's loss ‖(W − Q)X‖² is exactly Σ ((w − q) / Hinv_ii)² over the columns, w being the weight after the
    earlier columns' error feedback (the OBS identity the algorithm rests on), so each candidate's pass over
    the group is run, feedback included, and that sum is its share of the layer's loss.
    """
    maxq = 2**bits - 1
    work = cols.expand(scale.shape[0], -1, -1).clone()  # [C, N, g]
    loss = torch.zeros_like(scale)
    for i in range(cols.shape[1]):
        w = work[:, :, i]
        q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
        err = (w - scale * (q - zero)) / Hinv[i, i]
        loss += err * err
        work.sub_(err.unsqueeze(-1) * Hinv[i])  # Hinv is upper triangular: only columns i: change
    return loss


def rtn_quantize(W: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = True):
    """Round-to-nearest at the same bits/group, same return convention as ``gptq_quantize``."""
    N, K = W.shape
    group = check_shape(K, N, bits, group_size)
    W = W.detach().float()
    params = [quant_params(W[:, c : c + group], bits, sym) for c in range(0, K, group)]
    scales = torch.stack([s for s, _ in params])
    zeros = torch.stack([z for _, z in params])
    g_idx = torch.arange(K, device=W.device) // group
    codes = torch.clamp(torch.round(W / scales[g_idx].T) + zeros[g_idx].T, 0, 2**bits - 1)
    return codes.to(torch.int32), scales, zeros.to(torch.int32), g_idx.to(torch.int32)


# ----------------------------------------------------------------------------- GPTQ v1 packing


def _stream_positions(rows: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(rows, device=device) * bits
    return offsets // 32, offsets % 32


def _pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] codes in [0, 2^bits) -> int32 [R*bits/32, C], packed along R as a little-endian bit stream."""
    R, C = values.shape
    assert (R * bits) % 32 == 0, (R, bits)
    v = values.to(torch.int64) & (2**bits - 1)
    word, shift = _stream_positions(R, bits, v.device)
    out = torch.zeros(R * bits // 32, C, dtype=torch.int64, device=v.device)
    out.index_add_(0, word, (v << shift[:, None]) & 0xFFFFFFFF)  # bit fields never overlap: add == or
    spill = shift + bits > 32  # 3-bit values that straddle two words
    if spill.any():
        out.index_add_(0, word[spill] + 1, v[spill] >> (32 - shift[spill])[:, None])
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def _unpack_rows(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """Inverse of ``_pack_rows``: int32 [rows*bits/32, C] -> int32 codes [rows, C]."""
    maxq = 2**bits - 1
    word, shift = _stream_positions(rows, bits, packed.device)
    values = (packed[word] >> shift[:, None].to(torch.int32)) & maxq
    spill = shift + bits > 32
    if spill.any():
        low = 32 - shift[spill]
        high = packed[word[spill] + 1] << low[:, None].to(torch.int32)
        low_part = values[spill] & ((1 << low) - 1)[:, None].to(torch.int32)
        values[spill] = (low_part | high) & maxq
    return values


def pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int):
    """GPTQ v1 tensors from codes [N, K], scales/zeros [K/g, N] and g_idx [K] (as returned by the quantizers)."""
    return {
        "qweight": _pack_rows(codes.T.contiguous(), bits),
        "qzeros": _pack_rows((zeros - 1).T.contiguous(), bits).T.contiguous(),  # v1: zero - 1
        "scales": scales.to(torch.float16),
        "g_idx": g_idx.to(torch.int32),
    }


def unpack(qweight: torch.Tensor, qzeros: torch.Tensor, bits: int, in_features: int):
    """GPTQ v1 -> (codes int32 [K, N], zeros int32 [K/g, N]) with the v1 ``+1`` restored."""
    codes = _unpack_rows(qweight, bits, in_features)
    zeros = _unpack_rows(qzeros.T.contiguous(), bits, qzeros.shape[1] * 32 // bits).T + 1
    return codes, zeros


def dequantize(qweight, qzeros, scales, g_idx, bits: int, dtype=torch.float32) -> torch.Tensor:
    """The dense weight [N, K] (nn.Linear layout) a GPTQ v1 layer stands for."""
    codes, zeros = unpack(qweight, qzeros, bits, g_idx.shape[0])
    g = g_idx.long()
    return (scales.to(dtype)[g] * (codes - zeros[g]).to(dtype)).T


def packed_bytes(in_features: int, out_features: int, bits: int, group_size: int) -> int:
    """Bytes on disk of one GPTQ v1 layer (qweight + qzeros + fp16 scales + g_idx)."""
    groups = 1 if group_size == -1 else in_features // group_size
    return (
        in_features * out_features * bits // 8
        + groups * out_features * bits // 8
        + groups * out_features * 2
        + in_features * 4
    )


KERNEL_MAX_ROWS = 256
"""Above this many input rows (long prefills, eval batches) one dequantised dense matmul beats the int4
kernel, which re-expands the weights for every block of rows (CPU crossover measured at 256-1024 rows)."""


class QuantLinear(nn.Module):
    """A GPTQ v1 linear layer kept packed in memory.

    ``prepare_kernel`` (``load_gptq_model`` calls it once the layer sits on its device) converts the
    weights for an int4 matmul (``youri.quant.kernels``: youri's AVX2 kernel or PyTorch's). Without a
    kernel -- another device, bits != 4, act-order groups, an odd shape -- each forward unpacks into a
    temporary dense weight.
    ``kernel`` says which path runs, ``kernel_note`` why it is not the int4 one.
    """

    def __init__(
        self, in_features: int, out_features: int, *, bits: int, group_size: int, bias: bool = False, device=None
    ):
        super().__init__()
        group = check_shape(in_features, out_features, bits, group_size)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group
        kw = {"device": device}
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32, **kw))
        self.register_buffer(
            "qzeros", torch.zeros(in_features // group, out_features * bits // 32, dtype=torch.int32, **kw)
        )
        self.register_buffer("scales", torch.zeros(in_features // group, out_features, dtype=torch.float16, **kw))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32, **kw) // group)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, **kw) if bias else None)
        self.kernel, self.kernel_note = "dequant", "not prepared"
        self._int4: kernels.Int4Weight | None = None  # not a buffer: the state dict stays GPTQ v1

    def prepare_kernel(self, use_kernel: bool = True) -> str:
        """Convert the GPTQ tensors once for the int4 kernel of the layer's device; returns the path taken.

        ``use_kernel=False`` pins the dequantising path (the exact reference the kernel is tested against).
        """
        self._int4, self.kernel, kernel = None, "dequant", None
        candidates = kernels.candidates(self.qweight.device)
        groups = torch.arange(self.in_features, device=self.g_idx.device) // self.group_size
        if not use_kernel:
            self.kernel_note = "int4 kernel switched off"
        elif not candidates:
            self.kernel_note = kernels.why_no_kernel(self.qweight.device)
        elif self.bits != 4:
            self.kernel_note = f"{self.bits}-bit weights"
        elif not torch.equal(self.g_idx.long(), groups):
            self.kernel_note = "act-order groups (g_idx)"
        else:  # the first kernel (fastest first) that takes this shape
            why = {k: kernels.unsupported(k, self.in_features, self.out_features, self.group_size) for k in candidates}
            kernel = next((k for k, reason in why.items() if reason is None), None)
            self.kernel_note = "" if kernel else "; ".join(f"{k}: {reason}" for k, reason in why.items())
        if self.kernel_note:
            return self.kernel
        codes, zeros = unpack(self.qweight, self.qzeros, self.bits, self.in_features)
        weight = kernels.convert(kernel, codes, zeros, self.scales, self.group_size)
        if not self._kernel_agrees(weight, codes, zeros):
            self.kernel_note = f"{kernel} failed its self-check"
            return self.kernel
        self._int4, self.kernel, self.kernel_note = weight, kernel, ""
        return self.kernel

    def _kernel_agrees(self, weight: kernels.Int4Weight, codes: torch.Tensor, zeros: torch.Tensor) -> bool:
        """The kernel times a few unit vectors must give those columns of the dequantised weight (bf16 close):
        a guard against a kernel whose packing differs on hardware the tests never ran on."""
        picks = torch.linspace(0, self.in_features - 1, 8, device=codes.device).long()
        probe = torch.zeros(len(picks), self.in_features, device=codes.device)
        probe[torch.arange(len(picks)), picks] = 1
        groups = picks // self.group_size
        expected = self.scales[groups].float() * (codes[picks] - zeros[groups]).float()
        got = kernels.matmul(probe, weight).float()
        return bool(torch.allclose(got, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item() + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._int4
        if weight is not None and weight.packed.device == x.device and x.numel() <= KERNEL_MAX_ROWS * self.in_features:
            y = kernels.matmul(x, weight)
        else:
            y = x @ dequantize(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, dtype=x.dtype).T
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    @property
    def kernel_weight(self) -> kernels.Int4Weight | None:
        """The weight in its int4 kernel's format (None on the dequantising path); replaced by each
        ``prepare_kernel``, so its identity says which conversion is current."""
        return self._int4

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
            f"kernel={self.kernel}"
        )


def prepare_kernels(model: nn.Module, use_kernel: bool = True) -> dict[str, int]:
    """Convert every ``QuantLinear`` for its device's int4 kernel; how many layers take each path."""
    paths: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            path = module.prepare_kernel(use_kernel)
            paths[path] = paths.get(path, 0) + 1
    return paths


def kernel_summary(model: nn.Module) -> str | None:
    """One line saying which matmul a GPTQ model's layers run (None for a model without GPTQ layers)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        return None
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.kernel] = counts.get(layer.kernel, 0) + 1
    paths = ", ".join(f"{name} on {n}/{len(layers)} layers" for name, n in sorted(counts.items()))
    notes = sorted({layer.kernel_note for layer in layers if layer.kernel_note})
    return "GPTQ matmul: " + paths + (f" (dequantising: {'; '.join(notes)})" if notes else "")


def swap_linears(module: nn.Module, names: set[str], *, bits: int, group_size: int) -> None:
    """Replace the ``nn.Linear`` submodules named in ``names`` (dotted) by empty ``QuantLinear`` layers."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, child)
        setattr(
            parent,
            child,
            QuantLinear(
                linear.in_features,
                linear.out_features,
                bits=bits,
                group_size=group_size,
                bias=linear.bias is not None,
                device=linear.weight.device,
            ),
        )


LLAMA_2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
}
"""The shape of Youri's parent (Llama-2-7b's config.json fields that the size arithmetic reads)."""


def llama_linear_shapes(hf_config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection GPTQ quantizes in one Llama decoder layer."""
    hidden, inter, heads = hf_config["hidden_size"], hf_config["intermediate_size"], hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, (hf_config.get("num_key_value_heads") or heads) * head_dim
    return {
        "self_attn.q_proj": (hidden, q),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (q, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }


def llama_sizes(hf_config: dict, bits: int, group_size: int) -> dict[str, int | float]:
    """Bytes of a Llama in fp16 and as a GPTQ twin (packed linears + fp16 embeddings, LM head and norms)."""
    hidden, layers = hf_config["hidden_size"], hf_config["num_hidden_layers"]
    shapes = list(llama_linear_shapes(hf_config).values()) * layers
    heads = 1 if hf_config.get("tie_word_embeddings") else 2
    other = hf_config["vocab_size"] * hidden * heads + hidden * (2 * layers + 1)
    fp16 = 2 * (sum(i * o for i, o in shapes) + other)
    packed = sum(packed_bytes(i, o, bits, group_size) for i, o in shapes)
    return {
        "fp16_bytes": fp16,
        "packed_linear_bytes": packed,
        "quantized_bytes": packed + 2 * other,
        "ratio": (packed + 2 * other) / fp16,
    }


# ----------------------------------------------------------------------------- loading a GPTQ folder


def gptq_settings(config: dict) -> dict | None:
    """The ``quantization_config`` of a GPTQ v1 checkpoint's ``config.json`` dict, or None when absent."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    method, fmt = quant.get("quant_method"), quant.get("checkpoint_format", quant.get("format", "gptq"))
    if method != "gptq" or fmt != "gptq":
        raise QuantConfigError(
            f"quantization_config quant_method={method!r}, checkpoint_format={fmt!r}: "
            "youri loads only GPTQ v1 (quant_method gptq, checkpoint_format gptq)"
        )
    return quant


def load_gptq_model(path, quant: dict, *, dtype=None, device=None):
    """A GPTQ v1 folder as a transformers model with ``QuantLinear`` layers (weights stay packed).

    gpt-fast style: build on the meta device, swap the quantized linears, ``load_state_dict(assign=True)``
    from safetensors; non-persistent buffers (rotary tables) are then rebuilt on the CPU. On ``device``, each
    layer's weights are converted once for PyTorch's int4 kernel where there is one (``prepare_kernels``).
    """

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    del config.quantization_config  # youri swaps the layers itself; no transformers quantizer involved
    dtype = dtype or getattr(config, "dtype", None) or torch.float16
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if not state:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = {key[: -len(".qweight")] for key in state if key.endswith(".qweight")}
    swap_linears(model, names, bits=int(quant["bits"]), group_size=int(quant["group_size"]))
    state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(".scales") else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: weights do not match the model: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if tied:
        model.tie_weights()
    _rebuild_meta_buffers(model, config)
    if device:
        model.to(device)
    prepare_kernels(model)  # on the final device: each kernel's weight format is its own
    return model.eval()


def _rebuild_meta_buffers(model: nn.Module, config) -> None:
    """Recreate modules whose non-persistent buffers were left on the meta device (rotary embeddings)."""
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, type(module)(config=config))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    assert not left, f"tensors left on the meta device: {left[:5]}"
