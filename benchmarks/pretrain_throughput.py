"""Training throughput: youri's loop (``youri.train.trainer.train``) vs Hugging Face ``Trainer``, same run.

Same tiny Llama (default: hidden 256, 4 layers, vocab 32000 — the LM head dominates, as noted in
../shared/docs/engineering-notes.md), same batch, sequence length, dtype (fp32), optimizer settings
(AdamW fused, betas 0.9/0.95, clip 1.0, warmup + cosine) and data, on CPU. The two loops alternate in
rounds (the machine is shared and noisy), each round in a fresh Python process of its own, so that
neither inherits the other's process state (youri's loop tunes the process's malloc on CPU:
``youri.train.trainer.retain_freed_memory``). Each step is timed end to end: the period between the starts
of consecutive optimizer steps, which includes data, logging and the optimizer. Reported: median
tokens/s over all timed steps of all rounds, and their ratio.

    python benchmarks/pretrain_throughput.py            # full: 3 rounds x 12 timed steps
    python benchmarks/pretrain_throughput.py --quick    # <= 60 s: 1 round x 4 timed steps, smaller model

The last stdout line is one JSON object: youri_tokens_per_s, trainer_tokens_per_s, ratio, ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build_model(args, state=None):
    from youri.testing import random_llama

    heads = args.hidden // 64
    model = random_llama(
        args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    if state is not None:
        model.load_state_dict(state)
    return model


def step_periods(stamps: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :])]


def run_youri(args, state, rows, workdir: Path) -> list[float]:
    from youri.train.batches import ShardBatches
    from youri.train.distributed import Dist
    from youri.train.trainer import TrainConfig, train

    stamps: list[float] = []

    class Timed(ShardBatches):
        def micro_batches(self, step, rank, world):
            stamps.append(time.perf_counter())
            return super().micro_batches(step, rank, world)

    cfg = TrainConfig(
        lr=3e-4,
        min_lr=3e-5,
        warmup_steps=2,
        max_steps=args.warmup + args.steps + 1,
        micro_batch_size=args.batch,
        grad_accum=1,
        weight_decay=0.1,
        betas=[0.9, 0.95],
        grad_clip=1.0,
        eval_every=0,
        save_every=-1,
        resume="none",
        dtype="float32",
        progress=False,
        log_every=1,
    )  # a log line per step, like the Trainer's logging_steps=1 below
    train(build_model(args, state), cfg=cfg, batches=Timed(rows, args.batch, 1), evals={}, run_dir=workdir, dist=Dist())
    return step_periods(stamps, args.warmup)


def run_trainer(args, state, rows, workdir: Path) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            stamps.append(time.perf_counter())

    data = [{"input_ids": torch.from_numpy(r), "labels": torch.from_numpy(r)} for r in rows]
    targs = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps + 1,
        learning_rate=3e-4,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=build_model(args, state), args=targs, train_dataset=data, callbacks=[Clock()])
    trainer.train()
    return step_periods(stamps, args.warmup)


def run_round(name: str, argv: list[str]) -> list[float]:
    """One loop's timed step periods, measured in a fresh process (``--worker NAME``)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name, *argv], check=True, text=True, stdout=subprocess.PIPE
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["periods"]


def worker(args) -> None:
    state = build_model(args).state_dict()
    rows = np.random.default_rng(0).integers(3, args.vocab, size=(2048, args.seq), dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        periods = {"youri": run_youri, "trainer": run_trainer}[args.worker](args, state, rows, Path(tmp))
    print(json.dumps({"periods": periods}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="<= 60 s: 1 round, 4 timed steps, seq 128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per loop per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--worker", choices=["youri", "trainer"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.seq = 1, 4, 128
    if args.worker:
        return worker(args)

    import transformers

    argv = [f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "batch", "seq", "hidden", "layers", "vocab")]
    periods = {"youri": [], "trainer": []}
    for r in range(args.rounds):
        for name in ("youri", "trainer"):
            periods[name] += run_round(name, argv)
            print(
                f"round {r + 1}/{args.rounds} {name:8s} median step {statistics.median(periods[name]):.3f} s",
                file=sys.stderr,
            )

    tokens = args.batch * args.seq
    tps = {name: tokens / statistics.median(p) for name, p in periods.items()}
    ratio = tps["youri"] / tps["trainer"]
    print(
        f"\nmodel: Llama hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} x seq "
        f"{args.seq}, fp32, CPU x {torch.get_num_threads()} threads; torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(f"{'loop':<22}{'tokens/s':>12}{'median step (s)':>18}{'steps timed':>13}")
    for name, label in (("youri", "youri trainer.train"), ("trainer", "HF Trainer")):
        print(f"{label:<22}{tps[name]:>12,.0f}{statistics.median(periods[name]):>18.3f}{len(periods[name]):>13}")
    print(f"{'ratio youri/Trainer':<22}{ratio:>12.3f}")
    print(
        json.dumps(
            {
                "youri_tokens_per_s": round(tps["youri"], 1),
                "trainer_tokens_per_s": round(tps["trainer"], 1),
                "ratio": round(ratio, 4),
                "batch": args.batch,
                "seq_len": args.seq,
                "hidden": args.hidden,
                "layers": args.layers,
                "vocab": args.vocab,
                "dtype": "float32",
                "quick": args.quick,
                "steps_timed": len(periods["youri"]),
            }
        )
    )


if __name__ == "__main__":
    main()
