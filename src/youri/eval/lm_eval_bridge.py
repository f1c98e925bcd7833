"""Running youri's rendered jp-stable requests through EleutherAI lm-eval (0.4.x).

lm-eval does the engine work: batching, the ``hf`` / ``vllm`` model backends, the request cache
(``use_cache``: an SQLite file of model answers), per-document ``process_results`` and the standard
errors of the means. youri adds the minimum lm-eval cannot express:

1. the prompts: jp-stable's seeded few-shot sampler, separators and over-length rules are rendered by
   ``youri.eval.tasks.base`` and handed to lm-eval as 0-shot documents (``lm_eval_tasks/*.yaml`` read those
   JSON Lines files locally: ``dataset_path: json`` + ``data_files``);
2. the request tokenisation: lm-eval moves a context's trailing whitespace into the continuation and
   encodes the pair jointly; jp-stable encodes context and continuation **separately**, with no BOS,
   and scores an empty context after EOS (protocol 2.5). ``SeparatePairEncoding`` restores that.

Generation follows the run's rule (``youri.eval.generation``): under ``hf-causal`` every request
carries its own cap (the rendered ``max_new_tokens``) as a per-request lm-eval generation argument
(``PerRequestCap``) and ``HfCausalGeneration`` answers it as the harness's hf-causal wrapper does;
under ``hf-causal-experimental`` every request gets ``max_gen_toks`` and lm-eval's own generation.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.api.task import ConfigurableTask
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from youri.config import ConfigError
from youri.eval import metrics
from youri.eval.generation import HF_CAUSAL, hf_causal_generate
from youri.eval.tasks import Selected

YAML_DIR = Path(__file__).resolve().parent / "tasks" / "lm_eval_tasks"
TEMPLATES = {"mc": "youri_jp_mc.yaml", "winograd": "youri_jp_winograd.yaml", "gen": "youri_jp_gen.yaml"}
BALANCED = {"jnli", "marc_ja"}  # the harness's BalancedMultipleChoiceTask subclasses (lm_eval/tasks/ja)
# Generation metrics and their aggregation: JaSQuAD EM/F1 are means over the (unique) question ids,
# XL-Sum's ROUGE-2 the harness's bootstrap median, MGSM's accuracy a mean.
GEN_METRICS = {
    "exact_match": {"exact_match": "mean", "f1": "mean"},
    "acc": {"acc": "mean"},
    "rouge2": {"rouge2": metrics.rouge2_bootstrap},
}
PER_REQUEST_CAP = "youri_per_request_cap"  # task-config key popped before lm-eval sees the config


def offline_env() -> None:
    """No hub access from lm-eval or datasets: every task reads local files. Bootstrapped stderrs run in
    this process (lm-eval's own switch; same seeds and draws as its pool): forking a process that holds
    torch and tokenizer threads can deadlock."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DISABLE_MULTIPROC"):
        os.environ.setdefault(name, "1")


def task_config(
    selected: Selected,
    requests_path: str | os.PathLike,
    stops: list[str],
    *,
    max_gen_toks: int,
    per_request_cap: bool = False,
) -> dict[str, Any]:
    """The lm-eval task config (a dict, loaded from youri's YAML template) for one rendered task.
    ``per_request_cap``: each generation request asks for its own ``max_new_tokens`` (hf-causal)."""
    template = TEMPLATES[selected.task.kind]
    if selected.task.kind == "mc" and selected.task.name in BALANCED:
        template = "youri_jp_mc_balanced.yaml"
    cfg = dict(load_yaml(YAML_DIR / template, resolve_func=True))
    cfg["task"] = selected.key
    cfg["dataset_kwargs"] = {"data_files": {"test": str(requests_path)}}
    if selected.task.kind == "gen":
        cfg["generation_kwargs"] = {"until": list(stops), "do_sample": False, "max_gen_toks": max_gen_toks}
        cfg["metric_list"] = [
            {"metric": m, "aggregation": agg, "higher_is_better": True}
            for m, agg in GEN_METRICS[selected.task.metric].items()
        ]
        cfg[PER_REQUEST_CAP] = per_request_cap
    return cfg


