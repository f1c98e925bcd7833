"""``youri report RUN_DIR``: the family's report card, from the stage folders of one pipeline run.

    youri report runs/demo                          # writes runs/demo/report/, prints the table
    youri report runs/demo --compare runs/old       # adds the old run's averages and the change

Rows: each model variant whose folder the run has (base / instruction / chat, or base / merged / preferred for
rinna's 2024 chain: ``youri.run.layout.VARIANTS``) x {full precision, GPTQ 4-bit}. Columns: JP-8 score per
task and their average (``n/a`` where a task had no data or a stage was not run; headed "JP-8 avg" only when
all eight tasks ran, the notes name every average and rinna's 4/6-task subsets), Japanese and English held-out
perplexity (on the data stage's ``val/ja`` and ``val/en`` rows), size on disk, generation tokens/s (greedy,
one stream, through youri's own engine -- what chat and serve run -- so a GPTQ row shows its int4 kernel;
``measures.json`` also records which GPTQ matmul ran). Scores are read from the eval folders'
``metrics.json``; perplexity and speed are measured here once per model and cached in ``report/measures.json``
by the model folder's fingerprint.
Outputs: ``report.md``, ``report.html`` (every figure with alt text and its numbers in a table beneath
it), ``report.json``, ``loss_curves.png``, ``scores.png`` and the figures of the release's claims
(``youri.run.figures``): ``task_scores.png``, ``cost_of_4bit.png``, ``compare.png`` (with ``--compare``).
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend to choose

from youri.config import PositiveInt
from youri.data.shards import TokenShards, read_index
from youri.eval.averages import JP8, JP8_NAME
from youri.eval.chatbench import SUITES
from youri.io import DataError, atomic_write_json, atomic_write_text, read_json
from youri.model import load_model, load_tokenizer
from youri.run.figures import FigureSpec, loss_spec, scores_spec, write_figures
from youri.run.layout import (
    PRECISIONS,
    REPORT,
    TRAINING_STAGES,
    VARIANTS,
    chat_suite_folder,
    eval_folder,
    model_folder,
)
from youri.runtime.quant_linear import kernel_summary
from youri.serve.engine import Engine, SamplingParams, generate
from youri.stage import METRICS, StageExistsError, fingerprint, is_complete, read_manifest, read_metrics
from youri.train.losses import token_loss_sum

GEN_ENGINE = "youri-engine-1"
"""What measured ``gen_tokens_per_s``: cached figures from another generator (HF generate) are measured again."""


@dataclass
class Config:
    run_dir: str = field(default="runs/demo", metadata={"positional": True})
    """A 'youri pipeline' run folder (one sub-folder per stage)."""
    compare: str = ""
    """An older run folder to compare with (its report is read or built)."""
    measure: bool = True
    """Measure perplexity and generation speed of each model (cached); false = read metrics only."""
    eval_rows: PositiveInt = 16
    """Held-out rows per language for the perplexity column."""


def run(cfg: Config, *, overwrite: bool = False) -> dict[str, Any]:
    return write_report(
        Path(cfg.run_dir), compare=cfg.compare or None, measure=cfg.measure, eval_rows=cfg.eval_rows, echo=True
    )


def write_report(
    run_dir: Path, *, compare: str | None = None, measure: bool = True, eval_rows: int = 16, echo: bool = False
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    out = run_dir / REPORT
    _check_report_folder(out)
    out.mkdir(exist_ok=True)
    rows = collect_rows(run_dir, measure=measure, eval_rows=eval_rows)
    old = _old_rows(Path(compare)) if compare else None
    if compare and not any(r.get("present") or r.get("average") is not None for r in old):
        raise DataError(f"--compare {compare}: no model or eval stage folder in it, nothing to compare with")
    report = {"run_dir": str(run_dir), "rows": rows, "tasks": _task_columns(rows)}
    if old is not None:
        report["compare"] = {"run_dir": compare, "rows": old}
    atomic_write_json(out / "report.json", report)
    plot_losses(run_dir, out / "loss_curves.png")
    plot_scores(rows, report["tasks"], out / "scores.png")
    figures = [loss_spec(run_dir), scores_spec(report)] + write_figures(report, out)
    markdown = render_markdown(report, figures)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", render_html(report, figures))
    if echo:
        print(markdown)
    return report


def _check_report_folder(out: Path) -> None:
    """The report is rewritten on every run, so its folder must be absent, empty or an earlier report."""
    # report.json, or the measures cache an interrupted report leaves first, marks a folder youri made
    made_by_youri = any((out / name).is_file() for name in ("report.json", "measures.json"))
    ours = out.is_dir() and not out.is_symlink() and (not any(out.iterdir()) or made_by_youri)
    if (out.exists() or out.is_symlink()) and not ours:
        raise StageExistsError(
            f"{out} is not a youri report folder (no report.json); youri never replaces it: move it away"
        )


# ---------------------------------------------------------------------------- rows


def collect_rows(run_dir: Path, *, measure: bool, eval_rows: int) -> list[dict[str, Any]]:
    cache_path = run_dir / REPORT / "measures.json"
    cache = read_json(cache_path) if cache_path.is_file() else {}
    rows = []
    for variant in run_variants(run_dir):
        for precision in PRECISIONS:
            model_dir = run_dir / model_folder(variant, precision)
            eval_dir = run_dir / eval_folder(variant, precision)
            row: dict[str, Any] = {
                "variant": variant,
                "precision": precision,
                "model": str(model_dir),
                "present": is_complete(model_dir),
            }
            row.update(_scores(eval_dir))
            row["chat_suites"] = _chat_suites(run_dir, variant, precision)
            if row["present"]:
                row["size_mb"] = round(_weights_bytes(model_dir) / 2**20, 2)
                if measure:
                    key = fingerprint(model_dir)
                    if key not in cache or cache[key].get("gen_engine") != GEN_ENGINE:  # older figures: HF generate
                        cache[key] = measure_model(model_dir, run_dir / "data", eval_rows=eval_rows)
                        atomic_write_json(cache_path, cache)
                    row.update(cache[key])
            rows.append(row)
    return rows


def run_variants(run_dir: Path) -> list[str]:
    """The variants the run made (a model folder at either precision), in layout order; all of the default
    family (base, instruction, chat) when it made none yet, so an empty run still shows its n/a rows."""
    made = [v for v in VARIANTS if any((run_dir / model_folder(v, p)).is_dir() for p in PRECISIONS)]
    return made or [v for v in VARIANTS if v in ("base", "instruction", "chat")]


def _scores(eval_dir: Path) -> dict[str, Any]:
    """Scores keyed by JP-8 task name (``jcommonsenseqa-1.1-0.3`` -> ``jcommonsenseqa``), versions kept aside:
    the family table compares tasks, while each model kind is scored with its own prompt version."""
    if not is_complete(eval_dir) or _stale(eval_dir):
        return {
            "scores": {},
            "versions": {},
            "chance": {},
            "average": None,
            "average_name": "",
            "average_note": "not evaluated",
        }
    metrics = read_metrics(eval_dir)
    scores, versions, chance = {}, {}, {}
    try:  # a missing field is a one-line error already (read_json); a wrong type is named here
        for key, t in metrics.get("tasks", {}).items():
            task = next((name for name in JP8 if key == name or key.startswith(name + "-")), key)
            scores[task], versions[task], chance[task] = round(t["score"], 2), key, t.get("chance")
    except (TypeError, AttributeError) as err:
        raise DataError(f"{eval_dir / METRICS}: 'tasks' is not as youri eval writes it ({err})") from err
    return {
        "scores": scores,
        "versions": versions,
        "chance": chance,
        "average": metrics.get("average"),
        # an eval folder from before averages were named: say what it averaged, never "JP-8"
        "average_name": metrics.get("average_name") or f"average of {len(scores)} tasks ({', '.join(scores)})",
        "average_note": metrics.get("average_note", ""),
        "subsets": metrics.get("subsets", {}),
    }


def _chat_suites(run_dir: Path, variant: str, precision: str) -> dict[str, Any]:
    """Per judged chat suite that ran for this model: its turn, overall and per-category means."""
    found = {}
    for suite in SUITES:
        folder = run_dir / chat_suite_folder(suite, variant, precision)
        if not is_complete(folder) or _stale(folder):
            continue
        m = read_metrics(folder)
        found[suite] = {
            "first_turn": m.get("first_turn"),
            "second_turn": m.get("second_turn"),
            "overall": m.get("overall"),
            "categories": {name: c.get("score") for name, c in m.get("categories", {}).items()},
            "n_judged": m.get("n_judged"),
            "unparsable": m.get("unparsable"),
            "failed": m.get("failed"),
            "judge": (m.get("judge") or {}).get("model"),
        }
    return found


def chat_suite_columns(rows: list[dict[str, Any]]) -> list[str]:
    return [suite for suite in SUITES if any(suite in row.get("chat_suites", {}) for row in rows)]


def _stale(eval_dir: Path) -> bool:
    """An eval folder made from an older version of its model (the model was re-trained since)."""
    manifest = read_manifest(eval_dir) or {}
    parent, recorded = manifest.get("parent"), (manifest.get("inputs") or {}).get(manifest.get("parent"))
    try:
        return bool(parent and recorded and fingerprint(parent) != recorded)
    except FileNotFoundError:
        return True


def _task_columns(rows: list[dict[str, Any]]) -> list[str]:
    extra = sorted({task for row in rows for task in row["scores"]} - set(JP8))
    return list(JP8) + extra


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def measure_model(model_dir: Path, data_dir: Path, *, eval_rows: int = 16, new_tokens: int = 32) -> dict[str, Any]:
    """Held-out perplexity per language (the data stage's val rows) and greedy generation tokens/s."""

    model = load_model(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    result: dict[str, Any] = {}
    if (data_dir / "index.json").is_file():
        splits = [s for s in read_index(data_dir)["splits"] if s.startswith("val/")]
        for split in splits:
            shards = TokenShards.open(data_dir, split)
            ids = torch.from_numpy(shards.batch(list(range(min(eval_rows, len(shards))))))
            if len(ids) == 0 or ids.max() >= model.config.vocab_size:
                continue  # another tokenizer (e.g. before vocabulary extension): not comparable
            with torch.no_grad():
                loss, count = token_loss_sum(model(input_ids=ids).logits.float(), ids)
            result[f"ppl_{split.split('/')[-1]}"] = round(math.exp(loss.item() / max(count, 1)), 3)
    # Generation speed through youri's own engine (what chat and serve run): greedy, one stream, a fixed
    # number of tokens (eos ignored: an early or random model may say </s> at once).
    prompt = tokenizer("日本の首都は", add_special_tokens=False)["input_ids"]
    engine = Engine(model, tokenizer, max_batch_size=1)
    engine.eos_ids = set()
    generate(model, tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=2), engine=engine)  # warm-up
    start = time.perf_counter()
    out = generate(model, tokenizer, prompt, SamplingParams(temperature=0, max_new_tokens=new_tokens), engine=engine)
    seconds = time.perf_counter() - start
    result["gen_tokens_per_s"] = round(len(out.token_ids) / seconds, 1)
    result["gen_engine"] = GEN_ENGINE
    result["gen_decoder"] = engine.stats["decoder"]
    if kernel_summary(model):
        result["gptq_kernel"] = kernel_summary(model)
    return result


def _old_rows(old_dir: Path) -> list[dict[str, Any]]:
    if not old_dir.is_dir():
        raise FileNotFoundError(f"--compare: run folder not found: {old_dir}")
    old_report = old_dir / REPORT / "report.json"
    if old_report.is_file():
        return read_json(old_report)["rows"]
    return collect_rows(old_dir, measure=False, eval_rows=0)


# ---------------------------------------------------------------------------- rendering


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def average_header(rows: list[dict[str, Any]]) -> str:
    """ "JP-8 avg" only when every evaluated row averaged all eight tasks; the notes name each average."""
    names = {r.get("average_name") for r in rows if r.get("average") is not None}
    return "JP-8 avg" if names == {JP8_NAME} else "avg of tasks run"


def average_notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = sorted({r["average_note"] for r in rows if r.get("average_note")})
    for row in rows:
        for name, subset in row.get("subsets", {}).items():
            notes.append(f"{row['variant']} ({row['precision']}): {name} = {subset['value']:.2f}")
    return notes


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    tasks = report["tasks"]
    suites = chat_suite_columns(report["rows"])
    header = ["model", *tasks, average_header(report["rows"]), *suites, "ppl ja", "ppl en", "size MB", "gen tok/s"]
    old = {(r["variant"], r["precision"]): r for r in report.get("compare", {}).get("rows", [])}
    if old:
        header.append("Δ avg vs old")
    body = []
    for row in report["rows"]:
        cells = [f"{row['variant']} ({'GPTQ 4-bit' if row['precision'] == 'gptq' else 'fp'})"]
        cells += [_fmt(row["scores"].get(t)) for t in tasks]
        cells += [_fmt(row["average"])]
        cells += [_fmt(row.get("chat_suites", {}).get(s, {}).get("overall")) for s in suites]
        cells += [
            _fmt(row.get("ppl_ja")),
            _fmt(row.get("ppl_en")),
            _fmt(row.get("size_mb")),
            _fmt(row.get("gen_tokens_per_s"), 1),
        ]
        if old:
            before = old.get((row["variant"], row["precision"]), {}).get("average")
            cells.append(_fmt(row["average"] - before) if row["average"] is not None and before is not None else "n/a")
        body.append(cells)
    return header, body


def render_markdown(report: dict[str, Any], figures: list[FigureSpec] = ()) -> str:
    header, body = table(report)
    lines = [
        f"# youri report card — {report['run_dir']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    notes = average_notes(report["rows"])
    lines += [
        "",
        f"{average_header(report['rows'])}: " + ("; ".join(notes) if notes else "n/a"),
        "Perplexity on the data stage's held-out rows; `n/a`: stage not run or no data."
        + (" Chat suites: the judge's mean rating (1-10), all turns." if chat_suite_columns(report["rows"]) else ""),
        "",
    ]
    lines += [f"![{f.title}]({f.file})" for f in figures] + [""]
    return "\n".join(lines)


def render_html(report: dict[str, Any], figures: list[FigureSpec] = ()) -> str:
    """The family table, then every figure (with its alt text) and the numbers it plots in a table beneath."""
    sections = "".join(
        f"<h2>{html.escape(f.title)}</h2><figure><img src='{html.escape(f.file)}' alt='{html.escape(f.alt)}'>"
        f"<figcaption>{html.escape(f.alt)}</figcaption></figure>{_html_table(f.header, f.rows)}"
        for f in figures
    )
    return (
        f"<!doctype html><meta charset='utf-8'><title>youri report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}figcaption{color:#555;font-size:90%;max-width:60em}</style>"
        f"<h1>youri report card</h1><p>{html.escape(report['run_dir'])}</p>"
        f"{_html_table(*table(report))}"
        + "".join(f"<p>{html.escape(note)}</p>" for note in average_notes(report["rows"]))
        + sections
    )


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


# ---------------------------------------------------------------------------- plots


def plot_losses(run_dir: Path, path: Path) -> None:
    """Training loss and held-out loss per training stage."""
    stages = [s for s in TRAINING_STAGES if is_complete(run_dir / s)]
    fig = Figure(figsize=(4 * max(len(stages), 1), 3.2))
    axes = fig.subplots(1, max(len(stages), 1), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        metrics = read_metrics(run_dir / stage)
        curve = metrics.get("loss_curve") or []
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label="train", lw=1)
        for name, points in (metrics.get("val") or {}).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name, ms=3)
        held = metrics.get("heldout_curve") or []
        if held:
            ax.plot([p[0] for p in held], [p[1] for p in held], "o-", label="held-out response", ms=3)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_scores(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    labels = [f"{r['variant']}\n{r['precision']}" for r in rows]
    averages = [r["average"] if r["average"] is not None else 0.0 for r in rows]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    ax.bar(range(len(rows)), averages, color=["#4c72b0" if r["precision"] == "fp" else "#dd8452" for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(average_header(rows))
    ax.set_title("scores per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
