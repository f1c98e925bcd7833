"""JP-8 evaluation (``youri eval``): the Stability-AI jp-stable protocol, byte-exact and offline.

Renders the eight-task suite's prompts exactly as the jp-stable harness does (seeded few-shot draws,
per-version templates; ``youri.eval.tasks``), scores them with EleutherAI lm-eval (``hf`` or ``vllm``
backend, batching, request cache) and writes an eval folder whose ``metrics.json`` holds every task's
score with its standard error, chance level and first prompt, the average over the tasks run, and
the full config. Every task reads local files named in the recipe (``data_dir`` + ``data``); a task
without data is reported ``n/a (no data)`` and left out of the average.

Tiny CPU run (the recipe's ``eval`` section holds the data paths)::

    youri eval runs/tiny-base --recipe recipes/demo.yaml --limit 8 --out runs/tiny-eval

Full JP-8 on a GPU with chat prompts and lm-eval's vLLM backend (or `--backend hf --dtype bfloat16`)::

    youri eval runs/youri-chat --recipe recipes/demo.yaml --model_kind chat --backend vllm --batch_size auto

Inspect every prompt without loading a model (one JSON object per document)::

    youri eval runs/tiny-base --recipe recipes/demo.yaml --write_requests requests.jsonl

Japanese MT-Bench (``--suite ja-vicuna-qa`` likewise) judged by any OpenAI-compatible endpoint
(``youri.eval.chatbench``; 160 judge calls, cached on disk)::

    youri eval runs/youri-chat --suite ja-mt-bench --bench_dir ../shared/data/japanese-mt-bench \
        --judge_url https://api.openai.com/v1 --judge_model gpt-4o-2024-08-06 --batch_size 16
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from youri.config import ConfigError, NonNegativeInt, PositiveInt, config_to_dict
from youri.eval import leaderboard, presets
from youri.eval import lm_eval_bridge as bridge
from youri.eval import metrics as jp_metrics
from youri.eval.averages import averages
from youri.eval.chatbench import SUITES, run_suite
from youri.eval.download import download
from youri.eval.generation import HF_CAUSAL
from youri.eval.lm_eval_bridge import task_metrics
from youri.eval.tasks import TASKS, Selected, select
from youri.eval.tasks.base import RenderOptions, render
from youri.io import DataError, failures_message, resolve_path, write_jsonl
from youri.model import load_model, load_tokenizer
from youri.runtime.quant_linear import kernel_summary
from youri.stage import PROMPTED_STAGES, StageWriter, check_new_file, check_stage_output, read_manifest

NO_DATA = "n/a (no data)"


@dataclass
class Config:
    model: str = field(default="", metadata={"positional": True})
    """Model folder: a youri stage folder, an HF Llama checkpoint or its GPTQ twin (with --write_requests a
    tokenizer folder is enough)."""
    out: str = ""
    """Eval stage folder to write (default: MODEL-eval beside the model)."""
    preset: str = "auto"
    """A published harness run to mirror: tasks, versions, shots and generation rule (rinna, ja-alpaca,
    llama2-7b, rinna-sft, rinna-bilingual, ja8; see youri.eval.presets). auto: the model kind's preset."""
    tasks: list[str] = field(default_factory=list)
    """Tasks to run (default: the preset's): bare names take the preset's versions (jnli), harness keys are
    used as given (jnli-1.1-0.3, mgsm-1.0-0.3-d4bdbfa, xwinograd_ja)."""
    suite: Literal["jp-stable", "japanese_leaderboard", "ja-mt-bench", "ja-vicuna-qa"] = "jp-stable"
    """jp-stable: youri's byte-exact protocol; japanese_leaderboard: lm-eval's own group on the same files;
    ja-mt-bench / ja-vicuna-qa: judged chat suites (youri.eval.chatbench; need --bench_dir and a judge)."""
    model_kind: Literal["auto", "base", "instruction", "chat"] = "auto"
    """Picks the default preset (presets.KIND_PRESETS): base -> rinna, instruction -> ja-alpaca (0.3),
    chat -> rinna-bilingual (0.5). auto reads the model folder's youri.json."""
    prompt_version: str = ""
    """Prompt version for tasks given by bare name under the ja8 preset (e.g. 0.3, or an alias: ja-alpaca)."""
    shots: dict[str, NonNegativeInt] = field(default_factory=dict)
    """Per-task shot overrides, e.g. {mgsm: 0}; default: the preset's (3,3,3,2,1,1,0,5 in every preset)."""
    generation: Literal["auto", "hf-causal", "hf-causal-experimental"] = "auto"
    """Generation rule (youri.eval.generation): hf-causal caps each request at its own length (rinna's runs),
    hf-causal-experimental gives every request max_gen_toks (the Llama-2 rows). auto: the preset's."""
    data_dir: str = ""
    """Base folder for relative paths in `data`."""
    data: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per task (name, or name-VERSION such as jnli-1.1): {eval: scored split file, fewshot: pool file}."""
    limit: NonNegativeInt = 0
    """Score only the first N documents of each task in evaluation order (chat suites: questions; 0: all)."""
    write_requests: str = ""
    """Write every rendered request (JSON Lines, the jp-eval-vectors schema) to this file and stop; no model."""
    backend: Literal["hf", "vllm"] = "hf"
    """lm-eval model backend. vllm needs `pip install vllm` and a GPU, and cannot take a GPTQ twin of youri's."""
    server: str = ""
    """Score through an OpenAI-compatible /v1/completions URL instead of loading the model (lm-eval's
    local-completions: token-id prompts, echo, logprobs; needs `pip install 'lm-eval[api]'`). MODEL is then the
    served model's folder (its tokenizer and context size are read); generation tasks need hf-causal-experimental."""
    server_model: str = ""
    """With --server: the model name the server expects (default: MODEL's folder name)."""
    batch_size: str = "1"
    """lm-eval batch size: a number or 'auto' (chat suites: answers generated at once; auto = 16)."""
    device: str = ""
    """cpu, cuda, cuda:1 ... (default: cuda when available)."""
    dtype: str = "auto"
    """Weights dtype for loading: auto, bfloat16, float16, float32."""
    max_length: NonNegativeInt = 0
    """Context window in tokens (0: the model config's max_position_embeddings)."""
    max_gen_toks: PositiveInt = 256
    """New tokens per generation request without a cap of its own (both harness wrappers: 256)."""
    bootstrap_iters: PositiveInt = 1000
    """Resamples of the bootstrapped stderr (JNLI/MARC-ja mcc_stderr), drawn exactly as the harness draws them;
    its runs used 100,000 (give that to reproduce mcc_stderr to the digit; ~0.5-3 ms a resample on a CPU)."""
    rouge2_tokenizer: Literal["model", "mecab"] = "model"
    """XL-Sum ROUGE-2 tokens: the evaluated model's tokenizer (what the harness really computes) or MeCab."""
    cache: str = ""
    """lm-eval request cache (SQLite path prefix): a rerun answers cached requests without the model."""
    bench_dir: str = ""
    """Chat suites: the folder holding question.jsonl and the GPT-4 reference answers (reference_answer_gpt-4.jsonl
    or FastChat's reference_answer/gpt-4.jsonl), e.g. ../shared/data/japanese-mt-bench."""
    answers: str = ""
    """Chat suites: judge these answers (FastChat model_answer JSON Lines, e.g. an earlier run's answers.jsonl)
    instead of generating; MODEL may then be left out."""
    judge_url: str = ""
    """Chat suites: the judge's OpenAI-compatible base URL (https://api.openai.com/v1, a vLLM or youri serve /v1)."""
    judge_model: str = ""
    """Chat suites: the judge's model name as its server knows it (e.g. gpt-4o-2024-08-06)."""
    judge_key_env: str = "OPENAI_API_KEY"
    """Chat suites: the environment variable holding the judge's API key (unset or empty: no key is sent)."""
    judge_prompts: Literal["auto", "fastchat", "stability-ja", "ku-nlp"] = "auto"
    """Chat suites: grading prompts (youri.eval.judge). auto: the suite's own (ja-mt-bench: FastChat's,
    ja-vicuna-qa: ku-nlp's); stability-ja: the Japanese fork's turn-1 prompts."""
    judge_cache: str = ""
    """Chat suites: folder of cached judgments (default ~/.cache/youri/judgments); a cached one costs no call."""
    judge_parallel: PositiveInt = 4
    """Chat suites: judge requests in flight at once."""
    judge_retries: NonNegativeInt = 3
    """Chat suites: retries of a judge request that failed (network, HTTP 429/5xx), with doubling waits."""
    temperatures: Literal["fastchat", "stability-ja"] = "fastchat"
    """Chat suites: per-category sampling temperatures: FastChat MT-Bench's or Stability's Japanese fork's."""
    max_new_tokens: PositiveInt = 1024
    """Chat suites: new tokens per answer turn (FastChat: 1024)."""
    seed: int = 0
    """Chat suites: sampling seed (each question and turn draws from its own generator)."""
    download: str = ""
    """Fetch every JP-8 dataset from the Hugging Face Hub (HF_ENDPOINT: a mirror) into this folder as
    TASK/SPLIT.jsonl, with sources.json and eval-data.yaml (the data_dir/data settings that read it), and stop."""


