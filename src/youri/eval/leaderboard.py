"""lm-eval's own ``japanese_leaderboard`` tasks as a second suite, pointed at the same local files.

These are lm-eval 0.4.13's YAML tasks (``lm_eval/tasks/japanese_leaderboard``), used unchanged except
for their data source: each task's ``dataset_path`` (``Rakuten/JGLUE``, ``kumapo/JAQKET``,
``mkshing/xlsum_ja``, ``juletxara/mgsm``, ``polm-stability/xwinograd-ja``) is replaced by ``json`` files
that youri writes in the Hugging Face schema those YAMLs expect (JNLI/MARC-ja labels as ClassLabel
indices, JSQuAD flattened, JAQKET ``ctxs`` as a mapping of lists, MGSM as question/answer/answer_number).
Its prompts (Alpaca-ja with full-width colons), few-shot sampler (lm-eval's, seed 1234), target
delimiter and metrics (MeCab ROUGE-2 with bootstrap) are lm-eval's, *not* jp-stable's: the numbers
are not comparable with the jp-stable suite's. Needs ``fugashi``/``unidic-lite``/``neologdn``/``emoji``/
``rouge_score`` (youri's dependencies) and nothing from the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval
from lm_eval.tasks._yaml_loader import load_yaml

from youri.eval import lm_eval_bridge as bridge
from youri.eval.tasks import Selected
from youri.io import write_jsonl


def yaml_dir() -> Path:
    return Path(lm_eval.__file__).resolve().parent / "tasks" / "japanese_leaderboard"


def task_config(sel: Selected, paths: dict[str, str], folder: Path) -> dict[str, Any]:
    """lm-eval's YAML for the task with its data redirected to JSON files converted from ``paths``."""
    name = sel.task.name
    cfg = dict(load_yaml(yaml_dir() / f"{sel.task.leaderboard}.yaml", resolve_func=True))
    scored = "test" if cfg.get("test_split") else "validation"
    files = {scored: _convert(sel, paths["eval"], folder / f"{name}-{scored}.jsonl", sel.task.load_eval)}
    if "fewshot" in paths:
        files["train"] = _convert(sel, paths["fewshot"], folder / f"{name}-train.jsonl", sel.task.load_fewshot)
    cfg.update(
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": files},
        training_split="train" if "train" in files else None,
        validation_split="validation" if scored == "validation" else None,
    )
    if "train" not in files:
        cfg.update(fewshot_split=None, num_fewshot=0)
    else:
        cfg["num_fewshot"] = sel.shots
    return cfg


def _convert(sel: Selected, source: str, target: Path, loader) -> str:
    write_jsonl(target, [sel.task.hf_row(doc) for doc in loader(source)])
    return str(target)


def task_scores(output: dict[str, Any], runnable: list[Selected]) -> dict[str, dict[str, Any]]:
    """Per lm-eval task key: the score entry of metrics.json, read from lm-eval's ``simple_evaluate`` output."""
    tasks = {}
    for sel in runnable:
        key, metric = sel.task.leaderboard, sel.task.leaderboard_metric
        raw = bridge.task_metrics(output["results"], key)
        samples = output.get("samples", {}).get(key) or [{}]
        tasks[key] = {
            "metric": metric,
            "score": 100 * raw.get(metric, float("nan")),
            "stderr": 100 * raw.get(f"{metric}_stderr", float("nan")),
            "chance": round(sel.task.chance, 2),
            "n": len(output.get("samples", {}).get(key, [])),
            "shots": sel.shots,
            "metrics": {k: 100 * v for k, v in raw.items()},
            "first_prompt": _first_prompt(samples[0]),
        }
    return tasks


def _first_prompt(sample: dict) -> str | None:
    arguments = sample.get("arguments")
    if not arguments:
        return None
    first = arguments[0] if isinstance(arguments, (list, tuple)) else arguments
    if isinstance(first, dict):  # lm-eval >= 0.4.9 logs {"gen_args_0": {"arg_0": ctx, ...}}
        first = next(iter(first.values()))
        return first.get("arg_0") if isinstance(first, dict) else str(first)
    return first[0] if isinstance(first, (list, tuple)) else str(first)
