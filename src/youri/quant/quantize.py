"""``youri quantize``: a GPTQ twin (standard GPTQ v1 checkpoint) of a model stage folder, and what it cost.

Tiny, on CPU (calibrated on the parent's own training data, found through its ``youri.json``)::

    youri quantize runs/pretrain --out runs/pretrain-gptq --num_samples 32 --seq_len 256

Multi-GPU machines: quantization is sequential, one decoder layer at a time on one GPU (peak ≈ one
fp32 layer + the calibration activations, in and out: for a Llama-2-7B with 128 × 2048 calibration
tokens 11.2 GB measured on an H200, so one 24 GB GPU; ~8 s per layer there, see docs/gpu_checks.md)::

    CUDA_VISIBLE_DEVICES=0 youri quantize runs/sft-chat --out runs/sft-chat-gptq --device cuda

Output: ``config.json`` with ``quantization_config`` (quant_method gptq, checkpoint_format gptq),
``model.safetensors`` (qweight/qzeros/scales/g_idx per projection, everything else fp16), tokenizer,
generation config; ``metrics.json`` with size vs the fp16 parent, held-out ja/en perplexity and KL to
the parent for GPTQ and for round-to-nearest at the same bits/group, wall time and peak memory.
``youri.model.load_model`` (hence chat/eval/serve) loads the folder with weights kept packed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import resource
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
from safetensors.torch import save_file

from youri.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveInt, Range
from youri.data.rows import chunk, data_folder, heldout_source, token_rows
from youri.data.sft_data import DatasetConfig, read_dataset
from youri.families import decoder_layers, family_of, linear_shapes
from youri.io import DataError, read_json, resolve_path
from youri.model import load_model, load_tokenizer
from youri.prompts import encode_training
from youri.quant.gptq import gptq_quantize, rtn_quantize, twin_sizes
from youri.runtime.gptq_format import AUTOGPTQ_FILE, QuantConfigError, check_shape, dequantize, pack
from youri.runtime.quant_linear import QuantLinear, swap_linears
from youri.stage import StageWriter, check_stage_output, read_manifest
from youri.train.losses import token_loss_sum


@dataclass
class Config:
    model: str = field(default="", metadata={"positional": True})
    """Parent model folder: a youri pretrain/SFT stage folder or a local HF checkpoint of a youri.families family."""
    out: str = ""
    """Output stage folder (default: MODEL-gptq-{bits}bit-g{group_size} beside the parent)."""
    bits: int = 4
    """Bits per weight: 2, 3, 4 or 8."""
    group_size: Annotated[int, Range(min=1, allow=(-1,))] = 128
    """Input columns sharing one scale/zero; -1 for one group per output channel."""
    desc_act: bool = False
    """Act-order: quantize columns by decreasing Hessian diagonal (g_idx records the groups)."""
    sym: bool = True
    """Symmetric quantization (zero fixed at the middle code); false = asymmetric min/max."""
    damp_percent: NonNegativeFloat = 0.01
    """Dampening added to the Hessian diagonal, as a fraction of its mean."""
    true_sequential: bool = True
    """Quantize q/k/v, o, gate/up, down in turn, each seeing the quantized outputs of the previous."""
    scale_search: bool = True
    """Per group and output row, try 16 shrunken (clipped) min/max ranges and keep the scale whose GPTQ pass
    leaves the least Hessian-weighted error; false = plain min/max scales (GPTQModel's default). Same format."""
    calibration: str = ""
    """Calibration source: a youri data folder (train split), a .jsonl (field calibration_field) or a .txt
    file. Default: the parent's own training data, found through its youri.json."""
    calibration_field: str = "text"
    """JSONL field holding the calibration text."""
    num_samples: PositiveInt = 128
    """Calibration sequences."""
    seq_len: PositiveInt = 512
    """Tokens per calibration sequence."""
    heldout_ja: str = ""
    """Japanese held-out text (.jsonl/.txt, or a youri data folder's val/ja); default: the parent's data folder."""
    heldout_en: str = ""
    """English held-out text, same forms as heldout_ja (val/en of a data folder)."""
    eval_samples: NonNegativeInt = 16
    """Held-out sequences per language for perplexity/KL (0 skips the comparison)."""
    batch_size: PositiveInt = 8
    """Calibration/held-out sequences per forward pass (activation memory vs fewer, larger matmuls)."""
    device: str = ""
    """Device for the layer being quantized: cpu or cuda (default: cuda when available)."""


def run(cfg: Config, *, overwrite: bool = False) -> Path:
    parent, hf_config = _validate(cfg)
    out = Path(cfg.out) if cfg.out else parent.with_name(f"{parent.name}-gptq-{cfg.bits}bit-g{cfg.group_size}")
    check_stage_output(out, "quantize", overwrite)  # before any work
    tokenizer = _tokenizer(parent)
    sources, kind, calib = _calibration(cfg, parent, tokenizer)
    if calib.shape[0] == 0:
        raise DataError(
            f"{', '.join(map(str, sources))}: calibration set is empty (not one sequence of {cfg.seq_len} tokens)"
        )
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with StageWriter(
        out, stage="quantize", config=cfg, inputs=[parent, *sources], parent=parent, overwrite=overwrite
    ) as stage:
        metrics = {
            **_quantize_and_save(stage.path, parent, calib, cfg, tokenizer, device),
            "calibration": {
                "sources": [str(p) for p in sources],
                "format": kind,
                "sequences": int(calib.shape[0]),
                "seq_len": int(calib.shape[1]),
                "fingerprint": _rows_fingerprint(calib),
            },
            "size": _sizes(stage.path, hf_config, cfg),
        }
        metrics["quality"] = _quality(parent, stage.path, tokenizer, cfg, device)
        stage.facts["calibration_sample_sha256"] = metrics["calibration"]["fingerprint"]
        stage.finish(metrics)
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    return out


def _quantize_and_save(folder: Path, parent: Path, calib: torch.Tensor, cfg: Config, tokenizer, device) -> dict:
    """Quantize the parent layer by layer and write the checkpoint; return wall time and peak memory."""

    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = load_model(parent, dtype=torch.float32)
    packed = quantize_model(model, calib, cfg, device)
    wall = time.perf_counter() - start
    generation = parent / "generation_config.json"
    write_gptq_folder(folder, model, packed, cfg, tokenizer, read_json(parent / "config.json"), generation)
    return {"wall_time_s": round(wall, 2), **_peak_memory(device)}


# ----------------------------------------------------------------------------- checks before any work


def _validate(cfg: Config):
    if not cfg.model:
        raise ConfigError("quantize: give the parent model folder (youri quantize MODEL)")
    parent = Path(cfg.model)
    if not (parent / "config.json").is_file():
        raise FileNotFoundError(f"{parent}: not a model folder (no config.json)")
    hf_config = read_json(parent / "config.json")
    autogptq = parent / AUTOGPTQ_FILE  # AutoGPTQ's own layout keeps the settings there only
    settings = hf_config.get("quantization_config") or (read_json(autogptq) if autogptq.is_file() else None)
    if settings:
        method = settings.get("quant_method", "gptq")
        where = "config.json" if hf_config.get("quantization_config") else AUTOGPTQ_FILE
        raise ConfigError(
            f"{parent}/{where}: the model is already quantized (quant_method {method!r}); "
            "quantize the full-precision parent instead"
        )
    family_of(hf_config, f"{parent}/config.json")
    if cfg.num_samples <= 0 or cfg.seq_len <= 0:
        raise ConfigError("quantize: num_samples and seq_len must be positive")
    for name, (k, n) in linear_shapes(hf_config).items():
        try:
            check_shape(k, n, cfg.bits, cfg.group_size, name)
        except QuantConfigError as err:
            raise ConfigError(f"{parent}/config.json: {err}") from err
    return parent, hf_config


def _tokenizer(parent: Path):

    return load_tokenizer(parent)


def _calibration(cfg: Config, parent: Path, tokenizer) -> tuple[list[Path], str, torch.Tensor]:
    """(source files, prompt format, token rows [n, seq_len]) of the calibration set.

    Default: the parent's own training data in its own format -- the data folder's train rows for a
    pretrain stage, the SFT datasets rendered by ``youri.prompts`` (as ``youri sft`` trained on them) for
    an SFT stage. ``calibration`` names a data folder, a .jsonl or a .txt file instead.
    """
    if cfg.calibration:
        sources = [Path(cfg.calibration)]
        return (
            sources,
            "text",
            token_rows(sources, tokenizer, cfg.num_samples, cfg.seq_len, "train", text_field=cfg.calibration_field),
        )
    manifest = _manifest(parent)
    if manifest.get("stage") == "sft":
        kind = manifest["config"].get("kind", "instruction")
        # Each dataset once (its mixture count does not matter for calibration); folders made before
        # SFT's 'weight' became 'epochs' still carry the old key, so only the reading fields are taken.
        reading = {"path", "shape", "personas", "max_examples"}
        specs = [
            DatasetConfig(**{k: v for k, v in spec.items() if k in reading})
            for spec in manifest["config"].get("datasets", [])
        ]
        ids: list[int] = []
        for spec in specs:
            for record in read_dataset(spec, kind):
                ids += encode_training(record.example, tokenizer).input_ids
        sources = [resolve_path(spec.path) for spec in specs]
        return sources, kind, chunk(ids, cfg.num_samples, cfg.seq_len)
    data = data_folder(parent)
    if data is None:
        raise ConfigError(
            f"{parent}/youri.json: stage {manifest.get('stage')!r} names no youri data folder; pass --calibration"
        )
    return [data], "text", token_rows([data], tokenizer, cfg.num_samples, cfg.seq_len, "train")


def _manifest(parent: Path) -> dict:
    manifest = read_manifest(parent)
    if manifest is None:
        raise ConfigError(
            f"{parent}: no youri.json, so its training data is unknown; pass --calibration "
            "(a youri data folder, .jsonl or .txt file of Japanese text)"
        )
    return manifest


def _rows_fingerprint(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.to(torch.int64).numpy().tobytes()).hexdigest()


# ----------------------------------------------------------------------------- layer-by-layer GPTQ


def quantize_model(model, calib: torch.Tensor, cfg: Config, device) -> dict[str, dict[str, torch.Tensor]]:
    """GPTQ every projection of every decoder layer in place (weights become the dequantized values);
    return the packed v1 tensors by module name. One layer at a time lives on ``device``."""
    layers = decoder_layers(model)
    inputs, kwargs = _layer_inputs(model, calib, device, cfg.batch_size)
    packed: dict[str, dict[str, torch.Tensor]] = {}
    family = family_of(model.config)
    groups = family.sequential if cfg.true_sequential else (family.projections,)
    for index, layer in enumerate(layers):
        layer.to(device)
        for group in groups:
            with _fast_fp32_matmuls(device):
                hessians = _collect_hessians(layer, group, inputs, kwargs[index])
            for name in group:
                linear = layer.get_submodule(name)
                codes, scales, zeros, g_idx = gptq_quantize(
                    linear.weight.data,
                    hessians[name],
                    bits=cfg.bits,
                    group_size=cfg.group_size,
                    sym=cfg.sym,
                    damp=cfg.damp_percent,
                    act_order=cfg.desc_act,
                    scale_search=cfg.scale_search,
                )
                tensors = pack(codes, scales, zeros, g_idx, cfg.bits)
                linear.weight.data = dequantize(**tensors, bits=cfg.bits).to(linear.weight.dtype)
                packed[f"model.layers.{index}.{name}"] = {k: v.cpu() for k, v in tensors.items()}
            del hessians
        with torch.no_grad(), _fast_fp32_matmuls(device):  # the next layer sees this one's quantized outputs
            inputs = [_layer_out(layer(x, **kw)) for x, kw in zip(inputs, kwargs[index])]
        kwargs[index] = []  # this layer's masks and tables are no longer needed
        layer.to("cpu")
    return packed


class _Stop(Exception):
    pass


@contextmanager
def _fast_fp32_matmuls(device):
    """TF32 matmuls on GPUs for the calibration forwards and Hessians (not for the GPTQ solve itself).

    The fp32 layer forwards over all calibration tokens (one per true-sequential group, each stopped once
    the group has its inputs, then the output pass) and the Hessian products are most of the arithmetic.
    TF32 keeps fp32 range with a 10-bit mantissa, the precision of the fp16 activations the reference
    tools (AutoGPTQ/GPTQModel) calibrate with. CPUs are unaffected."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _layer_inputs(model, calib: torch.Tensor, device, batch_size: int):
    """Hidden states entering decoder layer 0 for each batch of calibration rows, and each layer's own keyword
    args for each batch (``kwargs[layer][batch]``: causal or sliding-window mask, rotary tables -- Gemma 2/3
    alternate sliding and global layers, Gemma 3's local layers have their own rotary base).

    One pass of the model's own forward per batch with every decoder layer's ``forward`` replaced by a recorder
    that returns its input: the model builds each layer's arguments as it always does, no layer computes. The
    embedding runs (Gemma's scale included) but no LM head. A tensor shared by several layers is moved once."""
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]
    moved: dict[int, object] = {}

    def recorder(index):
        def forward(*args, **kw):
            hidden = args[0] if args else kw.pop("hidden_states")
            if index == 0:
                captured.append(hidden.to(device))
            kwargs[index].append({k: _to(v, device, moved) for k, v in kw.items() if k != "hidden_states"})
            return hidden

        return forward

    for index, layer in enumerate(layers):
        layer.forward = recorder(index)  # an instance attribute: nn.Module.__call__ finds it first
    try:
        with torch.no_grad():
            for rows in calib.split(max(1, batch_size)):
                model.model(input_ids=rows, use_cache=False)
                moved.clear()  # the next batch's tensors are new objects
    finally:
        for layer in layers:
            del layer.forward
    return captured, kwargs


def _collect_hessians(layer, names, inputs, kwargs) -> dict[str, torch.Tensor]:
    """H = 2/n Σ x xᵀ over every calibration token entering each named linear (running average); ``kwargs``:
    the layer's keyword arguments for each batch of ``inputs``.

    Linears fed the same tensor (q/k/v, gate/up) share one Hessian, and each calibration batch stops as
    soon as every named linear has seen its input: the rest of the layer is not needed for these."""
    hessians, counts, handles = {}, {}, []
    seen: list[tuple[str, torch.Tensor]] = []  # (linear, its input) in this batch, in call order

    def hook(name):
        def accumulate(module, args, output):
            twin = next((first for first, tensor in seen if tensor is args[0]), None)
            if twin is None:
                seen.append((name, args[0]))
                x = args[0].reshape(-1, args[0].shape[-1]).float()
                n = counts.get(name, 0)
                H = hessians.get(name)
                if H is None:
                    H = hessians[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                H *= n / (n + x.shape[0])
                counts[name] = n + x.shape[0]
                x = math.sqrt(2 / counts[name]) * x
                H.addmm_(x.T, x)
            else:
                hessians[name] = hessians[twin]
            done.add(name)
            if len(done) == len(names):
                raise _Stop  # every named linear has its input for this batch

        return accumulate

    done: set[str] = set()
    for name in names:
        handles.append(layer.get_submodule(name).register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            for x, kw in zip(inputs, kwargs):
                seen.clear()
                done.clear()
                try:
                    layer(x, **kw)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return hessians


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out


def _to(value, device, moved: dict):
    """``value`` (a tensor or a tuple of them) on ``device``; ``moved`` memoises by identity."""
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            moved[id(value)] = (value, value.to(device))  # the source kept alive: its id stays its own
        return moved[id(value)][1]
    if isinstance(value, tuple):
        return tuple(_to(v, device, moved) for v in value)
    return value


def _peak_memory(device) -> dict:
    if device.type == "cuda":
        return {
            "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_memory_kind": "cuda max allocated",
        }
    return {
        "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_memory_kind": "process max RSS",
    }


# ----------------------------------------------------------------------------- output folder


def quantization_config(cfg: Config) -> dict:
    return {
        "quant_method": "gptq",
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "desc_act": cfg.desc_act,
        "sym": cfg.sym,
        "damp_percent": cfg.damp_percent,
        "true_sequential": cfg.true_sequential,
        "static_groups": False,
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
    }


def loader_quantize_config(cfg: Config) -> dict:
    """``quantize_config.json``: the settings as AutoGPTQ (0.7.1) and GPTQModel's own loaders read them.

    AutoGPTQ's ``from_quantized`` opens this file before ``config.json`` (FileNotFoundError without it) and
    looks for ``model_file_base_name``.safetensors; GPTQModel reads it too and rejects ``is_marlin_format``,
    so that AutoGPTQ-only field (default false) is left out."""
    return {
        "bits": cfg.bits,
        "group_size": cfg.group_size,
        "damp_percent": cfg.damp_percent,
        "desc_act": cfg.desc_act,
        "static_groups": False,
        "sym": cfg.sym,
        "true_sequential": cfg.true_sequential,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
    }


def write_gptq_folder(
    folder: Path, model, packed: dict, cfg: Config, tokenizer, config: dict, generation_config: Path | None = None
) -> None:
    """``model`` as a GPTQ twin folder: the ``packed`` layers (module name -> ``gptq_format.pack`` tensors) in
    place of their linears, every other float tensor fp16; ``config`` (the parent's config.json) gains the
    quantization config; the generation config is copied from ``generation_config`` when it exists. What
    ``youri quantize`` writes, and what the decode benchmarks write for their round-to-nearest twins."""
    swap_linears(model, set(packed), bits=cfg.bits, group_size=cfg.group_size)
    state = {}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in packed:
            if leaf in packed[module]:
                state[key] = packed[module][leaf].contiguous()
            elif leaf == "bias":
                state[key] = tensor.to(torch.float16).contiguous()
        else:
            state[key] = tensor.to(torch.float16).contiguous() if tensor.is_floating_point() else tensor
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared tensors; the loader re-ties
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = dict(config)
    config.update({"quantization_config": quantization_config(cfg), "dtype": "float16", "torch_dtype": "float16"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "quantize_config.json").write_text(json.dumps(loader_quantize_config(cfg), indent=2) + "\n")
    if generation_config is not None and generation_config.is_file():
        shutil.copy(generation_config, folder / "generation_config.json")
    else:
        model.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))  # carries the chat template when the parent has one


def _sizes(folder: Path, hf_config: dict, cfg: Config) -> dict:
    """Bytes on disk of the twin against the same model in fp16 (parameter count × 2)."""
    expected = twin_sizes(hf_config, cfg.bits, cfg.group_size)
    quant_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {
        "parent_fp16_bytes": expected["fp16_bytes"],
        "quantized_bytes": quant_disk,
        "ratio": round(quant_disk / expected["fp16_bytes"], 4),
        "packed_linear_bytes": expected["packed_linear_bytes"],
    }


# ----------------------------------------------------------------------------- what it cost


def _quality(parent: Path, folder: Path, tokenizer, cfg: Config, device=torch.device("cpu")) -> dict:
    """Held-out perplexity and KL(parent ‖ ·) per language for the GPTQ twin and for RTN (all fp32, on ``device``)."""

    if cfg.eval_samples <= 0:
        return {"skipped": "eval_samples is 0"}
    sources = {
        lang: heldout_source(parent, explicit, lang)
        for lang, explicit in (("ja", cfg.heldout_ja), ("en", cfg.heldout_en))
    }
    rows = {
        lang: token_rows(
            [src], tokenizer, cfg.eval_samples, cfg.seq_len, f"val/{lang}", text_field=cfg.calibration_field
        )
        for lang, src in sources.items()
        if src is not None
    }
    reference = load_model(parent, dtype=torch.float32).to(device)
    candidates = {"gptq": load_model(folder, dtype=torch.float32).to(device), "rtn": rtn_model(reference, cfg)}
    result = {}
    for lang in ("ja", "en"):
        if lang not in rows or len(rows[lang]) == 0:
            result[lang] = {"skipped": f"no held-out {lang} text (set heldout_{lang})"}
            continue
        result[lang] = {
            "source": str(sources[lang]),
            **compare_models(reference, candidates, rows[lang], batch=cfg.batch_size),
        }
    return result


def rtn_model(model, cfg: Config):
    """A copy of ``model`` whose decoder projections hold round-to-nearest weights (same bits/group)."""
    twin = copy.deepcopy(model)
    for layer in decoder_layers(twin):
        for name in family_of(twin.config).projections:
            linear = layer.get_submodule(name)
            tensors = pack(
                *rtn_quantize(linear.weight.data, bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym), cfg.bits
            )
            linear.weight.data = dequantize(**tensors, bits=cfg.bits).to(linear.weight.dtype)
    return twin


@torch.no_grad()
def compare_models(reference, candidates: dict, rows: torch.Tensor, batch: int = 4) -> dict:
    """Mean next-token KL(reference ‖ candidate) per token, and each model's perplexity, on ``rows``."""
    nll = {"reference": 0.0, **{name: 0.0 for name in candidates}}
    kls = {name: 0.0 for name in candidates}
    tokens = 0
    for i in range(0, len(rows), batch):
        ids = rows[i : i + batch].to(next(reference.parameters()).device)
        logits = reference(ids).logits.float()
        loss, count = token_loss_sum(logits, ids)  # the one loss youri trains with
        nll["reference"] += loss.item()
        ref = torch.log_softmax(logits[:, :-1], -1)
        for name, model in candidates.items():
            logits = model(ids).logits.float()
            nll[name] += token_loss_sum(logits, ids)[0].item()
            logp = torch.log_softmax(logits[:, :-1], -1)
            kls[name] += (ref.exp() * (ref - logp)).sum().item()
        tokens += int(count)
    out = {"tokens": tokens, "ppl_reference": round(math.exp(nll["reference"] / tokens), 4)}
    for name in candidates:
        out[f"ppl_{name}"] = round(math.exp(nll[name] / tokens), 4)
        out[f"kl_{name}"] = round(kls[name] / tokens, 6)
    return out


__all__ = ["Config", "run", "quantize_model", "quantization_config", "compare_models", "rtn_model", "QuantLinear"]
