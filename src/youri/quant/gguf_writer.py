"""GGUF files for llama.cpp (and Ollama, LM Studio) from a Llama model, written with the ``gguf`` package.

The container, the metadata keys, the tensor names and the block quantizers are the ``gguf`` package's own
(llama.cpp's reference Python writer, the one ``convert_hf_to_gguf.py`` uses); this module only decides what
goes in, the way ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``:

- ``llama.*`` hyper-parameters from ``config.json``; ``general.file_type`` from the export type;
- the SentencePiece vocabulary (pieces, scores, token types) from ``tokenizer.model``; BOS/EOS/UNK ids, the
  add-BOS flag and the chat template (``tokenizer.chat_template``) through ``gguf.SpecialVocab``;
- q_proj/k_proj rows permuted from Hugging Face's rotate-half order to llama.cpp's interleaved RoPE order;
- 1-D tensors (norms) stay F32; 2-D weights get the export type.

Types: ``f16``, ``bf16``, ``q8_0`` (every 2-D weight, as ``convert_hf_to_gguf --outtype q8_0``) and ``q4_0``
(4.5 bits per weight; the LM head stays Q8_0 because ``llama-quantize`` keeps it at 6 bits (Q6_K), which
the ``gguf`` package cannot write). K-quants (Q4_K_M) need llama.cpp's own quantizer: the ``gguf`` package
only reads them. A row length that is not a multiple of the block size (32) falls back to F16, as in
``convert_hf_to_gguf``.

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

Q = gguf.GGMLQuantizationType


class GGUFExportError(ValueError):
    """A model, tokenizer or setting that cannot become a llama.cpp-loadable GGUF file."""


@dataclass(frozen=True)
class GGUFType:
    file_type: gguf.LlamaFileType
    weights: Q
    """Type of every 2-D weight but the LM head."""
    output: Q
    """Type of ``output.weight`` (the LM head)."""


GGUF_TYPES = {
    "f16": GGUFType(gguf.LlamaFileType.MOSTLY_F16, Q.F16, Q.F16),
    "bf16": GGUFType(gguf.LlamaFileType.MOSTLY_BF16, Q.BF16, Q.BF16),
    "q8_0": GGUFType(gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0, Q.Q8_0),
    "q4_0": GGUFType(gguf.LlamaFileType.MOSTLY_Q4_0, Q.Q4_0, Q.Q8_0),
}

TensorSource = tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]
"""(Hugging Face tensor name, shape, loader of the dense fp32 tensor)."""


def llama_hparams(config: dict, where: str = "config.json") -> dict:
    """The ``config.json`` fields a llama.cpp Llama needs, checked; an error names what cannot be exported."""
    if config.get("model_type") != "llama":
        raise GGUFExportError(
            f"{where}: model_type {config.get('model_type')!r} is not supported; GGUF export "
            "handles the Llama family (model_type llama)"
        )
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


def rope_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face q/k rows (rotate-half pairs i, i+d/2) -> llama.cpp's interleaved pairs (2i, 2i+1)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_gguf(
    out: Path,
    config: dict,
    tensors: Iterable[TensorSource],
    *,
    tokenizer_dir: Path,
    sp_model: Path,
    kind: str,
    name: str,
) -> dict:
    """Write ``out`` and return ``{ggml type name: tensor count}``. ``tensors`` yields fp32 loaders."""
    hp = llama_hparams(config)
    gtype = GGUF_TYPES[kind]
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_metadata(writer, hp, gtype, name)
    _add_vocab(writer, tokenizer_dir, sp_model, hp["vocab"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["layers"])
    plan = []
    for hf_name, shape, load in tensors:
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"tensor {hf_name} has no llama.cpp name (not a Llama tensor)")
        qtype = _tensor_type(gguf_name, shape, gtype)
        plan.append((hf_name, gguf_name, qtype, load))
        nbytes = (
            int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))
            if qtype not in (Q.F32, Q.F16)
            else int(np.prod(shape)) * (4 if qtype == Q.F32 else 2)
        )
        dtype = {Q.F32: np.float32, Q.F16: np.float16}.get(qtype, np.uint8)
        byte_shape = shape if dtype is not np.uint8 else gguf.quant_shape_to_byte_shape(shape, qtype)
        writer.add_tensor_info(gguf_name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf_name, _, qtype, load in plan:
        writer.write_tensor_data(_encode(_for_llama_cpp(hf_name, load(), hp), qtype))
    writer.close()
    return dict(Counter(qtype.name for *_, qtype, _ in plan))


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
    qtype = gtype.output if gguf_name == "output.weight" else gtype.weights
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if shape[-1] % block == 0 else Q.F16  # a partial block cannot be quantized


def _for_llama_cpp(hf_name: str, tensor: torch.Tensor, hp: dict) -> np.ndarray:
    if hf_name.endswith("self_attn.q_proj.weight"):
        tensor = rope_permute(tensor, hp["heads"])
    elif hf_name.endswith("self_attn.k_proj.weight"):
        tensor = rope_permute(tensor, hp["kv_heads"])
    return tensor.float().numpy()


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
