"""Judged chat suites: Japanese MT-Bench (80 questions x 2 turns) and the Japanese Vicuna QA benchmark.

Each suite is one ``Suite`` row: its question and reference files, the judge prompts that grade it
(``youri.eval.judge``) and the categories that are graded against a reference answer (FastChat's and
ku-nlp's ``NEED_REF_CATS``: math, reasoning, coding). The flow is FastChat's ``llm_judge``:

1. answers -- every question is asked in the model's own chat format: a folder carrying youri's chat or
   instruction template (or none) through ``youri.prompts`` (the one renderer), any other chat model
   through its tokenizer's ``chat_template``; turn 2 sees the model's own turn-1 answer. Sampling
   temperature per category as FastChat's ``temperature_config`` (``temperatures: stability-ja``: the
   Japanese fork's), greedy at 0, ``max_new_tokens`` per turn (FastChat: 1024). Generation goes through
   youri's batching engine (``youri.serve.engine``), all first turns together, then all second turns.
   youri's instruction format is single-turn: such a model answers turn 1 only (turn 2 is reported n/a).
2. judgments -- one judge call per (question, turn), FastChat's single-answer grading, cached on disk;
3. scores -- as FastChat's ``show_result`` and rinna's cards: the mean rating of turn 1, of turn 2 and
   of all judged answers, per category (both turns), with the number judged; unparsable and failed
   judgments are counted, listed and left out of the means (FastChat's score -1).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from youri.config import ConfigError, config_to_dict
from youri.eval.judge import PROMPT_SETS, Judge, fill
from youri.io import DataError, iter_jsonl, require_field, resolve_path, write_jsonl
from youri.model import load_model, load_tokenizer
from youri.prompts import SYSTEM, USER, Turn, chat_template, encode_prompt, turns_to_instruction
from youri.serve.engine import Engine, Event, GenerationError, SamplingParams
from youri.stage import StageWriter

# FastChat fastchat/llm_judge/common.py temperature_config (0.7 for any other category, as gen_model_answer).
FASTCHAT_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
# The same table in Stability AI's japanese-mt-bench fork (FastChat commit 6b6c9dd).
STABILITY_JA_TEMPERATURES = {
    "writing": 0.5,
    "roleplay": 0.5,
    "extraction": 0.2,
    "math": 0.1,
    "coding": 0.1,
    "reasoning": 0.1,
    "stem": 0.2,
    "humanities": 0.2,
}
TEMPERATURES = {"fastchat": FASTCHAT_TEMPERATURES, "stability-ja": STABILITY_JA_TEMPERATURES}
DEFAULT_TEMPERATURE = 0.7
NEED_REF_CATS = ("math", "reasoning", "coding")
REFERENCE_FILES = (
    "reference_answer_gpt-4.jsonl",  # ../shared/data
    "reference_answer/gpt-4.jsonl",  # FastChat
    "reference_answer/gpt-4/results.jsonl",  # ku-nlp
)


@dataclass(frozen=True)
class Suite:
    name: str
    turns: int  # turns per question
    prompts: str  # default judge prompt set (youri.eval.judge.PROMPT_SETS)
    source: str  # where the questions come from (the folder's README names the commit)


SUITES = {
    "ja-mt-bench": Suite("ja-mt-bench", 2, "fastchat", "Stability AI japanese_mt_bench (lm-sys/FastChat)"),
    "ja-vicuna-qa": Suite("ja-vicuna-qa", 1, "ku-nlp", "ku-nlp/ja-vicuna-qa-benchmark jp_bench"),
}


@dataclass(frozen=True)
class Question:
    id: Any
    category: str
    turns: list[str]
    reference: list[str] | None  # the reference answer's turns, for NEED_REF_CATS


def load_questions(folder: str, suite: Suite) -> list[Question]:
    """``question.jsonl`` (+ the GPT-4 reference answers) of a suite folder, checked field by field."""
    root = resolve_path(folder)
    path = root / "question.jsonl"
    if not path.is_file():
        raise DataError(f"eval.bench_dir: {path} not found (a {suite.name} folder holds question.jsonl)")
    references = {}
    ref_path = next((root / f for f in REFERENCE_FILES if (root / f).is_file()), None)
    if ref_path is not None:
        for lineno, row in iter_jsonl(ref_path):
            choices = require_field(row, "choices", ref_path, lineno, kind=list, nonempty=True)
            references[row.get("question_id")] = list(choices[0]["turns"])
    questions = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        turns = require_field(row, "turns", path, lineno, kind=list, nonempty=True)
        if not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{where}: field 'turns': expected a list of strings")
        category = require_field(row, "category", path, lineno)
        qid = row.get("question_id")
        if category in NEED_REF_CATS and qid not in references:
            raise DataError(
                f"{where}: question {qid} ({category}) needs a reference answer; none in {ref_path or root}"
            )
        questions.append(Question(qid, category, turns[: suite.turns], references.get(qid)))
    return questions


# ----------------------------------------------------------------------------- answers


def prompt_format(tokenizer) -> str:
    """``youri-chat`` / ``youri-instruction`` (youri.prompts), or ``chat_template`` (the folder's own)."""
    template = tokenizer.chat_template
    if template == chat_template("instruction"):
        return "youri-instruction"
    return "youri-chat" if not template or template == chat_template("chat") else "chat_template"


def encode_conversation(tokenizer, fmt: str, questions: list[str], answers: list[str]) -> list[int] | None:
    """Prompt ids for the next answer (None: the format cannot hold this many turns)."""
    if fmt == "chat_template":
        messages = []
        for q, a in zip(questions, answers + [None]):
            messages.append({"role": "user", "content": q})
            if a is not None:
                messages.append({"role": "assistant", "content": a})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids if isinstance(ids, list) else ids["input_ids"])  # a BatchEncoding where return_dict wins
    turns = [Turn(USER, questions[0])]
    for q, a in zip(questions[1:], answers):
        turns += [Turn(SYSTEM, a), Turn(USER, q)]
    if fmt == "youri-instruction":
        if len(turns) > 1:
            return None
        return encode_prompt(turns_to_instruction(turns), tokenizer)
    return encode_prompt(turns, tokenizer)


