"""``youri export``: a GGUF file of a model folder for llama.cpp, Ollama and LM Studio, and what it cost.

    youri export runs/demo/quantize_chat --format gguf --type q4_0   # a GPTQ twin: its codes as Q4_0 blocks
    youri export runs/demo/sft_chat --type q8_0                       # an fp model (q4_0 of it: RTN)

Types: ``f16``, ``bf16``, ``q8_0``, ``q4_0`` (see ``youri.quant.gguf_writer``; Q4_K_M needs llama.cpp's own
quantizer: ``llama-quantize MODEL-f16.gguf MODEL-q4_k_m.gguf Q4_K_M`` on the f16 export). A GPTQ twin's
layers on the type's grid (4-bit symmetric in-order codes for q4_0) are written as they are, lossless;
others are dequantised and rounded again, and the one printed line (``source`` in metrics.json) says so.

Output folder: ``MODEL-TYPE.gguf`` (the family's llama.cpp architecture and metadata, its tokenizer:
SentencePiece with scores and token types, byte-level BPE with merges and pre-tokenizer, or Gemma's BPE;
special ids, the chat template as ``tokenizer.chat_template``), an Ollama ``Modelfile`` (prompt format of
the model's chat template), ``metrics.json`` (file size against fp16, held-out Japanese perplexity and
KL(model ‖ GGUF) computed by a real llama.cpp runtime when one is installed, see ``youri.quant.llamacpp``)
and ``youri.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors import safe_open

from youri.config import ConfigError
from youri.data.rows import heldout_source, token_rows
from youri.io import DataError, atomic_write_text, read_json, reading
from youri.model import load_model, load_tokenizer
from youri.prompts import INPUT_HEADER, INSTRUCTION_HEADER, INSTRUCTION_INTRO, RESPONSE_HEADER, SETTING, SYSTEM, USER
from youri.prompts import chat_template as youri_chat_template
from youri.quant.gguf_vocab import Vocab, hf_vocab, read_tokenizer_json, sentencepiece_vocab, tokenizer_kind
from youri.quant.gguf_writer import GGUF_TYPES, TensorSource, WriteReport, model_hparams, write_gguf
from youri.quant.llamacpp import next_token_agreement, run_llama_cpp, runtime_missing, runtime_name
from youri.runtime.gptq_format import dequantize, gptq_settings
from youri.stage import StageWriter, read_manifest

FORMATS = ("gguf",)
GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")


@dataclass
class Config:
    model: str = field(default="", metadata={"positional": True})
    """Model folder: a youri model stage (fp or GPTQ twin) or a local HF checkpoint of a supported family."""
    out: str = ""
    """Output stage folder (default: MODEL-gguf-TYPE beside the model)."""
    format: str = "gguf"
    """Export format (gguf: llama.cpp, Ollama, LM Studio)."""
    type: str = "q4_0"
    """Weight type: f16, bf16, q8_0 or q4_0."""
    heldout_ja: str = ""
    """Japanese held-out text for the llama.cpp KL/perplexity (youri data folder, .jsonl 'text' or .txt);
    default: the model's own data folder (val/ja), found through youri.json."""
    eval_samples: int = 8
    """Held-out rows scored by llama.cpp and by youri (0 skips the comparison)."""
    seq_len: int = 128
    """Tokens per held-out row."""
    threads: int = 2
    """CPU threads for llama.cpp."""


