"""Scoring through ``youri serve``: lm-eval 0.4.13's ``local-completions`` against the server vs lm-eval's
in-process ``HFLM`` on the same model, JCommonsenseQA multiple choice (log-likelihood of each choice).

    python benchmarks/serve_scoring.py            # tiny random Llama, 20 docs (100 log-likelihoods)
    python benchmarks/serve_scoring.py --quick    # 2 docs (< 60 s)
    python benchmarks/serve_scoring.py --model runs/demo/sft_chat --docs 50

lm-eval sends token-id prompts in batches with ``echo``, ``logprobs: 1`` and ``max_tokens: 1`` and reads
``token_logprobs[ctxlen:-1]``; the reference is the same requests through ``HFLM``. Needs lm-eval's API
extra (``pip install "lm-eval[api]"``: tenacity, aiohttp). Last line: one JSON object (``max_abs_diff``
of the log-likelihoods, whether greediness and the predicted choices agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 docs (< 60 s)")
    parser.add_argument("--model", help="model folder (default: a tiny random Llama with the Llama 2 tokenizer)")
    parser.add_argument("--docs", type=int, default=20)
    args = parser.parse_args()
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from youri.serve.server import Config, running
    from youri.testing import save_random_llama

    torch.set_num_threads(1)
    count = 2 if args.quick else args.docs
    lines = (SHARED / "jglue-jcommonsenseqa" / "valid-v1.3.json").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines[:count]]
    requests = []
    for doc in docs:
        choices = [doc[f"choice{i}"] for i in range(5)]
        context = f"[問題]:{doc['question']}\n[選択肢]:[{', '.join(choices)}]\n[答え]:"
        requests += [Instance("loglikelihood", doc, (context, c), i) for i, c in enumerate(choices)]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(
            save_random_llama(Path(tmp) / "tiny", SHARED / "llama2-tokenizer", max_position_embeddings=512)
        )
        start = time.perf_counter()
        with running(Config(model=model, port=0, device="cpu", served_model_name="bench")) as url:
            api = LocalCompletionsAPI(
                base_url=url + "/v1/completions",
                model="bench",
                tokenizer=model,
                tokenizer_backend="huggingface",
                tokenized_requests=True,
                batch_size=5,
                max_retries=1,
            )
            served = api.loglikelihood(requests)
        served_s = time.perf_counter() - start
        start = time.perf_counter()
        local = HFLM(pretrained=model, device="cpu", batch_size=5).loglikelihood(requests)
        local_s = time.perf_counter() - start
    diff = max(abs(s[0] - h[0]) for s, h in zip(served, local))

    def predictions(results):
        return [max(range(5), key=lambda i: results[5 * d + i][0]) for d in range(len(docs))]

    same_greedy = [s[1] for s in served] == [h[1] for h in local]
    same_predictions = predictions(served) == predictions(local)
    print(f"JCommonsenseQA, {len(docs)} docs ({len(requests)} log-likelihoods), model {args.model or 'tiny random'}")
    print(f"{'path':<44}{'seconds':>9}")
    print(f"{'lm-eval local-completions -> youri serve':<44}{served_s:>9.1f}")
    print(f"{'lm-eval HFLM in process (reference)':<44}{local_s:>9.1f}")
    print(f"max |loglikelihood diff| {diff:.2e}; is_greedy equal: {same_greedy}; predictions equal: {same_predictions}")
    print(
        json.dumps(
            {
                "docs": len(docs),
                "loglikelihoods": len(requests),
                "max_abs_diff": diff,
                "same_is_greedy": same_greedy,
                "same_predictions": same_predictions,
                "served_s": round(served_s, 2),
                "in_process_s": round(local_s, 2),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