def run(cfg: Config, *, overwrite: bool = False) -> dict[str, Any] | None:
    """Render, check and (unless ``write_requests``) score the chosen tasks; returns metrics.json.
    With ``download``: fetch the JP-8 datasets instead (``youri.eval.download``) and stop."""
    if cfg.download:  # a data command: no model, no tasks
        return download(cfg.download)
    if cfg.suite in SUITES:  # judged chat suites: generation + judge, no lm-eval
        check_stage_output(out_folder(cfg), "eval", overwrite)
        return run_suite(cfg, out_folder(cfg), overwrite=overwrite, asked=cfg)
    asked, cfg = cfg, resolve_preset(cfg)  # youri.json keeps what was asked; its facts, what it resolved to
    plan = plan_tasks(cfg)  # every user error surfaces here, before any model is loaded
    generating = [sel.key for sel, paths in plan if paths and sel.task.kind == "gen"]
    if cfg.server and cfg.generation == HF_CAUSAL and generating and not cfg.write_requests:
        raise ConfigError(
            f"eval --server: {generating[0]} generates, and preset {cfg.preset}'s hf-causal rule runs in-process "
            "only; give --generation hf-causal-experimental, or multiple-choice --tasks only"
        )
    if cfg.write_requests:  # refused before any work: an existing file only with --overwrite
        check_new_file(cfg.write_requests, overwrite, "--write_requests")
    else:
        check_stage_output(out_folder(cfg), "eval", overwrite)
    tokenizer, max_length = _tokenizer_and_length(cfg)
    opts = render_options(tokenizer, max_length, cfg.max_gen_toks)
    rendered = render_all(plan, cfg.limit, opts)
    if cfg.write_requests:
        write_jsonl(cfg.write_requests, [r for records in rendered.values() for r in records])
        print(f"wrote {sum(map(len, rendered.values()))} requests of {len(rendered)} tasks to {cfg.write_requests}")
        return None
    if cfg.suite == "japanese_leaderboard":
        return _score_leaderboard(cfg, plan, tokenizer, max_length, overwrite=overwrite, asked=asked)
    return _score(cfg, plan, rendered, tokenizer, max_length, opts, overwrite=overwrite, asked=asked)


