"""The eight JP-8 tasks of the Stability-AI jp-stable harness, one module each, and their registry.

A task is named as in the harness: ``jcommonsenseqa-1.1-0.3`` (name, task VERSION, prompt version),
or by its bare name (``jnli``), which takes the default task VERSION and the prompt version chosen for
the model kind. ``xwinograd_ja`` has no prompt version. ``base`` holds the shared prompt machinery and
``formats`` the readers for the files the harness's datasets come in (JSON Lines, JSON array, CSV, Parquet).
"""

from __future__ import annotations

from dataclasses import dataclass

from youri.config import ConfigError
from youri.eval.tasks import jaqket_v2, jcommonsenseqa, jnli, jsquad, marc_ja, mgsm, xlsum_ja, xwinograd_ja
from youri.eval.tasks.base import Prompt, TaskDef, Variant, task_key

# The JP-8 suite: its eight tasks in the harness's order, with their standard shots (3,3,3,2,1,1,0,5).
JP8: tuple[TaskDef, ...] = (
    jcommonsenseqa.TASK,
    jnli.TASK,
    marc_ja.TASK,
    jsquad.TASK,
    jaqket_v2.TASK,
    xlsum_ja.TASK,
    xwinograd_ja.TASK,
    mgsm.TASK,
)
# Tasks outside JP-8. Adding a task is its module (one TaskDef: data, prompts, metric, lm-eval twin, Hub
# sources) plus one line here (or in JP8).
OTHER: tuple[TaskDef, ...] = ()
TASKS: dict[str, TaskDef] = {t.name: t for t in JP8 + OTHER}

# lm_eval/prompts.py short names of the prompt versions.
PROMPT_ALIASES = {
    "user": "0.0",
    "jgpt": "0.1",
    "fintan": "0.2",
    "fintan2": "0.2.1",
    "ja-alpaca": "0.3",
    "rinna-sft": "0.4",
    "rinna-bilingual": "0.5",
    "llama2": "0.6",
}
# Prompt version per model kind: instruction -> the Alpaca-ja prompt, chat -> the "ユーザー:/システム:" one.
KIND_PROMPTS = {"instruction": "0.3", "chat": "0.5"}


@dataclass(frozen=True)
class Selected:
    """One task of a run: the task, its VERSION and prompt version, and the shots to use."""

    task: TaskDef
    variant: str
    prompt_name: str
    shots: int

    @property
    def key(self) -> str:
        return task_key(self.task, self.variant, self.prompt_name)

    @property
    def prompt(self) -> Prompt:
        return self.variant_def.prompts[self.prompt_name]

    @property
    def variant_def(self) -> Variant:
        return self.task.variants[self.variant]


def select(spec: str, *, model_kind: str = "base", prompt_version: str = "", shots: int | None = None) -> Selected:
    """Parse ``name[-VERSION[-PROMPT]]`` into a ``Selected`` task, or raise ``ConfigError`` naming it."""
    name, _, rest = spec.partition("-")
    if name not in TASKS:
        raise ConfigError(
            f"unknown task '{spec}'; choose from: {', '.join(TASKS)} "
            "(optionally with -VERSION-PROMPT, e.g. jcommonsenseqa-1.1-0.3)"
        )
    task = TASKS[name]
    variant, _, prompt_name = rest.partition("-")
    variant = variant or task.default_variant
    if variant not in task.variants:
        raise ConfigError(f"task '{spec}': unknown task version '{variant}'; {name} has {', '.join(task.variants)}")
    prompts = task.variants[variant].prompts
    if task.kind == "winograd":
        if prompt_name:
            raise ConfigError(f"task '{spec}': xwinograd_ja has no prompt version")
    else:
        prompt_name = PROMPT_ALIASES.get(prompt_name, prompt_name) or _default_prompt(task, model_kind, prompt_version)
        if prompt_name not in prompts:
            raise ConfigError(
                f"task '{spec}': unknown prompt version '{prompt_name}'; {name}-{variant} has {', '.join(prompts)}"
            )
    return Selected(task, variant, prompt_name, task.shots if shots is None else shots)


def _default_prompt(task: TaskDef, model_kind: str, prompt_version: str) -> str:
    if prompt_version:
        return PROMPT_ALIASES.get(prompt_version, prompt_version)
    if model_kind not in ("base", *KIND_PROMPTS):
        raise ConfigError(f"unknown model kind '{model_kind}'; choose base, instruction or chat")
    return KIND_PROMPTS.get(model_kind, task.base_prompt)


__all__ = ["JP8", "TASKS", "Selected", "select", "PROMPT_ALIASES", "KIND_PROMPTS"]
