"""Japanese vocabulary extension (``youri vocab``) against the original Llama 2 and Llama 3 tokenizers, in one run.

    python benchmarks/vocab_efficiency.py          # curve N = 1k..16k, bpe and unigram; seq 256 x batch 8, 8 steps
    python benchmarks/vocab_efficiency.py --quick  # bpe, N = 16k only; seq 128 x batch 4, 3 steps (< 60 s)

Pieces are trained on the shared Wikipedia train split + the Aozora texts; Japanese characters per
token are measured on Wikipedia dev + test (held out), with SentencePiece, no BOS. The headline tokenizer
(``--new_pieces``, bpe) is written by ``youri.data.vocab.run`` and checked through its HF fast form:
English ids identical on Tiny Shakespeare. The curve takes, for each N, the first N pieces that
``select_new_pieces`` picks from one trainer run per method (for BPE this equals training with a smaller
vocabulary; for unigram it is the N best pieces of the largest model).

Training throughput: the same tiny Llama (apart from the vocabulary) trained with plain torch AdamW on
packed Japanese rows of the same sequence length and batch, tokenised with the original or the extended
tokenizer; characters/s = tokens/s x that tokenizer's characters per token on the training text. The
two models take turns step by step and each keeps its best step time after one warm-up step (the
machine is shared and noisy).

Byte-level BPE row: the Llama 3 tokenizer (``tokenizer.json``) extended by ``youri.data.vocab.run`` with the
same number of new tokens on the same training text; Japanese characters per token on the same held-out
text (``tokenizers``, no special tokens); English ids through ``AutoTokenizer`` on Tiny Shakespeare. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WIKI = SHARED / "wikipedia-annotated-corpus-ja"
TRAIN = [WIKI / "train.jsonl", SHARED / "aozora-bunko-ja" / "aozora_clean.jsonl"]
HELD_OUT = [WIKI / "dev.jsonl", WIKI / "test.jsonl"]
ENGLISH = SHARED / "tinyshakespeare-en" / "input.txt"
BASE = SHARED / "llama2-tokenizer" / "tokenizer.model"
BPE_BASE = SHARED / "llama3-tokenizer"


def byte_level_row(out: Path, new_pieces: int, held_out: list[str], english: str) -> dict:
    """Extend the Llama 3 tokenizer with ``youri vocab`` into ``out``; chars/token before and after, English ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from youri.data import bpe_vocab, vocab

    started = time.time()
    corpus = list(map(str, TRAIN))
    vocab.run(vocab.Config(base=str(BPE_BASE), corpus=corpus, new_pieces=new_pieces, out=str(out), check_docs=0))
    seconds = time.time() - started
    before = bpe_vocab.chars_per_token(Tokenizer.from_file(str(BPE_BASE / "tokenizer.json")), held_out)
    after = bpe_vocab.chars_per_token(Tokenizer.from_file(str(out / "tokenizer.json")), held_out)
    base_en, ext_en = (
        AutoTokenizer.from_pretrained(str(path), local_files_only=True)(english).input_ids for path in (BPE_BASE, out)
    )
    return {
        "base": "llama3",
        "new_pieces": new_pieces,
        "ja_chars_per_token_base": round(before, 4),
        "ja_chars_per_token_extended": round(after, 4),
        "en_ids_identical": base_en == ext_en,
        "vocab_run_seconds": round(seconds, 1),
    }


def curve(method: str, sizes: list[int], base, train_texts, held_out) -> list[dict]:
    from youri.data import vocab

    lines = list(vocab.training_lines(train_texts))
    chars = len(set().union(*map(set, lines)))
    started = time.time()
    trained = vocab.train_pieces(lines, method=method, vocab_size=chars + int(max(sizes) * 1.5) + 100)
    seconds = time.time() - started
    ranked = [piece for piece, _ in trained]
    rows = []
    for n in sizes:
        new = vocab.select_new_pieces((p.piece for p in base.pieces), ranked, n)
        cpt = vocab.chars_per_token(vocab.processor(vocab.extend_proto(base, new)), held_out)
        rows.append(
            {
                "method": method,
                "new_pieces": len(new),
                "ja_chars_per_token": round(cpt, 4),
                "train_seconds": round(seconds, 1),
            }
        )
    return rows