# ----------------------------------------------------------------------------- planning and data


def resolve_preset(cfg: Config) -> Config:
    """``cfg`` with ``preset`` and ``generation`` resolved (``auto`` -> the model kind's preset and its rule)."""
    preset = presets.resolve(cfg.preset, model_kind(cfg), cfg.prompt_version)
    generation = preset.generation if cfg.generation == "auto" else cfg.generation
    if cfg.suite == "japanese_leaderboard":  # lm-eval's own tasks generate the lm-eval way
        generation = "hf-causal-experimental"
    if generation == HF_CAUSAL and cfg.backend == "vllm" and not cfg.write_requests:
        raise ConfigError(
            f"eval: preset {preset.name} generates with hf-causal, which youri implements on the hf "
            "backend only; use --backend hf, or --generation hf-causal-experimental to keep vllm"
        )
    return replace(cfg, preset=preset.name, generation=generation)


def plan_tasks(cfg: Config) -> list[tuple[Selected, dict[str, str] | None]]:
    """The selected tasks with their resolved data paths (``None``: no data given -> n/a)."""
    plan = [(sel, data_paths(cfg, sel)) for sel in selections(cfg, cfg.tasks, cfg.shots)]
    unknown = set(cfg.shots) - set(TASKS)
    if unknown:
        raise ConfigError(f"eval.shots: unknown task '{sorted(unknown)[0]}'; choose from {', '.join(TASKS)}")
    valid = set(TASKS) | {f"{t.name}-{v}" for t in TASKS.values() for v in t.variants}
    unknown = set(cfg.data) - valid
    if unknown:
        raise ConfigError(
            f"eval.data: unknown task '{sorted(unknown)[0]}'; use a task name or name-VERSION "
            f"({', '.join(sorted(valid))})"
        )
    return plan


