"""Single-stream greedy decode: youri's engine vs Hugging Face ``generate``, fp32 vs GPTQ 4-bit, in one run.

    python benchmarks/decode_speed.py            # tiny demo shape + the 1.1B Llama shape (22 layers), ~3 min
    python benchmarks/decode_speed.py --quick    # tiny + the 1.1B layer shape with 4 of its 22 layers (< 60 s)

Two random-weight Llamas with the Llama 2 tokenizer: the demo's tiny shape (hidden 128, 4 layers, vocabulary
5120 -- the demo's 4096 pieces plus its Japanese extension) and TinyLlama's 1.1B shape (hidden 2048, 22 layers,
intermediate 5632, GQA 32/4 heads). Each is timed fp32, then as a GPTQ twin made in memory (round-to-nearest
codes in GPTQ v1 format -- 4 bit, group 128, symmetric, no act-order -- loaded into youri's ``QuantLinear``
and converted for the int4 kernel the way ``load_gptq_model`` does; the GPTQ solve itself does not change
decode speed) -- youri's AVX2 or AVX-512 kernel on x86 CPUs; the full run also times the same twin on PyTorch's
int4 kernel (``gptq_vs_fp_1b_int4-cpu``). Same prompt (24 tokens), same number of new tokens, eos ignored by
both sides; youri's greedy tokens are checked against Hugging Face's. Runs interleave youri and HF; best of N.
Time is this process's CPU time (``time.process_time``): with one torch thread (the default, as in
serve_concurrency.py) it equals wall time on an idle machine, while on the shared 2-core machine wall time
mostly measures the other tenants (a --quick run took 150 s of wall clock for 23 s of CPU). Last line: one JSON
object.

At the tiny shape a step is bound by op dispatch, not FLOPs: per token youri's lean step (``youri.serve.decoder``)
dispatches 17 matmuls and 561 aten ops (nested ones counted; torch.profiler), Hugging Face's ``generate`` 29 and
906 (youri before the lean step's stacking: 29 and 854). Measured on the shared 2-core CPU (1 thread): tiny fp32
youri 880-916 vs HF 319-356 tokens/s = 2.48-2.87x over two full runs, 2.40-2.86x over five --quick runs (the
other tenants' load moves it), the same greedy tokens; the engine's own per-token work outside the model step
(argmax, stop check, detokenisation) is ~75 us of the ~1.1 ms. At 1.1B the matmuls dominate and both sides are
within noise of each other.

torch.compile is not used: on this 2-core CPU compiling the lean step took ~90 s for a ~1.3x faster tiny step
(measured before the step's ops were cut), and at 1.1B the step is bound by the weight matmuls that compile
leaves to the same kernels. At 1.1B the fp32 step reads 4.4 GB of weights per token, the GPTQ step 0.5 GB of
codes plus the fp32 LM head (0.26 GB, unquantized as in every GPTQ twin); youri's int4 kernel is fast enough that
the GPTQ step is bound by memory too (PyTorch's CPU kernel is bound by its own arithmetic: about 1.2x the fp32
step). At the tiny shape the fp32 step is bound by dispatch; a GPTQ twin whose projections all run on youri's int4
kernels decodes a single stream in one C call for all layers (``youri.serve.native_step``), so no PyTorch op runs
between its matmuls: --quick, quiet machine, 1 thread: tiny GPTQ 3086 tokens/s = 5.9x HF ``generate`` and 2.3x
youri's own fp32 step; 1.1B (4 layers) GPTQ 2.2x fp32 (``int4-avx512``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from youri.model import load_tokenizer
from youri.quant.gptq import rtn_quantize
from youri.runtime.gptq_format import pack
from youri.runtime.kernels import KERNEL_ENV, available_kernels, kernel_for
from youri.runtime.quant_linear import QuantLinear, kernel_summary, prepare_kernels
from youri.serve.engine import Engine, SamplingParams, generate
from youri.testing import random_llama

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "vocab_size": 32000,
}
PROMPT_TOKENS = 24
DEVICE = torch.device("cpu")  # --device


def clock() -> float:
    """CPU seconds of this process on CPU; on CUDA, wall seconds once the queued kernels have run."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def big_llama(layers: int) -> LlamaForCausalLM:
    """The 1.1B shape with random N(0, 0.02) weights (``youri.testing``'s fast init: no minutes-long HF init)."""
    shape = {k: v for k, v in LLAMA_1B.items() if k != "vocab_size"}
    model = random_llama(
        LLAMA_1B["vocab_size"],
        fast_init=True,
        **{**shape, "num_hidden_layers": layers, "tie_word_embeddings": False},
    )
    model.generation_config.eos_token_id = 2
    return model.eval()


