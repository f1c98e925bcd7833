"""youri eval against the jp-stable harness itself: presets, both generation rules, every reported metric.

The parity test runs ``youri eval`` on a tiny Llama for every task with local data under each
generation rule, then runs the *harness's own code* (Stability-AI/lm-evaluation-harness, jp-stable,
effdbea: its LM wrappers, ``construct_requests``, ``process_results`` and aggregations; see
``tests/jp_stable_reference.py``) on the same rendered requests, and compares document by document:
log-likelihoods, generations and metrics. The harness's source is kept verbatim in
``tests/reference/jp-stable-harness`` (``YOURI_JPSTABLE_HARNESS`` points elsewhere); a missing Python
dependency of it makes that test skip with the reason. The other tests need nothing but the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_path

from youri import cli
from youri.config import ConfigError, build_config
from youri.eval import lm_eval_bridge as bridge
from youri.eval import metrics
from youri.eval.evaluate import Config, plan_tasks, run
from youri.eval.generation import hf_causal_generate, primary_stop_id
from youri.eval.presets import KIND_PRESETS, PRESETS
from youri.eval.tasks import select
from youri.eval.tasks.lm_eval_tasks import utils as task_utils
from youri.model import load_model, load_tokenizer, save_model
from youri.testing import random_llama

FIXTURES = Path(__file__).parent / "fixtures" / "jp_eval"
REFERENCE = Path(__file__).parent / "jp_stable_reference.py"
# The harness's own code at effdbea, kept verbatim beside the tests (tests/reference/jp-stable-harness/README.md).
HARNESS = Path(os.environ.get("YOURI_JPSTABLE_HARNESS", Path(__file__).parent / "reference" / "jp-stable-harness"))
DATA = {
    "jcommonsenseqa": {
        "eval": "jglue-jcommonsenseqa/valid-v1.3.json",
        "fewshot": "jglue-jcommonsenseqa/train-v1.3.json",
    },
    "jnli-1.1": {"eval": "jglue-jnli/valid-v1.1.json", "fewshot": "jglue-jnli/test-v1.3.json"},
    "jsquad": {"eval": "jglue-jsquad/valid-v1.3.json", "fewshot": "jglue-jsquad/test-v1.3.json"},
    "xwinograd_ja": {"eval": "xwinograd-ja/xwinograd_jp.jsonl"},
    "mgsm": {"eval": "mgsm-ja/mgsm_ja.tsv", "fewshot": "mgsm-ja/mgsm_ja_exemplars.jsonl"},
    "marc_ja": {"eval": str(FIXTURES / "marc_ja_valid.jsonl"), "fewshot": str(FIXTURES / "marc_ja_train.jsonl")},
    "jaqket_v2": {"eval": str(FIXTURES / "jaqket_v2_dev.jsonl"), "fewshot": str(FIXTURES / "jaqket_v2_train.jsonl")},
    "xlsum_ja": {"eval": str(FIXTURES / "xlsum_ja_test.jsonl"), "fewshot": str(FIXTURES / "xlsum_ja_train.jsonl")},
}
MAX_GEN_TOKS = 24  # both sides; the harness's hf-causal fixes 256, the parity holds for any value
# The harness reports acc-like metrics as 0-1 and these as 0-100; youri reports every metric in percent.
HARNESS_PERCENT = {"exact_match", "f1", "rouge2"}


def _cfg(**kw) -> Config:
    return build_config(Config, kw)


@pytest.fixture(scope="module")
def biased_llama(tmp_path_factory, llama2_tokenizer_dir):
    """A tiny random Llama whose LM head favours "\\n" (13) and EOS (2), so generations stop early,
    run into EOS mid-answer and hit both stop rules; a 1024-token window so long prompts get truncated."""
    tok = load_tokenizer(llama2_tokenizer_dir)
    model = random_llama(
        len(tok), hidden_size=128, intermediate_size=256, num_key_value_heads=4, max_position_embeddings=1024
    )
    with torch.no_grad():
        model.lm_head.weight[2] *= 3.0
        model.lm_head.weight[13] *= 3.0
    return save_model(model, tok, tmp_path_factory.mktemp("biased") / "model")


# ----------------------------------------------------------------------------- presets


def test_presets_mirror_the_published_harness_runs(tmp_path):
    rinna = PRESETS["rinna"]
    assert rinna.tasks == (
        "jcommonsenseqa-1.1-0.2",
        "jnli-1.1-0.2",
        "marc_ja-1.1-0.2",
        "jsquad-1.1-0.2",
        "jaqket_v2-0.1-0.2",
        "xlsum_ja-1.0-0.0",
        "xwinograd_ja",
        "mgsm-1.0-0.0",
    )
    assert rinna.shots == (3, 3, 3, 2, 1, 1, 0, 5) and rinna.generation == "hf-causal"
    assert "models/rinna/" in rinna.mirrors
    assert PRESETS["llama2-7b"].generation == "hf-causal-experimental"
    assert "mgsm-1.0-0.3-d4bdbfa" in PRESETS["llama2-7b"].tasks
    assert all(key.endswith("-0.5") for key in PRESETS["rinna-bilingual"].tasks if key != "xwinograd_ja")
    assert set(KIND_PRESETS) == {"base", "instruction", "chat"} and set(KIND_PRESETS.values()) <= set(PRESETS)
    # the model kind picks the preset; bare task names resolve through it, with its shots
    chat = tmp_path / "chat"
    chat.mkdir()
    (chat / "youri.json").write_text(json.dumps({"stage": "sft", "config": {"kind": "chat"}, "parent": None}))
    keys = [sel.key for sel, _ in plan_tasks(_cfg(model=str(chat)))]
    assert keys == list(PRESETS["rinna-bilingual"].tasks)
    plan = plan_tasks(_cfg(model=str(tmp_path), tasks=["jnli", "mgsm"]))
    assert [(sel.key, sel.shots) for sel, _ in plan] == [("jnli-1.1-0.2", 3), ("mgsm-1.0-0.0", 5)]
    plan = plan_tasks(_cfg(model=str(tmp_path), preset="ja8", prompt_version="0.3", tasks=["jnli"]))
    assert [sel.key for sel, _ in plan] == ["jnli-1.3-0.3"]  # the suite file's JNLI 1.3


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"preset": "rinna2"}, "unknown preset 'rinna2'"),
        ({"preset": "rinna", "prompt_version": "0.3"}, "pins every task's prompt version"),
        ({"backend": "vllm", "preset": "rinna"}, "hf-causal"),
    ],
)
def test_bad_preset_choices_are_named_before_loading_a_model(tmp_path, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        run(_cfg(model=str(tmp_path / "no-model-here"), **kw))


# ----------------------------------------------------------------------------- rules without the harness


def test_hf_causal_rule_caps_truncates_stops_and_decodes_special_tokens(biased_llama):
    """hf-causal as gpt2.py/base.py do it, checked against a direct transformers call."""
    tok, model = load_tokenizer(biased_llama), load_model(biased_llama, device="cpu").eval()
    context = "質問：日本の首都はどこですか？\n答え：" * 40  # > 1024 tokens: truncated to 1024 - cap
    assert primary_stop_id(tok, ["<NL>"]) == tok.encode("<NL>", add_special_tokens=False)[-1]
    assert primary_stop_id(tok, ["</s>", "\n"]) == tok.eos_token_id
    for until, cap in ((["\n"], 7), (["</s>", "\n"], 30), (["<NL>"], 12)):
        got = hf_causal_generate(model, tok, context, until, cap, 1024, "cpu")
        ids = tok.encode(context, add_special_tokens=False)[-(1024 - cap) :]
        stop = primary_stop_id(tok, until)
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=cap, eos_token_id=stop, pad_token_id=stop, do_sample=False
        )[0, len(ids) :].tolist()
        want = tok.decode(out)
        for term in until:
            want = want.split(term)[0]
        assert got == want and len(out) <= cap
        assert out[-1] == stop or len(out) == cap


def test_per_request_cap_reaches_the_model_through_lm_eval(tmp_path, biased_llama):
    """Each JSQuAD request carries its own gold-length cap under hf-causal, 256-style one cap otherwise."""
    seen = {}
    for rule in ("hf-causal", "hf-causal-experimental"):
        out = tmp_path / rule
        assert (
            cli.main(
                [
                    "eval",
                    str(biased_llama),
                    "--tasks",
                    "[jsquad-1.1-0.2]",
                    "--data_dir",
                    str(shared_path()),
                    "--data",
                    json.dumps({"jsquad": DATA["jsquad"]}),
                    "--limit",
                    "3",
                    "--generation",
                    rule,
                    "--max_gen_toks",
                    str(MAX_GEN_TOKS),
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        docs = [json.loads(line) for line in (out / "samples" / "jsquad-1.1-0.2.jsonl").read_text().splitlines()]
        requests = [json.loads(line) for line in (out / "requests" / "jsquad-1.1-0.2.jsonl").read_text().splitlines()]
        seen[rule] = [d["max_gen_toks"] for d in docs]
        if rule == "hf-causal":
            assert seen[rule] == [r["max_new_tokens"] for r in requests] and len(set(seen[rule])) > 1
        metrics_json = json.loads((out / "metrics.json").read_text())
        assert metrics_json["generation"] == rule and metrics_json["preset"]["from"]["name"] == "rinna"
        assert metrics_json["preset"]["name"] == "custom"  # one task of rinna's eight: not the published run
    assert seen["hf-causal-experimental"] == [MAX_GEN_TOKS] * 3


def test_xwinograd_tie_compares_loglikelihood_then_greediness():
    doc = {"gold": 0}
    assert task_utils.process_winograd(doc, [(-3.0, True), (-3.0, False)])["acc"] == 1.0  # tie, gold greedy
    assert task_utils.process_winograd(doc, [(-3.0, False), (-3.0, True)])["acc"] == 0.0
    assert task_utils.process_winograd(doc, [(-3.0, False), (-3.0, False)])["acc"] == 0.0  # full tie: wrong
    assert task_utils.process_winograd({"gold": 1}, [(-4.0, True), (-3.0, False)])["acc"] == 1.0


def test_balanced_metrics_follow_the_harness_definitions():
    from sklearn.metrics import f1_score, matthews_corrcoef

    golds, preds = [0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 0, 2]
    accs = [float(g == p) for g, p in zip(golds, preds)]
    # per-class accuracy 2/3, 1/2, 1 -> mean 13/18
    assert metrics.balanced_mean(list(zip(accs, golds))) == pytest.approx(13 / 18)
    assert metrics.macro_f1(list(zip(golds, preds))) == pytest.approx(f1_score(golds, preds, average="macro"))
    assert matthews_corrcoef(golds, preds) != 0  # mcc itself is lm-eval's registered sklearn aggregation
    scores = [(0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]
    mid = metrics.rouge2_bootstrap(scores)
    assert 0.0 < mid < 1.0 and mid == metrics.rouge2_bootstrap(scores)  # seeded: reproducible


# ----------------------------------------------------------------------------- parity with the harness itself


def _youri_run(tmp_path, model, rule: str) -> Path:
    out = tmp_path / f"youri-{rule}"
    data = {k: v for k, v in DATA.items()}
    code = cli.main(
        [
            "eval",
            str(model),
            "--preset",
            "rinna",
            "--generation",
            rule,
            "--data_dir",
            str(shared_path()),
            "--data",
            json.dumps(data),
            "--limit",
            "3",
            "--max_gen_toks",
            str(MAX_GEN_TOKS),
            "--bootstrap_iters",
            "1000",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def _probe_answers(requests_dir: Path) -> dict[str, list]:
    """Given answers per document with known, varied outcomes (right, partly right, wrong, ties), so the
    metrics are compared on non-trivial values too: the tiny model scores ~0 on most tasks."""
    probes = {}
    for path in sorted(requests_dir.glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        answers = []
        for i, r in enumerate(records):
            gold = r["gold"]
            if r["task"] == "xwinograd_ja":
                answers.append(
                    [[[-1.0, True], [-1.0, False]], [[-1.0, False], [-1.0, True]], [[-2.0, False], [-1.0, False]]][
                        i % 3
                    ]
                )
            elif "continuations" in r:
                n = len(r["continuations"])
                answers.append([-1.0 - abs(c - (i + 1) % n) for c in range(n)])
            elif isinstance(gold, list):  # JSQuAD, JAQKET: exact, overlapping, wrong
                answers.append([[gold[0], f"{gold[0]}の一部", "わかりません"][i % 3]])
            elif isinstance(gold, str):  # XL-Sum
                answers.append([[gold, gold[: len(gold) // 2], "東京都は新しい政策を発表した。"][i % 3]])
            else:  # MGSM
                answers.append([[f"答えは{gold}です。", f"{gold + 1}", ""][i % 3]])
        probes[r["task"]] = answers
    return probes


def _youri_probe(requests_dir: Path, probes: dict[str, list], tokenizer) -> dict[str, dict[str, float]]:
    """youri's metric path (lm-eval task configs, process_results, aggregations) on the given answers."""
    from lm_eval.api.model import LM

    class Given(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [_pair(probes[r.doc["task"]][r.doc["doc_index"]][r.idx]) for r in requests]

        def generate_until(self, requests, disable_tqdm=False):
            return [probes[r.doc["task"]][r.doc["doc_index"]][0] for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    metrics.set_rouge_tokenizer(tokenizer)
    configs = []
    for path in sorted(requests_dir.glob("*.jsonl")):
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        configs.append(bridge.task_config(select(first["task"]), path, first.get("stop_sequences", []), max_gen_toks=8))
    results = bridge.evaluate(Given(), configs, bootstrap_iters=1000)
    return {key: {m: 100 * v for m, v in bridge.task_metrics(results, key).items()} for key in probes}


def _pair(value) -> tuple[float, bool]:
    return (value[0], value[1]) if isinstance(value, list) else (value, False)


def _harness_run(tmp_path, model, youri_out: Path, rule: str) -> dict:
    out = tmp_path / f"harness-{rule}.json"
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(_probe_answers(youri_out / "requests"), ensure_ascii=False), encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            str(REFERENCE),
            str(HARNESS),
            str(model),
            str(youri_out / "requests"),
            rule,
            "1000",
            str(MAX_GEN_TOKS),
            str(out),
            str(probe),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.skipif(
    not (HARNESS / "lm_eval" / "base.py").is_file(),
    reason=f"jp-stable harness source not found at {HARNESS} (kept in tests/reference/jp-stable-harness)",
)
@pytest.mark.parametrize("rule", ["hf-causal", "hf-causal-experimental"])
def test_per_document_parity_with_the_jp_stable_harness(tmp_path, biased_llama, rule):
    youri_out = _youri_run(tmp_path, biased_llama, rule)
    harness = _harness_run(tmp_path, biased_llama, youri_out, rule)
    ours = json.loads((youri_out / "metrics.json").read_text(encoding="utf-8"))
    tok = load_tokenizer(biased_llama)
    assert set(harness) == set(ours["tasks"]) and len(harness) == 8
    diverged = 0
    for key, reference in harness.items():
        docs = [json.loads(line) for line in (youri_out / "samples" / f"{key}.jsonl").read_text().splitlines()]
        requests = [json.loads(line) for line in (youri_out / "requests" / f"{key}.jsonl").read_text().splitlines()]
        same_docs = True
        for doc, request, ref in zip(docs, requests, reference["docs"], strict=True):
            assert doc["doc_index"] == ref["doc_index"] == request["doc_index"]
            if "generation" in doc:
                until, cap = ref["request"]
                assert until == request["stop_sequences"], key
                if rule == "hf-causal":
                    assert doc["max_gen_toks"] == cap == request["max_new_tokens"], key
                if doc["generation"] != ref["results"][0]:
                    # documented divergence: hf-causal-experimental returns "" when the context is
                    # longer than max_length - max_gen_toks; youri truncates it and generates
                    assert rule == "hf-causal-experimental" and ref["results"][0] == "", key
                    assert len(tok.encode(request["prompt"], add_special_tokens=False)) > 1024 - MAX_GEN_TOKS
                    diverged += 1
                    same_docs = False
            elif key == "xwinograd_ja":  # (loglikelihood, is_greedy) pairs
                assert [ll for ll, _ in doc["loglikelihoods"]] == pytest.approx(
                    [ll for ll, _ in ref["results"]], abs=1e-4
                ), key
                assert [g for _, g in doc["loglikelihoods"]] == [g for _, g in ref["results"]], key
            else:
                assert [ll for ll, _ in doc["loglikelihoods"]] == pytest.approx(ref["results"], abs=1e-4), key
        if not same_docs:
            continue
        for metric, value in reference["results"].items():
            scale = 1 if metric.split("_stderr")[0] in HARNESS_PERCENT else 100
            assert ours["tasks"][key]["metrics"][metric] == pytest.approx(scale * value, abs=1e-6), (key, metric)
    if rule == "hf-causal-experimental":
        assert diverged > 0  # the tiny window makes the harness's over-length path visible
    # the metrics once more on given answers with known outcomes (same names, same aggregation)
    given = _youri_probe(youri_out / "requests", _probe_answers(youri_out / "requests"), tok)
    nonzero = 0
    for key, reference in harness.items():
        for metric, value in reference["probe"].items():
            scale = 1 if metric.split("_stderr")[0] in HARNESS_PERCENT else 100
            assert given[key][metric] == pytest.approx(scale * value, abs=1e-6), (key, metric)
            nonzero += value != 0
    assert nonzero > 20
