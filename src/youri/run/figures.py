"""The report card's figures: what the release claims, drawn from ``report.json``.

* ``task_scores.png`` -- JP-8 score per task, full precision and GPTQ 4-bit side by side for each
  model (base, instruction, chat), each task's chance level drawn across its group.
* ``cost_of_4bit.png`` -- what 4 bits cost each model: points lost per task and on average (fp minus
  GPTQ), beside the size ratio (GPTQ / fp weights on disk) and the held-out perplexity change.
* ``compare.png`` (with ``--compare OLD_RUN``) -- score change per task (and of the average) against
  the old run, for all six models.
* ``ja-mt-bench.png`` (and ``ja-vicuna-qa.png``), when a judged chat suite ran -- the judge's mean
  rating per category, then of turn 1, turn 2 and overall, one bar per evaluated model.

Every builder returns the matplotlib figure and a ``FigureSpec``: file name, title, alt text, and the
plotted numbers as a table (the HTML report prints it beneath the figure). The figures plot exactly
the numbers in ``report.json`` (tests read the bars back from the figure and compare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend to choose

from youri.run.layout import COLORS, PRECISIONS, TRAINING_STAGES
from youri.stage import is_complete, read_metrics

LABELS = {"fp": "fp", "gptq": "4-bit"}
SIZE_CLAIM = 0.30  # rinna: each GPTQ twin under 30 % of its fp model's size (Youri 7B: 3.9 GB of 13.5 GB)
NAN = float("nan")


@dataclass
class FigureSpec:
    file: str
    title: str
    alt: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def write_figures(report: dict[str, Any], out: Path) -> list[FigureSpec]:
    """Draw every figure the report has data for into ``out``; their specs, in display order."""
    specs = []
    builders = [task_scores, cost_of_4bit] + ([compare_deltas] if report.get("compare") else [])
    suites = [s for s in dict.fromkeys(s for row in report["rows"] for s in row.get("chat_suites", {}))]
    builders += [lambda r, s=suite: chat_suite_scores(r, s) for suite in suites]
    for build in builders:
        fig, spec = build(report)
        fig.savefig(out / spec.file, dpi=100)
        specs.append(spec)
    return specs


# ---------------------------------------------------------------------------- numbers


def scored_tasks(report: dict[str, Any]) -> list[str]:
    """Tasks with a score in at least one row, in the report's column order."""
    return [t for t in report["tasks"] if any(t in row["scores"] for row in report["rows"])]


def variants_of(report: dict[str, Any]) -> list[str]:
    """The model variants the report has rows for, in its order (base, instruction, chat; or merged, ...)."""
    return list(dict.fromkeys(r["variant"] for r in report["rows"]))


def _names(report: dict[str, Any]) -> str:
    """``base, instruction and chat``: the report's variants in words."""
    names = variants_of(report)
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else "no model"


def row_of(rows: list[dict[str, Any]], variant: str, precision: str) -> dict[str, Any]:
    """The report row of one model ({} when the run has none)."""
    return next((r for r in rows if r["variant"] == variant and r["precision"] == precision), {})


def score(row: dict[str, Any], task: str) -> float:
    value = row.get("scores", {}).get(task)
    return NAN if value is None else float(value)


def chance(report: dict[str, Any], task: str) -> float:
    """A task's chance level (the same in every eval folder that ran it; NaN when none recorded it)."""
    levels = [row["chance"][task] for row in report["rows"] if task in row.get("chance", {})]
    return float(levels[0]) if levels else NAN


def points_lost(report: dict[str, Any], variant: str, tasks: list[str]) -> list[float]:
    """fp score minus GPTQ score per task, then their mean over the tasks both scored (positive = lost)."""
    fp, q = row_of(report["rows"], variant, "fp"), row_of(report["rows"], variant, "gptq")
    lost = [score(fp, t) - score(q, t) for t in tasks]
    known = [x for x in lost if not math.isnan(x)]
    return lost + [sum(known) / len(known) if known else NAN]


def size_ratio(report: dict[str, Any], variant: str) -> float:
    """GPTQ weights on disk / fp weights on disk."""
    fp, q = _fp_and_4bit(report, variant, "size_mb")
    return q / fp if fp and q else NAN


def ppl_change(report: dict[str, Any], variant: str, lang: str) -> float:
    """GPTQ perplexity relative to fp, in percent (+ = worse)."""
    fp, q = _fp_and_4bit(report, variant, f"ppl_{lang}")
    return 100 * (q / fp - 1) if fp and q else NAN