def selections(cfg: Config, tasks: list[str], shots: dict[str, int]) -> list[Selected]:
    """The tasks ``tasks`` (default: the preset's) select, with ``shots`` over the preset's."""
    kind = model_kind(cfg)
    preset = presets.resolve(cfg.preset, kind, cfg.prompt_version)
    preset_shots = preset.shots_by_name()
    chosen, seen = [], set()
    for spec in tasks or preset.tasks:
        name = spec.split("-")[0]
        if "-" not in spec and not cfg.prompt_version:  # a bare name takes the preset's versions
            spec = preset.spec_for(name) or spec
        sel = select(
            spec, model_kind=kind, prompt_version=cfg.prompt_version, shots=shots.get(name, preset_shots.get(name))
        )
        if sel.key in seen:
            raise ConfigError(f"eval.tasks: '{spec}' selects {sel.key} twice")
        seen.add(sel.key)
        chosen.append(sel)
    return chosen


def preset_record(cfg: Config, plan) -> dict:
    """The preset as run: its own record, or ``custom`` (with the preset it started from) when the planned
    task keys or shots differ from the preset's (``presets.run_record``)."""
    expected = [(sel.key, sel.shots) for sel in selections(cfg, [], {})]
    return presets.run_record(presets.PRESETS[cfg.preset], [(sel.key, sel.shots) for sel, _ in plan], expected)


def data_paths(cfg: Config, sel: Selected) -> dict[str, str] | None:
    name = sel.task.name
    entry = cfg.data.get(f"{name}-{sel.variant}", cfg.data.get(name))
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ConfigError(f"eval.data.{name}: expected a mapping {{eval: FILE, fewshot: FILE}}, got {entry!r}")
    needed = ("eval", "fewshot") if sel.shots > 0 and "fewshot" in sel.task.data_keys else ("eval",)
    extra = set(entry) - set(sel.task.data_keys)
    if extra:
        raise ConfigError(
            f"eval.data.{name}: unknown key '{sorted(extra)[0]}'; {name} takes {', '.join(sel.task.data_keys)}"
        )
    paths = {}
    for key in needed:
        if not entry.get(key):
            raise ConfigError(f"eval.data.{name}.{key}: missing ({sel.key} with {sel.shots} shots needs it)")
        path = resolve_path(entry[key])
        if not path.is_absolute() and cfg.data_dir:
            path = resolve_path(cfg.data_dir) / path
        if not path.is_file():
            raise DataError(f"eval.data.{name}.{key}: data file not found: {path}")
        paths[key] = str(path)
    return paths


