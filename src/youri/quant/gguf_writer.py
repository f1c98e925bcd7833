"""GGUF files for llama.cpp (and Ollama, LM Studio) from a Llama model, written with the ``gguf`` package.

The container, the metadata keys, the tensor names and the block quantizers are the ``gguf`` package's own
(llama.cpp's reference Python writer, the one ``convert_hf_to_gguf.py`` uses); this module only decides what
goes in, the way ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``:

- ``llama.*`` hyper-parameters from ``config.json``; ``general.file_type`` from the export type;
- the SentencePiece vocabulary (pieces, scores, token types) from ``tokenizer.model``; BOS/EOS/UNK ids, the
  add-BOS flag and the chat template (``tokenizer.chat_template``) through ``gguf.SpecialVocab``;
- q_proj/k_proj rows permuted from Hugging Face's rotate-half order to llama.cpp's interleaved RoPE order;
- 1-D tensors (norms) stay F32; 2-D weights get the export type.

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

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import gguf
import numpy as np
import sentencepiece as spm
import torch

from youri.families import family_of
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


def llama_hparams(config: dict, where: str = "config.json") -> dict:
    """The ``config.json`` fields a llama.cpp Llama needs, checked; an error names what cannot be exported."""
    family = family_of(config, where)
    if family.model_type != "llama":
        raise GGUFExportError(f"{where}: GGUF export of {family.name} models is not implemented yet (Llama only)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise GGUFExportError(f"{where}: rope_type {rope_type!r} is not supported by youri export (default RoPE only)")
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not isinstance(config.get(k), int)
    ]
    if missing:
        raise GGUFExportError(f"{where}: missing integer field(s) {', '.join(missing)}")
    heads = config["num_attention_heads"]
    return {
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "intermediate": config["intermediate_size"],
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "context": config.get("max_position_embeddings", 4096),
        "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "rms_eps": float(config.get("rms_norm_eps", 1e-6)),
        "vocab": config["vocab_size"],
    }


def sentencepiece_vocab(model_file: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and llama.cpp token types of a SentencePiece model, padded to the model's vocab size."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if sp.vocab_size() > vocab_size:
        raise GGUFExportError(
            f"{model_file}: {sp.vocab_size()} pieces but the model has only {vocab_size} embedding rows"
        )
    kinds = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]  # rows past the tokenizer: unused, as convert does
    scores, types = [-10000.0] * vocab_size, [int(kinds.UNUSED)] * vocab_size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.id_to_piece(i).encode("utf-8"), sp.get_score(i)
        kind = (
            kinds.UNKNOWN
            if sp.is_unknown(i)
            else kinds.CONTROL
            if sp.is_control(i)
            else kinds.UNUSED
            if sp.is_unused(i)
            else kinds.BYTE
            if sp.is_byte(i)
            else kinds.NORMAL
        )
        types[i] = int(kind)
    return tokens, scores, types


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
    out: Path,
    config: dict,
    tensors: Iterable[TensorSource],
    *,
    tokenizer_dir: Path,
    sp_model: Path,
    kind: str,
    name: str,
) -> WriteReport:
    """Write ``out``; the report says which GPTQ layers kept their codes and which were rounded again."""
    hp = llama_hparams(config)
    gtype = GGUF_TYPES[kind]
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_metadata(writer, hp, gtype, name)
    _add_vocab(writer, tokenizer_dir, sp_model, hp["vocab"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["layers"])
    plan = []
    for source in tensors:
        gguf_name = names.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"tensor {source.name} has no llama.cpp name (not a Llama tensor)")
        qtype = _tensor_type(gguf_name, source.shape, gtype)
        plan.append((source, qtype))
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
    report = WriteReport(dict(Counter(qtype.name for _, qtype in plan)), [], {}, [])
    for source, qtype in plan:
        writer.write_tensor_data(_for_llama_cpp(source.name, _tensor_data(source, qtype, report), hp))
    writer.close()
    return report


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
    writer.add_name(name)
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["layers"])
    writer.add_feed_forward_length(hp["intermediate"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    writer.add_rope_dimension_count(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_vocab_size(hp["vocab"])
    writer.add_file_type(gtype.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocab(writer: gguf.GGUFWriter, tokenizer_dir: Path, sp_model: Path, vocab_size: int) -> None:
    tokens, scores, types = sentencepiece_vocab(sp_model, vocab_size)
    writer.add_tokenizer_model("llama")  # llama.cpp's SentencePiece (SPM) tokenizer
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=False, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)  # BOS/EOS/UNK ids, add_bos_token, tokenizer.chat_template


def _tensor_type(gguf_name: str, shape: tuple[int, ...], gtype: GGUFType) -> Q:
    if len(shape) == 1:
        return Q.F32
    qtype = {"output.weight": gtype.output, "token_embd.weight": gtype.embedding}.get(gguf_name, gtype.weights)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F16  # a partial block cannot be quantized


def _for_llama_cpp(hf_name: str, data: np.ndarray, hp: dict) -> np.ndarray:
    """q/k rows in llama.cpp's RoPE order; rows are whole blocks, so encoded data permutes the same way."""
    if hf_name.endswith("self_attn.q_proj.weight"):
        return rope_permute(data, hp["heads"])
    if hf_name.endswith("self_attn.k_proj.weight"):
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
