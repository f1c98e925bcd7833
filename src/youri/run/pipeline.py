"""``youri pipeline RECIPE``: the whole family from one recipe, each stage in its own folder.

    init | base ─┬─> (vocab) ─> data ─> pretrain ─┬─> sft_instruction          (stages: the default chain)
                 │                                 └─> sft_chat
                 └─ every model (base and each stage's variant) ─> quantize_* ─> eval_* (fp and GPTQ) ─> report

rinna's 2024 chain (``recipes/demo-youko.yaml``: ``stages: [base_instruct, merge, prefer]``)::

    init ─┬─> data ─> pretrain ─┐
          └─> base_instruct ────┴─> merge (chat vector) ─> prefer (DPO) ─> quantize_* ─> eval_* ─> report

The model stages after pretraining are the rows of ``youri.run.layout.MODEL_STAGES`` (module, inputs,
variant); the pipeline section's ``stages`` picks which run.

Tiny, on this CPU (the README's main command; a few minutes on 2 cores)::

    youri pipeline recipes/demo.yaml

On a cluster the same recipe drives the same stages (see docs/launch.md); each training stage can
also be launched on its own with torchrun using the folder layout below.

Each stage reads its recipe section (``init``, ``vocab``, ``data``, ``pretrain``, ``sft_instruction``,
``sft_chat``, ``base_instruct``, ``merge``, ``prefer``, ``quantize``, ``eval``); the pipeline only wires
folders (``model``, ``data``, ``tokenizer``, ``base``, ``models.N.model``, ``out``) into ``RUN_DIR/<stage>``.
A stage is skipped when its folder is complete and was made with the same resolved config from inputs whose
fingerprints are unchanged; otherwise it runs again (resuming its own ``.partial`` progress where it has any),
and so does everything downstream, because their recorded input fingerprints no longer match.
"""

from __future__ import annotations

import copy
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from youri.config import ConfigError, build_config, config_to_dict, load_recipe
from youri.eval.chatbench import SUITES
from youri.quant.gguf_writer import GGUF_TYPES, grid_mismatch
from youri.run.card import write_model_card
from youri.run.layout import (
    DEFAULT_STAGES,
    MODEL_STAGES,
    VARIANTS,
    chat_suite_folder,
    eval_folder,
    model_folder,
)
from youri.stage import fingerprint, is_complete, read_manifest, read_metrics

REPORT_MODULE = "youri.run.report"
EXPORT_MODULE = "youri.quant.export"
QUANTIZE_MODULE = "youri.quant.quantize"
StageName = Literal[tuple(s.name for s in MODEL_STAGES)]  # type: ignore[valid-type]


@dataclass
class Config:
    recipe: str = field(default="", metadata={"positional": True})
    """The YAML recipe: one section per stage plus this 'pipeline' section."""
    run_dir: str = "runs/demo"
    """Folder that receives one sub-folder per stage."""
    base: str = ""
    """HF Llama-family model folder to adapt (e.g. Llama-2-7b); empty = train the tiny English base ('init')."""
    inherit: str = ""
    """Another recipe (relative to this one's folder) whose sections fill those this recipe lacks."""
    stages: list[StageName] = field(default_factory=lambda: list(DEFAULT_STAGES))
    """Model stages after pretraining (rows of youri.run.layout.MODEL_STAGES; they run in that table's order)."""
    vocab_extend: bool = False
    """Extend the vocabulary with Japanese pieces ('vocab' stage) before data and pretraining."""
    quantize: bool = True
    """Make a GPTQ twin of every model."""
    export: bool = False
    """GGUF file of every model for llama.cpp / Ollama ('export' section: type, eval_samples): of the GPTQ twin
    when the type is q4_0 and the twins are on Q4_0's grid (their codes as they are), else of the fp model."""
    evaluate: bool = True
    """Evaluate every model (full precision and GPTQ) on the JP-8 tasks that have data."""
    chat_eval: bool = True
    """Judge the chat models (fp and GPTQ) on the recipe's chat_eval suite (youri eval --suite ja-mt-bench: 160
    judge calls a model) when that section names a judge (judge_url, judge_model) and bench_dir; else skipped."""
    until: str = ""
    """Stop after this stage (or stage group: data, pretrain, sft, quantize, export, eval)."""
    only: str = ""
    """Run only this stage (or stage group); its inputs must already exist."""
    report: bool = True
    """Write and print the report card at the end."""
    plan_only: bool = False
    """Validate every stage's config and print the plan without running anything."""


