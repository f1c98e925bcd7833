"""GGUF quality: youri export's GGUF files run by llama.cpp vs the fp model and vs youri's GPTQ twin.

    python benchmarks/gguf_quality.py            # hidden 256, 2 layers, 300 steps, 32 held-out rows
    python benchmarks/gguf_quality.py --quick    # hidden 256, 2 layers, 60 steps, 8 held-out rows

1. Trains a SentencePiece BPE tokenizer (youri init's settings, byte fallback) and a tiny Llama on the shared
   Wikipedia + Aozora Japanese text (KL is meaningless on random weights).
2. ``youri quantize`` (GPTQ 4 bit, group 128) on training rows; KL(fp ‖ GPTQ) with youri's runtime.
3. ``youri export`` of the fp model as f16, q8_0, q4_0 (round-to-nearest) and of the GPTQ twin as f16
   (dequantised) and q4_0 (its codes and scales as Q4_0 blocks: lossless); each file is run by llama.cpp
   (node-llama-cpp's prebuilt binaries) on the held-out Wikipedia test rows; KL(fp ‖ GGUF) per file against
   the fp model run by youri (torch), with argmax agreement and perplexity.
4. llama.cpp's own noise floor: KL(the twin in fp32 ‖ the twin's GGUFs in llama.cpp), the same weights in two
   runtimes (llama.cpp rounds the activations to 8 bits in its Q4_0/Q8_0 CPU matmuls, to f16 in F16 ones).
5. Size: each GGUF file against the f16 GGUF.

Targets: q8_0 KL <= 1e-3; the 4-bit GGUF within 2x of the GPTQ twin's KL. The 4-bit GGUF is ``kl_q4``: the
GPTQ twin exported to q4_0, the file youri users get from the pipeline (``kl_q4_from_fp`` is plain RTN
q4_0 of the fp model, for comparison). ``ratio_q4_vs_gptq`` divides it by the twin's KL in youri's runtime;
``ratio_q4_vs_gptq_llamacpp`` by the twin's KL in llama.cpp (its f16 GGUF: same runtime, like for like).
Last stdout line: one JSON object with kl_q8_0, kl_q4, kl_gptq, size_ratio_q4 and the rest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from gptq_quality import SHARED, train_tiny_llama, write_data_folder

from youri.model import load_model
from youri.quant.export import Config as ExportConfig
from youri.quant.export import run as export
from youri.quant.llamacpp import next_token_agreement, run_llama_cpp, runtime_missing, runtime_name
from youri.quant.quantize import Config as QuantizeConfig
from youri.quant.quantize import run as quantize
from youri.runtime.quant_linear import prepare_kernels
from youri.train.init_base import train_tokenizer

TYPES = ("f16", "q8_0", "q4_0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and rows, <= 60 s on an idle machine")
    parser.add_argument("--workdir", default="", help="keep the models here (default: a temporary folder)")
    args = parser.parse_args()
    size = dict(
        hidden=256,
        inter=768,
        layers=2,
        steps=60 if args.quick else 300,
        seq=64 if args.quick else 128,
        calib=32 if args.quick else 128,
        heldout=8 if args.quick else 32,
    )
    missing = runtime_missing()
    if missing:
        print(f"gguf_quality: {missing}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(args.workdir or tmp), size, missing)
    table(result)
    print(json.dumps(result))


def texts(path: Path, limit: int) -> list[str]:
    out, total = [], 0
    for line in path.open(encoding="utf-8"):
        out.append(json.loads(line)["text"])
        total += len(out[-1])
        if total >= limit:
            break
    return out


def rows_of(tokenizer, docs: list[str], seq: int) -> torch.Tensor:
    ids = [t for doc in docs for t in (*tokenizer(doc, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)]
    return torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)


def run(work: Path, size: dict, missing: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    budget = size["steps"] * 8 * size["seq"] * 2  # characters: about one pass over the training tokens
    train_docs = texts(SHARED / "wikipedia-annotated-corpus-ja" / "train.jsonl", budget // 2) + texts(
        SHARED / "aozora-bunko-ja" / "aozora_clean.jsonl", budget // 2
    )
    tok_dir = work / "tokenizer"
    tokenizer = train_tokenizer(train_docs, 4096, tok_dir)
    train_rows = rows_of(tokenizer, train_docs, size["seq"])
    heldout = rows_of(tokenizer, texts(SHARED / "wikipedia-annotated-corpus-ja" / "test.jsonl", 400_000), size["seq"])[
        : size["heldout"]
    ]
    size = {**size, "vocab": len(tokenizer)}
    parent = train_tiny_llama(work / "parent", tokenizer, train_rows, size)
    shutil.copy(tok_dir / "tokenizer.model", parent / "tokenizer.model")
    data = write_data_folder(
        work / "data", train_rows[: size["calib"]], heldout, len(tokenizer), tokenizer.eos_token_id
    )
    twin = quantize(
        QuantizeConfig(
            model=str(parent),
            out=str(work / "gptq"),
            calibration=str(data),
            heldout_ja=str(data),
            num_samples=size["calib"],
            seq_len=size["seq"],
            eval_samples=0,
            device="cpu",
        ),
        overwrite=True,
    )
    rows = heldout.tolist()
    fp, gptq = load_model(parent, dtype=torch.float32), load_model(twin, dtype=torch.float32)
    with torch.no_grad():
        reference = [torch.log_softmax(fp(torch.tensor([r])).logits[0], -1).numpy() for r in rows]
        twin_logp = [torch.log_softmax(gptq(torch.tensor([r])).logits[0], -1).numpy() for r in rows]
        prepare_kernels(gptq, use_kernel=False)  # the twin's exact weights in fp32: no bf16 int4 matmul
        exact_logp = [torch.log_softmax(gptq(torch.tensor([r])).logits[0], -1).numpy() for r in rows]
    result = {
        "model": f"hidden {size['hidden']}, {size['layers']} layers, vocab {len(tokenizer)}, "
        f"{size['steps']} steps on Wikipedia+Aozora ja",
        "heldout_rows": len(rows),
        "gptq": next_token_agreement(reference, twin_logp, rows),
        "gptq_exact": next_token_agreement(reference, exact_logp, rows),
        "runtime": missing or runtime_name(),
    }
    files = {}
    for kind in TYPES:
        folder = export(
            ExportConfig(model=str(parent), out=str(work / f"gguf-{kind}"), type=kind, eval_samples=0), overwrite=True
        )
        files[kind] = folder / f"parent-{kind}.gguf"
    for kind in ("f16", "q4_0"):  # the GPTQ twin in llama.cpp: as is (f16) and as the 4-bit file users run
        folder = export(
            ExportConfig(model=str(twin), out=str(work / f"gguf-gptq-{kind}"), type=kind, eval_samples=0),
            overwrite=True,
        )
        files[f"gptq_{kind}"] = folder / f"gptq-{kind}.gguf"
        result[f"gptq_{kind}_source"] = json.loads((folder / "metrics.json").read_text())["source"]
    f16_bytes = files["f16"].stat().st_size
    for kind, path in files.items():
        entry = {"bytes": path.stat().st_size, "size_ratio": round(path.stat().st_size / f16_bytes, 4)}
        if not missing:
            scored = run_llama_cpp(path, rows=rows).logprobs
            entry.update(next_token_agreement(reference, scored, rows))
            if kind.startswith("gptq_"):  # llama.cpp's noise floor: the twin's weights in fp32 vs in llama.cpp
                entry["kl_vs_youri_twin"] = next_token_agreement(exact_logp, scored, rows)["kl"]
        result[kind] = entry
    result.update(summary(result, twin, parent))
    return result


def summary(result: dict, twin: Path, parent: Path) -> dict:
    kl = lambda kind: result[kind].get("kl")  # noqa: E731
    out = {
        "kl_f16": kl("f16"),
        "kl_q8_0": kl("q8_0"),
        "kl_q4": kl("gptq_q4_0"),  # the target's 4-bit GGUF: the GPTQ twin as q4_0 (lossless from its codes)
        "kl_q4_from_gptq": kl("gptq_q4_0"),
        "kl_q4_from_fp": kl("q4_0"),
        "q4_type": "q4_0",
        "kl_gptq": result["gptq"]["kl"],
        "kl_gptq_exact": result["gptq_exact"]["kl"],
        "kl_gptq_gguf_llamacpp": kl("gptq_f16"),
        "llamacpp_floor_f16": result["gptq_f16"].get("kl_vs_youri_twin"),
        "llamacpp_floor_q4_0": result["gptq_q4_0"].get("kl_vs_youri_twin"),
        "size_ratio_q4": result["gptq_q4_0"]["size_ratio"],
        "size_ratio_q4_from_fp": result["q4_0"]["size_ratio"],
        "size_ratio_q8_0": result["q8_0"]["size_ratio"],
        "gptq_bytes_ratio": round(
            sum(p.stat().st_size for p in twin.glob("*.safetensors"))
            / sum(p.stat().st_size for p in parent.glob("*.safetensors"))
            * 2,
            4,
        ),
    }
    if out["kl_q4"] is not None:
        out["ratio_q4_vs_gptq"] = round(out["kl_q4"] / out["kl_gptq"], 3)
        out["ratio_q4_vs_gptq_llamacpp"] = round(out["kl_q4"] / out["kl_gptq_gguf_llamacpp"], 3)
        out["targets_met"] = out["kl_q8_0"] <= 1e-3 and out["ratio_q4_vs_gptq"] <= 2.0
    return out


def table(r: dict) -> None:
    print(f"\nGGUF quality on {r['model']} ({r['heldout_rows']} held-out Wikipedia rows); runtime: {r['runtime']}")
    print(f"{'model':<34}{'KL(fp || q)':>13}{'ppl':>10}{'argmax':>9}{'size / f16':>12}{'KL(twin || q)':>15}")
    for key, label in (("gptq", "GPTQ twin, youri runtime (int4)"), ("gptq_exact", "GPTQ twin, fp32 dequantised")):
        g = r[key]
        print(
            f"{label:<34}{g['kl']:>13.3e}{g['ppl']:>10.2f}{g['argmax_agreement']:>9.3f}{r['gptq_bytes_ratio']:>12.3f}"
        )
    labels = {
        "f16": "fp -> GGUF f16",
        "q8_0": "fp -> GGUF q8_0",
        "q4_0": "fp -> GGUF q4_0 (RTN)",
        "gptq_f16": "GPTQ twin -> GGUF f16",
        "gptq_q4_0": "GPTQ twin -> GGUF q4_0 (lossless)",
    }
    for kind, label in labels.items():
        e = r[kind]
        floor = f"{e['kl_vs_youri_twin']:>15.3e}" if "kl_vs_youri_twin" in e else ""
        if "kl" in e:
            print(
                f"{label:<34}{e['kl']:>13.3e}{e['ppl']:>10.2f}{e['argmax_agreement']:>9.3f}{e['size_ratio']:>12.3f}"
                + floor
            )
        else:
            print(f"{label:<34}{'n/a':>13}{'':>10}{'':>9}{e['size_ratio']:>12.3f}")
    print("(GGUF rows: the file run by llama.cpp; KL(twin || q): against the twin's fp32 dequantised run in torch)")
    if "targets_met" in r:
        print(
            f"q8_0 KL {r['kl_q8_0']} (target <= 1e-3); 4-bit GGUF (twin -> q4_0) KL / GPTQ twin KL: "
            f"{r['ratio_q4_vs_gptq']} (youri runtime; target <= 2), {r['ratio_q4_vs_gptq_llamacpp']} (twin in "
            "llama.cpp too)\n"
        )


if __name__ == "__main__":
    main()
