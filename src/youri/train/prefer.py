"""``youri prefer``: preference tuning -- DPO (sigmoid), ORPO, SimPO -- on the shared training loop.

rinna's post-Youri chat models finish with one of these after the chat vector (``youri merge``):
llama-3-youko-8b-instruct with DPO, gemma-2-baku-2b-it and qwq-bakeneko-32b with ORPO,
qwen2.5-bakeneko-32b-instruct with SimPO. Each pair is rendered by the SFT renderer (``kind``: the
instruction or chat format) and only the final reply is scored (``youri.data.pref_data``); the losses are
TRL 1.16.0's (``youri.train.losses``; ``tests/test_prefer.py`` runs TRL's own code on the same batch).

* DPO needs the reference model's log-probs: they are computed once, before the first step, from the
  starting model (= the reference) and cached in the stage folder (``reference_logps.json``), so a resumed
  run reads them instead of recomputing, and no second model is held during training.
* ORPO and SimPO need no reference model.
* Metrics: per step the loop logs reward accuracy, reward margin and chosen/rejected log-probs beside the
  loss; ``metrics.json`` has them on the held-out pairs before and after training, and the held-out
  perplexity of the chosen replies (the SFT view: preference tuning should not wreck it). A tie of the
  two rewards (a DPO policy still equal to its reference) counts as half a hit, so "before" reads 0.5.

Tiny, on CPU (the demo's preference sample, from the merged chat-vector model)::

    youri prefer --recipe recipes/demo-youko.yaml
    youri prefer --model runs/demo/sft_instruction --method orpo --beta 0.1 --out runs/demo/orpo

Multi-GPU (FSDP2, full fine-tuning; LoRA runs single-process)::

    torchrun --nproc_per_node=8 -m youri prefer --recipe recipes/youri-7b.yaml --section prefer
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Literal

import torch

from youri.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from youri.data.pref_data import EncodedPair, PrefDatasetConfig, encode_pairs, read_pairs, split_pairs
from youri.io import SkipCounter, atomic_write_json, read_json, resolve_path
from youri.model import load_model, load_tokenizer, resolve_export_dtype
from youri.prompts import install_chat_template
from youri.stage import StageWriter, check_stage_output
from youri.train import checkpoint
from youri.train.batches import HeldOutRows, PairBatches, collate_pairs, pack_examples
from youri.train.distributed import close_distributed, init_distributed
from youri.train.finetune import LoraConfig, add_lora, set_generation_config
from youri.train.losses import PreferenceObjective, response_logps, reward_hits
from youri.train.trainer import TrainConfig, compute_dtype, train

REFERENCE = "reference_logps.json"


def _default_datasets() -> list[PrefDatasetConfig]:
    return [PrefDatasetConfig(path="builtin:preferences_ja.jsonl", shape="pairs")]


@dataclass
class Config:
    method: Literal["dpo", "orpo", "simpo"] = "dpo"
    """dpo: sigmoid DPO against the starting model; orpo: NLL + odds-ratio term; simpo: length-normalised margin."""
    beta: PositiveFloat = 0.1
    """DPO's β, ORPO's λ (TRL calls both beta), SimPO's β."""
    gamma: NonNegativeFloat = 0.5
    """SimPO's target reward margin γ (simpo only)."""
    kind: Literal["instruction", "chat"] = "instruction"
    """Prompt format the pairs are rendered in: Alpaca-ja instruction or 設定/ユーザー/システム chat."""
    model: str = "runs/demo-youko/merge"
    """Starting model (and DPO's reference): a youri stage folder or any local Hugging Face folder."""
    datasets: list[PrefDatasetConfig] = field(default_factory=_default_datasets)
    """[{path, shape, max_examples}]; shape: pairs|hh_rlhf|ultrafeedback (youri.data.pref_data)."""
    out: str = "runs/demo-youko/prefer"
    """Output stage folder."""
    seq_len: PositiveInt = 512
    """Longest chosen or rejected sequence in tokens; longer pairs are dropped (and counted)."""
    heldout: NonNegativeInt = 16
    """Pairs held out per dataset (at most a tenth of it) for reward accuracy and perplexity."""
    skip_bad_records: bool = False
    """Skip and count malformed records instead of failing on the first one."""
    export_dtype: str = "auto"
    """Saved weight dtype: auto (the parent's), float32, bfloat16 or float16."""
    keep_checkpoints: bool = False
    """Keep the training checkpoints inside the output folder."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA options (off = full fine-tuning)."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            lr=5e-6, min_lr=5e-7, warmup_steps=5, max_steps=100, micro_batch_size=4, weight_decay=0.0
        )
    )
    """The shared training loop's settings (micro_batch_size counts pairs)."""


