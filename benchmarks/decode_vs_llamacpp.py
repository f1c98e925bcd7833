"""CPU decode against llama.cpp on the very same 4-bit weights: the home-PC yardstick.

    python benchmarks/decode_vs_llamacpp.py            # the 1.1B Llama shape (22 layers), 128 + 128 tokens
    python benchmarks/decode_vs_llamacpp.py --quick    # 4 of its 22 layers, 64 + 32 tokens (< 60 s idle)

1. The ``decode_speed`` model: TinyLlama's 1.1B shape (hidden 2048, intermediate 5632, GQA 32/4, vocabulary 32000,
   random N(0, 0.02) weights), its GPTQ twin (4 bit, group 128, symmetric, in order; round-to-nearest codes in
   GPTQ v1 format -- the GPTQ solve does not change speed) written as a youri GPTQ folder.
2. ``youri export --type q4_0`` of the twin: its codes become Q4_0 blocks unchanged (lossless), the LM head F16
   and the embedding Q8_0 (``youri.quant.gguf_writer``).
3. The same prompt ids (128 tokens; ``--quick`` 64) through youri's engine (the twin loaded by ``youri.model``,
   int4 kernel) and through llama.cpp (node-llama-cpp's prebuilt CPU binaries, ``youri.quant.llamacpp``), greedy,
   eos ignored, at 1 and 2 threads, runs interleaved, one warm-up each, best of N: prompt processing = prompt
   tokens / time to the first new token; generation = the other new tokens / the time after it (wall clock).
4. The machine's read bandwidth (a streaming sum over 1 GiB with torch at the same thread count) and the fraction
   of it each runtime reaches: weight bytes read per generated token (every matrix but the embedding, which is
   a row gather) x tokens/s.

Greedy tokens: youri's are checked against Hugging Face ``generate`` on the same twin (every row; where they part,
the token index and HF's own top-2 logit margin there are printed: on a random 22-layer model a near-tie within
youri's ~8e-4 logit distance from HF's forward can occur in 128 tokens); llama.cpp's
are shown against youri's (its CPU matmuls round activations to 8 bits, so on random weights they may part).
Last stdout line: one JSON object with ``gen_ratio_1t``, ``gen_ratio_2t``, ``prefill_ratio_1t``,
``bandwidth_fraction_youri``, ``bandwidth_fraction_llamacpp`` (ratios: youri / llama.cpp).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch
from decode_speed import LLAMA_1B, SHARED, big_llama
from gguf import GGUFReader

from youri.families import linear_shapes
from youri.model import load_model, load_tokenizer
from youri.quant.export import Config as ExportConfig
from youri.quant.export import run as export
from youri.quant.gptq import rtn_quantize
from youri.quant.llamacpp import bench_llama_cpp, runtime_missing, runtime_name
from youri.quant.quantize import Config as QuantizeConfig
from youri.quant.quantize import write_gptq_folder
from youri.runtime import kernels
from youri.runtime.gptq_format import pack
from youri.runtime.quant_linear import QuantLinear, kernel_summary
from youri.serve.engine import Engine, SamplingParams


def write_twin(model, tokenizer, folder: Path) -> None:
    """The model as a youri GPTQ folder: 4-bit g128 RTN codes for every decoder projection, fp16 elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    projections = set(linear_shapes(model.config.to_dict()))
    packed = {
        name: pack(*rtn_quantize(module.weight.data, bits=4, group_size=128), 4)
        for name, module in model.named_modules()
        if name.split(".", 3)[-1] in projections
    }
    write_gptq_folder(folder, model, packed, QuantizeConfig(bits=4, group_size=128), tokenizer, model.config.to_dict())
    shutil.copy(SHARED / "llama2-tokenizer" / "tokenizer.model", folder)  # GGUF export reads the SentencePiece model


def time_youri(engine: Engine, prompt: list[int], new: int) -> tuple[float, float, list[int]]:
    """(seconds to the first new token, seconds for the rest, the tokens) for one greedy request."""
    events = []
    request = engine.submit(prompt, SamplingParams(temperature=0, max_new_tokens=new), events.append)
    start = time.perf_counter()
    engine.step()  # the prefill step: the whole prompt, then the first token
    first = time.perf_counter()
    while not request.done:
        engine.step()
    return first - start, time.perf_counter() - first, list(request.generated)