def generate_answers(
    model,
    tokenizer,
    questions: list[Question],
    *,
    max_new_tokens: int,
    temperatures: dict[str, float],
    seed: int,
    batch_size: int,
    on_turn: Callable[[int], None] = lambda turn: None,
) -> dict[Any, dict[str, Any]]:
    """Per question id: its answers (one per turn the format can hold) and how each ended."""
    fmt = prompt_format(tokenizer)
    engine = Engine(model, tokenizer, max_batch_size=batch_size)
    out = {q.id: {"turns": [], "finish": [], "format": fmt} for q in questions}
    for turn in range(max(len(q.turns) for q in questions)):
        pending = []
        for index, q in enumerate(questions):
            answers = out[q.id]["turns"]
            if len(q.turns) <= turn or len(answers) < turn:  # no such turn, or an earlier one is missing
                continue
            ids = encode_conversation(tokenizer, fmt, q.turns[: turn + 1], answers)
            if ids is None:
                continue
            temperature = temperatures.get(q.category, DEFAULT_TEMPERATURE)
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0, top_k=0)
            params.seed = seed * 1_000_003 + index * 7 + turn if temperature > 0 else None
            events: list[Event] = []
            try:
                pending.append((q, engine.submit(ids, params, events.append), events))
            except GenerationError as err:  # e.g. a prompt longer than the context: an empty answer
                out[q.id]["turns"].append("")
                out[q.id]["finish"].append(f"error: {err}")
        while any(not request.done for _, request, _ in pending):
            engine.step()
        for q, _, events in pending:
            out[q.id]["turns"].append("".join(e.text for e in events))
            out[q.id]["finish"].append(next((e.finish_reason for e in events if e.finish_reason), "stop"))
        on_turn(turn + 1)
    return out


# ----------------------------------------------------------------------------- judging and scores


