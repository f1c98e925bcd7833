"""What the Stability-AI jp-stable harness itself computes for youri's rendered requests (parity reference).

Run in a subprocess by tests/test_eval_parity.py, with the harness's source tree (branch jp-stable,
commit effdbea) given as HARNESS; nothing of youri is imported. The model is wrapped in the harness's
own LM classes -- ``hf-causal`` = ``lm_eval/models/gpt2.py`` HFLM on ``lm_eval/base.py`` BaseLM,
``hf-causal-experimental`` = ``lm_eval/models/huggingface.py`` AutoCausalLM -- built with ``__new__``
around the already loaded model (their constructors download by name). Each task's own
``construct_requests`` (generation caps, stop strings, continuations), ``process_results`` and
``aggregation`` run on youri's rendered contexts (those are checked byte for byte against the
reference vectors elsewhere), and requests are answered and routed back as ``evaluator.evaluate`` does.

Stand-ins, each because the original cannot load offline or under datasets >= 3: the module
``lm_eval/tasks/__init__.py`` (it imports every English task) is skipped; ``lm_eval/jasquad/jasquad.py``
(a ``datasets.Metric``) is replaced by its ``_compute`` body around ``lm_eval/jasquad/evaluate.py``;
``omegaconf`` (imported, unused here) is stubbed when absent. Historical task keys use the HEAD class
with the same request/metric code: ``jnli-1.1-*`` -> ``jnli-1.3-*`` (only the label words differ, and
they come from the rendered continuations), ``jaqket_v2-0.1-*`` -> ``0.2``, ``mgsm-1.0-0.3-d4bdbfa`` ->
``mgsm-1.0-0.3``.

Usage: python jp_stable_reference.py HARNESS MODEL REQUESTS_DIR RULE BOOTSTRAP_ITERS MAX_GEN_TOKS OUT.json [PROBE.json]
(MAX_GEN_TOKS: the wrapper's ``max_gen_toks``; hf-causal hard-codes 256, overridden here to match youri's run.
PROBE: ``{task key: [per-document results]}`` scored like the model's, for metrics on non-trivial answers.)
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path


def import_harness(root: str):
    sys.path.insert(0, root)
    tasks = types.ModuleType("lm_eval.tasks")
    tasks.__path__ = [f"{root}/lm_eval/tasks"]
    sys.modules["lm_eval.tasks"] = tasks
    try:
        import omegaconf  # noqa: F401
    except ImportError:
        stub = types.ModuleType("omegaconf")
        stub.OmegaConf = None
        sys.modules["omegaconf"] = stub
    import lm_eval.jasquad

    jasquad = types.ModuleType("lm_eval.jasquad.jasquad")
    jasquad.__file__ = f"{root}/lm_eval/jasquad/jasquad.py"
    sys.modules["lm_eval.jasquad.jasquad"] = jasquad
    lm_eval.jasquad.jasquad = jasquad
    return importlib.import_module("lm_eval.base")


class JaSquadMetric:
    """``lm_eval/jasquad/jasquad.py`` ``JaSquad._compute`` without the ``datasets.Metric`` wrapper."""

    def compute(self, predictions, references):
        from lm_eval.jasquad.evaluate import evaluate

        pred_dict = {p["id"]: p["prediction_text"] for p in predictions}
        dataset = [
            {
                "paragraphs": [
                    {
                        "qas": [
                            {"answers": [{"text": t} for t in r["answers"]["text"]], "id": r["id"]} for r in references
                        ]
                    }
                ]
            }
        ]
        return evaluate(dataset=dataset, predictions=pred_dict)


MODULES = {
    "jcommonsenseqa": "jcommonsenseqa",
    "jnli": "jnli",
    "marc_ja": "marc_ja",
    "jsquad": "jsquad",
    "jaqket_v2": "jaqket_v2",
    "xlsum_ja": "xlsum_ja",
    "xwinograd_ja": "xwinograd_ja",
    "mgsm": "mgsm",
}


def head_key(key: str) -> str:
    return key.replace("jnli-1.1-", "jnli-1.3-").replace("jaqket_v2-0.1-", "jaqket_v2-0.2-").replace("-d4bdbfa", "")


def task_object(key: str, lm):
    name = key.split("-")[0]
    module = importlib.import_module(f"lm_eval.tasks.ja.{MODULES[name]}")
    cls = module.XWinograd if name == "xwinograd_ja" else module.construct_tasks()[head_key(key)]
    task = cls.__new__(cls)  # Task.__init__ downloads the dataset
    task._training_docs = task._fewshot_docs = task._target_to_docs = task._target_to_ratio = None
    if getattr(task, "LOAD_TOKENIZER", False):  # evaluator.evaluate does this
        task.set_tokenizer(lm.tokenizer)
    task.max_length, task.max_gen_toks = lm.max_length, lm.max_gen_toks
    task.jasquad_metric = task.jasqaud_metric = JaSquadMetric()  # jaqket_v2.py spells it "jasqaud"
    task.doc_to_text = lambda doc: ""  # only used for the "details" of process_results
    return task


def harness_doc(name: str, record: dict) -> dict:
    """The fields of the harness's doc that construct_requests/process_results read."""
    gold = record["gold"]
    if name in ("jcommonsenseqa", "jnli", "marc_ja"):
        return {"choices": record["continuations"], "gold": gold, "goal": "", "query": ""}
    if name == "xwinograd_ja":
        return {
            "sentence1": record["continuations"][0],
            "sentence2": record["continuations"][1],
            "answer": str(gold + 1),
        }
    if name in ("jsquad", "jaqket_v2"):
        return {
            "id": str(record["doc_id"]),
            "qid": str(record["doc_id"]),
            "question": "",
            "answers": {"text": gold, "answer_start": [-1] * len(gold)},
        }
    if name == "xlsum_ja":
        return {"text": "", "summary": gold}
    return {"question": "", "answer_number": gold, "context": record["prompt"]}  # mgsm