def render_all(plan, limit: int, opts: RenderOptions) -> dict[str, list[dict]]:
    """Every planned task's requests; a task whose data cannot be read is named with every other such task,
    after all were read, and before any model is loaded."""
    rendered, failed = {}, []
    for sel, paths in plan:
        if paths:
            try:
                rendered[sel.key] = render_selected(sel, paths, limit, opts)
            except (DataError, OSError) as err:
                failed.append(str(err))  # it names the file
    if failed:
        raise DataError(failures_message(failed, sum(1 for _, p in plan if p), "tasks' data could not be read"))
    return rendered


def render_selected(sel: Selected, paths: dict[str, str], limit: int, opts: RenderOptions) -> list[dict]:
    docs = sel.task.load_eval(paths["eval"])
    pool = sel.task.load_fewshot(paths["fewshot"]) if "fewshot" in paths and sel.task.load_fewshot else None
    opts.stats = {}
    records = render(sel.task, sel.variant, sel.prompt_name, docs, pool, sel.shots, limit or None, opts)
    if opts.stats:
        records[0]["render_stats"] = dict(opts.stats)
    return records


def model_kind(cfg: Config) -> str:
    """``cfg.model_kind``, or for ``auto`` what the model folder's youri.json (or its parent's) says."""
    if cfg.model_kind != "auto":
        return cfg.model_kind

    path = resolve_path(cfg.model) if cfg.model else None
    for _ in range(8):  # a GPTQ twin or a merged folder points at its parent
        manifest = read_manifest(path) if path and path.is_dir() else None
        if manifest is None:
            return "base"
        if manifest.get("stage") in PROMPTED_STAGES:  # youri sft / prefer record kind: instruction | chat
            return "chat" if manifest.get("config", {}).get("kind") == "chat" else "instruction"
        path = Path(manifest["parent"]) if manifest.get("parent") else None
    return "base"


def _tokenizer_and_length(cfg: Config):
    if not cfg.model:
        if cfg.write_requests:  # no tokenizer: the tokenizer-dependent over-length rules are skipped
            return None, cfg.max_length or 4096
        raise ConfigError("eval: MODEL is required (a model folder)")

    tokenizer = load_tokenizer(cfg.model)
    # Byte-exact jp-stable: the harness reads "<s>"/"</s>" in prompt text as the special ids (protocol 2.5;
    # the Llama 2 prompts, 0.6, are written that way), while an SFT folder's tokenizer keeps them as text.
    tokenizer.split_special_tokens = False
    max_length = cfg.max_length
    config_file = resolve_path(cfg.model) / "config.json"
    if not max_length and config_file.is_file():
        model_cfg = json.loads(config_file.read_text(encoding="utf-8"))
        model_cfg = model_cfg.get("text_config", model_cfg)
        max_length = next(
            (model_cfg[k] for k in ("n_positions", "max_position_embeddings", "n_ctx") if k in model_cfg), 0
        )
    # A bare tokenizer folder (write_requests) has no context size: Llama 2's 4096, as the vectors used.
    return tokenizer, max_length or 4096


def render_options(tokenizer, max_length: int, max_gen_toks: int) -> RenderOptions:
    if tokenizer is None:
        return RenderOptions(max_length=max_length, max_gen_toks=max_gen_toks)

    def token_len(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def decode_prefix(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n], skip_special_tokens=True)

    return RenderOptions(
        token_len=token_len,
        max_length=max_length,
        max_gen_toks=max_gen_toks,
        eos_token=tokenizer.eos_token or "</s>",
        decode_prefix=decode_prefix,
    )


# ----------------------------------------------------------------------------- scoring