def run(cfg: Config, *, overwrite: bool = False) -> Path:
    folder, hf_config, vocab = _validate(cfg)
    quant = gptq_settings(hf_config, folder)
    out = Path(cfg.out) if cfg.out else folder.with_name(f"{folder.name}-gguf-{cfg.type}")
    with StageWriter(out, stage="export", config=cfg, inputs=[folder], parent=folder, overwrite=overwrite) as stage:
        start = time.perf_counter()
        gguf_file = stage.path / f"{folder.name}-{cfg.type}.gguf"
        tensors = list(_tensor_sources(folder, quant))
        written = write_gguf(
            gguf_file, hf_config, tensors, vocab=vocab, tokenizer_dir=folder, kind=cfg.type, name=folder.name
        )
        source = _source_line(folder, quant, cfg.type, written)
        print(f"youri export: {source}")
        fp16_bytes = 2 * sum(int(np.prod(t.shape)) for t in tensors)
        kind = _template_kind(_chat_template(folder))
        atomic_write_text(stage.path / "Modelfile", ollama_modelfile(gguf_file.name, kind))
        metrics = {
            "format": "gguf",
            "type": cfg.type,
            "file": gguf_file.name,
            "prompt_format": kind,
            "source": source,
            "bytes": gguf_file.stat().st_size,
            "fp16_bytes": fp16_bytes,
            "size_ratio": round(gguf_file.stat().st_size / fp16_bytes, 4),
            "tensor_types": written.tensor_types,
            "write_time_s": round(time.perf_counter() - start, 2),
        }
        metrics["weights"] = _weights_word(quant, written)
        if quant:
            metrics["gptq_layers"] = _gptq_layers(written)
        metrics["quality"] = _quality(folder, gguf_file, cfg)
        stage.finish(metrics)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    return out


def _source_line(folder: Path, quant: dict | None, kind: str, written: WriteReport) -> str:
    """One line on how the weights got into the file (printed and kept in metrics.json as ``source``)."""
    if quant is None:
        return "full precision"
    twin = f"GPTQ {quant['bits']}-bit twin {folder.name}"
    if written.from_gptq_codes and not written.rounded_from_gptq:
        return f"{twin}: lossless from GPTQ codes (each group's codes and fp16 scale are its {kind} blocks)"
    if written.rounded_from_gptq:
        name, why = next(iter(written.rounded_from_gptq.items()))
        return (
            f"{twin}: {len(written.rounded_from_gptq)} GPTQ layer(s) dequantised to fp32 then RTN {kind} "
            f"(both roundings; e.g. {name}: {why}), {len(written.from_gptq_codes)} lossless from GPTQ codes"
        )
    return f"{twin}: dequantised to fp32, then {kind}"


def _weights_word(quant: dict | None, written: WriteReport) -> str:
    """How the weights were made, in a few words (the model card's GGUF line)."""
    if quant is None:
        block = any(name.startswith("Q") for name in written.tensor_types)
        return "RTN from full precision" if block else "full precision"
    if written.rounded_from_gptq:
        return "RTN from dequantised GPTQ"
    return "lossless from GPTQ codes" if written.from_gptq_codes else "dequantised GPTQ"


def _gptq_layers(written: WriteReport) -> dict:
    return {
        "lossless from GPTQ codes": len(written.from_gptq_codes),
        "RTN": len(written.rounded_from_gptq),
        "dequantised": len(written.dequantised_gptq),
        **({"RTN because": sorted(set(written.rounded_from_gptq.values()))} if written.rounded_from_gptq else {}),
    }


# ----------------------------------------------------------------------------- checks before any work


def _validate(cfg: Config) -> tuple[Path, dict, Vocab]:
    if not cfg.model:
        raise ConfigError("export: give the model folder (youri export MODEL --type q4_0)")
    if cfg.format not in FORMATS:
        raise ConfigError(f"export: format {cfg.format!r} is not supported; choose one of {', '.join(FORMATS)}")
    if cfg.type not in GGUF_TYPES:
        hint = (
            " (Q4_K_M: run llama.cpp's llama-quantize on the f16 export)" if cfg.type.lower().startswith("q4_k") else ""
        )
        raise ConfigError(f"export: type {cfg.type!r} is not supported; choose one of {', '.join(GGUF_TYPES)}{hint}")
    if cfg.eval_samples < 0 or cfg.seq_len < 2 or cfg.threads < 1:
        raise ConfigError("export: eval_samples must be >= 0, seq_len >= 2 and threads >= 1")
    folder = Path(cfg.model)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
    hf_config = read_json(folder / "config.json")
    try:
        model_hparams(hf_config, f"{folder}/config.json")
        gptq_settings(hf_config, folder)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder}: no *.safetensors weights")
    return folder, hf_config, _vocab(folder, hf_config["vocab_size"])


