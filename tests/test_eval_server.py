"""``youri eval --server URL``: JP-8 multiple choice through lm-eval's local-completions against a fake
OpenAI-compatible /v1/completions server (a tiny model behind http.server on 127.0.0.1) gives the same
per-document log-likelihoods and metrics as in-process ``youri eval``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from youri.eval import evaluate as ev
from youri.model import load_model, load_tokenizer
from youri.testing import http_server, save_random_llama, send_json

FIXTURES = Path(__file__).parent / "fixtures" / "jp_eval"
MARC = {"marc_ja": {"eval": str(FIXTURES / "marc_ja_valid.jsonl"), "fewshot": str(FIXTURES / "marc_ja_train.jsonl")}}


def completions_handler(model, tokenizer, seen: list):
    """/v1/completions with echo + logprobs, as vLLM answers it: per prompt token its log-probability (the
    first null), then one generated (greedy) token; top_logprobs holds each position's most likely token."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            choices = []
            for index, ids in enumerate(body["prompt"]):
                with lock, torch.no_grad():
                    logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
                best = logprobs.max(-1)
                token_lp = [None] + [float(logprobs[t - 1, ids[t]]) for t in range(1, len(ids))]
                top = [None] + [
                    {tokenizer.convert_ids_to_tokens(int(best.indices[t - 1])): float(best.values[t - 1])}
                    for t in range(1, len(ids))
                ]
                token_lp.append(float(best.values[-1]))  # the max_tokens=1 generated token
                top.append({tokenizer.convert_ids_to_tokens(int(best.indices[-1])): float(best.values[-1])})
                text = tokenizer.decode([int(best.indices[-1])])
                choices.append(
                    {"index": index, "text": text, "logprobs": {"token_logprobs": token_lp, "top_logprobs": top}}
                )
            send_json(self, 200, {"object": "text_completion", "choices": choices})

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture()
def tiny(tmp_path, llama2_tokenizer_dir):
    return save_random_llama(tmp_path / "model", llama2_tokenizer_dir, max_position_embeddings=2048)


def test_multiple_choice_through_a_completions_server_equals_in_process(tmp_path, tiny):
    pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra: pip install 'lm-eval[api]'")
    common = dict(
        model=str(tiny), tasks=["marc_ja"], data=MARC, shots={"marc_ja": 1}, limit=3, device="cpu", bootstrap_iters=10
    )
    local = ev.run(ev.Config(out=str(tmp_path / "local"), **common))
    seen: list = []
    model = load_model(tiny).eval()
    with http_server(completions_handler(model, load_tokenizer(tiny), seen)) as base:
        url = f"{base}/v1/completions"
        remote = ev.run(ev.Config(out=str(tmp_path / "remote"), server=url, batch_size="2", **common))
    # the request shape lm-eval's local-completions sends (documented in lm_eval_bridge.server_lm)
    assert seen and all(b["echo"] is True and b["logprobs"] == 1 and b["max_tokens"] == 1 for b in seen)
    assert all(isinstance(p, list) and all(isinstance(i, int) for i in p) for b in seen for p in b["prompt"])
    assert max(len(b["prompt"]) for b in seen) == 2 and seen[0]["model"] == "model"
    key = next(iter(local["tasks"]))
    rows = {}
    for name in ("local", "remote"):
        path = tmp_path / name / "samples" / f"{key}.jsonl"
        rows[name] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows["local"]) == 3 == len(rows["remote"])
    for a, b in zip(rows["local"], rows["remote"]):
        assert a["doc_id"] == b["doc_id"]
        for (ll_a, greedy_a), (ll_b, greedy_b) in zip(a["loglikelihoods"], b["loglikelihoods"]):
            assert ll_a == pytest.approx(ll_b, abs=1e-4) and greedy_a == greedy_b
    assert remote["tasks"][key]["metrics"] == pytest.approx(local["tasks"][key]["metrics"])


def test_server_refuses_hf_causal_generation(tmp_path, tiny):
    files = {"eval": "xlsum_ja_test.jsonl", "fewshot": "xlsum_ja_train.jsonl"}
    data = {"xlsum_ja": {key: str(FIXTURES / name) for key, name in files.items()}}
    with pytest.raises(ev.ConfigError, match="xlsum_ja-1.0-0.0 generates.*hf-causal-experimental"):
        ev.run(ev.Config(model=str(tiny), out=str(tmp_path / "x"), tasks=["xlsum_ja"], data=data, server="http://x"))
    assert not (tmp_path / "x").exists()
