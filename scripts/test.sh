#!/usr/bin/env bash
# Lint and format check (ruff), then the test suite, first fetching the optional tools some tests use (each test
# skips with a reason when its tool is missing): headless Chromium for the web chat page, a separate venv with
# GPTQModel for the plain-transformers GPTQ round trip (GPTQModel 7.6.0 pins numpy 2.2.6), one with
# AutoGPTQ 0.7.1, and llama.cpp (node-llama-cpp) for the GGUF export tests. (The eval parity test runs the
# jp-stable harness's own code, kept verbatim in tests/reference/jp-stable-harness.)
set -euo pipefail
cd "$(dirname "$0")/.."
if { ! command -v chromium || ! command -v chromedriver; } >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "test.sh: chromium could not be installed; the browser test will skip"
fi
REF=${YOURI_GPTQ_REF_VENV:-$HOME/.cache/youri/gptqref}
if ! "$REF/bin/python" -c "import gptqmodel, optimum" 2>/dev/null; then
  (python3 -m venv --system-site-packages "$REF" && "$REF/bin/python" -m pip install -q gptqmodel==7.6.0 \
     optimum==2.3.0 torch==2.13.0 transformers==5.24.0) \
    || echo "test.sh: GPTQModel reference venv unavailable; the GPTQ round-trip test will skip"
fi
if "$REF/bin/python" -c "import gptqmodel, optimum" 2>/dev/null; then export YOURI_GPTQ_REFERENCE_PYTHON="$REF/bin/python"; fi
# AutoGPTQ 0.7.1 (rinna's model cards load the twins with it) with the 2024 stack it imports against.
AGQ=${YOURI_AUTOGPTQ_VENV:-$HOME/.cache/youri/autogptq}
if ! "$AGQ/bin/python" -c "import auto_gptq" 2>/dev/null; then
  (python3 -m venv "$AGQ" && "$AGQ/bin/python" -m pip install -q auto-gptq==0.7.1 torch==2.13.0 transformers==4.38.2 \
     tokenizers==0.15.2 huggingface-hub==0.21.4 accelerate==0.27.2 peft==0.9.0 datasets==2.18.0 numpy==1.26.4 \
     pyarrow==15.0.2 fsspec==2024.2.0) || echo "test.sh: AutoGPTQ venv unavailable; the AutoGPTQ loader test will skip"
fi
if "$AGQ/bin/python" -c "import auto_gptq" 2>/dev/null; then export YOURI_AUTOGPTQ_PYTHON="$AGQ/bin/python"; fi
# mergekit 0.1.5 (youri merge's bit-exact oracle) and TRL 1.16.0 (youri prefer's loss oracle) in one venv.
MRG=${YOURI_MERGE_REF_VENV:-$HOME/.cache/youri/mergeref}
if ! "$MRG/bin/python" -c "import mergekit, trl" 2>/dev/null; then
  (python3 -m venv "$MRG" && "$MRG/bin/python" -m pip install -q mergekit==0.1.5 trl==1.16.0 torch==2.13.0 \
     transformers==5.25.0) || echo "test.sh: mergekit/TRL venv unavailable; the merge and preference oracle tests will skip"
fi
if "$MRG/bin/python" -c "import mergekit, trl" 2>/dev/null; then export YOURI_MERGE_REFERENCE_PYTHON="$MRG/bin/python"; fi
# llama.cpp for the GGUF tests: node-llama-cpp's prebuilt CPU binaries (no compiler; llama-cpp-python has no
# CPU wheel on PyPI; its source build spent 5 CPU-minutes on 80 of its 140 compile steps here).
export YOURI_NODE_LLAMA_CPP=${YOURI_NODE_LLAMA_CPP:-$HOME/.cache/youri/node-llama-cpp}
if [ ! -f "$YOURI_NODE_LLAMA_CPP/node_modules/node-llama-cpp/package.json" ] && command -v npm >/dev/null; then
  (NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$YOURI_NODE_LLAMA_CPP" --no-audit --no-fund -s \
     --omit=optional --ignore-scripts node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >/dev/null) \
    || echo "test.sh: node-llama-cpp unavailable; the llama.cpp GGUF tests will skip"
fi
ruff check src tests benchmarks        # lint (rules in pyproject.toml)
ruff format --check src tests benchmarks  # formatting, lines <= 120
exec python -m pytest tests "$@"
