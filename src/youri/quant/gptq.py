"""GPTQ numerics, once: the quantizer, the Hessian-weighted scale search and round-to-nearest (the tensor format
and ``QuantLinear`` live in ``youri.runtime``, below ``youri.model``).

The codes it returns are packed by ``youri.runtime.gptq_format`` (GPTQ v1, whose docstring gives the layout).
v1 cannot store a zero of 0 (``0 - 1`` does not fit in ``b`` bits; AutoGPTQ's asymmetric v1 checkpoints
corrupt it silently), so the asymmetric quantizer here keeps zeros in ``[1, 2^b - 1]``.
"""

from __future__ import annotations

import torch

from youri.families import family_of, linear_shapes, norm_elements
from youri.runtime.gptq_format import check_shape, packed_bytes


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


LLAMA_2_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "vocab_size": 32000,
}
"""The shape of Youri's parent (Llama-2-7b's config.json fields that the size arithmetic reads)."""


def twin_sizes(hf_config: dict, bits: int, group_size: int) -> dict[str, int | float]:
    """Bytes of a model in fp16 and as a GPTQ twin (packed linears + fp16 embeddings, LM head, norms, biases)."""
    hidden, layers = hf_config["hidden_size"], hf_config["num_hidden_layers"]
    shapes = list(linear_shapes(hf_config).values()) * layers
    heads = 1 if hf_config.get("tie_word_embeddings") else 2
    projections = linear_shapes(hf_config)
    biases = (
        sum(projections[f"self_attn.{p}_proj"][1] for p in "qkv") if family_of(hf_config).has_qkv_bias(hf_config) else 0
    )
    other = hf_config["vocab_size"] * hidden * heads + norm_elements(hf_config) + biases * layers  # fp16 in the twin
    fp16 = 2 * (sum(i * o for i, o in shapes) + other)
    packed = sum(packed_bytes(i, o, bits, group_size) for i, o in shapes)
    return {
        "fp16_bytes": fp16,
        "packed_linear_bytes": packed,
        "quantized_bytes": packed + 2 * other,
        "ratio": (packed + 2 * other) / fp16,
    }