class PerRequestCap(ConfigurableTask):
    """A generation task whose every request carries its document's ``max_new_tokens`` as its own
    ``max_gen_toks`` generation argument (hf-causal's DYNAMIC_MAX_LENGTH cap: JSQuAD/JAQKET the longest
    gold answer, XL-Sum the summary + 10 tokens), instead of the task-wide setting."""

    def construct_requests(self, doc: dict, ctx, **kwargs):
        requests = super().construct_requests(doc, ctx, **kwargs)
        for request in requests if isinstance(requests, list) else [requests]:
            context, gen_kwargs, *rest = request.arguments
            request.arguments = (context, {**gen_kwargs, "max_gen_toks": doc["max_new_tokens"]}, *rest)
        return requests


def _task(cfg: dict[str, Any]) -> ConfigurableTask | dict[str, Any]:
    if PER_REQUEST_CAP not in cfg:
        return cfg  # not one of youri's generation configs (e.g. lm-eval's japanese_leaderboard YAML)
    cfg = dict(cfg)
    return PerRequestCap(config=cfg) if cfg.pop(PER_REQUEST_CAP) else ConfigurableTask(config=cfg)


class SeparatePairEncoding:
    """Mixin for lm-eval LMs: jp-stable's ``(enc(context), enc(continuation))``, nothing moved or merged."""

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return self.tok_encode(context, add_special_tokens=False), self.tok_encode(
            continuation, add_special_tokens=False
        )


class HfCausalGeneration:
    """Mixin for lm-eval's ``hf`` LM: with ``generation_rule = "hf-causal"`` generation requests are
    answered one by one as the harness's hf-causal wrapper does (``youri.eval.generation``), each with
    its request's own ``max_gen_toks``; otherwise lm-eval's generation (= hf-causal-experimental)."""

    generation_rule = "hf-causal-experimental"

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self.generation_rule != HF_CAUSAL:
            return super().generate_until(requests, disable_tqdm)
        out = []
        for request in requests:
            context, gen_kwargs = request.args[:2]
            text = hf_causal_generate(
                self.model,
                self.tokenizer,
                context,
                gen_kwargs["until"],
                gen_kwargs.get("max_gen_toks", self.max_gen_toks),
                self.max_length,
                self.device,
            )
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


@lru_cache(maxsize=None)
def _lm_class(backend: str):
    if backend == "hf":
        return type("JpStableHFLM", (SeparatePairEncoding, HfCausalGeneration, HFLM), {})
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM  # optional: vllm is not a youri dependency

        return type("JpStableVLLM", (SeparatePairEncoding, VLLM), {})
    if backend == "server":
        try:  # optional: lm-eval's API models need its [api] extra (tenacity, aiohttp, requests)
            from lm_eval.models.openai_completions import LocalCompletionsAPI
        except ImportError as err:
            raise ConfigError(
                f"eval --server needs lm-eval's API extra ({err.name} is missing): pip install 'lm-eval[api]'"
            ) from err
        return type("JpStableServerLM", (SeparatePairEncoding, LocalCompletionsAPI), {})
    raise ValueError(f"unknown backend '{backend}' (hf, vllm or server)")


def hf_lm(model, tokenizer, *, batch_size: int | str, max_length: int, generation: str = "hf-causal-experimental"):
    """lm-eval's ``hf`` backend around an already loaded model (youri.model.load_model: GPTQ included),
    generating by ``generation`` (``hf-causal`` or ``hf-causal-experimental``)."""
    lm = _lm_class("hf")(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        add_bos_token=False,
        prefix_token_id=tokenizer.eos_token_id,
    )
    lm.generation_rule = generation
    return lm


def vllm_lm(model_path: str, tokenizer, *, batch_size: int | str, max_length: int, dtype: str):
    """lm-eval's ``vllm`` backend (needs ``pip install vllm`` and a GPU; lm-eval loads the path itself)."""
    lm = _lm_class("vllm")(
        pretrained=str(model_path),
        tokenizer=str(model_path),
        batch_size=batch_size,
        max_length=max_length,
        dtype=dtype,
        add_bos_token=False,
        prefix_token_id=tokenizer.eos_token_id,
    )
    # lm-eval loaded its own tokenizer from the folder: give it the harness's reading of "<s>" in prompt
    # text that ``evaluate`` gives youri's (an SFT folder's tokenizer keeps such strings as text).
    lm.tokenizer.split_special_tokens = tokenizer.split_special_tokens
    return lm


