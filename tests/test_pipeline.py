"""`youri pipeline`: the whole family from the demo recipe (shortened), skip/re-run logic, the report card."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DATA

from youri.config import ConfigError, build_config, config_to_dict, load_recipe
from youri.run.pipeline import Config, plan, recipe_of, run
from youri.run.report import GEN_ENGINE
from youri.runtime import kernels
from youri.stage import is_complete, read_manifest

REPO = Path(__file__).resolve().parents[1]
TRAIN = {"warmup_steps": 1, "eval_every": 2, "eval_batches": 1, "micro_batch_size": 2, "save_every": 0}


def tiny_recipe(tmp_path: Path) -> Path:
    """The demo recipe with every stage cut to seconds (same sections, same wiring)."""
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text(encoding="utf-8"))
    recipe["init"].update(
        vocab_size=512,
        seq_len=512,
        hidden_size=128,
        intermediate_size=256,
        num_layers=1,
        num_heads=2,
        train={**TRAIN, "max_steps": 3},
    )
    recipe["data"].update(seq_len=128, val_docs=4)
    recipe["pretrain"]["train"] = {**TRAIN, "max_steps": 3}
    for section in ("sft_instruction", "sft_chat"):
        recipe[section].update(seq_len=512, heldout=2, train={**TRAIN, "max_steps": 2})
    recipe["quantize"].update(num_samples=2, seq_len=64, eval_samples=2)
    recipe["eval"].update(tasks=["jcommonsenseqa", "xwinograd_ja"], limit=2, max_gen_toks=4, data_dir=str(SHARED_DATA))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def test_plan_wires_every_variant_and_rejects_unknown_stages():
    names = [node.name for node in plan(Config(recipe="x"))]
    assert names[:5] == ["init", "data", "pretrain", "sft_instruction", "sft_chat"]
    assert {"quantize_base", "quantize_instruction", "quantize_chat"} <= set(names)
    assert {f"eval_{v}{s}" for v in ("base", "instruction", "chat") for s in ("", "_gptq")} <= set(names)
    assert [n.name for n in plan(Config(recipe="x", vocab_extend=True))][:3] == ["init", "vocab", "data"]
    assert [n.name for n in plan(Config(recipe="x", base="/models/llama-2-7b"))][0] == "data"
    with pytest.raises(ConfigError, match="until: unknown stage 'pretrian'"):
        run(build_config(Config, {"recipe": str(REPO / "recipes" / "demo.yaml"), "until": "pretrian"}))


def test_chat_models_are_judged_only_when_a_judge_is_configured(tmp_path, capsys):
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text(encoding="utf-8"))
    judge = {"judge_url": "http://127.0.0.1:9/v1", "judge_model": "judge-x"}
    recipe["chat_eval"] = {"suite": "ja-mt-bench", "bench_dir": str(tmp_path), **judge}
    path = tmp_path / "judged.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    planned = run(build_config(Config, {"recipe": str(path), "plan_only": True}))
    assert {"ja_mt_bench_chat", "ja_mt_bench_chat_gptq"} <= set(planned)
    nodes = {n.name: n for n in plan(Config(recipe=str(path)), recipe)}
    assert nodes["ja_mt_bench_chat_gptq"].wiring == {"model": "quantize_chat"}
    assert nodes["ja_mt_bench_chat"].group == "chat_eval"
    del recipe["chat_eval"]["judge_url"]
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    capsys.readouterr()
    planned = run(build_config(Config, {"recipe": str(path), "plan_only": True}))
    assert not [name for name in planned if name.startswith("ja_mt_bench")]
    assert "chat_eval: skipped, no judge configured" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_pipeline_runs_skips_and_reruns_what_changed(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's builtin: paths and relative data paths
    recipe = tiny_recipe(tmp_path)
    cfg = Config(recipe=str(recipe), run_dir=str(tmp_path / "run"))
    first = run(cfg)
    run_dir = tmp_path / "run"
    has_eval_data = SHARED_DATA.is_dir()
    for node in plan(cfg):
        if node.group == "eval" and not has_eval_data:
            continue
        assert first[node.name].startswith("ran"), node.name
        assert is_complete(run_dir / node.name), node.name
    for model in ("pretrain", "sft_instruction", "sft_chat", "quantize_chat"):
        card = (run_dir / model / "README.md").read_text(encoding="utf-8")
        assert "## Prompt format" in card and "## License" in card
    assert "### 応答:" in (run_dir / "sft_instruction" / "README.md").read_text(encoding="utf-8")
    assert "quant_method" in (run_dir / "quantize_chat" / "README.md").read_text(encoding="utf-8")
    if has_eval_data:  # every evaluated model's card carries its JP-8 table
        for model in ("pretrain", "sft_chat", "quantize_chat"):
            card = (run_dir / model / "README.md").read_text(encoding="utf-8")
            assert "## Evaluation" in card and "| jcommonsenseqa" in card, model

    report = yaml.safe_load((run_dir / "report" / "report.json").read_text(encoding="utf-8"))
    rows = {(r["variant"], r["precision"]): r for r in report["rows"]}
    assert set(rows) == {(v, p) for v in ("base", "instruction", "chat") for p in ("fp", "gptq")}
    for row in rows.values():
        assert row["present"]
        for key in ("ppl_ja", "ppl_en", "size_mb", "gen_tokens_per_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["variant"], row["precision"], key)
        assert row["gen_engine"] == GEN_ENGINE and row["gen_decoder"] == "StaticLlama"  # youri's engine, lean path
        if row["precision"] == "gptq":  # its int4 kernel, and the card's row says so
            kernel = kernels.kernel_for(torch.device("cpu"))
            missing = kernels.avx2_unavailable(torch.device("cpu"))  # named on the line where it applies
            note = f" (int4-avx2 unavailable: {missing})" if missing else ""
            assert row["gptq_kernel"] == f"GPTQ matmul: {kernel} on 7/7 layers{note}", row["gptq_kernel"]
        if has_eval_data:
            assert math.isfinite(row["average"]) and set(row["scores"]) == {"jcommonsenseqa", "xwinograd_ja"}
    assert rows[("chat", "gptq")]["size_mb"] < rows[("chat", "fp")]["size_mb"]
    for name in ("report.md", "report.html", "loss_curves.png", "scores.png", "task_scores.png", "cost_of_4bit.png"):
        assert (run_dir / "report" / name).stat().st_size > 0

    second = run(cfg)
    assert all(status == "skipped" for status in second.values()), second

    text = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    text["sft_chat"]["train"]["lr"] = 5.0e-4
    recipe.write_text(yaml.safe_dump(text, allow_unicode=True), encoding="utf-8")
    third = run(cfg)
    reran = {name for name, status in third.items() if status != "skipped"}
    expected = {"sft_chat", "quantize_chat"} | ({"eval_chat", "eval_chat_gptq"} if has_eval_data else set())
    assert reran == expected
    assert read_manifest(run_dir / "sft_chat")["config"]["train"]["lr"] == 5.0e-4


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates_every_stage(recipe, capsys):
    planned = run(build_config(Config, {"recipe": str(recipe), "plan_only": True, "vocab_extend": True}))
    assert planned and all(status == "planned" for status in planned.values())
    assert "pretrain" in planned and "eval_base_gptq" in planned
    twins = [name.removeprefix("quantize_") for name in planned if name.startswith("quantize_")]
    assert len(twins) >= 3 and all(f"eval_{v}" in planned and f"eval_{v}_gptq" in planned for v in twins)


def test_youko_recipe_plans_rinnas_2024_chain_and_wires_the_chat_vector(tmp_path, capsys):
    """pretrain -> merge (pretrain + 0.5 (base_instruct - init)) -> prefer -> GPTQ twins -> eval, from one recipe."""
    path = REPO / "recipes" / "demo-youko.yaml"
    cfg = build_config(Config, load_recipe(path)["pipeline"], {"recipe": str(path), "run_dir": str(tmp_path)})
    recipe = recipe_of(cfg)  # demo.yaml's init, data, pretrain, quantize, eval under its own sections
    nodes = {n.name: n for n in plan(cfg, recipe)}
    assert list(nodes)[:6] == ["init", "data", "pretrain", "base_instruct", "merge", "prefer"]
    assert not {"sft_instruction", "sft_chat", "quantize_chat"} & set(nodes)
    assert {f"quantize_{v}" for v in ("base", "merged", "preferred")} <= set(nodes)
    assert {f"eval_{v}{s}" for v in ("base", "merged", "preferred") for s in ("", "_gptq")} <= set(nodes)
    assert nodes["merge"].wiring == {"base": "init", "models.0.model": "pretrain", "models.1.model": "base_instruct"}
    assert nodes["prefer"].wiring == {"model": "merge"} and nodes["quantize_preferred"].wiring == {"model": "prefer"}
    run(build_config(Config, {**config_to_dict(cfg), "plan_only": True}))  # every stage's config validates
    out = capsys.readouterr().out
    assert f"models.0.model={tmp_path / 'pretrain'}, models.1.model={tmp_path / 'base_instruct'}" in out
    # without the base_instruct stand-in, the recipe's own instruct model stays (e.g. Llama-3-8B-Instruct)
    merge_only = plan(Config(recipe=str(path), stages=["merge", "prefer"]), recipe)
    assert next(n for n in merge_only if n.name == "merge").wiring == {"base": "init", "models.0.model": "pretrain"}
    short = dict(recipe, merge={**recipe["merge"], "models": recipe["merge"]["models"][:1]})
    short_path = tmp_path / "short.yaml"
    short_path.write_text(yaml.safe_dump(short, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"merge\.models\.1\.model: the pipeline wires this item"):
        run(build_config(Config, {**config_to_dict(cfg), "recipe": str(short_path), "inherit": "", "plan_only": True}))
