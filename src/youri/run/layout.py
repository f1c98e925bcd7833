"""The run folder of ``youri pipeline``: one sub-folder per stage, named here and nowhere else.

RUN_DIR/init | vocab | data | pretrain | sft_instruction | sft_chat
       /quantize_{base,instruction,chat}          the GPTQ twins
       /eval_{base,instruction,chat}[_gptq]       one eval folder per model
       /ja_mt_bench_chat[_gptq]                   judged chat suites (when a judge is configured)
       /report                                    the report card
"""

from __future__ import annotations

VARIANTS = {"base": "pretrain", "instruction": "sft_instruction", "chat": "sft_chat"}
"""Model variant -> the stage folder holding its full-precision model."""
PRECISIONS = ("fp", "gptq")
TRAINING_STAGES = ("init", "pretrain", "sft_instruction", "sft_chat")
"""Stages whose metrics.json holds loss curves, in training order."""
REPORT = "report"


def model_folder(variant: str, precision: str = "fp") -> str:
    """The stage folder of a model variant at a precision (``fp`` or ``gptq``)."""
    return VARIANTS[variant] if precision == "fp" else f"quantize_{variant}"


def eval_folder(variant: str, precision: str = "fp") -> str:
    """The eval stage folder of a model variant at a precision."""
    return f"eval_{variant}" + ("" if precision == "fp" else "_gptq")


def chat_suite_folder(suite: str, variant: str, precision: str = "fp") -> str:
    """The eval folder of a judged chat suite (``ja-mt-bench`` -> ``ja_mt_bench_chat``) of a model."""
    return f"{suite.replace('-', '_')}_{variant}" + ("" if precision == "fp" else "_gptq")
