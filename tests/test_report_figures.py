"""The report card's figures on a hand-made run folder: every figure is written, the bars and lines read
back from each matplotlib figure equal the numbers in report.json, and the HTML embeds every figure with
alt text and its numbers in a table beneath it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from youri.run import figures
from youri.run.report import GEN_ENGINE, write_report

VARIANTS = {"base": "pretrain", "instruction": "sft_instruction", "chat": "sft_chat"}
CHANCE = {"jcommonsenseqa": 20.0, "xwinograd_ja": 50.0}


def stage_folder(path: Path, metrics: dict, weights: int = 0) -> None:
    path.mkdir(parents=True)
    (path / "youri.json").write_text(json.dumps({"stage": "x", "fingerprint": f"fp:{path.name}"}), encoding="utf-8")
    (path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    if weights:
        with open(path / "model.safetensors", "wb") as handle:
            handle.truncate(weights)  # only the size on disk is read


def fake_run(root: Path, shift: float = 0.0, variants: dict[str, str] = VARIANTS) -> Path:
    """Six models with sizes, cached perplexities and two scored tasks (xwinograd_ja n/a for base 4-bit)."""
    measures = {}
    for i, (variant, folder) in enumerate(variants.items()):
        for precision, model, size in (("fp", folder, 4 << 20), ("gptq", f"quantize_{variant}", (4 + i) << 18)):
            stage_folder(root / model, {"loss_curve": [[1, 3.0], [2, 2.5 - i / 10]]}, weights=size)
            measures[f"fp:{model}"] = {
                "ppl_ja": 10.0 + i + (0.5 if precision == "gptq" else 0),
                "ppl_en": 20.0,
                "gen_tokens_per_s": 5.0,
                "gen_engine": GEN_ENGINE,  # measured by youri's engine: the report keeps the cached figures
            }
            tasks = {
                "jcommonsenseqa-1.1-0.3": {
                    "score": 40 + 5 * i - (3 if precision == "gptq" else 0) + shift,
                    "chance": CHANCE["jcommonsenseqa"],
                }
            }
            if (variant, precision) != ("base", "gptq"):
                tasks["xwinograd_ja"] = {
                    "score": 55.0 + i - (precision == "gptq") + shift,
                    "chance": CHANCE["xwinograd_ja"],
                }
            scores = [t["score"] for t in tasks.values()]
            stage_folder(
                root / f"eval_{variant}{'_gptq' if precision == 'gptq' else ''}",
                {"tasks": tasks, "average": round(sum(scores) / len(scores), 2), "average_note": "x"},
            )
    for precision, drop in (("fp", 0.0), ("gptq", 0.5)):  # MT-Bench judged for the chat models only
        stage_folder(
            root / f"ja_mt_bench_chat{'_gptq' if precision == 'gptq' else ''}",
            {
                "first_turn": 6.0 - drop,
                "second_turn": 5.0 - drop,
                "overall": 5.5 - drop,
                "categories": {"writing": {"score": 7.0 - drop, "n": 20}, "math": {"score": None, "n": 0}},
                "n_judged": 158,
                "judge": {"model": "judge-x"},
            },
        )
    (root / "report").mkdir()
    (root / "report" / "measures.json").write_text(json.dumps(measures), encoding="utf-8")
    return root


def heights(ax) -> dict[str, list[float]]:
    return {c.get_label(): [bar.get_height() for bar in c] for c in ax.containers}


def same(xs, ys) -> bool:
    return len(xs) == len(ys) and all(
        (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(xs, ys)
    )


def row(report, variant, precision, key="rows"):
    rows = report[key] if key == "rows" else report["compare"]["rows"]
    return next(r for r in rows if r["variant"] == variant and r["precision"] == precision)


def score(r, task):
    return r["scores"].get(task, float("nan"))


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    old = fake_run(root / "old", shift=-2.0)
    run = fake_run(root / "new")
    write_report(run, compare=str(old), measure=True)
    return run / "report"


FIGURES = ["loss_curves.png", "scores.png", "task_scores.png", "cost_of_4bit.png", "compare.png", "ja-mt-bench.png"]
"""Every figure a report with a comparison and a chat benchmark has, in the page's order."""


def test_every_figure_is_written(report_dir):
    for name in FIGURES:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_task_bars_and_chance_lines_equal_report_json(report_dir):
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    fig, spec = figures.task_scores(report)
    tasks = ["jcommonsenseqa", "xwinograd_ja"]
    plotted = heights(fig.axes[0])
    assert len(plotted) == 6
    for variant in VARIANTS:
        for precision, label in (("fp", "fp"), ("gptq", "4-bit")):
            assert same(plotted[f"{variant} {label}"], [score(row(report, variant, precision), t) for t in tasks])
    assert math.isnan(plotted["base 4-bit"][1])  # not scored: no bar, not a zero
    (chance,) = [c for c in fig.axes[0].collections if c.get_gid() == "chance"]
    assert [seg[0][1] for seg in chance.get_segments()] == [row(report, "chat", "fp")["chance"][t] for t in tasks]
    assert spec.rows[0][:3] == ["jcommonsenseqa", "20.00", f"{score(row(report, 'base', 'fp'), 'jcommonsenseqa'):.2f}"]


