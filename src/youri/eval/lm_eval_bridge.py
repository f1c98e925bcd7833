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

Generation follows the harness's ``hf-causal-experimental`` wrapper: stop strings + EOS, at most
``max_gen_toks`` new tokens for every request (the ``hf-causal`` per-request gold-length cap is recorded
in the requests as ``max_new_tokens`` but lm-eval has one generation setting per task).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

from youri.eval.tasks import Selected

YAML_DIR = Path(__file__).resolve().parent / "tasks" / "lm_eval_tasks"
TEMPLATES = {"mc": "youri_jp_mc.yaml", "winograd": "youri_jp_winograd.yaml", "gen": "youri_jp_gen.yaml"}
GEN_METRICS = {"exact_match": ("exact_match", "f1"), "acc": ("acc",), "rouge2": ("rouge2",)}


def offline_env() -> None:
    """No hub access from lm-eval or datasets: every task reads local files."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")


def task_config(
    selected: Selected, requests_path: str | os.PathLike, stops: list[str], *, max_gen_toks: int
) -> dict[str, Any]:
    """The lm-eval task config (a dict, loaded from youri's YAML template) for one rendered task."""

    cfg = dict(load_yaml(YAML_DIR / TEMPLATES[selected.task.kind], resolve_func=True))
    cfg["task"] = selected.key
    cfg["dataset_kwargs"] = {"data_files": {"test": str(requests_path)}}
    if selected.task.kind == "gen":
        cfg["generation_kwargs"] = {"until": list(stops), "do_sample": False, "max_gen_toks": max_gen_toks}
        cfg["metric_list"] = [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in GEN_METRICS[selected.task.metric]
        ]
    return cfg


class SeparatePairEncoding:
    """Mixin for lm-eval LMs: jp-stable's ``(enc(context), enc(continuation))``, nothing moved or merged."""

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return self.tok_encode(context, add_special_tokens=False), self.tok_encode(
            continuation, add_special_tokens=False
        )


@lru_cache(maxsize=None)
def _lm_class(backend: str):
    if backend == "hf":
        base = HFLM
    elif backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM as base  # optional: vllm is not a youri dependency
    else:
        raise ValueError(f"unknown backend '{backend}' (hf or vllm)")
    return type(f"JpStable{base.__name__}", (SeparatePairEncoding, base), {})


def hf_lm(model, tokenizer, *, batch_size: int | str, max_length: int):
    """lm-eval's ``hf`` backend around an already loaded model (youri.model.load_model: GPTQ included)."""
    return _lm_class("hf")(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        add_bos_token=False,
        prefix_token_id=tokenizer.eos_token_id,
    )


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


def evaluate(
    lm, configs: list[dict[str, Any]], *, cache: str = "", limit: int | None = None, full: bool = False
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on task configs: its ``results`` by task (``full``: the whole output,
    per-document ``samples`` included). youri's own tasks come pre-limited, so ``limit`` is for others."""
    offline_env()

    # The configs are complete; indexing lm-eval's thousands of built-in YAMLs would cost ~15 s a run.
    manager = TaskManager(include_path=str(YAML_DIR), include_defaults=False)
    out = simple_evaluate(
        model=lm,
        tasks=configs,
        task_manager=manager,
        use_cache=cache or None,
        limit=limit,
        bootstrap_iters=1000,
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
