"""``youri serve``'s prefix cache: a 1k-token persona (設定) re-sent with 16 different user turns.

    python benchmarks/prefix_cache.py            # tiny random Llama (hidden 256, 4 layers), 16 turns, 3 repeats
    python benchmarks/prefix_cache.py --quick    # 6 turns, one repeat (< 60 s)
    python benchmarks/prefix_cache.py --model runs/demo/sft_chat --device cuda

Two servers, the same ``youri serve`` app and model, ``--prefix_cache_tokens 8192`` against ``0`` (the
reference: every prompt computed whole). Each sends one warm-up request with the persona, then the 16
turns one after another (streamed, greedy, 8 tokens each) and records the time to the first streamed
token (TTFT) of each. Exactness: both servers' replies must be identical. Last line: one JSON object
(``ttft_ratio`` = mean TTFT without the cache / with it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_model(out: Path) -> Path:
    from youri.testing import save_random_llama

    return save_random_llama(
        out,
        SHARED / "llama2-tokenizer",
        chat_template="chat",
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        max_position_embeddings=2048,
    )


def persona(tokens: int, tokenizer) -> str:
    """A Japanese persona text of about ``tokens`` tokens."""
    line = "あなたは京都の老舗旅館「松風」の女将です。お客様には丁寧な京言葉で、季節の料理と庭の話を交えて答えます。"
    text = ""
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text += line
    return text


def ask(url: str, system: str, user: str) -> tuple[float, str]:
    body = {
        "model": "bench",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    start, first, text = time.perf_counter(), None, ""
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                first = first or time.perf_counter() - start
                text += delta
    return first or time.perf_counter() - start, text


def measure(model: str, device: str, cache_tokens: int, system: str, turns: list[str], repeats: int) -> dict:
    from youri.serve.server import Config, build_server, running

    cfg = Config(model=model, port=0, device=device, served_model_name="bench", prefix_cache_tokens=cache_tokens)
    server = build_server(cfg)
    best = None
    with running(cfg, server) as url:
        ask(url, system, "こんにちは")  # warm-up: with the cache, this computes and stores the persona
        for _ in range(repeats):
            results = [ask(url, system, turn) for turn in turns]
            ttft = [r[0] for r in results]
            if best is None or statistics.mean(ttft) < statistics.mean(best["ttft"]):
                best = {"ttft": ttft, "texts": [r[1] for r in results]}
    cache = server.engine.prefix_cache
    best["hits"] = cache.stats["hits"] if cache else 0
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 turns, one repeat (< 60 s)")
    parser.add_argument("--model", help="model folder (default: a tiny random Llama with the Llama 2 tokenizer)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--persona_tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared CPU)")
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    turns = [
        f"質問{i}: " + q for i, q in enumerate(["おすすめの料理は?", "庭の見頃は?", "近くの寺は?", "温泉はある?"] * 4)
    ]
    turns, repeats = (turns[:8], 1) if args.quick else (turns, 3)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_model(Path(tmp) / "tiny-chat"))
        system = persona(args.persona_tokens, AutoTokenizer.from_pretrained(model))
        cached = measure(model, args.device, 8192, system, turns, repeats)
        plain = measure(model, args.device, 0, system, turns, repeats)
    ratio = statistics.mean(plain["ttft"]) / statistics.mean(cached["ttft"])
    same = cached["texts"] == plain["texts"]
    print(f"{args.persona_tokens}-token persona + {len(turns)} user turns, model {args.model or 'tiny random Llama'}")
    print(f"{'mode':<34}{'TTFT mean ms':>14}{'TTFT p50 ms':>13}{'cache hits':>12}")
    for label, r in (("youri serve, prefix cache", cached), ("youri serve, no cache (reference)", plain)):
        ttft = sorted(r["ttft"])
        print(f"{label:<34}{1000 * statistics.mean(ttft):>14.1f}{1000 * ttft[len(ttft) // 2]:>13.1f}{r['hits']:>12}")
    print(f"TTFT ratio (no cache / cache): {ratio:.1f}x; replies identical: {same}")
    print(
        json.dumps(
            {
                "persona_tokens": args.persona_tokens,
                "turns": len(turns),
                "device": args.device,
                "ttft_cached_ms": round(1000 * statistics.mean(cached["ttft"]), 2),
                "ttft_uncached_ms": round(1000 * statistics.mean(plain["ttft"]), 2),
                "ttft_ratio": round(ratio, 2),
                "cache_hits": cached["hits"],
                "identical_replies": same,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