def test_chat_suite_bars_equal_report_json(report_dir):
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    fig, spec = figures.chat_suite_scores(report, "ja-mt-bench")
    plotted = heights(fig.axes[0])
    assert set(plotted) == {"chat fp", "chat 4-bit"}  # only the models that ran it
    for precision, label in (("fp", "fp"), ("gptq", "4-bit")):
        s = row(report, "chat", precision)["chat_suites"]["ja-mt-bench"]
        expected = [s["categories"]["writing"], float("nan"), s["first_turn"], s["second_turn"], s["overall"]]
        assert same(plotted[f"chat {label}"], expected)
    assert plotted["chat 4-bit"][0] == 6.5 and spec.rows[-1] == ["judged answers", "158", "158"]
    markdown = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "| JP-8 avg | ja-mt-bench | ppl ja |" in markdown or "| ja-mt-bench | ppl ja |" in markdown
    chat_fp = next(line for line in markdown.splitlines() if line.startswith("| chat (fp)"))
    assert "| 5.50 |" in chat_fp


def test_cost_of_4bit_equals_report_json(report_dir):
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    fig, spec = figures.cost_of_4bit(report)
    lost_ax, size_ax, ppl_ax = fig.axes
    lost = heights(lost_ax)
    for variant in VARIANTS:
        fp, q = row(report, variant, "fp"), row(report, variant, "gptq")
        per_task = [score(fp, t) - score(q, t) for t in ("jcommonsenseqa", "xwinograd_ja")]
        known = [x for x in per_task if not math.isnan(x)]
        assert same(lost[variant], per_task + [sum(known) / len(known)])
    assert lost["chat"][0] == pytest.approx(3.0) and lost["base"][2] == pytest.approx(3.0)  # mean of what both scored
    (sizes,) = heights(size_ax).values()
    assert same(sizes, [row(report, v, "gptq")["size_mb"] / row(report, v, "fp")["size_mb"] for v in VARIANTS])
    ppl = heights(ppl_ax)
    for lang in ("ja", "en"):
        assert same(
            ppl[f"ppl {lang}"],
            [100 * (row(report, v, "gptq")[f"ppl_{lang}"] / row(report, v, "fp")[f"ppl_{lang}"] - 1) for v in VARIANTS],
        )
    assert spec.rows[0][0] == "base" and spec.rows[0][-3] == f"{sizes[0]:.3f}"


def test_compare_deltas_equal_report_json(report_dir):
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    fig, _ = figures.compare_deltas(report)
    plotted = heights(fig.axes[0])
    for variant in VARIANTS:
        for precision, label in (("fp", "fp"), ("gptq", "4-bit")):
            new, old = row(report, variant, precision), row(report, variant, precision, "compare")
            expected = [score(new, t) - score(old, t) for t in ("jcommonsenseqa", "xwinograd_ja")]
            assert same(plotted[f"{variant} {label}"], expected + [new["average"] - old["average"]])
    assert plotted["chat fp"][0] == pytest.approx(2.0)


def test_html_embeds_every_figure_with_alt_text_and_its_table(report_dir):
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    sections = page.split("<figure>")[1:]
    files = [re.search(r"<img src='([^']+)' alt='([^']+)'>", s).group(1) for s in sections]
    assert files == FIGURES
    for section in sections:
        assert "</figure><table>" in section and len(re.search(r"alt='([^']+)'", section).group(1)) > 40
    task_table = sections[2].split("</figure>")[1]
    assert f"<td>{score(row(report, 'instruction', 'gptq'), 'xwinograd_ja'):.2f}</td>" in task_table
    assert all(f"]({name})" in (report_dir / "report.md").read_text(encoding="utf-8") for name in files)


def test_a_run_without_evaluation_still_gets_its_figures(tmp_path):
    run = fake_run(tmp_path / "run")
    for folder in run.glob("eval_*"):
        (folder / "metrics.json").unlink()  # incomplete: as when ../shared/data is absent
    write_report(run, measure=False)
    report = json.loads((run / "report" / "report.json").read_text(encoding="utf-8"))
    assert figures.scored_tasks(report) == [] and not (run / "report" / "compare.png").exists()
    for name in ("task_scores.png", "cost_of_4bit.png"):
        assert (run / "report" / name).read_bytes()[:4] == b"\x89PNG", name
    lost_ax, size_ax, _ = figures.cost_of_4bit(report)[0].axes
    assert all(math.isnan(h) for hs in heights(lost_ax).values() for h in hs)  # nothing to lose: n/a, not 0
    assert same(next(iter(heights(size_ax).values())), [(4 + i) / 16 for i in range(3)])
    assert "none scored" in (run / "report" / "report.html").read_text(encoding="utf-8")


def test_rinnas_2024_chain_gets_its_own_rows_and_bars(tmp_path):
    """A run of recipes/demo-youko.yaml: the report shows base, merged and preferred (fp and GPTQ), no SFT rows."""
    variants = {"base": "pretrain", "merged": "merge", "preferred": "prefer"}
    run = fake_run(tmp_path / "run", variants=variants)
    report = write_report(run, measure=True)  # cached measures: no model is loaded
    assert [(r["variant"], r["precision"]) for r in report["rows"]] == [
        (v, p) for v in variants for p in ("fp", "gptq")
    ]
    assert all(r["present"] and r["size_mb"] > 0 for r in report["rows"])
    assert row(report, "preferred", "gptq")["scores"]["jcommonsenseqa"] == 50.0 - 3
    task_ax = figures.task_scores(report)[0].axes[0]
    assert list(heights(task_ax)) == [f"{v} {label}" for v in variants for label in ("fp", "4-bit")]
    lost_ax, size_ax, _ = figures.cost_of_4bit(report)[0].axes
    assert list(heights(lost_ax)) == list(variants)
    assert same(next(iter(heights(size_ax).values())), [(4 + i) / 16 for i in range(3)])
    markdown = (run / "report" / "report.md").read_text(encoding="utf-8")
    assert "| preferred (GPTQ 4-bit) |" in markdown and "| merged (fp) |" in markdown
    assert "| chat (" not in markdown and "| instruction (" not in markdown
