"""GGUF files for llama.cpp (and Ollama, LM Studio) from a model of any ``youri.families`` row, written with
the ``gguf`` package.

The container, the metadata keys, the architecture names, the tensor names (``gguf.get_tensor_name_map``)
and the block quantizers are the ``gguf`` package's own (llama.cpp's reference Python writer, the one
``convert_hf_to_gguf.py`` uses); this module only decides what goes in, the way ``convert_hf_to_gguf.py``
does for ``LlamaForCausalLM`` / ``MistralForCausalLM`` (arch ``llama``), ``Qwen2``/``Qwen3ForCausalLM`` and
``Gemma2``/``Gemma3ForCausalLM``:

- ``{arch}.*`` hyper-parameters from ``config.json`` (heads, key/value length, RoPE theta and linear scaling,
  Llama 3.1's ``rope_freqs.weight`` factors, Gemma 3's local RoPE theta, RMS eps, Gemma's sliding window and
  Gemma 2's soft-caps); ``general.file_type`` from the export type. Where llama.cpp hard-codes what a config
  could set otherwise (Gemma's window pattern and query scale, Qwen's disabled window), a config that differs
  is refused with one line rather than written to run differently;
- the tokenizer (``youri.quant.gguf_vocab``: SentencePiece, byte-level BPE with its pre-tokenizer, or Gemma's
  SentencePiece-style BPE), special ids, add-BOS flag and chat template;
- q_proj/k_proj rows permuted from Hugging Face's rotate-half order to llama.cpp's interleaved RoPE order for
  the ``llama`` architecture only (``families.gguf_rope_permute``; the others run NeoX RoPE as transformers);
- Gemma's norm weights stored as ``1 + w`` (``families.norm_offset``); a tied LM head left out (llama.cpp
  reuses ``token_embd``);
- 1-D tensors (norms, biases) stay F32; 2-D weights get the export type.

Mistral's ``sliding_window`` (v0.1: 4096) is not written: llama.cpp's ``llama`` architecture attends to the
whole context, which equals transformers up to the window.

Types: ``f16``, ``bf16``, ``q8_0`` (every 2-D weight, as ``convert_hf_to_gguf --outtype q8_0``) and ``q4_0``:
the transformer blocks' weights Q4_0 (4.5 bits per weight), the token embedding Q8_0 and the LM head F16.
The LM head stays 16-bit as in youri's GPTQ twins (``llama-quantize`` keeps it at Q6_K, which the ``gguf``
package cannot write): on the tiny Japanese model of ``benchmarks/gguf_quality.py`` a Q8_0 head made
KL(fp ‖ GGUF) of the GPTQ twin's q4_0 file 8.0e-6 instead of 2.0e-6 (the head's input vector is rounded to
8 bits too in llama.cpp's CPU matmul); the embedding is a row lookup, where Q8_0 cost 1e-7 and Q4_0 6.5e-6.
On Llama-2-7B's shapes the file is then 4.04 GB instead of 3.79 GB with both at Q4_0 (+7 %).

From a GPTQ twin (``TensorSource.gptq``), a type on the layer's grid takes its codes as they are: GPTQ v1
4-bit symmetric codes ``scale * (q - 8)`` with one fp16 scale per group of 128 are exactly four Q4_0 blocks
``d * (q - 8)`` with ``d`` the group's scale, so the q4_0 blocks of a twin are its layers, bit for bit, with no
second rounding (2/3-bit codes sit on part of Q4_0's grid; Q8_0 holds codes of up to 8 bits). Any other
layout (act-order, asymmetric, more bits than the type, a group that is not a multiple of 32) is
dequantised and rounded again (RTN), and ``WriteReport`` says which and why.
K-quants (Q4_K_M) need llama.cpp's own quantizer: the ``gguf`` package only reads them. A row length that
is not a multiple of the block size (32) falls back to F16, as in ``convert_hf_to_gguf``.

Tensors are written one at a time (header first, then each tensor as it is produced), so a 7B model never
sits in memory whole.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import gguf
import numpy as np
import torch

from youri.families import family_of, head_dim
from youri.quant.gguf_vocab import Vocab, add_vocab
from youri.runtime.gptq_format import unpack

Q = gguf.GGMLQuantizationType


class GGUFExportError(ValueError):
    """A model, tokenizer or setting that cannot become a llama.cpp-loadable GGUF file."""


@dataclass(frozen=True)
class GGUFType:
    file_type: gguf.LlamaFileType
    weights: Q
    """Type of the transformer blocks' 2-D weights."""
    output: Q
    """Type of ``output.weight`` (the LM head)."""
    embedding: Q
    """Type of ``token_embd.weight``."""