def hf_greedy(model, prompt: list[int], new: int, pad: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
            eos_token_id=None, pad_token_id=pad,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def divergence(model, prompt: list[int], hf_tokens: list[int], tokens: list[int]) -> dict | None:
    """None when ``tokens`` are HF's; else where they first part and HF's own top-2 logit margin there (a near-tie,
    below the ~1e-3 by which any two fp32 summation orders of an activation-rounding kernel move 22 layers' logits,
    is not a wrong token)."""
    at = next((i for i, (a, b) in enumerate(zip(tokens, hf_tokens)) if a != b), None)
    if at is None:
        return None
    with torch.inference_mode():
        top = model(torch.tensor([prompt + hf_tokens[:at]])).logits[0, -1].float().topk(2).values
    return {"first_difference": at, "hf_top2_margin": round(float(top[0] - top[1]), 6)}


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a streaming read (torch sum over ``gib`` GiB of fp32) with ``threads`` threads, best of N."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return data.numel() * 4 / best


def weight_bytes_youri(model) -> int:
    """Bytes the engine reads per generated token: each GPTQ layer in its kernel's format (codes, fp32 scales),
    the LM head as the decoder runs it (its fp16 copy when exact: ``youri.serve.decoder._lm_head``), the norms."""
    total = 0
    for module in model.modules():
        if isinstance(module, QuantLinear) and module.kernel_weight is not None:
            weight = module.kernel_weight
            total += weight.packed.numel() * weight.packed.element_size() + weight.scales_and_zeros.numel() * 4
        elif isinstance(module, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in module.buffers())
        elif "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
            total += module.weight.numel() * module.weight.element_size()
    head = model.get_output_embeddings().weight
    return total + head.numel() * (2 if kernels.half_weight(head) is not None else head.element_size())


def weight_bytes_gguf(path: Path) -> int:
    """Bytes llama.cpp reads per generated token: every tensor of the file but ``token_embd``."""
    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors if t.name != "token_embd.weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, 64-token prompt, 32 new tokens (< 60 s)")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    parser.add_argument("--repeats", type=int, help="timed runs per runtime and thread count (default 3, quick 1)")
    parser.add_argument("--workdir", default="", help="keep the twin and the GGUF here (default: a temp folder)")
    args = parser.parse_args()
    missing = runtime_missing()
    if missing:
        raise SystemExit(f"decode_vs_llamacpp: {missing}")
    layers, prompt_len, new = (4, 64, 32) if args.quick else (22, 128, 128)
    repeats = args.repeats or (1 if args.quick else 3)
    threads = [int(t) for t in args.threads.split(",")]
    tokenizer = load_tokenizer(SHARED / "llama2-tokenizer")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="youri-vs-llamacpp-"))
    twin_dir = work / "twin"
    if not (twin_dir / "model.safetensors").is_file():
        write_twin(big_llama(layers), tokenizer, twin_dir)
    gguf_dir = work / "gguf"
    if not gguf_dir.is_dir():
        export(ExportConfig(model=str(twin_dir), out=str(gguf_dir), type="q4_0", eval_samples=0))
    gguf_file = next(gguf_dir.glob("*.gguf"))

    model = load_model(twin_dir)
    kernels = kernel_summary(model)
    engine = Engine(model, tokenizer, max_batch_size=1, max_context=prompt_len + new + 8)
    engine.eos_ids = set()  # never stop early: both runtimes generate exactly ``new`` tokens
    prompt = torch.randint(3, LLAMA_1B["vocab_size"], (prompt_len,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    rows, tokens = {}, {}
    for t in threads:
        torch.set_num_threads(t)
        time_youri(engine, prompt, 4)  # warm-up
        bench_llama_cpp(gguf_file, prompt, 4, threads=t, repeats=1)
        best = {"youri": [float("inf")] * 2, "llama.cpp": [float("inf")] * 2}
        for _ in range(repeats):
            prefill, gen, tokens["youri"] = time_youri(engine, prompt, new)
            best["youri"] = [min(best["youri"][0], prefill), min(best["youri"][1], gen)]
            run = bench_llama_cpp(gguf_file, prompt, new, threads=t, repeats=1)
            tokens["llama.cpp"] = run["tokens"]
            best["llama.cpp"] = [min(best["llama.cpp"][0], run["prefill_s"]), min(best["llama.cpp"][1], run["gen_s"])]
        bandwidth = read_bandwidth(t)
        for name, (prefill, gen) in best.items():
            rows[(name, t)] = {"prefill_tok_s": prompt_len / prefill, "gen_tok_s": (new - 1) / gen, "bw": bandwidth}
        rows[("llama.cpp", t)]["same_tokens_as_youri"] = tokens["llama.cpp"] == tokens["youri"]
        rows[("youri", t)]["tokens"] = tokens["youri"]
    torch.set_num_threads(threads[0])
    hf_tokens = hf_greedy(model, prompt, new, tokenizer.eos_token_id)
    parted = [divergence(model, prompt, hf_tokens, rows[("youri", t)].pop("tokens")) for t in threads]  # every row
    same_as_hf = [p is None for p in parted]
    read = {"youri": weight_bytes_youri(model), "llama.cpp": weight_bytes_gguf(gguf_file)}
    for (name, _), r in rows.items():
        r["bandwidth_fraction"] = read[name] * r["gen_tok_s"] / r["bw"]

    shape = "1.1B shape, 22 layers" if layers == 22 else f"1.1B shape, {layers} of 22 layers"
    print(f"{shape}; {prompt_len}-token prompt, {new} new tokens, greedy; CPU: {cpu_name()}; {kernels}")
    print(f"youri reads {read['youri'] / 1e6:.0f} MB of weights per token, llama.cpp {read['llama.cpp'] / 1e6:.0f} MB")
    print(f"{'runtime':<12}{'threads':>8}{'prefill tok/s':>15}{'gen tok/s':>11}{'read GB/s':>11}{'of bandwidth':>14}")
    for (name, t), r in rows.items():
        print(
            f"{name:<12}{t:>8}{r['prefill_tok_s']:>15.1f}{r['gen_tok_s']:>11.2f}"
            f"{r['bw'] / 1e9:>11.1f}{r['bandwidth_fraction']:>14.2f}"
        )
    for t, p in zip(threads, parted):
        if p:
            print(f"youri {t}t parts from HF generate at new token {p['first_difference']}, where HF's own top two "
                  f"logits are {p['hf_top2_margin']} apart (a near-tie if < 1e-3)")  # fmt: skip
    print(f"youri tokens == HF generate: {same_as_hf}; llama.cpp tokens == youri's: "
          f"{[rows[('llama.cpp', t)]['same_tokens_as_youri'] for t in threads]}")  # fmt: skip

    def ratio(key: str, t: int) -> float:
        return round(rows[("youri", t)][key] / rows[("llama.cpp", t)][key], 3)

    result = {
        **{f"gen_ratio_{t}t": ratio("gen_tok_s", t) for t in threads},
        **{f"prefill_ratio_{t}t": ratio("prefill_tok_s", t) for t in threads},
        "bandwidth_fraction_youri": round(rows[("youri", threads[0])]["bandwidth_fraction"], 3),
        "bandwidth_fraction_llamacpp": round(rows[("llama.cpp", threads[0])]["bandwidth_fraction"], 3),
        "rows": {
            f"{n} {t}t": {k: round(v, 3) for k, v in r.items() if isinstance(v, float) and k != "bw"}
            for (n, t), r in rows.items()
        },
        "read_bandwidth_gb_s": {f"{t}t": round(rows[("youri", t)]["bw"] / 1e9, 2) for t in threads},
        "weight_bytes_per_token": read,
        "same_tokens_as_hf": all(same_as_hf),
        "hf_divergence": {f"{t}t": p for t, p in zip(threads, parted) if p},
        "layers": layers, "prompt_tokens": prompt_len, "new_tokens": new,
        "cpu": cpu_name(), "runtime": runtime_name(), "gptq_kernel": kernels,
    }  # fmt: skip
    print(json.dumps(result))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
