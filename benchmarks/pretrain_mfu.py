"""MFU of youri's training loop on one GPU for a 1B-7B Llama shape in bf16 (the GPU half of the speed goal).

Builds the model from a config (random init, no download), feeds random token rows through
``youri.train.trainer.train`` (bf16 autocast, fused AdamW, optional torch.compile / activation
checkpointing) and reports the loop's median MFU (``youri.train.estimate``: 6N + 12·L·d·T FLOPs per token
over the device's peak dense bf16 FLOP/s). Target on one H200: >= 50 %.

    python benchmarks/pretrain_mfu.py --shape 1b --compile             # on a GPU (H100/H200 peak known)
    python benchmarks/pretrain_mfu.py --shape tiny --peak_tflops 0.1    # CPU smoke test of the script

Last stdout line: JSON {shape, parameters, tokens_per_s, mfu, device, ...}.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import torch

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads)
    "tiny": (128, 384, 2, 4, 4),
    "1b": (2048, 5632, 22, 32, 4),  # TinyLlama-1.1B
    "3b": (3072, 8192, 28, 24, 8),  # Llama-3.2-3B blocks (head_dim 128), Llama 2 vocabulary
    "7b": (4096, 11008, 32, 32, 32),  # Llama 2 7B
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=0.0, help="0 = known GPU from its name")
    args = parser.parse_args()

    from youri.testing import random_llama
    from youri.train.batches import ShardBatches
    from youri.train.distributed import init_distributed
    from youri.train.estimate import param_counts
    from youri.train.trainer import TrainConfig, train

    hidden, inter, layers, heads, kv = SHAPES[args.shape]
    dist = init_distributed()
    with dist.device:  # random init straight on the GPU: a 7B fp32 init on the CPU takes minutes
        model = random_llama(
            32000,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=args.seq,
            tie_word_embeddings=False,
            attn_implementation="sdpa",
        )
    config = model.config
    rows = np.random.default_rng(0).integers(3, 32000, size=(args.batch * (args.steps + 1), args.seq))
    cfg = TrainConfig(
        max_steps=args.steps,
        warmup_steps=2,
        micro_batch_size=args.batch,
        eval_every=0,
        save_every=-1,
        resume="none",
        dtype="bfloat16",
        compile=args.compile,
        activation_checkpointing=args.activation_checkpointing,
        peak_tflops=args.peak_tflops,
        progress=False,
        log_every=5,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, cfg=cfg, batches=ShardBatches(rows, args.batch, 1), evals={}, run_dir=tmp, dist=dist)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    mfu = result["mfu"]
    print(
        f"{args.shape}: {param_counts(config)['total'] / 1e9:.2f} B params, batch {args.batch} x {args.seq}, bf16, "
        f"{device}: {result['tokens_per_s']:,.0f} tok/s, MFU {f'{100 * mfu:.1f}%' if mfu else 'n/a'}"
    )
    print(
        json.dumps(
            {
                "shape": args.shape,
                "parameters": param_counts(config)["total"],
                "seq_len": args.seq,
                "batch": args.batch,
                "compile": args.compile,
                "device": device,
                "tokens_per_s": result["tokens_per_s"],
                "mfu": mfu,
            }
        )
    )


if __name__ == "__main__":
    main()