def server_lm(url: str, tokenizer, tokenizer_path: str, *, model_name: str, batch_size: int | str, max_length: int):
    """lm-eval's ``local-completions`` model against any OpenAI-compatible ``/v1/completions`` server.

    Multiple-choice requests are sent as token ids, jp-stable's separate pair encoding (``SeparatePairEncoding``;
    an empty context is the EOS id), one request body per batch of ``batch_size`` documents::

        {"model": NAME, "prompt": [[id, ...], ...], "max_tokens": 1, "echo": true, "logprobs": 1,
         "temperature": 0, "seed": 1234}

    and lm-eval reads, per choice (``index`` = the prompt's position in the batch), ``logprobs.token_logprobs``
    (one per prompt token, the first ``null``, then the one generated token, which it drops) and
    ``logprobs.top_logprobs`` (per position a ``{token: logprob}`` map holding the most likely token: the
    greedy check). A continuation's log-likelihood is the sum over its tokens. Generation requests
    (``hf-causal-experimental``) send ``prompt`` ids with ``max_tokens``, ``stop`` and ``temperature: 0``
    and read ``choices[i].text``. The tokenizer is the model folder's, loaded here, so that the ids
    are the ones in-process ``youri eval`` scores."""
    lm = _lm_class("server")(
        base_url=url,
        model=model_name,
        tokenizer_backend="huggingface",
        tokenizer=str(tokenizer_path),
        batch_size=batch_size,
        max_length=max_length,
        add_bos_token=False,
        custom_prefix_token_id=tokenizer.eos_token_id,
        tokenized_requests=True,
    )
    lm.tokenizer = tokenizer  # youri's reading of "<s>" in prompt text (split_special_tokens=False)
    return lm


def evaluate(
    lm,
    configs: list[dict[str, Any]],
    *,
    cache: str = "",
    limit: int | None = None,
    full: bool = False,
    bootstrap_iters: int = 1000,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on task configs: its ``results`` by task (``full``: the whole output,
    per-document ``samples`` included). youri's own tasks come pre-limited, so ``limit`` is for others.
    ``bootstrap_iters``: resamples of bootstrapped stderrs (MCC); the harness's runs used 100,000."""
    offline_env()

    # The configs are complete; indexing lm-eval's thousands of built-in YAMLs would cost ~15 s a run.
    manager = TaskManager(include_path=str(YAML_DIR), include_defaults=False)
    out = simple_evaluate(
        model=lm,
        tasks=[_task(cfg) for cfg in configs],
        task_manager=manager,
        use_cache=cache or None,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        log_samples=full,
        random_seed=1234,
        numpy_random_seed=1234,
        torch_random_seed=1234,
    )
    return out if full else out["results"]


def task_metrics(results: dict[str, Any], key: str) -> dict[str, float]:
    """``{"acc": 0.41, "acc_stderr": 0.05, ...}`` from lm-eval's ``"acc,none"`` naming."""
    metrics = {}
    for name, value in results.get(key, {}).items():
        if "," not in name or not isinstance(value, (int, float)):
            continue
        metric, _ = name.split(",", 1)
        metrics[metric] = float(value)
    return metrics


def per_document(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON-ready record per scored document from lm-eval's logged samples: the log-likelihood
    pairs ``[ll, is_greedy]`` of each continuation, or the generation and the cap it was asked with,
    plus the document's metric values."""
    out = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        doc = sample["doc"]
        record: dict[str, Any] = {"doc_index": doc["doc_index"], "doc_id": doc["doc_id"]}
        if "continuations" in doc:
            record["loglikelihoods"] = [[float(ll), bool(greedy)] for ll, greedy in sample["filtered_resps"]]
        else:
            gen_kwargs = sample["arguments"][0][1]
            record["generation"] = sample["filtered_resps"][0]
            record["max_gen_toks"] = gen_kwargs.get("max_gen_toks")
        for name in sample.get("metrics", []):
            value = sample.get(name)
            record[name] = [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)
        out.append(record)
    return out