def judge_answers(
    judge: Judge, prompt_set: str, questions: list[Question], answers: dict[Any, list[str]], *, parallel: int = 4
) -> list[dict[str, Any]]:
    """One judgment record per (question, turn) that has an answer; calls run ``parallel`` at a time."""
    prompts = PROMPT_SETS[prompt_set]
    jobs = []
    for q in questions:
        given = answers.get(q.id, [])
        for turn in range(1, min(len(q.turns), len(given)) + 1):
            reference = q.category in NEED_REF_CATS
            if (turn, reference) not in prompts.prompts:
                continue  # a prompt set without second-turn prompts (ku-nlp)
            template = prompts.template(turn, reference)
            user = fill(template, q.turns, given[:turn], q.reference if reference else None)
            jobs.append((q, turn, template, user))

    def run(job):
        q, turn, template, user = job
        result = judge.judge(template, q.id, turn, user, prompts.patterns)
        return {
            "question_id": q.id,
            "category": q.category,
            "turn": turn,
            "judge": [judge.model, template["name"]],
            "rating": result.rating,
            "status": "failed" if result.judgment is None else ("ok" if result.rating is not None else "unparsable"),
            "cached": result.cached,
            "judgment": result.judgment,
            "error": result.error,
        }

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(run, jobs))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def scores(records: list[dict[str, Any]], turns: int) -> dict[str, Any]:
    """FastChat show_result's numbers: per-turn and overall means of the parsed ratings, per category."""
    rated = [r for r in records if r["rating"] is not None]
    by_turn = {t: [r["rating"] for r in rated if r["turn"] == t] for t in range(1, turns + 1)}
    categories = {}
    for category in dict.fromkeys(r["category"] for r in records):
        mine = [r for r in rated if r["category"] == category]
        categories[category] = {
            "score": _mean([r["rating"] for r in mine]),
            **{f"turn_{t}": _mean([r["rating"] for r in mine if r["turn"] == t]) for t in range(1, turns + 1)},
            "n": len(mine),
        }
    problems = lambda status: [[r["question_id"], r["turn"]] for r in records if r["status"] == status]  # noqa: E731
    return {
        "first_turn": _mean(by_turn[1]),
        "second_turn": _mean(by_turn[2]) if turns > 1 else None,
        "overall": _mean([r["rating"] for r in rated]),
        "categories": categories,
        "n_judged": len(rated),
        "n_judged_by_turn": {str(t): len(v) for t, v in by_turn.items()},
        "n_judgments": len(records),
        "unparsable": len(problems("unparsable")),
        "failed": len(problems("failed")),
        "unparsable_items": problems("unparsable"),
        "failed_items": problems("failed"),
        "judge_calls_cached": sum(r["cached"] for r in records),
    }