def build_lm(base, rule: str, model, tokenizer, max_gen_toks: int):
    import torch

    device = torch.device("cpu")
    if rule == "hf-causal":
        from lm_eval.models.gpt2 import HFLM

        cls = type("HFLM", (HFLM,), {"max_gen_toks": property(lambda self: max_gen_toks)})
        lm = cls.__new__(cls)
        base.LM.__init__(lm)
        lm.gpt2, lm.tokenizer, lm._device, lm.batch_size_per_gpu = model, tokenizer, device, 1
        lm.vocab_size = tokenizer.vocab_size
        return lm
    from lm_eval.models.huggingface import AutoCausalLM

    lm = AutoCausalLM.__new__(AutoCausalLM)
    base.LM.__init__(lm)
    tokenizer.pad_token = tokenizer.eos_token  # _create_auto_tokenizer does both
    tokenizer.padding_side = "left"
    lm.model, lm.tokenizer, lm._config, lm._device = model, tokenizer, model.config, device
    lm._batch_size, lm._max_gen_toks, lm._max_length, lm._add_special_tokens = 1, max_gen_toks, None, None
    return lm


def results_of(answers: list) -> list:
    return [r for _, r in sorted(answers, key=lambda x: x[0])]


def score(task, docs: list[dict], results: list[list], bootstrap_iters: int) -> dict[str, float]:
    """``process_results`` per document, then ``evaluator.evaluate``'s aggregation and stderr rule."""
    import numpy as np
    from lm_eval import metrics

    vals: dict[str, list] = {}
    for doc, result in zip(docs, results):
        scores = task.process_results(doc, list(result))
        scores.pop("details", None)
        for metric, value in scores.items():
            vals.setdefault(metric, []).append(value)
    np.random.seed(1234)  # simple_evaluate's seed; XL-Sum's bootstrap draws from NumPy's global RNG
    aggregated = {}
    for metric, items in vals.items():
        agg = task.aggregation()[metric]
        aggregated[metric] = float(agg(items))
        stderr = metrics.stderr_for_metric(metric=agg, bootstrap_iters=bootstrap_iters)
        if stderr is not None:
            aggregated[f"{metric}_stderr"] = float(stderr(items))
    return aggregated


def main(harness, model_dir, requests_dir, rule, bootstrap_iters, max_gen_toks, out, probe="") -> None:
    try:
        base = import_harness(harness)
    except ImportError as err:  # a dependency of the harness is missing: the caller skips, naming it
        print(f"jp-stable harness cannot be imported: {err}", file=sys.stderr)
        sys.exit(3)
    import transformers

    probes = json.loads(Path(probe).read_text(encoding="utf-8")) if probe else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    lm = build_lm(base, rule, model, tokenizer, int(max_gen_toks))
    report = {}
    for path in sorted(Path(requests_dir).glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        key, name = records[0]["task"], records[0]["task"].split("-")[0]
        task = task_object(key, lm)
        docs = [harness_doc(name, r) for r in records]
        # evaluator.evaluate: collect requests per type, answer them in one call, route back by index
        requests, origin = {}, {}
        for doc_id, (doc, record) in enumerate(zip(docs, records)):
            reqs = task.construct_requests(doc, record["prompt"])
            for i, req in enumerate(reqs if isinstance(reqs, (list, tuple)) else [reqs]):
                requests.setdefault(req.request_type, []).append(req)
                origin.setdefault(req.request_type, []).append((i, doc_id))
        answers = {doc_id: [] for doc_id in range(len(docs))}
        raw = {doc_id: [] for doc_id in range(len(docs))}
        for reqtype, reqs in requests.items():
            resps = getattr(lm, reqtype)([req.args for req in reqs])
            for resp, req, (i, doc_id) in zip(resps, reqs, origin[reqtype]):
                raw[doc_id].append((i, list(req.args[1:]) if reqtype == "greedy_until" else None, resp))
                answers[doc_id].append((i, resp if req.index is None else resp[req.index]))
        per_doc = []
        for doc_id in range(len(docs)):
            entry = {
                "doc_index": records[doc_id]["doc_index"],
                "results": [list(r) if isinstance(r, tuple) else r for r in results_of(answers[doc_id])],
            }
            gen = [x for x in sorted(raw[doc_id], key=lambda x: x[0]) if x[1] is not None]
            if gen:
                entry["request"] = gen[0][1]
            per_doc.append(entry)
        results = [results_of(answers[doc_id]) for doc_id in range(len(docs))]
        report[key] = {"docs": per_doc, "results": score(task, docs, results, int(bootstrap_iters))}
        if key in probes:  # given answers instead of the model's: the metrics on non-trivial values
            given = [[tuple(r) if isinstance(r, list) else r for r in answer] for answer in probes[key]]
            report[key]["probe"] = score(task, docs, given, int(bootstrap_iters))
    Path(out).write_text(json.dumps(report, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