def _fp_and_4bit(report: dict[str, Any], variant: str, key: str) -> tuple[Any, Any]:
    return row_of(report["rows"], variant, "fp").get(key), row_of(report["rows"], variant, "gptq").get(key)


def compare_delta(report: dict[str, Any], variant: str, precision: str, tasks: list[str]) -> list[float]:
    """Score change new - old per task, then of the average."""
    new, old = row_of(report["rows"], variant, precision), row_of(report["compare"]["rows"], variant, precision)
    deltas = [score(new, t) - score(old, t) for t in tasks]
    averages = new.get("average"), old.get("average")
    return deltas + [averages[0] - averages[1] if None not in averages else NAN]


def _fmt(value: float, digits: int = 2, sign: bool = False) -> str:
    if math.isnan(value):
        return "n/a"
    value += 0.0  # -0.0 -> 0.0: no "-0.00" in a table
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- figures


def task_scores(report: dict[str, Any]):
    """Grouped bars per task: for each model its fp bar beside its 4-bit bar; chance as a dashed line."""
    tasks = scored_tasks(report)
    series = _series(report)
    fig = Figure(figsize=(max(6.0, 1.9 * len(tasks) + 2), 3.6))
    ax = fig.subplots()
    _six_bars(ax, report, len(tasks), lambda v, p: [score(row_of(report["rows"], v, p), t) for t in tasks], digits=1)
    levels = [chance(report, t) for t in tasks]
    ax.hlines(
        levels,
        [k - 0.45 for k in range(len(tasks))],
        [k + 0.45 for k in range(len(tasks))],
        colors="black",
        linestyles="dashed",
        label="chance",
        gid="chance",
    )
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("JP-8 per task: full precision beside GPTQ 4-bit")
    if not tasks:
        ax.text(0.5, 0.5, "no JP-8 scores (evaluation not run)", ha="center", va="center", transform=ax.transAxes)
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    header = ["task", "chance"] + [label for _, _, label in series]
    rows = [
        [t, _fmt(c)] + [_fmt(score(row_of(report["rows"], v, p), t)) for v, p, _ in series]
        for t, c in zip(tasks, levels)
    ]
    alt = (
        f"Grouped bar chart of JP-8 scores for {len(tasks)} task(s) ({', '.join(tasks) or 'none scored'}): "
        f"for each task, {_names(report)}, each model's full-precision bar beside its GPTQ 4-bit "
        "bar (hatched), with the task's chance level as a dashed line."
    )
    return fig, FigureSpec("task_scores.png", "JP-8 per task, fp and 4-bit", alt, header, rows)


def cost_of_4bit(report: dict[str, Any]):
    """Three panels: points lost per task and on average; size ratio; perplexity change."""
    tasks, variants = scored_tasks(report), variants_of(report)
    groups = tasks + ["mean"]
    fig = Figure(figsize=(max(9.0, 1.3 * len(groups) + 7), 3.6))
    lost_ax, size_ax, ppl_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [max(len(groups), 2), 1.2, 1.6]})
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(groups))]
        lost = points_lost(report, variant, tasks)
        _label_bars(lost_ax, lost_ax.bar(xs, lost, width, label=variant, color=COLORS[variant]), lost, 2, sign=True)
    lost_ax.axhline(0, color="black", lw=0.8)
    lost_ax.set_xticks(range(len(groups)), groups, fontsize=8)
    lost_ax.set_ylabel("points lost (fp − 4-bit)")
    lost_ax.set_title("score lost to 4 bits")
    lost_ax.margins(y=0.15)
    lost_ax.legend(fontsize=7)

    ratios = [size_ratio(report, v) for v in variants]
    bars = size_ax.bar(range(len(variants)), ratios, 0.6, color=[COLORS[v] for v in variants])
    _label_bars(size_ax, bars, ratios, 3)
    size_ax.axhline(SIZE_CLAIM, color="black", ls="dashed", lw=1, label=f"claim: < {SIZE_CLAIM:.0%}")
    size_ax.set_xticks(range(len(variants)), variants, fontsize=8)
    size_ax.set_ylabel("4-bit size / fp size")
    size_ax.set_title("size ratio")
    size_ax.set_ylim(0, max([1.05] + [1.2 * r for r in ratios if not math.isnan(r)]))  # a ratio is read against 1
    size_ax.legend(fontsize=7, loc="upper right")

    langs = ("ja", "en")
    for j, lang in enumerate(langs):
        xs = [k - 0.2 + 0.4 * j for k in range(len(variants))]
        changes = [ppl_change(report, v, lang) for v in variants]
        bars = ppl_ax.bar(xs, changes, 0.4, label=f"ppl {lang}", color="#555555" if lang == "ja" else "#bbbbbb")
        _label_bars(ppl_ax, bars, changes, 1, sign=True)
    ppl_ax.axhline(0, color="black", lw=0.8)
    ppl_ax.set_xticks(range(len(variants)), variants, fontsize=8)
    ppl_ax.set_ylabel("perplexity change (%)")
    ppl_ax.set_title("perplexity, 4-bit vs fp")
    ppl_ax.margins(y=0.2)
    ppl_ax.legend(fontsize=7, loc="best")
    for ax, width in ((lost_ax, len(groups)), (size_ax, len(variants)), (ppl_ax, len(variants))):
        ax.set_xlim(-0.5, width - 0.5)  # NaN bars do not widen the axis: their n/a labels must still fit
    fig.tight_layout()

    header = ["model"] + [f"lost {g}" for g in groups] + ["size ratio", "ppl ja Δ%", "ppl en Δ%"]
    rows = [
        [v]
        + [_fmt(x, sign=True) for x in points_lost(report, v, tasks)]
        + [_fmt(size_ratio(report, v), 3)]
        + [_fmt(ppl_change(report, v, lang), 1, sign=True) for lang in langs]
        for v in variants
    ]
    alt = (
        f"Three panels on the cost of GPTQ 4-bit for {_names(report)}: bars of the JP-8 points "
        f"lost (full precision minus 4-bit) per task ({', '.join(tasks) or 'none scored'}) and their mean; "
        f"bars of the 4-bit size as a fraction of the fp size, with a dashed line at {SIZE_CLAIM:.0%}; "
        "bars of the Japanese and English held-out perplexity change in percent."
    )
    return fig, FigureSpec("cost_of_4bit.png", "The cost of 4 bits", alt, header, rows)