def _vocab(folder: Path, vocab_size: int) -> Vocab:
    """The model's vocabulary for llama.cpp (``youri.quant.gguf_vocab``): byte-level or Gemma-style BPE from
    ``tokenizer.json``, SentencePiece from the lineage's ``tokenizer.model``."""
    try:
        spec = read_tokenizer_json(folder)
        kind = tokenizer_kind(spec)
        if kind != "llama":
            return hf_vocab(spec, vocab_size, kind, folder / "tokenizer.json")
        del spec
        sp_model = _sentencepiece_model(folder)
        tokens, scores, types = sentencepiece_vocab(sp_model, vocab_size)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return Vocab("llama", tokens, types, scores=scores, pre="default")


def _sentencepiece_model(folder: Path) -> Path:
    """The model's SentencePiece ``tokenizer.model``: in the folder, else in the nearest youri ancestor
    (SFT and GPTQ stages keep only the HF tokenizer files), checked piece for piece against the folder's own."""
    current, seen = folder, 0
    while current is not None and seen < 16:
        if (current / "tokenizer.model").is_file():
            _check_same_vocab(folder, current / "tokenizer.model")
            return current / "tokenizer.model"
        parent = (read_manifest(current) or {}).get("parent")
        current, seen = (Path(parent) if parent else None), seen + 1
    raise ConfigError(
        f"{folder}: no SentencePiece tokenizer.model here or in the folders it was made from; "
        "GGUF export writes llama.cpp's SentencePiece vocabulary (scores and token types) from it"
    )


def _check_same_vocab(folder: Path, sp_model: Path) -> None:
    try:
        sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    except (RuntimeError, OSError) as err:  # sentencepiece's "could not parse ModelProto"
        reason = " ".join(str(err).split())
        raise DataError(f"{sp_model}: cannot read the SentencePiece model (truncated or corrupted?): {reason}") from err
    vocab = load_tokenizer(folder).get_vocab()
    pieces = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    differ = [p for p, i in pieces.items() if vocab.get(p) != i]
    if differ:
        raise ConfigError(
            f"{sp_model}: its pieces differ from {folder}'s tokenizer ({len(differ)} pieces, e.g. "
            f"{differ[0]!r}); put the model's own tokenizer.model into {folder}"
        )


# ----------------------------------------------------------------------------- weights


def _tensor_sources(folder: Path, quant: dict | None):
    """Every weight as a ``TensorSource``; a GPTQ layer carries its v1 tensors and its dequantised weight."""
    files = sorted(folder.glob("*.safetensors"))
    where = {}
    for file in files:
        with reading(file, "cannot read the weights"), safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                where[key] = (file, tuple(handle.get_slice(key).get_shape()))
    for key, (file, shape) in where.items():
        module, _, leaf = key.rpartition(".")
        if leaf in GPTQ_PARTS:
            if leaf == "qweight":
                out_features, in_features = shape[1], where[f"{module}.g_idx"][1][0]
                parts = _gptq_parts(where, module)
                yield TensorSource(
                    f"{module}.weight",
                    (out_features, in_features),
                    _dequantizer(parts, int(quant["bits"])),
                    gptq=parts,
                    bits=int(quant["bits"]),
                )
            continue
        yield TensorSource(key, shape, _loader(file, key))


def _loader(file: Path, key: str):
    def load() -> torch.Tensor:
        with reading(file, "cannot read the weights"), safe_open(str(file), "pt") as handle:
            return handle.get_tensor(key).float()

    return load


def _gptq_parts(where: dict, module: str):
    def load() -> dict[str, torch.Tensor]:
        parts = {}
        for part in GPTQ_PARTS:
            file = where[f"{module}.{part}"][0]
            with reading(file, "cannot read the weights"), safe_open(str(file), "pt") as handle:
                parts[part] = handle.get_tensor(f"{module}.{part}")
        return parts

    return load