def trainee(tokenizer_dir: Path, texts: list[str], seq_len: int) -> dict:
    """A fresh tiny Llama for this tokenizer, its optimizer and ``texts`` packed into rows."""
    import torch

    from youri.model import load_tokenizer
    from youri.testing import random_llama

    tokenizer = load_tokenizer(tokenizer_dir)
    ids = [t for doc in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in (*doc, tokenizer.eos_token_id)]
    model = random_llama(
        len(tokenizer), hidden_size=128, intermediate_size=384, num_key_value_heads=4, max_position_embeddings=2048
    )
    config = model.config
    # Training FLOPs per token: 6 x the matmul parameters (all but the input embedding; the LM head of a
    # tiny model dominates) + causal attention scores, the usual estimate; noise-free, unlike the timing.
    matmul = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    flops = 6 * matmul + 6 * config.num_hidden_layers * config.hidden_size * seq_len
    return {
        "model": model,
        "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3),
        "times": [],
        "flops_per_token": flops,
        "rows": torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len),
        "vocab": len(tokenizer),
        "chars_per_token": sum(map(len, texts)) / len(ids),
    }


def train_step(run: dict, step: int, batch: int) -> None:
    rows = run["rows"][(step * batch) % (len(run["rows"]) - batch) :][:batch]
    started = time.perf_counter()
    loss = run["model"](input_ids=rows, labels=rows).loss
    loss.backward()
    run["optimizer"].step()
    run["optimizer"].zero_grad(set_to_none=True)
    run["times"].append(time.perf_counter() - started)
    run["loss"] = loss.item()


