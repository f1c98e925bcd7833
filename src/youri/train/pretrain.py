"""``youri pretrain``: continued pretraining of a Llama-family model on ``youri data`` token shards.

Tiny, on this CPU (the demo: the ``youri init`` model on the ja:en 9:1 sample mixture)::

    youri pretrain --recipe recipes/demo.yaml

Multi-GPU / multi-node (FSDP2, bf16; see docs/launch.md for Slurm)::

    torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29500 \\
        -m youri pretrain --recipe recipes/youri-7b.yaml
    youri pretrain --recipe recipes/youri-7b.yaml --dry_run true     # plan only: no weights, no data

The model is any local HF Llama folder or youri stage folder; the data folder's tokenizer must match
it (vocabulary size, EOS). Every ``train.eval_every`` steps the held-out perplexity of each
``val/<lang>`` split is measured; ``metrics.json`` keeps the curves and the initial and final values.
The output folder is a plain HF model folder (safetensors, config, generation config, tokenizer).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Annotated

import torch

from youri.config import ConfigError, NonNegativeInt, PositiveInt, Range, config_to_dict
from youri.data.shards import TokenShards, read_index
from youri.io import resolve_path
from youri.model import load_model, load_tokenizer, resolve_export_dtype
from youri.stage import StageWriter, check_stage_output
from youri.train import checkpoint
from youri.train.batches import HeldOut, ShardBatches, check_tokenizer
from youri.train.distributed import close_distributed, init_distributed
from youri.train.estimate import KNOWN_SHAPES, flops_per_token, memory_per_gpu, param_counts, peak_flops
from youri.train.trainer import TrainConfig, train


@dataclass
class PlanConfig:
    """What ``--dry_run true`` assumes about the cluster."""

    gpus: PositiveInt = 8
    """GPUs in total."""
    gpu: str = "H100"
    """GPU model, for its peak bf16 FLOP/s (H100, H200, A100, B200, ...)."""
    mfu: Annotated[float, Range(min=0, max=1, min_open=True)] = 0.40
    """Model FLOPs utilisation to assume for the wall-clock estimate (measure it on a short run)."""
    seq_len: NonNegativeInt = 0
    """Sequence length when the data folder is not available (0 = read it from the data folder)."""
    shape: str = "llama-2-7b"
    """Architecture to assume when the model folder is not available (llama-2-7b, llama-2-13b)."""


@dataclass
class Config:
    model: str = "runs/demo/init"
    """Local HF Llama-family model folder or youri stage folder to continue from."""
    data: str = "runs/demo/data"
    """A 'youri data' output folder (token shards: train, val/ja, val/en ...)."""
    out: str = "runs/demo/pretrain"
    """Output stage folder."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop (lr, steps, batch, checkpoints ...)."""
    export_dtype: str = "auto"
    """dtype of the saved weights: 'auto' = that of the input checkpoint, or float32/bfloat16/float16."""
    keep_checkpoints: bool = False
    """Keep RUN/checkpoints in the finished folder (they hold optimizer states: large)."""
    dry_run: bool = False
    """Validate the config and print parameters, memory and FLOPs per GPU and the wall-clock estimate."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Cluster assumptions of the dry run."""


# ---------------------------------------------------------------------------- run


def run(cfg: Config, *, overwrite: bool = False) -> dict:
    if cfg.dry_run:
        return dry_run(cfg)

    check_stage_output(cfg.out, "pretrain", overwrite)  # before any work
    data, model_dir = resolve_path(cfg.data), resolve_path(cfg.model)
    index = read_index(data)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.float32)  # fp32 master weights; bf16 compute is autocast
    check_tokenizer(data, index, model.config, tokenizer)
    export_dtype = resolve_export_dtype(cfg.export_dtype, model_dir)
    t = cfg.train
    batches = ShardBatches(TokenShards.open(data, "train"), t.micro_batch_size, t.grad_accum, t.seed)
    evals = {
        split: HeldOut(TokenShards.open(data, split), t.micro_batch_size, t.eval_batches)
        for split in sorted(index["splits"])
        if split.startswith("val/")
    }

    dist = init_distributed()
    stage = StageWriter(
        cfg.out, stage="pretrain", config=cfg, inputs=[model_dir, data], parent=model_dir, overwrite=overwrite
    )
    if dist.is_main:
        stage.__enter__()  # creates (or keeps, for resume) OUT.partial; other ranks only write into it
    dist.barrier()
    dist.print0(
        f"pretrain {model_dir} on {data}: {len(batches.rows)} train sequences of {index['seq_len']} "
        f"tokens, {dist.world} process(es), global batch {t.micro_batch_size * t.grad_accum * dist.world}"
    )
    result = train(model, cfg=t, batches=batches, evals=evals, run_dir=stage.path, dist=dist)
    checkpoint.export_model(model, tokenizer, stage.path, dist, dtype=export_dtype)
    metrics = {
        "loss_curve": result["train_loss"],
        "lr": result["lr"],
        "grad_norm": result["grad_norm"],
        "val": result["eval"],
        "initial_ppl": result["initial"],
        "final_ppl": result["final"],
        "ppl_ratio": {k: result["final"][k] / result["initial"][k] for k in result["final"] if k in result["initial"]},
        "steps": result["steps"],
        "tokens": result["tokens"],
        "tokens_per_s": result["tokens_per_s"],
        "mfu": result["mfu"],
        "world": dist.world,
    }
    if dist.is_main:
        if not cfg.keep_checkpoints:
            shutil.rmtree(stage.path / "checkpoints", ignore_errors=True)
        if (model_dir / "tokenizer.model").is_file():  # keep the SentencePiece file for llama.cpp & co.
            shutil.copy(model_dir / "tokenizer.model", stage.path / "tokenizer.model")
        stage.finish(metrics)
        print(
            json.dumps(
                {"out": str(stage.out), "initial_ppl": metrics["initial_ppl"], "final_ppl": metrics["final_ppl"]},
                ensure_ascii=False,
            )
        )
    close_distributed(dist)
    return metrics