def print_scores(metrics: dict[str, Any], file=None) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [("category", "score", "turn 1", "turn 2", "n")]
    for name, c in metrics["categories"].items():
        rows.append((name, fmt(c["score"]), fmt(c.get("turn_1")), fmt(c.get("turn_2")), str(c["n"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)), file=file)
    print(
        f"{metrics['suite']}: first turn {fmt(metrics['first_turn'])}, second turn {fmt(metrics['second_turn'])}, "
        f"overall {fmt(metrics['overall'])} ({metrics['n_judged']} judged answers of {metrics['n_judgments']}; "
        f"unparsable {metrics['unparsable']}, failed {metrics['failed']}; judge {metrics['judge']['model']}, "
        f"{metrics['judge']['calls']} calls, {metrics['judge_calls_cached']} from the cache)",
        file=file,
    )
    for kind in ("unparsable", "failed"):
        if metrics[kind]:
            items = ", ".join(f"q{q} turn {t}" for q, t in metrics[f"{kind}_items"])
            print(f"{kind} judgments (not in the means): {items}", file=file)
    if metrics["failed"]:
        print("failed requests are not cached: run again with --overwrite to ask only for those", file=file)


def answer_records(questions: list[Question], generated: dict[Any, dict[str, Any]], model_id: str) -> list[dict]:
    """FastChat's model_answer rows (one per question), with how each turn ended."""
    now = time.time()
    return [
        {
            "question_id": q.id,
            "category": q.category,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": generated[q.id]["turns"]}],
            "finish_reasons": generated[q.id]["finish"],
            "prompt_format": generated[q.id]["format"],
            "tstamp": now,
        }
        for q in questions
    ]


def read_answers(path: str) -> dict[Any, list[str]]:
    """FastChat model_answer JSON Lines -> question id -> answer turns."""
    answers = {}
    for lineno, row in iter_jsonl(resolve_path(path)):
        choices = require_field(row, "choices", path, lineno, kind=list, nonempty=True)
        answers[row.get("question_id")] = list(choices[0]["turns"])
    return answers


def default_cache() -> Path:
    return Path.home() / ".cache" / "youri" / "judgments"


# ----------------------------------------------------------------------------- the stage


def run_suite(cfg, out: Path, *, overwrite: bool, asked) -> dict[str, Any]:
    """``youri eval --suite ja-mt-bench|ja-vicuna-qa``: answers (or ``cfg.answers``), judgments, metrics.json.
    ``cfg`` is ``youri.eval.evaluate.Config``; answers already in ``OUT.partial`` (an interrupted run with
    the same config and inputs) are reused, so a judge outage never costs a second generation."""
    suite = SUITES[cfg.suite]
    if not cfg.bench_dir:
        raise ConfigError(f"eval: --suite {suite.name} needs --bench_dir, the folder holding its question.jsonl")
    if not cfg.model and not cfg.answers:
        raise ConfigError(f"eval: --suite {suite.name} needs MODEL (to answer) or --answers FILE (to judge)")
    questions = load_questions(cfg.bench_dir, suite)[: cfg.limit or None]
    prompt_set = suite.prompts if cfg.judge_prompts == "auto" else cfg.judge_prompts
    key = os.environ.get(cfg.judge_key_env, "") if cfg.judge_key_env else ""
    judge = Judge(
        cfg.judge_url, cfg.judge_model, key=key, cache_dir=cfg.judge_cache or default_cache(), retries=cfg.judge_retries
    )
    inputs = [resolve_path(cfg.bench_dir), cfg.answers or cfg.model]
    parent = cfg.model or None
    with StageWriter(out, stage="eval", config=asked, inputs=inputs, parent=parent, overwrite=overwrite) as stage:
        start = time.time()
        saved = stage.path / "answers.jsonl"
        if cfg.answers:
            answers, formats = read_answers(cfg.answers), ["given"]
        else:
            if not saved.is_file():
                write_jsonl(saved, answer_records(questions, _generate(cfg, questions), Path(cfg.model).name))
            answers = read_answers(str(saved))
            formats = sorted({row.get("prompt_format", "") for _, row in iter_jsonl(saved)})
        generated_s = time.time() - start
        judged = judge_answers(judge, prompt_set, questions, answers, parallel=cfg.judge_parallel)
        write_jsonl(stage.path / "judgments.jsonl", judged)
        metrics = {
            "suite": suite.name,
            "model": cfg.model or cfg.answers,
            "questions": len(questions),
            "source": suite.source,
            **scores(judged, suite.turns),
            "judge": {"url": judge.url, "model": judge.model, "prompts": prompt_set, "calls": judge.calls},
            "temperatures": cfg.temperatures,
            "prompt_format": formats[0] if len(formats) == 1 else formats,
            "max_new_tokens": cfg.max_new_tokens,
            "answer_time_s": round(generated_s, 1),
            "wall_time_s": round(time.time() - start, 1),
            "config": config_to_dict(cfg),
        }
        print_scores(metrics, file=sys.stdout)
        stage.finish(metrics)
    return metrics


def _generate(cfg, questions: list[Question]) -> dict[Any, dict[str, Any]]:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg.model, dtype=None if cfg.dtype == "auto" else getattr(torch, cfg.dtype), device=device)
    tokenizer = load_tokenizer(cfg.model)
    batch = int(cfg.batch_size) if cfg.batch_size.isdigit() else 16
    return generate_answers(
        model.eval(),
        tokenizer,
        questions,
        max_new_tokens=cfg.max_new_tokens,
        temperatures=TEMPERATURES[cfg.temperatures],
        seed=cfg.seed,
        batch_size=batch,
        on_turn=lambda turn: print(f"[eval] {cfg.suite}: turn {turn} answered ({len(questions)} questions)"),
    )