def _dequantizer(parts, bits: int):
    def load() -> torch.Tensor:
        return dequantize(**parts(), bits=bits)

    return load


# ----------------------------------------------------------------------------- what it cost


def _quality(folder: Path, gguf_file: Path, cfg: Config) -> dict:
    """Held-out Japanese: youri's runtime of the source model against llama.cpp running the GGUF file."""
    if cfg.eval_samples == 0:
        return {"skipped": "eval_samples is 0"}
    missing = runtime_missing()
    if missing:
        return {"skipped": missing}
    source = heldout_source(folder, cfg.heldout_ja, "ja")
    if source is None:
        return {"skipped": "no held-out Japanese text (set heldout_ja)"}
    tokenizer = load_tokenizer(folder)
    rows = token_rows([source], tokenizer, cfg.eval_samples, cfg.seq_len, "val/ja").tolist()
    if not rows:
        return {"skipped": f"{source}: not one held-out row of {cfg.seq_len} tokens"}
    model = load_model(folder, dtype=torch.float32)
    with torch.no_grad():
        reference = [torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1).numpy() for row in rows]
    scored = run_llama_cpp(gguf_file, rows=rows, threads=cfg.threads)
    return {
        "ja": {
            "source": str(source),
            "runtime": runtime_name(),
            "reference": "youri runtime of the source model",
            **next_token_agreement(reference, scored.logprobs, rows),
        }
    }


# ----------------------------------------------------------------------------- Ollama


def _chat_template(folder: Path) -> str | None:
    """The model's chat template as transformers saves it (``chat_template.jinja`` or ``tokenizer_config.json``),
    read without loading the tokenizer (a 262k-token ``tokenizer.json`` takes seconds to load)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    return config.get("chat_template")


def _template_kind(template: str | None) -> str:
    """Which of youri's prompt formats a chat template renders: ``chat``, ``instruction``, ``own`` (another
    template, e.g. the base's Llama 3 / ChatML / Gemma turns) or ``base`` (none)."""
    if not template:
        return "base"
    return next((k for k in ("chat", "instruction") if template == youri_chat_template(k)), "own")


def ollama_modelfile(gguf_name: str, kind: str) -> str:
    """An Ollama ``Modelfile`` for the GGUF file, its TEMPLATE rendering youri's prompt format.

    Ollama's Go templates cannot apply youri's role-forging guard (a user line starting ``システム:``
    keeps its colon); llama.cpp with ``--jinja`` uses the GGUF's own chat template, which does."""
    lines = [f"FROM ./{gguf_name}"]
    if kind == "chat":
        speaker = (
            f'{{{{ if eq $m.Role "system" }}}}{SETTING}{{{{ else if eq $m.Role "user" }}}}{USER}'
            f"{{{{ else }}}}{SYSTEM}{{{{ end }}}}"
        )
        template = (
            "{{- range $i, $m := .Messages }}{{ if $i }}\n{{ end }}"
            + speaker
            + ": {{ $m.Content }}"
            + "{{ end }}\n"
            + f"{SYSTEM}: "
        )
        lines += [f'TEMPLATE """{template}"""', 'PARAMETER stop "</s>"', f'PARAMETER stop "\\n{USER}:"']
    elif kind == "instruction":
        head = f"{INSTRUCTION_INTRO}\n\n{INSTRUCTION_HEADER}:\n"
        template = (
            head
            + "{{ if .System }}{{ .System }}\n\n"
            + f"{INPUT_HEADER}:\n"
            + "{{ .Prompt }}{{ else }}"
            + "{{ .Prompt }}{{ end }}\n\n"
            + f"{RESPONSE_HEADER}:\n"
        )
        lines += [f'TEMPLATE """{template}"""', 'PARAMETER stop "</s>"']
    elif kind == "own":
        pass  # no TEMPLATE: Ollama takes the prompt format from the GGUF's own tokenizer.chat_template
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""']
    return "\n".join(lines) + "\n"
