#!/usr/bin/env bash
# Lint and format check (ruff), then the test suite, first fetching the optional tools three tests use (each test skips with a reason
# when its tool is missing): headless Chromium for the web chat page, and a separate venv with
# GPTQModel for the plain-transformers GPTQ round trip (GPTQModel 7.6.0 pins numpy 2.2.6), and the
# jp-stable harness source for the eval parity test.
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
ruff check src tests benchmarks        # lint (rules in pyproject.toml)
ruff format --check src tests benchmarks  # formatting, lines <= 120
# The jp-stable harness's source (Stability-AI/lm-evaluation-harness at effdbea) for the eval parity test,
# which runs the harness's own code on youri's requests (tests/jp_stable_reference.py).
HARNESS=${YOURI_JPSTABLE_HARNESS:-$HOME/.cache/youri/jp-stable-harness}
if [ ! -f "$HARNESS/lm_eval/base.py" ]; then
  (rm -rf "$HARNESS.tmp" && git clone -q --filter=blob:none --no-checkout \
     https://github.com/Stability-AI/lm-evaluation-harness "$HARNESS.tmp" \
     && git -C "$HARNESS.tmp" checkout -q effdbeaf742e74ea1787871e99272c12146ba346 && mv "$HARNESS.tmp" "$HARNESS") \
    || echo "test.sh: jp-stable harness source unavailable; the eval parity test will skip"
fi
export YOURI_JPSTABLE_HARNESS="$HARNESS"
exec python -m pytest tests "$@"