def run(cfg: Config, *, overwrite: bool = False) -> dict:
    check_stage_output(cfg.out, "prefer", overwrite)
    model_dir = resolve_path(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    t = cfg.train
    skip = SkipCounter() if cfg.skip_bad_records else None
    if not cfg.datasets:
        raise ConfigError("datasets: give at least one {path, shape} entry")
    train_pairs, held_pairs, counts, too_long = [], [], {}, 0
    for spec in cfg.datasets:
        pairs = read_pairs(spec, skip)
        encoded, dropped = encode_pairs(pairs, cfg.kind, tokenizer, cfg.seq_len, skip)
        kept, held = split_pairs(encoded, cfg.heldout, t.seed, spec.path)
        train_pairs += kept
        held_pairs += held
        too_long += dropped
        counts[spec.path] = {"records": len(pairs), "train": len(kept), "heldout": len(held), "too_long": dropped}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    objective = PreferenceObjective(cfg.method, cfg.beta, cfg.gamma)

    dist = init_distributed()
    if cfg.lora.enabled and dist.enabled:
        raise ConfigError("lora.enabled: LoRA runs in one process; use full fine-tuning with torchrun")
    export_dtype = resolve_export_dtype(cfg.export_dtype, model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    inputs = [model_dir] + [resolve_path(d.path) for d in cfg.datasets]
    stage = StageWriter(cfg.out, stage="prefer", config=cfg, inputs=inputs, parent=model_dir, overwrite=overwrite)
    if dist.is_main:
        stage.__enter__()
    dist.barrier()
    amp = compute_dtype(t, dist.device)
    model.to(dist.device)
    ref = None
    if cfg.method == "dpo":  # the starting model is the reference: score every pair once, before any step
        ref = _reference_logps(model, stage, train_pairs, held_pairs, t.micro_batch_size, pad_id, amp, dist)
    before = pair_metrics(model, objective, held_pairs, ref and ref["heldout"], t.micro_batch_size, pad_id, amp)
    dist.print0(
        f"prefer ({cfg.method}, {cfg.kind}) {model_dir}: {len(train_pairs)} pairs, {len(held_pairs)} held out, "
        f"global batch {t.micro_batch_size * t.grad_accum * dist.world} pairs"
    )
    if cfg.lora.enabled:
        model = add_lora(model, cfg.lora)
    batches = PairBatches(train_pairs, t.micro_batch_size, t.grad_accum, pad_id, t.seed, ref and ref["train"])
    chosen_rows = pack_examples([p.chosen for p in held_pairs], cfg.seq_len, packing=False)
    evals = {"heldout": HeldOutRows(chosen_rows, t.micro_batch_size, pad_id)} if held_pairs else {}
    result = train(model, cfg=t, batches=batches, evals=evals, run_dir=stage.path, dist=dist, objective=objective)
    after = pair_metrics(model, objective, held_pairs, ref and ref["heldout"], t.micro_batch_size, pad_id, amp)
    if cfg.lora.enabled:
        model = model.merge_and_unload()
    model.config.use_cache = True
    set_generation_config(model, tokenizer)
    checkpoint.export_model(model, None, stage.path, dist, dtype=export_dtype)
    curve = result["eval"].get("heldout", [])
    metrics = {
        "method": cfg.method,
        "beta": cfg.beta,
        "gamma": cfg.gamma if cfg.method == "simpo" else None,
        "kind": cfg.kind,
        "heldout_before": before,
        "heldout_after": after,
        "reward_acc_before": before.get("reward_acc"),
        "reward_acc_after": after.get("reward_acc"),
        "heldout_ppl_before": curve[0][2] if curve else None,
        "heldout_ppl_after": curve[-1][2] if curve else None,
        "heldout_curve": curve,
        "loss_curve": result["train_loss"],
        "train_stats": result["stats"],
        "lr": result["lr"],
        "steps": result["steps"],
        "tokens": result["tokens"],
        "datasets": counts,
        "train_pairs": len(train_pairs),
        "heldout_pairs": len(held_pairs),
        "too_long_pairs": too_long,
        "skipped_records": skip.count if skip else 0,
        "skipped_examples": skip.examples if skip else [],
        "reference_logps": REFERENCE if ref else None,
        "lora": cfg.lora.enabled,
        "world": dist.world,
    }
    if dist.is_main:
        install_chat_template(tokenizer, cfg.kind)
        tokenizer.save_pretrained(str(stage.path), save_jinja_files=False)
        if not cfg.keep_checkpoints:
            shutil.rmtree(stage.path / "checkpoints", ignore_errors=True)
        stage.finish(metrics)
        summary = {k: metrics[k] for k in ("reward_acc_before", "reward_acc_after", "heldout_ppl_before")}
        print(json.dumps({"out": str(stage.out), **summary, "heldout_ppl_after": metrics["heldout_ppl_after"]}))
    close_distributed(dist)
    return metrics


# ----------------------------------------------------------------------------- reference and held-out pairs


def _batches(pairs: list[EncodedPair], size: int, pad_id: int, ref=None):
    for i in range(0, len(pairs), size):
        yield collate_pairs(pairs[i : i + size], pad_id, ref[i : i + size] if ref is not None else None)


@torch.no_grad()
def pair_logps(model, pairs: list[EncodedPair], size: int, pad_id: int, amp) -> list[tuple[float, float]]:
    """Summed response log-probs ``(chosen, rejected)`` per pair."""
    was_training, out = model.training, []
    model.eval()
    device = next(model.parameters()).device
    for batch in _batches(pairs, size, pad_id):
        sums, _ = response_logps(_logits(model, batch, device, amp), batch["labels"])
        b = sums.shape[0] // 2
        out += [(float(c), float(r)) for c, r in zip(sums[:b].double().tolist(), sums[b:].double().tolist())]
    model.train(was_training)
    return out


def _reference_logps(model, stage, train_pairs, held_pairs, size, pad_id, amp, dist) -> dict:
    """The reference log-probs of every pair: read from the stage folder when a run left them there (resume),
    else computed now and written there."""
    path = stage.path / REFERENCE
    expected = {"train": len(train_pairs), "heldout": len(held_pairs)}
    if path.is_file():
        cached = read_json(path)
        if {k: len(cached.get(k, [])) for k in expected} == expected:
            dist.print0(f"reference log-probs: read from {path}")
            return cached
    cached = {
        "train": pair_logps(model, train_pairs, size, pad_id, amp),
        "heldout": pair_logps(model, held_pairs, size, pad_id, amp),
    }
    if dist.is_main:
        atomic_write_json(path, cached)
    return cached


@torch.no_grad()
def pair_metrics(model, objective: PreferenceObjective, pairs, ref, size: int, pad_id: int, amp) -> dict:
    """Mean loss, reward accuracy (ties count half) and margin, summed log-probs, over ``pairs``."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(5, dtype=torch.float64)
    for batch in _batches(pairs, size, pad_id, ref):
        losses, rc, rr, sums = objective.pair_losses(_logits(model, batch, device, amp), batch)
        b = losses.shape[0]
        totals += torch.stack(
            [
                losses.sum().double().cpu(),
                reward_hits(rc, rr).sum().cpu(),
                (rc - rr).sum().double().cpu(),
                sums[:b].sum().double().cpu(),
                sums[b:].sum().double().cpu(),
            ]
        )
    model.train(was_training)
    mean = (totals / len(pairs)).tolist()
    return dict(zip(("loss", "reward_acc", "reward_margin", "logps_chosen", "logps_rejected"), mean))


def _logits(model, batch: dict, device, amp) -> torch.Tensor:
    for key in ("input_ids", "labels", "lengths"):
        batch[key] = batch[key].to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
        return model(input_ids=batch["input_ids"]).logits
