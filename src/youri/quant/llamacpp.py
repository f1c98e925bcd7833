"""llama.cpp itself as a client of youri's GGUF files: tokenise and score with a real llama.cpp runtime.

The runtime is llama.cpp's prebuilt CPU binaries from the ``node-llama-cpp`` npm package (no compiler
needed), driven by ``llamacpp_worker.mjs`` in a ``node`` subprocess. Where it lives: the folder named by
``YOURI_NODE_LLAMA_CPP`` or ``~/.cache/youri/node-llama-cpp`` (``scripts/test.sh`` installs it there)::

    npm install --prefix ~/.cache/youri/node-llama-cpp --omit=optional --ignore-scripts \\
        node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1

``runtime_missing()`` says why it cannot run (then callers skip with that reason).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("llamacpp_worker.mjs")
INSTALL_HINT = (
    "npm install --prefix ~/.cache/youri/node-llama-cpp --omit=optional --ignore-scripts "
    "node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1"
)


class LlamaCppError(RuntimeError):
    """llama.cpp could not load or run a GGUF file; the message carries its own last words."""


def runtime_dir() -> Path:
    return Path(os.environ.get("YOURI_NODE_LLAMA_CPP") or Path.home() / ".cache" / "youri" / "node-llama-cpp")


def runtime_missing() -> str:
    """Empty when llama.cpp can run here; else why not, with the install command."""
    if shutil.which("node") is None:
        return "llama.cpp runtime unavailable: no `node` on PATH (node-llama-cpp ships llama.cpp's binaries)"
    if not (runtime_dir() / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        return f"llama.cpp runtime unavailable: node-llama-cpp not found in {runtime_dir()} (`{INSTALL_HINT}`)"
    return ""


def runtime_name() -> str:
    package = runtime_dir() / "node_modules" / "node-llama-cpp" / "package.json"
    return f"llama.cpp (node-llama-cpp {json.loads(package.read_text())['version']} prebuilt CPU binaries)"


@dataclass
class Scored:
    vocab: int
    bos: int | None
    eos: int | None
    tokens: list[list[int]]
    """llama.cpp's token ids of each text (no BOS added)."""
    logprobs: list[np.ndarray]
    """Per row: next-token log-probabilities [len(row), vocab] (float32)."""


def run_llama_cpp(
    model: Path, *, texts: list[str] = (), rows: list[list[int]] = (), threads: int = 2, timeout: int = 600
) -> Scored:
    """Tokenise ``texts`` and score ``rows`` (token ids) with llama.cpp on the GGUF file ``model``."""
    answer, tmp_files = _call_worker(
        model, {"texts": list(texts), "rows": [list(map(int, r)) for r in rows]}, threads, timeout
    )
    vocab = answer["vocab"]
    logprobs = []
    for i, row in enumerate(rows):
        probs = np.frombuffer(tmp_files[f"row{i}.f32"], dtype=np.float32).reshape(len(row), vocab)
        logprobs.append(np.log(np.maximum(probs, 1e-30)))  # llama.cpp's softmax; 0 only far below fp32 eps
    return Scored(vocab, answer.get("bos"), answer.get("eos"), answer["tokens"], logprobs)


def bench_llama_cpp(
    model: Path, prompt: list[int], new_tokens: int, *, threads: int, repeats: int = 1, timeout: int = 600
) -> dict:
    """Greedy generation of ``new_tokens`` after ``prompt`` (ids) by llama.cpp, the best of ``repeats`` runs:
    ``prefill_s`` (until the first new token), ``gen_s`` (the other new tokens, wall clock) and the ``tokens``."""
    request = {
        "texts": [],
        "rows": [],
        "bench": {"prompt": list(map(int, prompt)), "new_tokens": new_tokens, "repeats": repeats},
    }
    runs = _call_worker(model, request, threads, timeout)[0]["bench"]
    return {
        "prefill_s": min(r["prefill_s"] for r in runs),
        "gen_s": min(r["gen_s"] for r in runs),
        "tokens": runs[-1]["tokens"],
    }


def _call_worker(model: Path, request: dict, threads: int, timeout: int) -> tuple[dict, dict[str, bytes]]:
    """Run the node worker on one request; its JSON answer and the files it wrote (name -> bytes)."""
    missing = runtime_missing()
    if missing:
        raise LlamaCppError(missing)
    with tempfile.TemporaryDirectory(prefix="youri-llamacpp-") as tmp:
        request_file = Path(tmp) / "request.json"
        payload = {"model": str(Path(model).resolve()), **request, "threads": threads}
        request_file.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run(
            ["node", str(WORKER), str(runtime_dir()), str(request_file), tmp],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            last = next((line for line in lines if line.startswith("Error")), lines[-1])
            raise LlamaCppError(f"llama.cpp failed on {model}: {last}")
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        files = {f.name: f.read_bytes() for f in Path(tmp).glob("row*.f32")}
    return answer, files


def next_token_agreement(reference: list[np.ndarray], candidate: list[np.ndarray], rows: list[list[int]]) -> dict:
    """KL(reference ‖ candidate) per token, both perplexities, argmax agreement and the largest log-prob gap.

    Inputs are next-token log-probabilities per row ([len(row), vocab]); the last position has no target.
    """
    kl = nll_ref = nll_cand = 0.0
    agree = tokens = 0
    max_gap = 0.0
    for ref, cand, row in zip(reference, candidate, rows):
        ref, cand = ref[:-1].astype(np.float64), cand[:-1].astype(np.float64)
        targets = np.asarray(row[1:])
        kl += float((np.exp(ref) * (ref - cand)).sum())
        nll_ref -= float(ref[np.arange(len(targets)), targets].sum())
        nll_cand -= float(cand[np.arange(len(targets)), targets].sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        max_gap = max(max_gap, float(np.abs(ref - cand).max()))
        tokens += len(targets)
    return {
        "tokens": tokens,
        "kl": float(f"{kl / tokens:.4g}"),  # significant digits: 8-bit and 4-bit KLs are orders of magnitude apart
        "ppl_reference": round(float(np.exp(nll_ref / tokens)), 4),
        "ppl": round(float(np.exp(nll_cand / tokens)), 4),
        "argmax_agreement": round(agree / tokens, 4),
        "max_abs_logprob_diff": round(max_gap, 4),
    }