GGUF_TYPES = {
    "f16": GGUFType(gguf.LlamaFileType.MOSTLY_F16, Q.F16, Q.F16, Q.F16),
    "bf16": GGUFType(gguf.LlamaFileType.MOSTLY_BF16, Q.BF16, Q.BF16, Q.BF16),
    "q8_0": GGUFType(gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, Q.Q8_0, Q.Q8_0),
    "q4_0": GGUFType(gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.F16, Q.Q8_0),  # why: the module docstring
}

GRID_BITS = {Q.Q4_0: 4, Q.Q8_0: 8}
"""ggml types whose blocks of 32 decode as ``d * (q - 2^(b-1))`` with one fp16 ``d`` and ``b``-bit ``q``: a
symmetric GPTQ v1 layer of at most ``b`` bits (``scale * (c - zero)``, fp16 scales) is on that grid, its
``c - zero`` as ``q - 2^(b-1)`` and its scale as ``d``, so its codes fit as they are."""


@dataclass(frozen=True)
class TensorSource:
    name: str
    """Hugging Face tensor name."""
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    """Loader of the dense fp32 tensor."""
    gptq: Callable[[], dict[str, torch.Tensor]] | None = None
    """For a GPTQ layer: loader of its v1 tensors (qweight, qzeros, scales, g_idx), so a type on its grid
    (``GRID_BITS``) takes its codes and scales unchanged instead of rounding the dequantised weight again."""
    bits: int = 0
    """The GPTQ layer's bits."""


LLAMA_CPP_SWA_PERIOD = {"gemma2": 2, "gemma3": 6}
"""llama.cpp's fixed sliding-window layer pattern (``set_swa_pattern``): layer ``i`` attends to a window unless
``(i + 1) % period == 0``; a config whose ``layer_types`` differ cannot be written for it."""
LLAMA_CPP_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
"""The layer counts at which llama.cpp scales Gemma queries by ``1/sqrt(hidden/heads)`` (its 27B rule) instead
of ``1/sqrt(head_dim)``; it reads no ``query_pre_attn_scalar``, so that scalar must be the one it assumes."""
ROPE_TYPES = ("default", "linear", "llama3")


