"""Hugging Face model and tokenizer I/O, shared by every stage (checkpoints in and out, safetensors only).

A "model folder" is any local Hugging Face Llama-family checkpoint (``config.json`` + safetensors +
tokenizer files) or a youri stage folder, which is the same plus ``youri.json``/``metrics.json``.
A tokenizer may also be given as a bare SentencePiece ``tokenizer.model`` (or a folder holding one),
like the Llama 2 tokenizer in ``../shared/data/llama2-tokenizer``.

Nothing here touches the network: every load passes ``local_files_only=True``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from youri.config import ConfigError
from youri.io import CORRUPT_FILE_ERRORS, DataError, read_json, reading, resolve_path
from youri.runtime.gptq_format import gptq_settings
from youri.runtime.quant_linear import kernel_summary, load_gptq_model


def load_tokenizer(path: str | os.PathLike):
    """A fast HF tokenizer from a model folder, a tokenizer folder or a ``tokenizer.model`` file.

    Note: with transformers 5, loading a bare ``tokenizer.model`` needs ``protobuf`` (otherwise a
    misleading tiktoken error), and ``LlamaTokenizer(vocab_file=...)`` silently yields a broken
    3-token tokenizer -- so we always go through ``AutoTokenizer`` on the folder.
    """

    path = resolve_path(path)
    if path.is_file():
        if path.name != "tokenizer.model":
            raise ValueError(f"{path}: expected a folder or a SentencePiece file named tokenizer.model")
        path = path.parent
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise FileNotFoundError(f"{path}: no tokenizer.json, tokenizer.model or tokenizer_config.json")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (ValueError, OSError) as err:  # a cut tokenizer.json (JSONDecodeError), a corrupt tokenizer.model
        if isinstance(err, DataError):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: cannot read the tokenizer (truncated or corrupted?): {reason}") from err


def load_model(path: str | os.PathLike, *, dtype=None, device: str | None = None):
    """``AutoModelForCausalLM`` from a local folder, weights from safetensors only (never pickles)."""

    path = resolve_path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")

    config = read_json(path / "config.json")
    if (
        dtype is None
        and str(device or "cpu").startswith("cpu")
        and config.get("dtype", config.get("torch_dtype")) == "float16"
    ):
        # fp16 matmuls on CPU are emulated and many times slower than fp32 (a GPTQ twin's eval went from
        # minutes to seconds); keep the checkpoint's fp16 on GPUs, compute in fp32 on CPUs.

        dtype = torch.float32
    quant = gptq_settings(config, path)
    if quant is not None:  # a GPTQ twin: youri's own loader keeps the weights packed (QuantLinear)
        model = load_gptq_model(path, quant, dtype=dtype, device=device)
        print(f"youri: {path.name}: {kernel_summary(model)}", file=sys.stderr, flush=True)  # which matmul runs
        return model
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=dtype if dtype is not None else "auto"
        )
    except CORRUPT_FILE_ERRORS:
        for file in sorted(path.glob("*.safetensors")):  # name the file that is cut short
            with reading(file, "cannot read the weights"), safe_open(str(file), "pt"):
                pass
        raise
    return model.to(device) if device else model


def save_model(
    model, tokenizer, out_dir: str | os.PathLike, *, max_shard_size: str = "5GB", state_dict: dict | None = None
) -> Path:
    """Write HF weights (safetensors), config, generation config and tokenizer into ``out_dir``.

    ``state_dict`` replaces the model's own tensors (e.g. the gathered full state dict of an
    FSDP-sharded model, see ``youri.train.checkpoint.export_model``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True, max_shard_size=max_shard_size, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def resolve_export_dtype(name: str, model_dir: str | os.PathLike):
    """The dtype a training stage saves its weights in: ``auto`` keeps the parent checkpoint's dtype."""

    if name == "auto":
        saved = read_json(Path(model_dir) / "config.json")
        name = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"export_dtype: {name!r} is not one of 'auto', 'float32', 'bfloat16', 'float16'")
    return getattr(torch, name)
