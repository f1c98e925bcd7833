"""The run folder of ``youri pipeline``: one sub-folder per stage, named here and nowhere else.

RUN_DIR/init | vocab | data | pretrain                  the base model (the ``base`` variant)
       /<model stage>...                                 MODEL_STAGES below, those the recipe's chain names
       /quantize_<variant>                               the GPTQ twins
       /eval_<variant>[_gptq]                            one eval folder per model
       /ja_mt_bench_chat[_gptq]                          judged chat suites (when a judge is configured)
       /report                                           the report card

A model stage after pretraining is one row of ``MODEL_STAGES``: adding a stage is its module plus one row
here. The pipeline wires each row's inputs, then quantizes and evaluates every row that has a variant; the
report and its figures show the variants whose folders exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelStage:
    """One model-making stage after pretraining: its folder and recipe section are ``name``."""

    name: str
    module: str
    inputs: dict[str, str] = field(default_factory=dict)
    """Config field -> the upstream stage folder it receives. A dotted path with an index addresses a list
    item (``models.1.model``). A field is wired only when its upstream stage is planned; otherwise the recipe's
    own value stays (e.g. a real instruct model instead of the ``base_instruct`` stand-in)."""
    variant: str = ""
    """The model's name in the report ("" = an intermediate model: not quantized, evaluated or reported)."""
    color: str = "#888888"
    """The variant's colour in the report's figures."""
    trains: bool = True
    """Whether its metrics.json holds a loss curve."""


BASE = ModelStage("pretrain", "youri.train.pretrain", variant="base", color="#4c72b0")
"""The continued-pretrained base (wired by the pipeline: its model is the init / vocab / given base)."""

MODEL_STAGES = (
    ModelStage("sft_instruction", "youri.train.sft", {"model": "pretrain"}, "instruction", "#55a868"),
    ModelStage("sft_chat", "youri.train.sft", {"model": "pretrain"}, "chat", "#c44e52"),
    # rinna 2024-25 (recipes/demo-youko.yaml): the base's instruct model (a stand-in SFT of the original base),
    # chat vector merge (models[0] = the pretrained target, models[1] = the instruct model), preference tuning
    ModelStage("base_instruct", "youri.train.sft", {"model": "init"}),
    ModelStage(
        "merge",
        "youri.train.merge",
        {"base": "init", "models.0.model": "pretrain", "models.1.model": "base_instruct"},
        "merged",
        "#8172b2",
        trains=False,
    ),
    ModelStage("prefer", "youri.train.prefer", {"model": "merge"}, "preferred", "#ccb974"),
)
"""Every model stage after pretraining; a recipe's pipeline ``stages`` names which run, in this order."""

DEFAULT_STAGES = ("sft_instruction", "sft_chat")
"""Youri's 2023 family: instruction and chat SFT of the pretrained model."""

VARIANTS = {s.variant: s.name for s in (BASE, *MODEL_STAGES) if s.variant}
"""Model variant -> the stage folder holding its full-precision model, in report order."""
COLORS = {s.variant: s.color for s in (BASE, *MODEL_STAGES) if s.variant}
PRECISIONS = ("fp", "gptq")
TRAINING_STAGES = ("init", "pretrain", *(s.name for s in MODEL_STAGES if s.trains))
"""Stages whose metrics.json holds loss curves, in training order."""
REPORT = "report"


def model_stage(name: str) -> ModelStage:
    return next(s for s in MODEL_STAGES if s.name == name)


def model_folder(variant: str, precision: str = "fp") -> str:
    """The stage folder of a model variant at a precision (``fp`` or ``gptq``)."""
    return VARIANTS[variant] if precision == "fp" else f"quantize_{variant}"


def eval_folder(variant: str, precision: str = "fp") -> str:
    """The eval stage folder of a model variant at a precision."""
    return f"eval_{variant}" + ("" if precision == "fp" else "_gptq")


def chat_suite_folder(suite: str, variant: str, precision: str = "fp") -> str:
    """The eval folder of a judged chat suite (``ja-mt-bench`` -> ``ja_mt_bench_chat``) of a model."""
    return f"{suite.replace('-', '_')}_{variant}" + ("" if precision == "fp" else "_gptq")