@dataclass(frozen=True)
class Node:
    name: str
    module: str
    section: str
    wiring: dict[str, str]
    """config field -> name of the upstream node whose folder it receives."""
    kind: str = ""
    """The stage group when it is not the name's first word (chat_eval: ja_mt_bench_chat)."""

    @property
    def group(self) -> str:
        return self.kind or self.name.split("_")[0]


def plan(cfg: Config, recipe: dict[str, Any] | None = None) -> list[Node]:
    """The stage graph for this recipe, in execution order."""
    nodes: list[Node] = []
    base = "init"
    if not cfg.base:
        nodes.append(Node("init", "youri.train.init_base", "init", {}))
    if cfg.vocab_extend:
        nodes.append(Node("vocab", "youri.data.vocab", "vocab", {"base": base}))
        base = "vocab"
    nodes.append(Node("data", "youri.data.corpus", "data", {"tokenizer": base}))
    nodes.append(Node("pretrain", "youri.train.pretrain", "pretrain", {"model": base, "data": "data"}))
    variants = ["base"]
    for stage in MODEL_STAGES:
        if stage.name not in cfg.stages:
            continue
        planned = {"init"} | {n.name for n in nodes}  # init: the trained tiny base or the given base folder
        wiring = {key: upstream for key, upstream in stage.inputs.items() if upstream in planned}
        nodes.append(Node(stage.name, stage.module, stage.name, wiring))
        if stage.variant:
            variants.append(stage.variant)
    if cfg.quantize:
        for variant in variants:
            nodes.append(Node(model_folder(variant, "gptq"), QUANTIZE_MODULE, "quantize", {"model": VARIANTS[variant]}))
    if cfg.export:
        from_twin = cfg.quantize and _twin_exports_losslessly(recipe or {})
        for variant in variants:
            model = model_folder(variant, "gptq") if from_twin else VARIANTS[variant]
            nodes.append(Node(f"export_{variant}", EXPORT_MODULE, "export", {"model": model}))
    if cfg.evaluate:
        for variant in variants:
            nodes.append(Node(eval_folder(variant), "youri.eval.evaluate", "eval", {"model": VARIANTS[variant]}))
            if cfg.quantize:
                nodes.append(
                    Node(
                        eval_folder(variant, "gptq"),
                        "youri.eval.evaluate",
                        "eval",
                        {"model": model_folder(variant, "gptq")},
                    )
                )
    if cfg.evaluate and cfg.chat_eval and "chat" in variants and not _chat_eval_skip(recipe or {}):
        suite = (recipe or {})["chat_eval"]["suite"]
        for precision in ("fp", "gptq") if cfg.quantize else ("fp",):
            folder, model = chat_suite_folder(suite, "chat", precision), model_folder("chat", precision)
            nodes.append(Node(folder, "youri.eval.evaluate", "chat_eval", {"model": model}, kind="chat_eval"))
    return nodes


def _chat_eval_skip(recipe: dict[str, Any]) -> str:
    """Why the chat models are not judged ("" when they are): the chat_eval section must name a judged
    suite, a judge and the suite's questions."""
    section = recipe.get("chat_eval") or {}
    if not section.get("judge_url") or not section.get("judge_model"):
        return "no judge configured (recipe section chat_eval: judge_url, judge_model)"
    if section.get("suite") not in SUITES:
        return f"chat_eval.suite must be one of {', '.join(SUITES)}"
    if not section.get("bench_dir") or not Path(section["bench_dir"]).is_dir():
        return f"chat_eval.bench_dir {section.get('bench_dir') or '(unset)'} not found"
    return ""