def _score(
    cfg: Config,
    plan,
    rendered: dict[str, list[dict]],
    tokenizer,
    max_length: int,
    opts: RenderOptions,
    *,
    overwrite: bool,
    asked: Config,
) -> dict[str, Any]:
    data_files = sorted({p for _, paths in plan if paths for p in paths.values()})
    with _eval_folder(cfg, asked, [cfg.model, *data_files], overwrite, preset_record(cfg, plan)) as stage:
        configs = []
        for sel, paths in plan:
            if not paths:
                continue
            requests = stage.path / "requests" / f"{sel.key}.jsonl"
            write_jsonl(requests, rendered[sel.key])
            stops = rendered[sel.key][0].get("stop_sequences", [])
            configs.append(
                bridge.task_config(
                    sel, requests, stops, max_gen_toks=cfg.max_gen_toks, per_request_cap=cfg.generation == HF_CAUSAL
                )
            )
        start = time.time()
        results, lm = {}, None
        if configs:
            jp_metrics.set_rouge_tokenizer(
                jp_metrics.MecabTokenizer() if cfg.rouge2_tokenizer == "mecab" else tokenizer
            )
            lm = build_lm(cfg, tokenizer, max_length)
            # one cache per rule: the same request (e.g. MGSM's) is answered differently by the two rules
            cache = f"{cfg.cache}-{cfg.generation}" if cfg.cache else ""
            output = bridge.evaluate(lm, configs, cache=cache, full=True, bootstrap_iters=cfg.bootstrap_iters)
            results = output["results"]
            for key, samples in output.get("samples", {}).items():
                write_jsonl(stage.path / "samples" / f"{key}.jsonl", bridge.per_document(samples))
        metrics = summarise(cfg, plan, rendered, results, time.time() - start)
        kernel = kernel_summary(lm.model) if isinstance(getattr(lm, "model", None), torch.nn.Module) else None
        if kernel:  # wall_time_s depends on it (a GPTQ twin on the fallback kernel is ~4x slower)
            metrics["gptq_kernel"] = kernel
        print_table(metrics)
        stage.finish(metrics)
    return metrics


def _score_leaderboard(
    cfg: Config, plan, tokenizer, max_length: int, *, overwrite: bool, asked: Config
) -> dict[str, Any]:
    """lm-eval's own japanese_leaderboard tasks on the same local files (``youri.eval.leaderboard``)."""
    data_files = sorted({p for _, paths in plan if paths for p in paths.values()})
    with _eval_folder(cfg, asked, data_files, overwrite) as stage:
        runnable = [(sel, paths) for sel, paths in plan if paths]
        configs = [leaderboard.task_config(sel, paths, stage.path / "leaderboard_data") for sel, paths in runnable]
        start = time.time()
        output = (
            bridge.evaluate(
                build_lm(cfg, tokenizer, max_length),
                configs,
                cache=cfg.cache,
                limit=cfg.limit or None,
                full=True,
                bootstrap_iters=cfg.bootstrap_iters,
            )
            if configs
            else {"results": {}, "samples": {}}
        )
        tasks = leaderboard.task_scores(output, [sel for sel, _ in runnable])
        not_run = {sel.task.leaderboard: NO_DATA for sel, paths in plan if not paths}
        scores = [t["score"] for t in tasks.values()]
        metrics = {
            "suite": "japanese_leaderboard",
            "model": cfg.model,
            "tasks": tasks,
            "not_run": not_run,
            "average": round(sum(scores) / len(scores), 2) if scores else None,
            "average_over": list(tasks),
            # lm-eval's own tasks, never the jp-stable JP-8 number, whatever ran
            "average_name": f"average of {len(tasks)} lm-eval japanese_leaderboard tasks ({', '.join(tasks)})",
            "average_note": f"average of {len(tasks)} lm-eval japanese_leaderboard tasks ({', '.join(tasks)})"
            + (f"; not run: {', '.join(not_run)}" if not_run else ""),
            "wall_time_s": round(time.time() - start, 1),
            "config": config_to_dict(cfg),
        }
        print_table(metrics)
        stage.finish(metrics)
    return metrics


def _eval_folder(cfg: Config, asked: Config, inputs: list, overwrite: bool, preset: dict | None = None) -> StageWriter:
    """The eval stage folder: ``youri.json`` records the config as asked (so that an unchanged recipe is
    recognised as unchanged) and, as facts, the preset (``custom`` with ``preset_from`` when the run is not
    the preset's, see ``preset_record``) and generation rule it resolved to."""
    stage = StageWriter(
        out_folder(cfg), stage="eval", config=asked, inputs=inputs, parent=cfg.model, overwrite=overwrite
    )
    stage.facts.update(preset=(preset or {}).get("name", cfg.preset), generation=cfg.generation)
    if preset and "from" in preset:
        stage.facts["preset_from"] = preset["from"]["name"]
    return stage


