"""Throughput of ``youri data`` against a bare batch-encode with the same tokenizer, in one process.

    python benchmarks/data_throughput.py            # the shared corpora (ja Wikipedia + Aozora + Tiny Shakespeare)
    python benchmarks/data_throughput.py --quick    # Wikipedia + a slice of Tiny Shakespeare, one repeat (< 60 s)

youri: the whole ``youri.data.corpus.run`` (read, normalise, filter, tokenise, MinHash, dedup, mix, pack,
write shards + report) on the sources. Reference: ``tokenizer(texts, add_special_tokens=False)`` on
exactly the normalised documents that pass the filters, i.e. the text youri tokenises. Both measured
after imports, with the same tokenizer folder (youri's run copies it into its output and loads it,
which is counted against it; the reference's tokenizer is loaded before its timing). Tokens/s =
tokens of that text / wall time; best of N alternating repeats (the machine is shared and noisy).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sources(quick: bool, tmp: Path) -> list[dict]:
    if not SHARED.is_dir():  # the shipped samples still give a (small) comparison
        return [
            {"path": "builtin:corpus_ja.jsonl", "lang": "ja", "weight": 9},
            {"path": "builtin:corpus_en.txt", "lang": "en", "weight": 1},
        ]
    wiki = {"path": str(SHARED / "wikipedia-annotated-corpus-ja/train.jsonl"), "lang": "ja", "weight": 2}
    english = SHARED / "tinyshakespeare-en/input.txt"
    if quick:
        piece = tmp / "shakespeare_quarter.txt"
        text = english.read_text(encoding="utf-8")
        piece.write_text(text[: len(text) // 4], encoding="utf-8")
        return [wiki, {"path": str(piece), "lang": "en", "weight": 1}]
    return [
        wiki,
        {"path": str(SHARED / "aozora-bunko-ja/aozora_clean.jsonl"), "lang": "ja", "weight": 7},
        {"path": str(english), "lang": "en", "weight": 1},
    ]


def filtered_texts(cfg, tmp: Path) -> list[str]:
    """The normalised documents that pass the filters: what youri's tokenise step sees."""
    from youri.data.steps import Normalize, QualityFilter, ReadSources

    work = str(tmp / "reference-work")
    steps = ReadSources(cfg.sources, work), Normalize(), QualityFilter(cfg.sources, cfg.filters, cfg.dedup, work)
    data = None
    for step in steps:
        data = step.run(data)
    return [doc.text for doc in data]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller corpus, one repeat (< 60 s)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 1)")
    parser.add_argument("--tokenizer", default=str(SHARED / "llama2-tokenizer"), help="tokenizer folder or file")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)

    from youri.config import build_config
    from youri.data.corpus import Config, run
    from youri.model import load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="youri-bench-"))
    try:
        # A bare tokenizer.model is converted to a fast tokenizer.json once (seconds for Llama 2), as it is
        # in any HF model folder; both sides then load that same folder.
        tokenizer = load_tokenizer(args.tokenizer)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        cfg = build_config(
            Config,
            {
                "out": str(tmp / "out"),
                "tokenizer": str(tmp / "tokenizer"),
                "seq_len": 512,
                "sources": sources(args.quick, tmp),
            },
        )
        texts = filtered_texts(cfg, tmp)
        youri_s, ref_s, youri_cpu, ref_cpu, tokens = [], [], [], [], 0
        for _ in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            ref_s.append(time.perf_counter() - start)
            ref_cpu.append(time.process_time() - cpu)
            tokens = sum(map(len, ids))
            del ids
            start, cpu = time.perf_counter(), time.process_time()
            run(cfg, overwrite=True)
            youri_s.append(time.perf_counter() - start)
            youri_cpu.append(time.process_time() - cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    youri_tps, ref_tps = tokens / min(youri_s), tokens / min(ref_s)
    print(f"\n{'':<34}{'seconds (best)':>16}{'tokens/s':>14}")
    print(f"{'youri data (whole pipeline)':<34}{min(youri_s):>16.3f}{youri_tps:>14,.0f}")
    print(f"{'tokenizer(batch) (reference)':<34}{min(ref_s):>16.3f}{ref_tps:>14,.0f}")
    cpu_ratio = min(ref_cpu) / min(youri_cpu)
    print(
        f"ratio youri / reference: {youri_tps / ref_tps:.3f} (target >= 0.9); by CPU seconds of this process "
        f"(all threads; robust to a busy machine): {cpu_ratio:.3f}"
    )
    print(f"{len(texts):,} documents, {sum(map(len, texts)):,} characters, {tokens:,} tokens, {repeats} repeat(s)")
    print(
        json.dumps(
            {
                "benchmark": "data_throughput",
                "quick": args.quick,
                "documents": len(texts),
                "tokens": tokens,
                "youri_tokens_per_s": round(youri_tps, 1),
                "reference_tokens_per_s": round(ref_tps, 1),
                "youri_seconds": [round(s, 3) for s in youri_s],
                "reference_seconds": [round(s, 3) for s in ref_s],
                "youri_cpu_seconds": [round(s, 3) for s in youri_cpu],
                "reference_cpu_seconds": [round(s, 3) for s in ref_cpu],
                "cpu_ratio": round(cpu_ratio, 4),
                "ratio": round(youri_tps / ref_tps, 4),
                "target": 0.9,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
