"""``youri sft``: instruction or multi-turn chat supervised fine-tuning, on the shared training loop.

Only the replies are supervised (every システム turn plus its ``</s>``, or with ``kind: template`` every
assistant turn plus the end-of-turn token of the base's own chat template, see ``youri.prompts``); the
loss is normalised by the global count of supervised tokens (``youri.train.trainer``). Rows are packed
without cross-contamination (``youri.data.sft_data``). The output folder holds plain ``transformers``
weights, the tokenizer with the Jinja ``chat_template`` of ``kind`` (the base's own for ``template``)
inside ``tokenizer_config.json`` and a ``generation_config.json`` whose EOS is the end of a reply;
``metrics.json`` has the held-out response loss before and after training.

Tiny, on CPU (the demo recipe's sections; both start from the base model, as Youri 7B Instruction and Chat did)::

    youri sft --recipe recipes/demo.yaml                       # section sft_instruction
    youri sft --recipe recipes/demo.yaml --section sft_chat
    youri sft --recipe recipes/demo.yaml --show_mask 1         # print the rendered mask and exit

Multi-GPU (FSDP2, full fine-tuning; LoRA runs single-process)::

    torchrun --nproc_per_node=8 -m youri sft --recipe recipes/youri-7b.yaml --section sft_chat
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Literal

import torch

from youri.config import ConfigError, NonNegativeInt, PositiveInt
from youri.data.sft_data import DatasetConfig, build_mixture, encode_all
from youri.io import SkipCounter, resolve_path
from youri.model import load_model, load_tokenizer, resolve_export_dtype
from youri.prompts import install_chat_template, show_mask, template_stop_ids
from youri.stage import StageWriter, check_stage_output
from youri.train import checkpoint
from youri.train.batches import HeldOutRows, RowBatches, pack_examples
from youri.train.distributed import close_distributed, init_distributed
from youri.train.finetune import LoraConfig, add_lora, set_generation_config
from youri.train.trainer import TrainConfig, train


def _default_datasets() -> list[DatasetConfig]:
    return [DatasetConfig(path="builtin:instructions_ja.jsonl", shape="instruction")]


@dataclass
class Config:
    kind: Literal["instruction", "chat", "template"] = "instruction"
    """Prompt format: Alpaca-ja instruction, 設定/ユーザー/システム multi-turn chat, or template: the base's own
    chat_template (tokenizer_config.json; Llama 3 headers, Qwen ChatML, Gemma turns), kept in the output."""
    model: str = "runs/demo/pretrain"
    """Parent model: a youri stage folder or any local Hugging Face folder of a supported family (youri.families)."""
    datasets: list[DatasetConfig] = field(default_factory=_default_datasets)
    """Mixture: [{path, shape, epochs, personas, max_examples}]; shape: instruction|messages|persona|dolly|flan|
    llm_japanese|hh_rlhf (youri.data.sft_data)."""
    out: str = "runs/demo/sft_instruction"
    """Output stage folder."""
    seq_len: PositiveInt = 512
    """Longest row in tokens; longer examples are cut (and counted in metrics.json)."""
    packing: bool = True
    """Pack several examples per row (position ids restart per example; no cross-attention)."""
    heldout: NonNegativeInt = 64
    """Examples held out per dataset (at most a tenth of it) for the response-loss evaluation."""
    skip_bad_records: bool = False
    """Skip and count malformed records instead of failing on the first one."""
    export_dtype: str = "auto"
    """Saved weight dtype: auto (the parent's), float32, bfloat16 or float16."""
    keep_checkpoints: bool = False
    """Keep the training checkpoints inside the output folder."""
    show_mask: NonNegativeInt = 0
    """Print the token/label table of the first N training examples and exit (debugging)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA options (off = full fine-tuning)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(lr=2e-5, min_lr=2e-6, warmup_steps=10, max_steps=100, weight_decay=0.0)
    )
    """The shared training loop's settings."""


def run(cfg: Config, *, overwrite: bool = False) -> dict:

    if cfg.kind not in ("instruction", "chat", "template"):
        raise ConfigError(f"kind: {cfg.kind!r} is not one of 'instruction', 'chat', 'template'")
    check_stage_output(cfg.out, "sft", overwrite)  # before any work
    model_dir = resolve_path(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    base_template = cfg.kind == "template"
    if base_template and not tokenizer.chat_template:
        raise ConfigError(f"kind: template needs the base's chat_template; {model_dir}'s tokenizer files have none")
    t = cfg.train
    skip = SkipCounter() if cfg.skip_bad_records else None
    mixture = build_mixture(cfg.datasets, cfg.kind, heldout=cfg.heldout, seed=t.seed, skip=skip)
    train_enc, train_stats = encode_all(mixture.train, tokenizer, cfg.seq_len, base_template=base_template)
    if cfg.show_mask:
        for enc in train_enc[: cfg.show_mask]:
            print(show_mask(enc, tokenizer), end="\n\n")
        return {}
    held_enc, held_stats = encode_all(mixture.heldout, tokenizer, cfg.seq_len, base_template=base_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = RowBatches(
        pack_examples(train_enc, cfg.seq_len, packing=cfg.packing), t.micro_batch_size, t.grad_accum, pad_id, t.seed
    )
    evals = {
        "heldout": HeldOutRows(pack_examples(held_enc, cfg.seq_len, packing=cfg.packing), t.micro_batch_size, pad_id)
    }

    dist = init_distributed()
    if cfg.lora.enabled and dist.enabled:
        raise ConfigError("lora.enabled: LoRA runs in one process; use full fine-tuning with torchrun")
    export_dtype = resolve_export_dtype(cfg.export_dtype, model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    model.config.use_cache = False  # a KV cache would disable the packed-sequence (block-diagonal) mask
    if cfg.lora.enabled:
        model = add_lora(model, cfg.lora)
    inputs = [model_dir] + [resolve_path(d.path) for d in cfg.datasets]
    stage = StageWriter(cfg.out, stage="sft", config=cfg, inputs=inputs, parent=model_dir, overwrite=overwrite)
    if dist.is_main:
        stage.__enter__()
    dist.barrier()
    dist.print0(
        f"sft ({cfg.kind}) {model_dir}: {train_stats.examples} examples in {len(batches.rows)} rows "
        f"of <= {cfg.seq_len} tokens, {len(held_enc)} held out, global batch "
        f"{t.micro_batch_size * t.grad_accum * dist.world} rows"
    )
    result = train(model, cfg=t, batches=batches, evals=evals, run_dir=stage.path, dist=dist)
    if cfg.lora.enabled:
        model = model.merge_and_unload()  # plain weights: the folder needs no peft to load
    model.config.use_cache = True  # the loop turned it off (packed rows need that); generation wants it
    set_generation_config(model, tokenizer, template_stop_ids(tokenizer) if base_template else None)
    checkpoint.export_model(model, None, stage.path, dist, dtype=export_dtype)
    curve = result["eval"]["heldout"]
    metrics = {
        "kind": cfg.kind,
        "heldout_response_loss_before": curve[0][1] if curve else None,
        "heldout_response_loss_after": curve[-1][1] if curve else None,
        "heldout_curve": curve,
        "loss_curve": result["train_loss"],
        "lr": result["lr"],
        "steps": result["steps"],
        "tokens": result["tokens"],
        "tokens_per_s": result["tokens_per_s"],
        "datasets": mixture.counts,
        "train_examples": vars(train_stats),
        "heldout_examples": vars(held_stats),
        "train_rows": len(batches.rows),
        "skipped_records": skip.count if skip else 0,
        "skipped_examples": skip.examples if skip else [],
        "lora": cfg.lora.enabled,
        "world": dist.world,
    }
    if dist.is_main:
        if not base_template:  # the base's template stays as it is, special tokens and all
            install_chat_template(tokenizer, cfg.kind)
        tokenizer.save_pretrained(str(stage.path), save_jinja_files=False)  # template inside tokenizer_config.json
        if not cfg.keep_checkpoints:
            shutil.rmtree(stage.path / "checkpoints", ignore_errors=True)
        stage.finish(metrics)
        print(
            json.dumps(
                {
                    "out": str(stage.out),
                    "heldout_response_loss_before": metrics["heldout_response_loss_before"],
                    "heldout_response_loss_after": metrics["heldout_response_loss_after"],
                },
                ensure_ascii=False,
            )
        )
    close_distributed(dist)
    return metrics