# ---------------------------------------------------------------------------- dry run


def dry_run(cfg: Config) -> dict:
    """Plan a run without loading weights or data: parameters, memory and FLOPs per GPU, wall clock."""

    t, plan = cfg.train, cfg.plan
    model_cfg_file = resolve_path(cfg.model) / "config.json"
    if model_cfg_file.is_file():
        shape, shape_src = json.loads(model_cfg_file.read_text(encoding="utf-8")), str(model_cfg_file)
    elif plan.shape in KNOWN_SHAPES:
        shape, shape_src = KNOWN_SHAPES[plan.shape], f"plan.shape={plan.shape} ({cfg.model} not on this machine)"
    else:
        raise ConfigError(
            f"plan.shape: {plan.shape!r} unknown and {model_cfg_file} absent; known shapes: {', '.join(KNOWN_SHAPES)}"
        )
    index_file = resolve_path(cfg.data) / "index.json"
    seq_len = plan.seq_len or (json.loads(index_file.read_text())["seq_len"] if index_file.is_file() else 0)
    if seq_len <= 0:
        raise ConfigError(f"plan.seq_len: set it (the data folder {cfg.data} is not on this machine)")
    for name in ("max_steps", "micro_batch_size", "grad_accum"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
    if not 0 <= t.min_lr <= t.lr or t.warmup_steps >= t.max_steps:
        raise ConfigError("train: need 0 <= min_lr <= lr and warmup_steps < max_steps")
    if not 0 < plan.mfu <= 1:
        raise ConfigError(f"plan.mfu must be in (0, 1], got {plan.mfu}")
    peak = peak_flops(plan.gpu, t.peak_tflops)
    if peak is None:
        raise ConfigError(f"plan.gpu: unknown GPU {plan.gpu!r}; set train.peak_tflops (its bf16 peak per GPU)")

    counts = param_counts(shape)
    seqs = t.micro_batch_size * t.grad_accum * plan.gpus
    tokens = t.max_steps * seqs * seq_len
    fpt = flops_per_token(shape, seq_len)
    mem = memory_per_gpu(
        shape,
        world=plan.gpus,
        micro_batch=t.micro_batch_size,
        seq_len=seq_len,
        activation_checkpointing=t.activation_checkpointing,
    )
    seconds = tokens * fpt / (plan.gpus * peak * plan.mfu)
    report = {
        "shape_from": shape_src,
        "parameters": counts["total"],
        "seq_len": seq_len,
        "global_batch_sequences": seqs,
        "global_batch_tokens": seqs * seq_len,
        "steps": t.max_steps,
        "total_tokens": tokens,
        "flops_per_token": fpt,
        "total_flops": tokens * fpt,
        "memory_per_gpu_gib": {k: v / 2**30 for k, v in mem.items()},
        "gpus": plan.gpus,
        "gpu": plan.gpu,
        "peak_tflops_per_gpu": peak / 1e12,
        "assumed_mfu": plan.mfu,
        "tokens_per_s": tokens / seconds,
        "wall_clock_hours": seconds / 3600,
        "gpu_hours": seconds * plan.gpus / 3600,
        "config": config_to_dict(cfg),
    }
    _print_plan(report)
    return report


def _print_plan(r: dict) -> None:
    mem = r["memory_per_gpu_gib"]
    lines = [
        f"model            {r['parameters'] / 1e9:.2f} B parameters   ({r['shape_from']})",
        f"batch            {r['global_batch_sequences']} x {r['seq_len']} = "
        f"{r['global_batch_tokens'] / 1e6:.2f} M tokens/step",
        f"run              {r['steps']} steps = {r['total_tokens'] / 1e9:.1f} B tokens",
        f"compute          {r['flops_per_token'] / 1e9:.1f} GFLOP/token, {r['total_flops']:.2e} FLOP in total",
        f"memory per GPU   {mem['total']:.1f} GiB  (states {mem['states']:.1f}, gathered params "
        f"{mem['gathered_params']:.1f}, activations {mem['activations']:.1f}, logits {mem['logits']:.1f})",
        f"wall clock       {r['wall_clock_hours']:.1f} h on {r['gpus']} x {r['gpu']} at MFU {r['assumed_mfu']:.0%} "
        f"({r['peak_tflops_per_gpu']:.0f} TFLOP/s peak): {r['tokens_per_s']:,.0f} tok/s, "
        f"{r['gpu_hours']:,.0f} GPU-hours",
    ]
    print("\n".join(["youri pretrain --dry_run: nothing loaded, nothing written"] + lines))