def run(cfg: Config, *, overwrite: bool = False) -> dict[str, Any]:
    if not cfg.recipe:
        raise ConfigError("pipeline: give the recipe, e.g. 'youri pipeline recipes/demo.yaml'")
    recipe = recipe_of(cfg)
    run_dir = Path(cfg.run_dir)
    nodes = plan(cfg, recipe)
    if cfg.evaluate and cfg.chat_eval and _chat_eval_skip(recipe):
        print(f"[pipeline] chat_eval: skipped, {_chat_eval_skip(recipe)}")
    selected = _select(nodes, cfg)
    folders = {node.name: run_dir / node.name for node in nodes}
    if cfg.base:
        folders["init"] = Path(cfg.base)
    configs = {node.name: _node_config(node, recipe, folders) for node in nodes}  # all validated up front
    if cfg.plan_only:
        for node in nodes:
            mark = "run " if node.name in selected else "skip"
            wiring = ", ".join(f"{k}={folders[v]}" for k, v in node.wiring.items())
            print(f"[pipeline] {mark} {node.name:<22} {node.module:<16} {wiring}")
        return {node.name: "planned" for node in nodes if node.name in selected}
    missing = _missing_eval_data(configs)
    if missing:  # the demo must run without ../shared: evaluation is then reported n/a, not an error
        print(f"[pipeline] eval: skipped, no evaluation data ({missing}); the report shows n/a")
        selected -= {node.name for node in nodes if node.group == "eval"}
    summary: dict[str, Any] = {}
    for node in nodes:
        if node.name not in selected:
            continue
        stage_cfg = configs[node.name]
        reason = _why_run(folders[node.name], stage_cfg)
        if reason is None and not overwrite:
            print(f"[pipeline] {node.name}: up to date, skipped ({folders[node.name]})")
            summary[node.name] = "skipped"
            continue
        print(f"[pipeline] {node.name}: running ({reason or 'forced'}) -> {folders[node.name]}")
        started = time.perf_counter()
        importlib.import_module(node.module).run(stage_cfg, overwrite=True)
        summary[node.name] = f"ran in {time.perf_counter() - started:.1f}s"
        _write_card(folders[node.name], None)
        if node.group == "export":  # the exported model's card gains the GGUF file and its Modelfile
            _write_card(folders[node.wiring["model"]], None)
    _refresh_cards_with_scores(nodes, folders)
    if cfg.report and not cfg.only:  # the report stage, run by name like every other stage
        report = importlib.import_module(REPORT_MODULE)
        report.run(build_config(report.Config, {}, {"run_dir": str(run_dir)}, where="report"))
    print(json.dumps({"run_dir": str(run_dir), "stages": summary}, ensure_ascii=False))
    return summary


def recipe_of(cfg: Config) -> dict[str, Any]:
    """The recipe's sections, over those of the recipe it inherits (``inherit``), if any."""
    recipe = load_recipe(cfg.recipe)
    if not cfg.inherit:
        return recipe
    return {**load_recipe(Path(cfg.recipe).parent / cfg.inherit), **recipe}


def _missing_eval_data(configs: dict[str, Any]) -> str:
    for name, stage_cfg in configs.items():
        if name.startswith("eval") and stage_cfg.data_dir and not Path(stage_cfg.data_dir).is_dir():
            return f"eval.data_dir {stage_cfg.data_dir} not found"
    return ""


