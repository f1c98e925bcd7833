"""The int4 weight-only matmuls PyTorch ships, for GPTQ layers (``youri.quant.gptq.QuantLinear``).

These are the tinygemm kernels gpt-fast and torchao use. Their weight format: 4-bit codes ``q`` in
``[0, 16)`` per output row, and per group ``g`` of inputs a scale and a float zero, interleaved as
``[K/g, N, 2]``, so that ``W[n, k] = (q[n, k] - 8) * scale[k // g, n] + zero[k // g, n]``. A GPTQ v1
layer means ``W = scale * (q - z)`` with ``g_idx[k] = k // g`` when act-order is off, which is the same
weight with ``zero = scale * (8 - z)`` -- a conversion done once, when the layer is loaded.

* CPU: ``aten._convert_weight_to_int4pack_for_cpu`` / ``aten._weight_int4pack_mm_for_cpu``. Only bf16
  activations take the vectorised (AVX2/AVX512) loop; fp32 and fp16 fall to a scalar loop ~20x slower,
  so activations are cast to bf16 for the matmul and the result back to their dtype.
* CUDA (compute capability 8.0+): ``aten._convert_weight_to_int4pack`` (codes packed two per byte, the
  even input in the high nibble) / ``aten._weight_int4pack_mm``, bf16.

Elsewhere ``kernel_for`` is None and the caller keeps dequantising.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_SIZES = (32, 64, 128, 256)  # what the kernels accept as qGroupSize


@dataclass
class Int4Weight:
    """One layer's weight in a kernel's own format (``kernel`` names it: ``int4-cpu`` or ``int4-cuda``)."""

    kernel: str
    packed: torch.Tensor
    scales_and_zeros: torch.Tensor  # [K/g, N, 2] bf16
    group: int
    out_features: int


def kernel_for(device: torch.device) -> str | None:
    """The int4 kernel this PyTorch build has for ``device``, or None."""
    ops = torch.ops.aten
    if device.type == "cpu":
        ok = hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")
        return "int4-cpu" if ok else None
    if device.type == "cuda":
        ok = hasattr(ops, "_weight_int4pack_mm") and torch.cuda.get_device_capability(device) >= (8, 0)
        return "int4-cuda" if ok else None
    return None


def unsupported(kernel: str, in_features: int, out_features: int, group: int) -> str | None:
    """Why a layer of this shape cannot use ``kernel`` (None when it can)."""
    if group not in GROUP_SIZES:
        return f"group size {group} (the kernel takes {GROUP_SIZES})"
    if kernel == "int4-cpu" and out_features % 16:
        return f"{out_features} outputs (the CPU kernel needs a multiple of 16)"
    if kernel == "int4-cuda" and out_features % 8:
        return f"{out_features} outputs (the CUDA kernel needs a multiple of 8)"
    return None


def convert(kernel: str, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int) -> Int4Weight:
    """GPTQ codes ``[K, N]`` (in ``[0, 16)``), integer zeros and scales ``[K/g, N]`` -> the kernel's format."""
    codes = codes.T.contiguous().to(torch.int32)  # [N, K]
    scales = scales.float()
    zero = scales * (8 - zeros.float())  # scale * (q - z) == (q - 8) * scale + scale * (8 - z)
    scales_and_zeros = torch.stack([scales, zero], dim=-1).to(torch.bfloat16).contiguous()
    if kernel == "int4-cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
    else:
        inner_k_tiles = next(t for t in (8, 4, 2) if codes.shape[1] % (t * 16) == 0)  # K = blocks * t * 16
        nibbles = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles)
    return Int4Weight(kernel, packed, scales_and_zeros, group, codes.shape[0])


def matmul(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``x @ W.T`` for ``x [..., K]`` through the kernel (bf16 inside), in ``x``'s dtype."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    op = (
        torch.ops.aten._weight_int4pack_mm_for_cpu
        if weight.kernel == "int4-cpu"
        else torch.ops.aten._weight_int4pack_mm
    )
    out = op(rows, weight.packed, weight.group, weight.scales_and_zeros)
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.out_features)
