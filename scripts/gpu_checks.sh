#!/usr/bin/env bash
# The prepared GPU checks of issues 3 and 6, in one run on one GPU (written for an H200):
#   1. MFU of youri's training loop (bf16, fused AdamW, torch.compile per layer) for 1B and 3B Llama shapes,
#      and a Llama-2-7B shape with activation checkpointing (the youri-7b recipe's settings);
#   2. `youri quantize` (GPTQ 4 bit, g128) of a 1.1B Llama shape, and of a Llama-2-7B shape cut to 2 layers
#      (same peak GPU memory as the full 7B: one layer lives on the GPU at a time), time and peak memory;
#   3. single-stream decode (benchmarks/decode_speed.py --device cuda), fp32 vs the GPTQ twin's int4 kernel;
#   4. whether vLLM is importable there (it is not part of the machine image; too large to carry).
#
#   DATA=folder-with-inputs bash scripts/gpu_checks.sh [CHECK ...]   # all checks, or the ones named;
#                                                  # logs and JSON lines under $OUT (default /tmp/gpu_checks)
#
# DATA holds: llama2-tok/ (HF tokenizer saved from ../shared/data/llama2-tokenizer/tokenizer.model),
# aozora_clean.jsonl (calibration), wiki_dev.jsonl and shakespeare.txt (held-out ja / en), copied from
# ../shared/data. Each check has its own time limit, so one failure does not eat the others' time.
set -u
OUT=${OUT:-/tmp/gpu_checks}
DATA=${DATA:-.devcarry}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1

ONLY=" $* "
check() {  # check NAME SECONDS python-args...: full log to $OUT/NAME.log, the JSON line to $OUT/results.jsonl
    local name=$1 limit=$2
    shift 2
    [[ "$ONLY" == "  " || "$ONLY" == *" $name "* ]] || return 0
    local t0=$SECONDS
    timeout "$limit" python3 "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
    grep -E "^(step 1/|step [0-9]+/[0-9]+ \| loss|  [a-z_]+ )" "$OUT/$name.log" | tail -4
    tail -1 "$OUT/$name.log" | grep '^{' | sed "s/^{/{\"check\": \"$name\", /" >>"$OUT/results.jsonl" \
        || tail -5 "$OUT/$name.log"
}

check mfu_1b_compile 150 benchmarks/pretrain_mfu.py --shape 1b --batch 4 --steps 15 --compile
check quantize_1b 240 benchmarks/quantize_gpu.py --shape 1b --tokenizer "$DATA/llama2-tok" \
    --calibration "$DATA/aozora_clean.jsonl" --heldout_ja "$DATA/wiki_dev.jsonl" --heldout_en "$DATA/shakespeare.txt"
check quantize_7b_2layers 90 benchmarks/quantize_gpu.py --shape 7b --layers 2 --tokenizer "$DATA/llama2-tok" \
    --calibration "$DATA/aozora_clean.jsonl"
# Issue 17: single-stream decode on the GPU, youri vs HF generate, fp32 vs GPTQ (int4-cuda, aten's tinygemm).
check decode_cuda 150 benchmarks/decode_speed.py --device cuda --tokenizer "$DATA/llama2-tok"
check mfu_3b_compile 130 benchmarks/pretrain_mfu.py --shape 3b --batch 2 --steps 12 --compile
check mfu_1b_eager 60 benchmarks/pretrain_mfu.py --shape 1b --batch 4 --steps 10
# The youri-7b recipe's own settings (compile + activation checkpointing) on one GPU, batch 1 x 4096:
# fp32 master weights + AdamW states alone are 100 GiB here (FSDP2 shards them across GPUs in the recipe).
check mfu_7b_ac 240 benchmarks/pretrain_mfu.py --shape 7b --batch 1 --steps 8 --compile --activation_checkpointing
echo "== results"
cat "$OUT/results.jsonl"
