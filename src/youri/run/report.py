"""``youri report RUN_DIR``: the family's report card, from the stage folders of one pipeline run.

    youri report runs/demo                          # writes runs/demo/report/, prints the table
    youri report runs/demo --compare runs/old       # adds the old run's averages and the change

Rows: base / instruction / chat x {full precision, GPTQ 4-bit}. Columns: JP-8 score per task and
their average (``n/a`` where a task had no data or a stage was not run), Japanese and English
held-out perplexity (on the data stage's ``val/ja`` and ``val/en`` rows), size on disk, generation
tokens/s. Scores are read from the eval folders' ``metrics.json``; perplexity and speed are measured
here once per model and cached in ``report/measures.json`` by the model folder's fingerprint.
Outputs: ``report.md``, ``report.html``, ``report.json``, ``loss_curves.png``, ``scores.png``.
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
from youri.eval.tasks import TASKS
from youri.io import atomic_write_json, atomic_write_text, read_json
from youri.model import load_model, load_tokenizer
from youri.run.layout import PRECISIONS, REPORT, TRAINING_STAGES, VARIANTS, eval_folder, model_folder
from youri.stage import StageExistsError, fingerprint, is_complete, read_manifest, read_metrics
from youri.train.losses import token_loss_sum

JP8 = tuple(TASKS)  # the eight tasks in the harness's order


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
    report = {"run_dir": str(run_dir), "rows": rows, "tasks": _task_columns(rows)}
    if old is not None:
        report["compare"] = {"run_dir": compare, "rows": old}
    atomic_write_json(out / "report.json", report)
    markdown = render_markdown(report)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", render_html(report))
    plot_losses(run_dir, out / "loss_curves.png")
    plot_scores(rows, report["tasks"], out / "scores.png")
    if echo:
        print(markdown)
    return report


def _check_report_folder(out: Path) -> None:
    """The report is rewritten on every run, so its folder must be absent, empty or an earlier report."""
    ours = out.is_dir() and not out.is_symlink() and (not any(out.iterdir()) or (out / "report.json").is_file())
    if (out.exists() or out.is_symlink()) and not ours:
        raise StageExistsError(
            f"{out} is not a youri report folder (no report.json); youri never replaces it: move it away"
        )


# ---------------------------------------------------------------------------- rows


def collect_rows(run_dir: Path, *, measure: bool, eval_rows: int) -> list[dict[str, Any]]:
    cache_path = run_dir / REPORT / "measures.json"
    cache = read_json(cache_path) if cache_path.is_file() else {}
    rows = []
    for variant in VARIANTS:
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
            if row["present"]:
                row["size_mb"] = round(_weights_bytes(model_dir) / 2**20, 2)
                if measure:
                    key = fingerprint(model_dir)
                    if key not in cache:
                        cache[key] = measure_model(model_dir, run_dir / "data", eval_rows=eval_rows)
                        atomic_write_json(cache_path, cache)
                    row.update(cache[key])
            rows.append(row)
    return rows


def _scores(eval_dir: Path) -> dict[str, Any]:
    """Scores keyed by JP-8 task name (``jcommonsenseqa-1.1-0.3`` -> ``jcommonsenseqa``), versions kept aside:
    the family table compares tasks, while each model kind is scored with its own prompt version."""
    if not is_complete(eval_dir) or _stale(eval_dir):
        return {"scores": {}, "versions": {}, "average": None, "average_note": "not evaluated"}
    metrics = read_metrics(eval_dir)
    scores, versions = {}, {}
    for key, t in metrics.get("tasks", {}).items():
        task = next((name for name in JP8 if key == name or key.startswith(name + "-")), key)
        scores[task], versions[task] = round(t["score"], 2), key
    return {
        "scores": scores,
        "versions": versions,
        "average": metrics.get("average"),
        "average_note": metrics.get("average_note", ""),
    }


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
    prompt = tokenizer("日本の首都は", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        model.generate(**prompt, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(
            **prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tokenizer.eos_token_id,
        )
        seconds = time.perf_counter() - start
    generated = out.shape[1] - prompt["input_ids"].shape[1]
    result["gen_tokens_per_s"] = round(generated / seconds, 1)
    return result


def _old_rows(old_dir: Path) -> list[dict[str, Any]]:
    old_report = old_dir / REPORT / "report.json"
    if old_report.is_file():
        return read_json(old_report)["rows"]
    return collect_rows(old_dir, measure=False, eval_rows=0)


# ---------------------------------------------------------------------------- rendering


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    tasks = report["tasks"]
    header = ["model", *tasks, "JP avg", "ppl ja", "ppl en", "size MB", "gen tok/s"]
    old = {(r["variant"], r["precision"]): r for r in report.get("compare", {}).get("rows", [])}
    if old:
        header.append("Δ avg vs old")
    body = []
    for row in report["rows"]:
        cells = [f"{row['variant']} ({'GPTQ 4-bit' if row['precision'] == 'gptq' else 'fp'})"]
        cells += [_fmt(row["scores"].get(t)) for t in tasks]
        cells += [
            _fmt(row["average"]),
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


def render_markdown(report: dict[str, Any]) -> str:
    header, body = table(report)
    lines = [
        f"# youri report card — {report['run_dir']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    notes = sorted({r["average_note"] for r in report["rows"] if r.get("average_note")})
    lines += [
        "",
        "JP avg: " + ("; ".join(notes) if notes else "n/a"),
        "Perplexity on the data stage's held-out rows; `n/a`: stage not run or no data.",
        "",
        "![loss curves](loss_curves.png) ![scores](scores.png)",
        "",
    ]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    header, body = table(report)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return (
        f"<!doctype html><meta charset='utf-8'><title>youri report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
        f"<h1>youri report card</h1><p>{html.escape(report['run_dir'])}</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
        "<p><img src='loss_curves.png' width='640'> <img src='scores.png' width='640'></p>"
    )


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
    ax.set_ylabel("JP average (tasks run)")
    ax.set_title("scores per variant")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