def model_hparams(config: dict, where: str = "config.json") -> dict:
    """The ``config.json`` facts a llama.cpp model of the config's family needs, checked; an error names what
    llama.cpp would run differently from transformers."""
    family = family_of(config, where)
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not isinstance(config.get(k), int)
    ]
    if missing:
        raise GGUFExportError(f"{where}: missing integer field(s) {', '.join(missing)}")
    arch, layers, heads = family.gguf_arch, config["num_hidden_layers"], config["num_attention_heads"]
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention")
    rope_type = full.get("rope_type", full.get("type")) or "default"
    if rope_type not in ROPE_TYPES:
        raise GGUFExportError(f"{where}: rope_type {rope_type!r} is not supported by youri export ({ROPE_TYPES})")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        raise GGUFExportError(f"{where}: partial_rotary_factor is not supported by youri export")
    hp = {
        "family": family,
        "arch": arch,
        "layers": layers,
        "hidden": config["hidden_size"],
        "intermediate": config["intermediate_size"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": head_dim(config),
        "context": config.get("max_position_embeddings", 4096),
        "rope_theta": float(full.get("rope_theta", config.get("rope_theta", 10000.0))),
        "rope": {**full, "rope_type": rope_type},
        "rope_theta_swa": float(local["rope_theta"]) if local and "rope_theta" in local else None,
        "rms_eps": float(config.get("rms_norm_eps", 1e-6)),
        "vocab": config["vocab_size"],
        "tied": bool(config.get("tie_word_embeddings", family.embed_scale)),
        "sliding_window": None,
    }
    if arch in ("qwen2", "qwen3") and config.get("use_sliding_window"):
        raise GGUFExportError(f"{where}: use_sliding_window: llama.cpp's {arch} attends to the whole context")
    if arch in LLAMA_CPP_SWA_PERIOD:
        hp["sliding_window"] = _gemma_checks(config, hp, where)
    return hp


def _gemma_checks(config: dict, hp: dict, where: str) -> int:
    """A Gemma config as llama.cpp runs it (window pattern, query scale, soft-caps), else an error; its window."""
    arch, layers, period = hp["arch"], hp["layers"], LLAMA_CPP_SWA_PERIOD[hp["arch"]]
    expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(layers)]
    if (config.get("layer_types") or expected) != expected or not config.get("sliding_window"):
        raise GGUFExportError(
            f"{where}: layer_types/sliding_window differ from llama.cpp's {arch} (a window on all layers but "
            f"every {period}th)"
        )
    scale_dim = hp["hidden"] // hp["heads"] if layers == LLAMA_CPP_27B_LAYERS[arch] else hp["head_dim"]
    if config.get("query_pre_attn_scalar", scale_dim) != scale_dim:
        raise GGUFExportError(
            f"{where}: query_pre_attn_scalar {config['query_pre_attn_scalar']}: llama.cpp's {arch} scales queries "
            f"by 1/sqrt({scale_dim}) at {layers} layers"
        )
    caps = (config.get("attn_logit_softcapping"), config.get("final_logit_softcapping"))
    if arch == "gemma2" and None in caps or arch == "gemma3" and caps != (None, None):
        raise GGUFExportError(
            f"{where}: attn/final logit soft-capping {caps}: llama.cpp's {arch} always applies "
            f"{'both' if arch == 'gemma2' else 'neither'}"
        )
    hp["softcaps"] = caps
    return int(config["sliding_window"])


