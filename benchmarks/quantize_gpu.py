"""Wall time and peak memory of ``youri quantize`` on a >= 1B Llama shape on one GPU (the GPU half of issue 6).

Builds a Llama-shaped model with random weights (HF init, std 0.02; nothing to download), saves it as an
fp16 HF folder with the given tokenizer, then runs ``youri quantize`` on it exactly as a user would
(4 bit, group 128, sym, damp 0.01, true-sequential; calibration rows from a Japanese text file) and
reports what the stage's own ``metrics.json`` measured: quantization wall time, peak GPU memory
(``torch.cuda.max_memory_allocated``: one decoder layer + the calibration activations), size on disk,
and the process's peak RSS (the parent is held in CPU memory, fp32).

Peak GPU memory does not depend on the number of layers (one layer lives on the GPU at a time), so
``--shape 7b --layers 2`` measures a Llama-2-7B's peak and per-layer time in a fraction of the time;
the 7B total is extrapolated linearly in the layers (printed as such). KL/perplexity of a random model
say little about quality (``benchmarks/gptq_quality.py`` measures that on a trained model).

    python benchmarks/quantize_gpu.py --shape 1b --tokenizer TOK --calibration ja.jsonl     # on a GPU
    python benchmarks/quantize_gpu.py --shape tiny --num_samples 4 --seq_len 128 --tokenizer TOK \\
        --calibration ja.jsonl                                                              # CPU smoke test

Last stdout line: JSON {shape, layers, parameters, wall_time_s, per_layer_s, peak_gpu_memory_gb, ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from pretrain_mfu import SHAPES  # the same named Llama shapes as the MFU benchmark (this folder is on sys.path)


def build_parent(folder: Path, shape: str, layers: int, tokenizer_path: str) -> int:
    """A random-weight Llama folder (fp16 safetensors + tokenizer); returns its parameter count."""
    from youri.model import load_tokenizer, save_model
    from youri.testing import random_llama

    hidden, inter, default_layers, heads, kv = SHAPES[shape]
    tokenizer = load_tokenizer(tokenizer_path)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = random_llama(
            len(tokenizer),
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers or default_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to(torch.float16)
    save_model(model.cpu(), tokenizer, folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="1b")
    parser.add_argument("--layers", type=int, default=0, help="decoder layers (0 = the shape's own)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.model")
    parser.add_argument("--calibration", required=True, help="Japanese .jsonl/.txt for calibration")
    parser.add_argument("--heldout_ja", default="", help="Japanese held-out text for ppl/KL (optional)")
    parser.add_argument("--heldout_en", default="")
    parser.add_argument("--num_samples", type=int, default=128)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--eval_samples", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()

    from youri.quant.quantize import Config, run

    full_layers = SHAPES[args.shape][2]
    layers = args.layers or full_layers
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / f"llama-{args.shape}"
        t0 = time.perf_counter()
        params = build_parent(parent, args.shape, layers, args.tokenizer)
        build_s = time.perf_counter() - t0
        cfg = Config(
            model=str(parent),
            out=str(Path(tmp) / "gptq"),
            calibration=args.calibration,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            heldout_ja=args.heldout_ja,
            heldout_en=args.heldout_en,
            eval_samples=args.eval_samples if args.heldout_ja or args.heldout_en else 0,
        )
        t0 = time.perf_counter()
        run(cfg)
        stage_s = time.perf_counter() - t0
        metrics = json.loads((Path(tmp) / "gptq" / "metrics.json").read_text())

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    wall = metrics["wall_time_s"]
    per_layer = wall / layers
    quality = {
        lang: {k: v for k, v in q.items() if k.startswith(("kl_", "ppl_"))}
        for lang, q in metrics.get("quality", {}).items()
        if isinstance(q, dict) and "tokens" in q
    }
    result = {
        "shape": args.shape,
        "layers": layers,
        "parameters": params,
        "device": device,
        "calibration": f"{metrics['calibration']['sequences']} x {metrics['calibration']['seq_len']}",
        "wall_time_s": wall,
        "per_layer_s": round(per_layer, 3),
        "estimated_full_model_s": round(per_layer * full_layers, 1),
        "peak_gpu_memory_gb" if metrics["peak_memory_kind"].startswith("cuda") else "peak_rss_gb": metrics[
            "peak_memory_gb"
        ],
        "process_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "size_ratio": metrics["size"]["ratio"],
        "build_parent_s": round(build_s, 1),
        "stage_total_s": round(stage_s, 1),
        "quality_random_weights": quality,
    }
    print(f"\n{'youri quantize on ' + device:<40}")
    for key, value in result.items():
        if key != "quality_random_weights":
            print(f"  {key:<26} {value}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