def _twin_exports_losslessly(recipe: dict[str, Any]) -> bool:
    """Whether the recipe's export type is q4_0 and its GPTQ twins sit on Q4_0's grid (4 bit, symmetric, in
    order, groups of whole 32-blocks): the twin's GGUF is then the twin itself, measured closer to the fp model
    than q4_0 of the fp model (benchmarks/gguf_quality.py); any other setting exports the fp model."""
    sections = {}
    for name, module in (("export", EXPORT_MODULE), ("quantize", QUANTIZE_MODULE)):
        stage_config = importlib.import_module(module).Config
        sections[name] = build_config(stage_config, dict(recipe.get(name) or {}), {}, where=name)
    quant, kind = sections["quantize"], sections["export"].type
    if kind != "q4_0" or quant.bits != 4:  # 2/3-bit codes fit Q4_0 too, but only 4-bit twins were measured better
        return False
    layout = {"bits": quant.bits, "group": quant.group_size, "sym": quant.sym, "in_order": not quant.desc_act}
    return not grid_mismatch(GGUF_TYPES[kind].weights, **layout)


def _select(nodes: list[Node], cfg: Config) -> set[str]:
    names = [n.name for n in nodes]
    if cfg.only:
        chosen = {n.name for n in nodes if cfg.only in (n.name, n.group)}
        if not chosen:
            raise ConfigError(f"only: unknown stage '{cfg.only}'; stages: {', '.join(names)}")
        return chosen
    if cfg.until:
        matches = [i for i, n in enumerate(nodes) if cfg.until in (n.name, n.group)]
        if not matches:
            raise ConfigError(f"until: unknown stage '{cfg.until}'; stages: {', '.join(names)}")
        return set(names[: matches[-1] + 1])
    return set(names)


def _node_config(node: Node, recipe: dict[str, Any], folders: dict[str, Path]) -> Any:
    module = importlib.import_module(node.module)
    section = copy.deepcopy(dict(recipe.get(node.section) or {}))
    for key, upstream in {**node.wiring, "out": node.name}.items():
        _wire(section, key, str(folders[upstream]), where=node.section)
    return build_config(module.Config, section, where=node.section)


def _wire(section: dict[str, Any], key: str, value: str, *, where: str) -> None:
    """Set ``key`` (dotted; a number indexes a list: ``models.1.model``) of a recipe section to a folder."""
    *path, last = key.split(".")
    node: Any = section
    for part in path:
        if part.isdigit():
            if not isinstance(node, list) or int(part) >= len(node) or not isinstance(node[int(part)], dict):
                raise ConfigError(f"{where}.{key}: the pipeline wires this item; give at least {int(part) + 1} items")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
    node[last] = value


def _why_run(folder: Path, stage_cfg: Any) -> str | None:
    """None when the folder is complete, made with this config, from unchanged inputs; else the reason."""
    if not is_complete(folder):
        return "no complete output"
    manifest = read_manifest(folder) or {}
    if _canonical(manifest.get("config", {})) != _canonical(config_to_dict(stage_cfg)):
        return "config changed"
    for path, recorded in (manifest.get("inputs") or {}).items():
        try:
            if fingerprint(path) != recorded:
                return f"input changed: {path}"
        except FileNotFoundError:
            return f"input missing: {path}"
    return None


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k != "out"}, sort_keys=True, ensure_ascii=False)


def _write_card(folder: Path, eval_dir: Path | None) -> None:
    if (folder / "config.json").is_file():  # a model folder (not data / eval)
        write_model_card(folder, eval_metrics=read_metrics(eval_dir) if eval_dir else None)


def _refresh_cards_with_scores(nodes: list[Node], folders: dict[str, Path]) -> None:
    """Each evaluated model's card gets its JP-8 table (an eval node's ``model`` is the evaluated folder)."""
    for node in nodes:
        model = folders.get(node.wiring.get("model", ""))
        if node.group == "eval" and model is not None and is_complete(folders[node.name]) and is_complete(model):
            _write_card(model, folders[node.name])