def compare_deltas(report: dict[str, Any]):
    """Grouped bars per task (and the average): score change against the ``--compare`` run, six models."""
    tasks = scored_tasks(report)
    groups = tasks + ["average"]
    series = _series(report)
    fig = Figure(figsize=(max(6.0, 1.9 * len(groups) + 2), 3.6))
    ax = fig.subplots()
    _six_bars(ax, report, len(groups), lambda v, p: compare_delta(report, v, p, tasks), digits=1, sign=True)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("score change (new − old)")
    ax.set_title(f"against {report['compare']['run_dir']}")
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    header = ["model"] + [f"Δ {g}" for g in groups]
    rows = [[label] + [_fmt(x, sign=True) for x in compare_delta(report, v, p, tasks)] for v, p, label in series]
    alt = (
        f"Grouped bar chart of the score change against the older run {report['compare']['run_dir']} per task "
        f"({', '.join(tasks) or 'none scored'}) and of the average, for the {len(series)} models ({_names(report)}; "
        "full precision and GPTQ 4-bit); bars above zero are improvements."
    )
    return fig, FigureSpec("compare.png", "Change against the older run", alt, header, rows)


def chat_suite_scores(report: dict[str, Any], suite: str):
    """One bar per model that ran the suite, per category, then turn 1, turn 2 and overall."""
    ran = [r for r in report["rows"] if suite in r.get("chat_suites", {})]
    models = [(r, f"{r['variant']} {LABELS[r['precision']]}") for r in ran]
    categories = list(dict.fromkeys(c for r, _ in models for c in r["chat_suites"][suite]["categories"]))
    groups = categories + ["turn 1", "turn 2", "overall"]

    def values(row: dict[str, Any]) -> list[float]:
        s = row["chat_suites"][suite]
        cells = [s["categories"].get(c) for c in categories] + [s["first_turn"], s["second_turn"], s["overall"]]
        return [NAN if v is None else float(v) for v in cells]

    fig = Figure(figsize=(max(6.0, 0.9 * len(groups) + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(len(models), 1)
    for i, (row, label) in enumerate(models):
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(groups))]
        bars = ax.bar(
            xs,
            values(row),
            width,
            label=label,
            color=COLORS[row["variant"]],
            alpha=1.0 if row["precision"] == "fp" else 0.55,
            hatch="" if row["precision"] == "fp" else "//",
            edgecolor="white",
        )
        _label_bars(ax, bars, values(row), 1, rotation=90)
    ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=30)
    ax.set_ylim(0, 11)
    ax.set_ylabel("judge rating (1-10)")
    judges = ", ".join(sorted({str(r["chat_suites"][suite]["judge"]) for r in ran}))
    ax.set_title(f"{suite} per category (judge: {judges})")
    ax.legend(fontsize=7, ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    header = ["category"] + [label for _, label in models]
    table = [values(row) for row, _ in models]
    rows = [[g] + [_fmt(t[k]) for t in table] for k, g in enumerate(groups)]
    rows.append(["judged answers"] + [str(r["chat_suites"][suite]["n_judged"]) for r, _ in models])
    alt = (
        f"Grouped bar chart of {suite}: the judge's mean rating (1-10) per category ({', '.join(categories)}), "
        f"then of the first turn, the second turn and overall, one bar per evaluated model "
        f"({', '.join(label for _, label in models)}); a missing mean is written n/a."
    )
    return fig, FigureSpec(f"{suite}.png", f"{suite} per category", alt, header, rows)


def _series(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variant, precision, label) of the report's models (six), fp before 4-bit within each variant."""
    return [(v, p, f"{v} {LABELS[p]}") for v in variants_of(report) for p in PRECISIONS]


def _six_bars(ax, report: dict[str, Any], groups: int, values_of, *, digits: int, sign: bool = False) -> None:
    """Six bars per group: each variant's colour, fp solid beside 4-bit hatched, every bar labelled."""
    series = _series(report)
    width = 0.8 / len(series)
    for i, (variant, precision, label) in enumerate(series):
        values = values_of(variant, precision)
        xs = [k - 0.4 + width * (i + 0.5) for k in range(groups)]
        bars = ax.bar(
            xs,
            values,
            width,
            label=label,
            color=COLORS[variant],
            alpha=1.0 if precision == "fp" else 0.55,
            hatch="" if precision == "fp" else "//",
            edgecolor="white",
        )
        _label_bars(ax, bars, values, digits, sign=sign, rotation=90)
    ax.set_xlim(-0.5, max(groups, 1) - 0.5)  # NaN bars do not widen the axis: their n/a labels must still fit
    ax.margins(y=0.15)


def _label_bars(ax, bars, values: list[float], digits: int, *, sign: bool = False, rotation: int = 0) -> None:
    """Each bar's value at its end; a missing value is written ``n/a`` at the baseline (a 0 bar is a real 0)."""
    for bar, value in zip(bars, values):
        missing = math.isnan(value)
        y = 0.0 if missing else value
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            y,
            _fmt(value, digits, sign),
            rotation=rotation,
            fontsize=6,
            ha="center",
            va="top" if y < 0 else "bottom",
            color="#888888" if missing else "black",
        )