def out_folder(cfg: Config) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if not cfg.model:
        raise ConfigError("eval: give --out (there is no MODEL to put the eval folder beside)")
    model = resolve_path(cfg.model)
    return model.with_name(model.name + (f"-{cfg.suite}" if cfg.suite in SUITES else "-eval"))


def build_lm(cfg: Config, tokenizer, max_length: int):
    """The lm-eval LM. ``hf``: the model is loaded by youri.model.load_model (GPTQ twins included); with
    ``server``: lm-eval's local-completions against that URL (``lm_eval_bridge.server_lm``)."""
    bridge.offline_env()
    batch = int(cfg.batch_size) if cfg.batch_size.isdigit() else cfg.batch_size
    if cfg.server:
        name = cfg.server_model or resolve_path(cfg.model).name
        return bridge.server_lm(
            cfg.server, tokenizer, resolve_path(cfg.model), model_name=name, batch_size=batch, max_length=max_length
        )
    if cfg.backend == "vllm":
        return bridge.vllm_lm(cfg.model, tokenizer, batch_size=batch, max_length=max_length, dtype=cfg.dtype)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model = load_model(cfg.model, dtype=dtype, device=device)
    model.eval()
    return bridge.hf_lm(model, tokenizer, batch_size=batch, max_length=max_length, generation=cfg.generation)


def summarise(cfg: Config, plan, rendered: dict[str, list[dict]], results: dict, seconds: float) -> dict[str, Any]:
    """metrics.json: per task score/stderr/chance/first prompt, the average over the tasks run, the config."""
    tasks, not_run = {}, {}
    for sel, paths in plan:
        if not paths:
            not_run[sel.key] = NO_DATA
            continue
        raw = task_metrics(results, sel.key)
        metric = sel.task.metric
        first = rendered[sel.key][0]
        tasks[sel.key] = {
            "metric": metric,
            "score": 100 * raw.get(metric, float("nan")),
            "stderr": 100 * raw.get(f"{metric}_stderr", float("nan")),
            "chance": round(sel.task.chance, 2),
            "n": len(rendered[sel.key]),
            "shots": sel.shots,
            "prompt_version": sel.prompt.version,
            "metrics": {k: 100 * v for k, v in raw.items()},
            "first_prompt": first["prompt"],
            "first_continuations": first.get("continuations"),
            "render_stats": first.get("render_stats", {}),
        }
    preset = preset_record(cfg, plan)
    named = averages({key: t["score"] for key, t in tasks.items()}, preset["from"]["name"] if "from" in preset else "")
    return {
        "suite": cfg.suite,
        "model": cfg.model,
        "model_kind": model_kind(cfg),
        "preset": preset,
        "generation": cfg.generation,
        "tasks": tasks,
        "not_run": not_run,
        **named,  # average, average_name ("JP-8 average" only when all eight ran), average_over, subsets
        "average_note": named["average_name"] + (f"; not run: {', '.join(not_run)}" if not_run else ""),
        "wall_time_s": round(seconds, 1),
        "config": config_to_dict(cfg),
    }


def print_table(metrics: dict[str, Any], file=sys.stdout) -> None:
    rows = [("task", "metric", "score", "± stderr", "chance", "n")]
    for key, t in metrics["tasks"].items():
        rows.append((key, t["metric"], f"{t['score']:.2f}", f"{t['stderr']:.2f}", f"{t['chance']:.2f}", str(t["n"])))
    for key, why in metrics["not_run"].items():
        rows.append((key, "-", why, "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), file=file)
    avg = metrics["average"]
    print(f"{metrics.get('average_name', 'average')}: {avg if avg is not None else 'n/a'}", file=file)
    for name, subset in metrics.get("subsets", {}).items():
        print(f"{name}: {subset['value']}", file=file)
    if metrics["not_run"]:
        print(f"not run: {', '.join(metrics['not_run'])}", file=file)
