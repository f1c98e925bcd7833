"""``youri serve`` under 16 concurrent clients: dynamic batching vs one request at a time, in one run.

    python benchmarks/serve_concurrency.py                  # tiny random Llama (hidden 256, 4 layers), 64 tokens
    python benchmarks/serve_concurrency.py --quick          # same model, 24 tokens, one repeat (< 60 s)
    python benchmarks/serve_concurrency.py --model runs/demo/sft_chat --device cuda

Both servers are the same ``youri serve`` app on 127.0.0.1 (random port), the same model and the same
16 greedy chat requests (different prompts, ``max_tokens`` fixed), sent by 16 client threads at once
over HTTP; the reference is ``--max_batch_size 1`` (each request served alone, the others queued).
Throughput = completion tokens (from ``usage``) / wall time of the whole burst; latency = per-request
time to the full answer. Best of N repeats per mode (the machine is shared). On CPU both modes use
``--threads`` torch threads (default 1: on a shared, oversubscribed CPU, OpenMP spin-waits make tiny
matmuls ~50x slower with 2 threads). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_model(out: Path) -> Path:
    from youri.testing import save_random_llama

    hidden = 256  # hidden 64 would be lm_head-bound: batching then saves little on a CPU
    return save_random_llama(
        out,
        SHARED / "llama2-tokenizer",
        chat_template="chat",
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=4,
    )


FEATURES = {"logprobs": True, "top_logprobs": 5, "stop": ["。。。。", "\n\n\n"]}
"""``--features``: what each request adds (per-token logprobs with 5 alternatives, two stop strings)."""


def burst(url: str, name: str, clients: int, max_tokens: int, extra: dict | None = None) -> dict:
    """``clients`` concurrent chat requests; tokens/s over the burst and per-request latencies."""
    latencies, tokens = [0.0] * clients, [0] * clients

    def ask(i: int) -> None:
        body = {
            "model": name,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [
                {"role": "system", "content": "あなたは親切なアシスタントです。"},
                {"role": "user", "content": f"質問 {i}: 日本の首都について" + "教えて" * (i % 5)},
            ],
            **(extra or {}),
        }
        request = urllib.request.Request(
            url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            tokens[i] = json.loads(response.read())["usage"]["completion_tokens"]
        latencies[i] = time.perf_counter() - start

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "tokens": sum(tokens),
        "wall_s": wall,
        "tokens_per_s": sum(tokens) / wall,
        "latency_mean_s": statistics.mean(latencies),
        "latency_p50_s": ordered[len(ordered) // 2],
        "latency_max_s": ordered[-1],
        "complete": all(t > 0 for t in tokens),
    }


def measure(model: str, device: str, batch: int, args) -> dict:
    from youri.serve.server import Config, running

    cfg = Config(model=model, port=0, max_batch_size=batch, device=device, served_model_name="bench")
    with running(cfg) as url:
        burst(url, "bench", 2, 4)  # warm-up
        extra = FEATURES if args.features else None
        runs = [burst(url, "bench", args.clients, args.max_tokens, extra) for _ in range(args.repeats)]
    return max(runs, key=lambda r: r["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short answers, one repeat (< 60 s)")
    parser.add_argument("--model", help="model folder (default: a tiny random Llama with the Llama 2 tokenizer)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max_tokens", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--features", action="store_true", help="requests with logprobs (top 5) and stop strings")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both modes (1: tiny matmuls on a shared CPU spin-wait otherwise)",
    )
    args = parser.parse_args()
    if args.device == "cpu":
        import torch

        torch.set_num_threads(args.threads)
    args.max_tokens = args.max_tokens or (24 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_model(Path(tmp) / "tiny-chat"))
        batched = measure(model, args.device, args.clients, args)
        sequential = measure(model, args.device, 1, args)
    ratio = batched["tokens_per_s"] / sequential["tokens_per_s"]
    print(
        f"{args.clients} concurrent clients, {args.max_tokens} greedy tokens each, model "
        f"{args.model or 'tiny random Llama'} on {args.device}"
        + (", requests with logprobs + stop strings" if args.features else "")
        + ", prefix cache and metrics on"
        + (f", {args.threads} torch thread(s)" if args.device == "cpu" else "")
    )
    print(f"{'mode':<28}{'tokens/s':>10}{'wall s':>9}{'lat mean':>10}{'lat p50':>9}{'lat max':>9}")
    for label, r in (("youri serve (batched)", batched), ("one at a time (batch 1)", sequential)):
        print(
            f"{label:<28}{r['tokens_per_s']:>10.1f}{r['wall_s']:>9.2f}{r['latency_mean_s']:>10.2f}"
            f"{r['latency_p50_s']:>9.2f}{r['latency_max_s']:>9.2f}"
        )
    print(f"throughput ratio batched/sequential: {ratio:.2f}x")
    print(
        json.dumps(
            {
                "clients": args.clients,
                "max_tokens": args.max_tokens,
                "device": args.device,
                "features": args.features,
                "threads": args.threads if args.device == "cpu" else None,
                "batched_tokens_per_s": round(batched["tokens_per_s"], 2),
                "sequential_tokens_per_s": round(sequential["tokens_per_s"], 2),
                "ratio": round(ratio, 2),
                "batched_latency_mean_s": round(batched["latency_mean_s"], 3),
                "sequential_latency_mean_s": round(sequential["latency_mean_s"], 3),
                "batched_latency_max_s": round(batched["latency_max_s"], 3),
                "sequential_latency_max_s": round(sequential["latency_max_s"], 3),
                "all_complete": batched["complete"] and sequential["complete"],
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
