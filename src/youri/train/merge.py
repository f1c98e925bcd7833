"""``youri merge``: chat vector / task arithmetic and linear averaging of model folders, one tensor at a time.

rinna's post-Youri chat models start with a *chat vector*: the continued-pretraining model plus α times
(the base's instruct model − the base). In mergekit's terms that is ``task_arithmetic`` with the base as
``base`` and the models ``[CPT (weight 1), instruct (weight α)]``::

    θ = θ_base + Σ_i w_i (θ_i − θ_base)            (task_arithmetic; = θ_CPT + α (θ_inst − θ_base))
    θ = Σ_i w_i θ_i / Σ_i w_i                       (linear)

computed exactly as mergekit 0.1.5 does (the deltas stacked, scaled, summed over the model axis, added to
the base, in the compute ``dtype``), so the output is bit-identical to mergekit's (``tests/test_merge.py``).

* ``skip`` (regular expressions, e.g. ``embed_tokens`` -- rinna skipped the embeddings) keeps the
  target's tensor unchanged; ``tensor_weights`` gives a model another weight for matching tensors.
* Vocabulary mismatch (a CPT model with an extended vocabulary vs the original instruct model): where
  tensors differ only along their first axis (embedding rows, LM head rows), the shared rows are merged
  and the target's extra rows keep the target's values; ``metrics.json`` lists each such tensor.
* Streaming: the inputs are read with ``safe_open`` one tensor at a time and the output is written shard
  by shard (``max_shard_bytes``), so youri holds at most one output shard plus one tensor of each input;
  ``metrics.json`` reports that peak (``peak_held_bytes``) and the process's peak resident memory.
* The output is an ordinary model folder (the target's config and tokenizer; ``youri.json`` records the
  inputs and weights) that quantize, export, eval, serve and prefer read like any other.

Chat vector on the demo (section ``merge`` of ``recipes/demo-youko.yaml``)::

    youri merge --recipe recipes/demo-youko.yaml

Any size on one machine (no GPU needed; memory ~ two shards)::

    youri merge --base meta-llama-3-8b --models '[{model: runs/youko/pretrain, weight: 1.0},
        {model: meta-llama-3-8b-instruct, weight: 0.5}]' --skip '[embed_tokens]' --out runs/youko/merge
"""

from __future__ import annotations

import json
import re
import resource
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from youri.config import ConfigError, NonNegativeInt, PositiveInt
from youri.io import DataError, atomic_write_json, read_json, resolve_path
from youri.stage import StageWriter, check_stage_output

