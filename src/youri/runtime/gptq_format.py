"""The GPTQ v1 tensor format, once: shape checks, the packer/unpacker, dequantisation and a folder's settings.

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

import os
from pathlib import Path

import torch

from youri.io import read_json

SUPPORTED_BITS = (2, 3, 4, 8)
AUTOGPTQ_FILE = "quantize_config.json"
"""Where AutoGPTQ's own layout keeps the settings (``config.json`` then has no ``quantization_config``)."""


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


def gptq_settings(config: dict, folder: str | os.PathLike | None = None) -> dict | None:
    """The GPTQ settings of a checkpoint, or None for a full-precision one: ``config.json``'s
    ``quantization_config`` (transformers / GPTQModel / youri), else -- AutoGPTQ's own layout, where
    ``config.json`` says nothing -- ``folder/quantize_config.json`` (older AutoGPTQ releases write neither
    ``quant_method`` nor ``checkpoint_format`` there: both mean GPTQ v1)."""
    quant = config.get("quantization_config")
    where = f"{Path(folder) / 'config.json' if folder is not None else 'config.json'}: quantization_config"
    if not quant and folder is not None and (Path(folder) / AUTOGPTQ_FILE).is_file():
        where = str(Path(folder) / AUTOGPTQ_FILE)
        quant = dict(read_json(Path(folder) / AUTOGPTQ_FILE))
        quant.setdefault("quant_method", "gptq")
        if quant.get("is_marlin_format"):
            quant["checkpoint_format"] = "marlin"
    if not quant:
        return None
    method, fmt = quant.get("quant_method"), quant.get("checkpoint_format", quant.get("format", "gptq"))
    if method != "gptq" or fmt != "gptq":
        raise QuantConfigError(
            f"{where}: quant_method={method!r}, checkpoint_format={fmt!r}: "
            "youri loads only GPTQ v1 (quant_method gptq, checkpoint_format gptq)"
        )
    for key in ("bits", "group_size"):
        if not isinstance(quant.get(key), int) or isinstance(quant.get(key), bool):
            raise QuantConfigError(f"{where}: '{key}' must be an integer, got {quant.get(key)!r}")
    return quant