def to_gptq(model) -> None:
    """Swap every decoder linear for a 4-bit g128 QuantLinear holding its round-to-nearest GPTQ v1 tensors."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                quant = QuantLinear(
                    linear.in_features, linear.out_features, bits=4, group_size=128, device=linear.weight.device
                )
                quant.load_state_dict(pack(*rtn_quantize(linear.weight.data, bits=4, group_size=128), bits=4))
                setattr(parent, name, quant)  # the fp32 weight is freed as we go
    prepare_kernels(model)


def time_hf(model, prompt: list[int], new: int, pad: int) -> tuple[float, list[int]]:
    ids = torch.tensor([prompt], device=DEVICE)
    start = clock()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad,
        )
    return clock() - start, out[0, len(prompt) :].tolist()


def time_youri(engine: Engine, prompt: list[int], new: int) -> tuple[float, list[int]]:
    start = clock()
    out = generate(
        engine.model, engine.tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=new), engine=engine
    )
    return clock() - start, out.token_ids


def measure(model, tokenizer, new: int, repeats: int, *, hf: bool = True) -> dict:
    """Best-of-``repeats`` tokens/s for youri (and HF), runs interleaved; whether the greedy tokens agree."""
    prompt = torch.randint(3, model.config.vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    engine = Engine(model, tokenizer, max_batch_size=1)
    engine.eos_ids = set()  # never stop early: both sides generate exactly ``new`` tokens
    time_youri(engine, prompt, 2)  # warm-up (allocations, first-call dispatch)
    if hf:
        time_hf(model, prompt, 2, tokenizer.eos_token_id)
    best = {"youri": float("inf"), "hf": float("inf")}
    tokens = {}
    for _ in range(repeats):
        seconds, tokens["youri"] = time_youri(engine, prompt, new)
        best["youri"] = min(best["youri"], seconds)
        if hf:
            seconds, tokens["hf"] = time_hf(model, prompt, new, tokenizer.eos_token_id)
            best["hf"] = min(best["hf"], seconds)
    result = {"youri_tokens_per_s": new / best["youri"], "decoder": engine.stats["decoder"]}
    if hf:
        result.update(hf_tokens_per_s=new / best["hf"], same_tokens=tokens["youri"] == tokens["hf"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, the 1.1B shape with 4 layers (< 60 s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: tiny matmuls spin-wait otherwise)"
    )
    parser.add_argument("--layers", type=int, help="decoder layers of the 1.1B shape (default 22, --quick 4)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: wall time, synchronised)")
    parser.add_argument("--tokenizer", default=str(SHARED / "llama2-tokenizer"), help="the Llama 2 tokenizer folder")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    layers = args.layers or (4 if args.quick else 22)
    tiny_new, tiny_repeats = (32, 3) if args.quick else (64, 5)
    big_new, big_repeats = (8, 1) if args.quick else (16, 2)
    tokenizer = load_tokenizer(Path(args.tokenizer))
    rows = {}

    model = random_llama(5120, **TINY).eval().to(DEVICE)
    rows["tiny fp32"] = measure(model, tokenizer, tiny_new, tiny_repeats)
    to_gptq(model)
    rows["tiny GPTQ 4-bit"] = measure(model, tokenizer, tiny_new, tiny_repeats)
    del model
    gc.collect()

    model = big_llama(layers).to(DEVICE)
    rows["1.1B fp32"] = measure(model, tokenizer, big_new, big_repeats)
    to_gptq(model)
    gc.collect()
    kernels = kernel_summary(model)
    rows["1.1B GPTQ 4-bit"] = measure(model, tokenizer, big_new, big_repeats)
    other = [k for k in available_kernels(DEVICE) if k != kernel_for(DEVICE)]
    if other and not args.quick:  # the same twin on PyTorch's kernel: what youri's own kernel is worth
        os.environ[KERNEL_ENV] = other[0]
        try:
            prepare_kernels(model)
            rows[f"1.1B GPTQ {other[0]}"] = measure(model, tokenizer, big_new, big_repeats, hf=False)
        finally:
            del os.environ[KERNEL_ENV]
    del model
    gc.collect()

    shape = f"1.1B = hidden 2048, intermediate 5632, {layers} of 22 layers" if layers != 22 else "1.1B = 22 layers"
    print(
        f"greedy decode, {PROMPT_TOKENS}-token prompt, {tiny_new} (tiny) / {big_new} (1.1B) new tokens, "
        f"{args.threads} torch thread(s); {shape}; {kernels}"
    )
    print(f"{'model':<18}{'youri tok/s':>12}{'HF tok/s':>10}{'youri/HF':>10}{'same tokens':>13}  decoder")
    for name, r in rows.items():
        hf = (
            f"{r['hf_tokens_per_s']:>10.1f}{r['youri_tokens_per_s'] / r['hf_tokens_per_s']:>10.2f}"
            if "hf_tokens_per_s" in r
            else f"{'-':>10}{'-':>10}"
        )
        print(f"{name:<18}{r['youri_tokens_per_s']:>12.1f}{hf}{str(r.get('same_tokens', '-')):>13}  {r['decoder']}")
    result = {
        "ratio_vs_hf_tiny": round(rows["tiny fp32"]["youri_tokens_per_s"] / rows["tiny fp32"]["hf_tokens_per_s"], 2),
        "gptq_vs_fp_1b": round(
            rows["1.1B GPTQ 4-bit"]["youri_tokens_per_s"] / rows["1.1B fp32"]["youri_tokens_per_s"], 2
        ),
        "ratio_vs_hf_1b": round(rows["1.1B fp32"]["youri_tokens_per_s"] / rows["1.1B fp32"]["hf_tokens_per_s"], 2),
        **{
            f"gptq_vs_fp_1b_{name.split()[-1]}": round(
                r["youri_tokens_per_s"] / rows["1.1B fp32"]["youri_tokens_per_s"], 2
            )
            for name, r in rows.items()
            if name.startswith("1.1B GPTQ int4")
        },
        "gptq_vs_fp_tiny": round(
            rows["tiny GPTQ 4-bit"]["youri_tokens_per_s"] / rows["tiny fp32"]["youri_tokens_per_s"], 2
        ),
        "tokens_per_s": {
            name: {k: round(v, 2) for k, v in r.items() if isinstance(v, float)} for name, r in rows.items()
        },
        "fp32_tokens_match_hf": rows["tiny fp32"]["same_tokens"] and rows["1.1B fp32"]["same_tokens"],
        "layers_1b": layers,
        "threads": args.threads,
        "device": args.device,
        "gptq_kernel": kernels,
    }
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