def throughput(tokenizer_dirs: list[Path], texts: list[str], steps: int, seq_len: int, batch: int) -> list[dict]:
    """Tokens/s and chars/s per tokenizer; steps alternate between the models so load noise hits both."""
    runs = [trainee(path, texts, seq_len) for path in tokenizer_dirs]
    for step in range(steps + 1):  # step 0 warms up allocators and kernels and is not counted
        for run in runs:
            train_step(run, step, batch)
    results = []
    for run in runs:
        tokens_per_s = batch * seq_len / min(run["times"][1:])
        results.append(
            {
                "vocab": run["vocab"],
                "tokens_per_s": round(tokens_per_s),
                "chars_per_token": round(run["chars_per_token"], 4),
                "chars_per_s": round(tokens_per_s * run["chars_per_token"]),
                "final_loss": round(run["loss"], 3),
                "flops_per_char": round(run["flops_per_token"] / run["chars_per_token"]),
            }
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="headline tokenizer only, 3 small timed steps (< 60 s)")
    parser.add_argument("--new_pieces", type=int, default=16000, help="size of the headline extended tokenizer")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 8, quick 3)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"needs the shared data folder {SHARED}", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from youri.data import vocab

    base = vocab.load_proto(BASE)
    train_texts = list(vocab.iter_corpus_texts(map(str, TRAIN)))
    held_out = list(vocab.iter_corpus_texts(map(str, HELD_OUT)))
    sizes = [1000, 2000, 4000, 8000, 12000, 16000]
    methods = [] if args.quick else ["bpe", "unigram"]  # --quick: only the headline point, from the run below
    rows = [row for method in methods for row in curve(method, sizes, base, train_texts, held_out)]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "vocab"
        started = time.time()
        vocab.run(
            vocab.Config(
                base=str(BASE), corpus=list(map(str, TRAIN)), new_pieces=args.new_pieces, out=str(out), check_docs=0
            )
        )
        run_seconds = time.time() - started
        extended = vocab.processor(vocab.load_proto(out / "tokenizer.model"))
        english = ENGLISH.read_text(encoding="utf-8")
        en_identical = (
            AutoTokenizer.from_pretrained(str(out), local_files_only=True)(english)["input_ids"]
            == AutoTokenizer.from_pretrained(str(BASE.parent), local_files_only=True)(english)["input_ids"]
        )
        base_cpt = vocab.chars_per_token(vocab.processor(base), held_out)
        ext_cpt = vocab.chars_per_token(extended, held_out)
        if args.quick:
            rows.append({"method": "bpe", "new_pieces": args.new_pieces, "ja_chars_per_token": round(ext_cpt, 4)})
        steps = args.steps or (3 if args.quick else 8)
        shape = {"seq_len": 128, "batch": 4} if args.quick else {"seq_len": 256, "batch": 8}
        speed_texts = held_out + train_texts[:400]  # the same Japanese text for both tokenizers
        speed_base, speed_ext = throughput([BASE.parent, out], speed_texts, steps, **shape)
        llama3 = byte_level_row(Path(tmp) / "vocab-llama3", args.new_pieces, held_out, english)

    print(f"\n{'method':<9}{'new pieces':>11}{'ja chars/token':>16}{'vs base':>9}")
    print(f"{'base':<9}{0:>11}{base_cpt:>16.3f}{1:>9.2f}")
    for row in rows:
        print(
            f"{row['method']:<9}{row['new_pieces']:>11}{row['ja_chars_per_token']:>16.3f}"
            f"{row['ja_chars_per_token'] / base_cpt:>9.2f}"
        )
    print(f"\nyouri vocab run (N={args.new_pieces}, bpe): {run_seconds:.1f} s; English ids identical: {en_identical}")
    llama2 = {
        "new_pieces": args.new_pieces,
        "ja_chars_per_token_base": base_cpt,
        "ja_chars_per_token_extended": ext_cpt,
        "en_ids_identical": en_identical,
        "vocab_run_seconds": run_seconds,
    }
    header = f"{'new tokens':>11}{'ja chars/token':>16}{'extended':>10}{'ratio':>7}{'EN ids same':>13}{'run s':>7}"
    print(f"\n{'base tokenizer':<26}{header}")
    for name, row in (("Llama 2 (SentencePiece)", llama2), ("Llama 3 (byte-level BPE)", llama3)):
        before, after = row["ja_chars_per_token_base"], row["ja_chars_per_token_extended"]
        print(
            f"{name:<26}{row['new_pieces']:>11}{before:>16.3f}{after:>10.3f}{after / before:>7.2f}"
            f"{str(row['en_ids_identical']):>13}{row['vocab_run_seconds']:>7.1f}"
        )
    print(
        f"\ntiny Llama (hidden 128, 2 layers), seq_len {shape['seq_len']}, batch {shape['batch']}, "
        f"best of {steps} AdamW steps"
    )
    print(f"{'tiny Llama training':<22}{'vocab':>7}{'tokens/s':>10}{'chars/token':>13}{'chars/s':>10}")
    for name, speed in (("original tokenizer", speed_base), ("extended tokenizer", speed_ext)):
        print(
            f"{name:<22}{speed['vocab']:>7}{speed['tokens_per_s']:>10,}{speed['chars_per_token']:>13.3f}"
            f"{speed['chars_per_s']:>10,}"
        )
    speedup = speed_ext["chars_per_s"] / speed_base["chars_per_s"]
    flops_ratio = speed_base["flops_per_char"] / speed_ext["flops_per_char"]
    print(
        f"ratio extended / original: chars/token {ext_cpt / base_cpt:.2f}x, training chars/s {speedup:.2f}x "
        f"measured, {flops_ratio:.2f}x expected from training FLOPs per character"
    )
    print(
        json.dumps(
            {
                "benchmark": "vocab_efficiency",
                "quick": args.quick,
                "ja_chars_per_token_base": round(base_cpt, 4),
                "ja_chars_per_token_extended": round(ext_cpt, 4),
                "chars_per_token_ratio": round(ext_cpt / base_cpt, 3),
                "new_pieces": args.new_pieces,
                "en_ids_identical": en_identical,
                "vocab_run_seconds": round(run_seconds, 1),
                "train_chars_per_s_base": speed_base["chars_per_s"],
                "train_chars_per_s_extended": speed_ext["chars_per_s"],
                "train_chars_per_s_ratio": round(speedup, 3),
                "train_chars_per_flop_ratio": round(flops_ratio, 3),
                "train_shape": shape,
                "throughput": {"base": speed_base, "extended": speed_ext},
                "curve": rows,
                "llama3": llama3,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