def loss_spec(run_dir: Path) -> FigureSpec:
    """The table and alt text of ``loss_curves.png`` (drawn by ``report.plot_losses``)."""
    stages = [s for s in TRAINING_STAGES if is_complete(run_dir / s)]
    rows = []
    for stage in stages:
        metrics = read_metrics(run_dir / stage)
        curve = metrics.get("loss_curve") or []
        held = {name: points for name, points in (metrics.get("val") or {}).items() if points}
        if metrics.get("heldout_curve"):
            held["held-out response"] = metrics["heldout_curve"]
        rows.append(
            [
                stage,
                str(curve[-1][0]) if curve else "n/a",
                _fmt(curve[0][1], 3) if curve else "n/a",
                _fmt(curve[-1][1], 3) if curve else "n/a",
                "; ".join(f"{name} {_fmt(p[0][1], 3)} → {_fmt(p[-1][1], 3)}" for name, p in held.items()) or "n/a",
            ]
        )
    alt = (
        f"Line charts, one per training stage ({', '.join(stages) or 'none complete'}): training loss per "
        "step, with the held-out losses (per language, or on held-out responses for SFT) as marked lines."
    )
    return FigureSpec(
        "loss_curves.png",
        "Training and held-out loss",
        alt,
        ["stage", "steps", "train loss first", "train loss last", "held-out loss first → last"],
        rows,
    )


def scores_spec(report: dict[str, Any]) -> FigureSpec:
    """The table and alt text of ``scores.png`` (drawn by ``report.plot_scores``)."""
    rows = [
        [
            f"{r['variant']} {LABELS[r['precision']]}",
            _fmt(NAN if r["average"] is None else float(r["average"])),
            r.get("average_note") or "",
        ]
        for r in report["rows"]
    ]
    alt = (
        f"Bar chart of each model's average JP-8 score over the tasks it ran, {_names(report)}, "
        "full precision and GPTQ 4-bit (a missing average is drawn as 0)."
    )
    return FigureSpec("scores.png", "Average score per model", alt, ["model", "average", "over"], rows)