def llama3_rope_factors(hp: dict) -> np.ndarray:
    """Llama 3.1's RoPE frequency factors, one per rotary pair: llama.cpp's ``rope_freqs.weight`` (convert's
    ``LlamaModel.generate_extra_tensors``, the same wavelength bands as transformers' ``llama3`` rope)."""
    rope, dim = hp["rope"], hp["head_dim"]
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (hp["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def rope_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face q/k rows (rotate-half pairs i, i+d/2) -> llama.cpp's interleaved pairs (2i, 2i+1); any
    array whose first axis is the output rows (dense weights or their encoded blocks)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


@dataclass
class WriteReport:
    tensor_types: dict[str, int]
    """ggml type name -> tensor count."""
    from_gptq_codes: list[str]
    """GPTQ layers whose codes and scales became the ggml blocks unchanged (no rounding)."""
    rounded_from_gptq: dict[str, str]
    """GPTQ layers dequantised and rounded again to a ggml block type (RTN), with the reason."""
    dequantised_gptq: list[str]
    """GPTQ layers written dequantised as floats (F16, BF16)."""


def write_gguf(
    out: Path, config: dict, tensors: Iterable[TensorSource], *, vocab: Vocab, tokenizer_dir: Path, kind: str, name: str
) -> WriteReport:
    """Write ``out``; the report says which GPTQ layers kept their codes and which were rounded again."""
    hp = model_hparams(config)
    gtype = GGUF_TYPES[kind]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == hp["arch"])
    writer = gguf.GGUFWriter(str(out), hp["arch"])
    _add_metadata(writer, hp, gtype, name)
    add_vocab(writer, vocab, tokenizer_dir)
    names = gguf.get_tensor_name_map(arch, hp["layers"])
    plan = []
    if hp["rope"]["rope_type"] == "llama3":  # llama.cpp's rope_freqs.weight, as convert adds it
        factors = llama3_rope_factors(hp)
        plan.append((TensorSource("rope_freqs", factors.shape, lambda: torch.from_numpy(factors)), "rope_freqs.weight"))
    for source in tensors:
        if source.name == "lm_head.weight" and hp["tied"]:
            continue  # tied to the embedding: llama.cpp reuses token_embd, as convert leaves it out
        gguf_name = names.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"tensor {source.name} has no llama.cpp {hp['arch']} name")
        plan.append((_shifted(source, hp) if gguf_name.endswith("norm.weight") else source, gguf_name))
    typed = []
    for source, gguf_name in plan:
        qtype = _tensor_type(gguf_name, source.shape, gtype)
        typed.append((source, qtype))
        nbytes = (
            int(np.prod(gguf.quant_shape_to_byte_shape(source.shape, qtype)))
            if qtype not in (Q.F32, Q.F16)
            else int(np.prod(source.shape)) * (4 if qtype == Q.F32 else 2)
        )
        dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(qtype, np.uint8)
        byte_shape = source.shape if dtype is not np.uint8 else gguf.quant_shape_to_byte_shape(source.shape, qtype)
        writer.add_tensor_info(gguf_name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    report = WriteReport(dict(Counter(qtype.name for _, qtype in typed)), [], {}, [])
    for source, qtype in typed:
        writer.write_tensor_data(_for_llama_cpp(source.name, _tensor_data(source, qtype, report), hp))
    writer.close()
    return report


def _shifted(source: TensorSource, hp: dict) -> TensorSource:
    """A norm weight as llama.cpp multiplies by it: Gemma's ``1 + w`` stored (``families.norm_offset``)."""
    offset = hp["family"].norm_offset
    if not offset:
        return source
    return TensorSource(source.name, source.shape, lambda: source.load() + offset)


def _tensor_data(source: TensorSource, qtype: Q, report: WriteReport) -> np.ndarray:
    """The tensor as ``qtype`` data: a GPTQ layer's own codes where they fit the type's grid, else encoded."""
    if source.gptq is not None and qtype in GRID_BITS:
        parts = source.gptq()
        unpacked = unpack(parts["qweight"], parts["qzeros"], source.bits, parts["g_idx"].shape[0])  # once, for both
        why_not = gptq_grid_mismatch(parts, source.bits, qtype, unpacked)
        if not why_not:
            report.from_gptq_codes.append(source.name)
            return gptq_blocks(parts, source.bits, qtype, unpacked)
        report.rounded_from_gptq[source.name] = why_not
    elif source.gptq is not None and qtype in (Q.F32, Q.F16, Q.BF16):
        report.dequantised_gptq.append(source.name)
    elif source.gptq is not None:
        report.rounded_from_gptq[source.name] = f"{qtype.name} blocks are not a GPTQ grid"
    return _encode(source.load().float().numpy(), qtype)


def grid_mismatch(qtype: Q, *, bits: int, group: int, sym: bool, in_order: bool) -> str:
    """Why GPTQ v1 codes of this layout cannot be ``qtype`` blocks as they are ("" when they can). The one rule,
    for a layer's tensors (``gptq_grid_mismatch``) and for a quantize recipe (the pipeline's export choice)."""
    if bits > GRID_BITS.get(qtype, 0):
        return f"{bits}-bit codes do not fit {qtype.name} (it holds {GRID_BITS.get(qtype)}-bit codes)"
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if group <= 0 or group % block:
        return f"group size {group} is not a multiple of {qtype.name}'s block of {block}"
    if not in_order:
        return "act-order (g_idx out of order): a block of 32 inputs would need several scales"
    if not sym:
        return f"asymmetric (zero points other than {2 ** (bits - 1)}): {qtype.name} has no zero point"
    return ""


def gptq_grid_mismatch(
    parts: dict[str, torch.Tensor], bits: int, qtype: Q, unpacked: tuple[torch.Tensor, torch.Tensor] | None = None
) -> str:
    """``grid_mismatch`` of a GPTQ v1 layer's tensors; ``unpacked``: its ``(codes, zeros)`` if already at hand."""
    in_features, groups = parts["g_idx"].shape[0], parts["scales"].shape[0]
    group = in_features // groups
    in_order = torch.equal(parts["g_idx"].long(), torch.arange(in_features) // group)
    why = grid_mismatch(qtype, bits=bits, group=group, sym=True, in_order=in_order)
    if why:  # the layout already rules it out: no need to unpack the zero points
        return why
    _, zeros = unpacked or unpack(parts["qweight"], parts["qzeros"], bits, in_features)
    return grid_mismatch(qtype, bits=bits, group=group, sym=bool((zeros == 2 ** (bits - 1)).all()), in_order=True)


def gptq_blocks(
    parts: dict[str, torch.Tensor], bits: int, qtype: Q, unpacked: tuple[torch.Tensor, torch.Tensor] | None = None
) -> np.ndarray:
    """A symmetric, in-order GPTQ v1 layer as ``qtype`` blocks, uint8 [N, K/32 * bytes per block]: each group's
    fp16 scale is the ``d`` of its blocks and each code minus the zero point its signed ``q``, so the block
    decodes to exactly ``youri.runtime.gptq_format.dequantize`` of the layer (checked with
    ``gguf.quants.dequantize``)."""
    in_features = parts["g_idx"].shape[0]
    codes, _ = unpacked or unpack(parts["qweight"], parts["qzeros"], bits, in_features)
    signed = codes - 2 ** (bits - 1)  # c - zero, in [-2^(b-1), 2^(b-1)): inside the type's wider grid
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    rows, blocks = codes.shape[1], in_features // block
    q = signed.T.numpy().reshape(rows, blocks, block)
    per_group = in_features // parts["scales"].shape[0] // block
    d = np.repeat(parts["scales"].to(torch.float16).T.numpy(), per_group, axis=1)  # [N, K/32] fp16
    if qtype == Q.Q4_0:  # nibble q + 8; byte j: element j in the low nibble, element j + 16 in the high one
        q = q + 8
        body = (q[..., : block // 2] | (q[..., block // 2 :] << 4)).astype(np.uint8)
    else:  # Q8_0: int8 q
        body = q.astype(np.int8).view(np.uint8)
    return np.concatenate([d[..., None].view(np.uint8), body], axis=-1).reshape(rows, -1)


def _add_metadata(writer: gguf.GGUFWriter, hp: dict, gtype: GGUFType, name: str) -> None:
    """The ``{arch}.*`` keys convert_hf_to_gguf writes for the family (``TextModel.set_gguf_parameters`` and the
    Llama/Qwen2/Gemma2/Gemma3 classes)."""
    writer.add_name(name)
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["layers"])
    writer.add_feed_forward_length(hp["intermediate"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    if hp["rope"]["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(hp["rope"]["factor"]))
    if hp["rope_theta_swa"] is not None:
        writer.add_rope_freq_base_swa(hp["rope_theta_swa"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    if hp["sliding_window"]:
        writer.add_sliding_window(hp["sliding_window"])
    if hp["arch"] == "gemma2":
        writer.add_attn_logit_softcapping(float(hp["softcaps"][0]))
        writer.add_final_logit_softcapping(float(hp["softcaps"][1]))
    writer.add_vocab_size(hp["vocab"])
    writer.add_file_type(gtype.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tensor_type(gguf_name: str, shape: tuple[int, ...], gtype: GGUFType) -> Q:
    if len(shape) == 1:
        return Q.F32
    qtype = {"output.weight": gtype.output, "token_embd.weight": gtype.embedding}.get(gguf_name, gtype.weights)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F16  # a partial block cannot be quantized


def _for_llama_cpp(hf_name: str, data: np.ndarray, hp: dict) -> np.ndarray:
    """q/k rows (and biases) in llama.cpp's interleaved RoPE order where its architecture wants them
    (``families.gguf_rope_permute``); rows are whole blocks, so encoded data permutes the same way."""
    if not hp["family"].gguf_rope_permute:
        return data
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return rope_permute(data, hp["heads"])
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return rope_permute(data, hp["kv_heads"])
    return data


def _encode(array: np.ndarray, qtype: Q) -> np.ndarray:
    if qtype == Q.F32:
        return array.astype(np.float32)
    if qtype == Q.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


def read_metadata(path: Path) -> dict:
    """Scalar and string metadata of a GGUF file plus ``tensor_types`` (name -> ggml type); arrays skipped."""
    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            meta[key] = field.contents()
    meta["tensor_types"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return meta