WEIGHTS_INDEX = "model.safetensors.index.json"
COPIED = ("generation_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


@dataclass
class MergeModel:
    model: str
    """A model folder (safetensors weights)."""
    weight: float = 1.0
    """Its weight: α of its vector (task_arithmetic) or its share (linear)."""
    tensor_weights: dict[str, float] = field(default_factory=dict)
    """Other weights for tensors whose name matches a regular expression (first match wins)."""


@dataclass
class Config:
    method: Literal["task_arithmetic", "linear"] = "task_arithmetic"
    """task_arithmetic: base + Σ weight (model − base) (a chat vector); linear: Σ weight model / Σ weight."""
    base: str = ""
    """The base the vectors are taken from (task_arithmetic; e.g. the original base model)."""
    models: list[MergeModel] = field(default_factory=list)
    """[{model, weight, tensor_weights}]; chat vector: [{model: CPT, weight: 1}, {model: instruct, weight: α}]."""
    target: NonNegativeInt = 0
    """Index in models of the output's config, tokenizer and vocabulary rows (and of the skipped tensors)."""
    skip: list[str] = field(default_factory=list)
    """Regular expressions: matching tensors are the target's, unchanged (e.g. embed_tokens, lm_head, norm)."""
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    """Compute dtype (mergekit's dtype)."""
    out_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Saved dtype; auto = the target's."""
    max_shard_bytes: PositiveInt = 5_000_000_000
    """Largest output shard (the memory bound: about one shard plus one tensor per input)."""
    out: str = "runs/demo-youko/merge"
    """Output stage folder."""


def run(cfg: Config, *, overwrite: bool = False) -> dict:
    check_stage_output(cfg.out, "merge", overwrite)
    if not cfg.models:
        raise ConfigError("models: give at least one {model, weight} entry")
    if cfg.target >= len(cfg.models):
        raise ConfigError(f"target: {cfg.target} is not an index of models (0..{len(cfg.models) - 1})")
    if cfg.method == "task_arithmetic" and not cfg.base:
        raise ConfigError("base: task_arithmetic needs the base model the vectors are taken from")
    for i, entry in enumerate(cfg.models):
        for pattern in entry.tensor_weights:
            _compile(pattern, f"models[{i}].tensor_weights")
    skip = [_compile(p, "skip") for p in cfg.skip]
    folders = [resolve_path(m.model) for m in cfg.models]
    base = Weights(resolve_path(cfg.base)) if cfg.method == "task_arithmetic" else None
    models = [Weights(f) for f in folders]
    target = models[cfg.target]
    compute = getattr(torch, cfg.dtype)
    target_config = read_json(target.folder / "config.json")
    out_name = target_config.get("dtype") or target_config.get("torch_dtype") or "float32"
    out_dtype = getattr(torch, out_name if cfg.out_dtype == "auto" else cfg.out_dtype)

    inputs = ([base.folder] if base else []) + folders
    stage = StageWriter(cfg.out, stage="merge", config=cfg, inputs=inputs, parent=target.folder, overwrite=overwrite)
    with stage:
        for old in stage.path.glob("*.safetensors*"):
            old.unlink()  # a merge is cheap to redo: no partial output is resumed
        writer = ShardWriter(stage.path, cfg.max_shard_bytes)
        merged, skipped, vocab = 0, [], []
        for name in target.names:
            held = 0
            if any(p.search(name) for p in skip):
                tensor = target.get(name).to(out_dtype)
                skipped.append(name)
            else:
                weights = [_weight(m, name) for m in cfg.models]
                tensors = [m.get(name, compute) for m in models]
                base_tensor = base.get(name, compute) if base else None
                held = sum(t.numel() * t.element_size() for t in tensors + ([base_tensor] if base else []))
                tensor, rows = _merge_tensor(cfg.method, name, base_tensor, tensors, weights, cfg.target)
                if rows is not None:
                    vocab.append(rows)
                tensor = tensor.to(out_dtype)
                merged += 1
            writer.add(name, tensor, extra_held=held)
        files = writer.close()
        config = dict(target_config)
        config["dtype"] = str(out_dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)
        atomic_write_json(stage.path / "config.json", config)
        _copy_tokenizer(target.folder, stage.path)
        metrics = {
            "method": cfg.method,
            "base": str(base.folder) if base else None,
            "models": [
                {"model": str(f), "weight": m.weight, "tensor_weights": m.tensor_weights}
                for f, m in zip(folders, cfg.models)
            ],
            "target": str(target.folder),
            "tensors": len(target.names),
            "merged_tensors": merged,
            "skipped_tensors": skipped,
            "vocab_mismatch": vocab,
            "out_dtype": config["dtype"],
            "shards": len(files),
            "output_bytes": writer.total,
            "peak_held_bytes": writer.peak,
            "largest_shard_bytes": writer.largest,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        stage.finish(metrics)
    print(json.dumps({"out": str(stage.out), "merged": merged, "skipped": len(skipped), "vocab_mismatch": len(vocab)}))
    return metrics


# ----------------------------------------------------------------------------- the arithmetic (mergekit's)


def task_arithmetic(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``base + Σ w_i (t_i − base)`` in mergekit's order of operations (GeneralizedTaskArithmeticMerge,
    no sparsification, no consensus, normalize false, lambda 1)."""
    deltas = base.new_empty((len(tensors), *base.shape))
    for index, tensor in enumerate(tensors):
        deltas[index] = tensor - base
    scale = torch.tensor(weights, dtype=deltas.dtype, device=deltas.device)
    while deltas.dim() > scale.dim():
        scale.unsqueeze_(-1)
    deltas.mul_(scale)
    return (base + deltas.sum(dim=0)).to(base.dtype)


def linear(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """``Σ w_i t_i / Σ w_i`` in mergekit's order of operations (linear_merge, normalize true)."""
    first = tensors[0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    scale = torch.tensor(weights, dtype=dtype)
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(tensors, scale.unbind(0)):
        result.addcmul_(tensor, coefficient)
    result.div_(scale.sum())
    return result.to(first.dtype)


def _merge_tensor(method, name, base, tensors, weights, target_index):
    """The merged tensor, and a vocabulary note when the inputs differ only in their first axis."""
    target = tensors[target_index]
    shapes = {tuple(t.shape) for t in tensors + ([base] if base is not None else [])}
    rows = None
    if len(shapes) > 1:
        if len({s[1:] for s in shapes}) > 1 or len({len(s) for s in shapes}) > 1:
            raise DataError(f"tensor {name}: shapes {sorted(shapes)} differ beyond the first (vocabulary) axis")
        shared = min(s[0] for s in shapes)
        rows = {"tensor": name, "target_rows": target.shape[0], "shared_rows": shared}
        rows["kept_target_rows"] = target.shape[0] - min(shared, target.shape[0])
        tensors = [t[:shared] for t in tensors]
        base = base[:shared] if base is not None else None
    out = task_arithmetic(base, tensors, weights) if method == "task_arithmetic" else linear(tensors, weights)
    if rows is not None and out.shape[0] < target.shape[0]:
        out = torch.cat([out, target[out.shape[0] :].to(out.dtype)])  # the new rows keep the target's values
    return out, rows


def _weight(entry: MergeModel, name: str) -> float:
    for pattern, weight in entry.tensor_weights.items():
        if re.search(pattern, name):
            return weight
    return entry.weight


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({err})") from err


# ----------------------------------------------------------------------------- streaming I/O


class Weights:
    """The tensors of a model folder by name, read one at a time from its safetensors files (memory-mapped)."""

    def __init__(self, folder: Path):
        self.folder = folder
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: not a model folder (no config.json)")
        index = folder / WEIGHTS_INDEX
        if index.is_file():
            self.files = {name: folder / file for name, file in read_json(index)["weight_map"].items()}
        elif (folder / "model.safetensors").is_file():
            with safe_open(str(folder / "model.safetensors"), "pt") as handle:
                self.files = {name: folder / "model.safetensors" for name in handle.keys()}
        else:
            raise FileNotFoundError(f"{folder}: no model.safetensors or {WEIGHTS_INDEX}")
        self.names = list(self.files)
        self._open: dict[Path, object] = {}

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        file = self.files.get(name)
        if file is None:
            raise DataError(f"{self.folder}: no tensor {name} (the models must share an architecture)")
        if file not in self._open:
            self._open[file] = safe_open(str(file), "pt")
        tensor = self._open[file].get_tensor(name)
        return tensor.to(dtype) if dtype is not None else tensor


class ShardWriter:
    """Writes tensors into shards of at most ``limit`` bytes, in HF's names and index; tracks what it holds."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.total = self.peak = self.largest = 0
        self.files: list[tuple[Path, list[str]]] = []

    def add(self, name: str, tensor: torch.Tensor, extra_held: int = 0) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.limit:
            self._flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size
        self.peak = max(self.peak, self.pending_bytes + extra_held)

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.pending)))
        self.largest = max(self.largest, self.pending_bytes)
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        if self.pending:
            self._flush()
        n = len(self.files)
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (path, tensors), final in zip(self.files, names):
            path.rename(self.folder / final)
            weight_map.update({t: final for t in tensors})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            atomic_write_json(self.folder / WEIGHTS_INDEX, index)
        return [self.folder / f for f in names]


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for path in src.iterdir():
        if path.is_file() and (path.name.startswith("tokenizer") or path.name in COPIED):
            shutil.copy2(path, dst / path.name)
