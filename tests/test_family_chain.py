"""Issue 22's acceptance chain: per family, a tiny random model with its real tokenizer goes through every stage
by the command line — data -> pretrain -> sft (the base's own chat template) -> quantize -> export -> eval ->
report — and each stage's folder is complete and says what the next one needs.

Shapes are the smallest that still exercise the family (two layers, hidden 64, 1-2 steps, seq_len 32-64); the
stages' numerics are tested against their references elsewhere (test_family_models, test_export, test_base_template)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import gguf
import pytest
import torch
from conftest import SHARED_DATA, shared_path, shared_tokenizer

from youri import cli
from youri.families import family_of
from youri.io import resolve_path
from youri.model import save_model
from youri.stage import is_complete
from youri.testing import random_family_model

CHAINS = {  # model_type: (tokenizer, SFT kind). Llama 2's tokenizer has no chat template: rinna's chat format.
    "qwen3": ("qwen3", "template"),
    "gemma3_text": ("gemma3", "template"),
    "llama": ("llama3", "template"),
    "mistral": ("llama2", "chat"),
    "qwen2": ("qwen3", "template"),
    "gemma2": ("gemma3", "template"),
}
IN_SUITE = ("qwen3", "llama", "mistral", "gemma3_text")  # byte-level BPEs, SentencePiece + rinna's format, a Gemma
EVERY_FAMILY = os.environ.get("YOURI_FAMILY_CHAIN") == "all"
"""The suite runs IN_SUITE's chains (~76 s CPU on 2 cores for the first three, ~35 s more for Gemma 3, whose
262k-token tokenizer is loaded and saved by every stage); Qwen2's costs ~30 s and Gemma 2's ~60 s more:
``YOURI_FAMILY_CHAIN=all`` runs all six."""
TRAIN = {"lr": 1e-3, "warmup_steps": 1, "micro_batch_size": 2, "eval_every": 0, "eval_batches": 1, "progress": False}
TASK = "xwinograd_ja"
DATA = {TASK: {"eval": "xwinograd-ja/xwinograd_jp.jsonl"}}  # 0-shot: no few-shot file


def recipe(root: Path, kind: str) -> Path:
    lines = resolve_path("builtin:corpus_ja.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines[:24]]
    (root / "docs.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), "utf-8")
    chats = [
        {"messages": [{"role": "user", "content": f"{i}たす{i}は？"}, {"role": "assistant", "content": f"{2 * i}。"}]}
        for i in range(10)  # a tenth is held out
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chats), "utf-8")
    (root / "calibration.txt").write_text("".join(d["text"] for d in docs[:4]) + "\n", encoding="utf-8")
    export = {"model": str(root / "quantize_chat"), "out": str(root / "export"), "type": "q4_0", "eval_samples": 0}
    sections = {
        "data": {
            "tokenizer": str(root / "base"),
            "out": str(root / "data"),
            "seq_len": 32,
            "val_docs": 2,
            "sources": [{"path": str(root / "docs.jsonl"), "lang": "ja"}],
            "dedup": {"near": False},
        },
        "pretrain": {
            "model": str(root / "base"),
            "data": str(root / "data"),
            "out": str(root / "pretrain"),
            "train": {**TRAIN, "max_steps": 2},
        },
        "sft_chat": {
            "kind": kind,
            "model": str(root / "pretrain"),
            "out": str(root / "sft_chat"),
            "datasets": [{"path": str(root / "chats.jsonl"), "shape": "messages"}],
            "seq_len": 64,
            "heldout": 1,
            "train": {**TRAIN, "max_steps": 1},
        },
        "quantize": {
            "model": str(root / "sft_chat"),
            "out": str(root / "quantize_chat"),
            "calibration": str(root / "calibration.txt"),
            "heldout_ja": str(root / "calibration.txt"),
            "group_size": 32,
            "num_samples": 2,
            "seq_len": 32,
            "eval_samples": 1,
            "device": "cpu",
        },
        "export": export,  # no llama.cpp scoring here: test_export compares its logits per family
        "eval_chat": {"model": str(root / "sft_chat"), "out": str(root / "eval_chat")},
        "eval_chat_gptq": {"model": str(root / "quantize_chat"), "out": str(root / "eval_chat_gptq")},
        "report": {"run_dir": str(root), "measure": False},  # perplexity/speed: test_pipeline
    }
    for name in ("eval_chat", "eval_chat_gptq"):
        sections[name].update(tasks=[TASK], limit=2, data_dir=str(SHARED_DATA), data=DATA, device="cpu")
    path = root / "recipe.yaml"
    path.write_text(json.dumps(sections, ensure_ascii=False), encoding="utf-8")  # JSON is YAML
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: these shapes are too small to gain from two, and CPU time is the budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_type", list(CHAINS))
def test_family_runs_every_stage(tmp_path, model_type, one_thread):
    if model_type not in IN_SUITE and not EVERY_FAMILY:
        pytest.skip(f"{model_type}'s chain runs with YOURI_FAMILY_CHAIN=all (the suite's time budget runs {IN_SUITE})")
    tokenizer_name, kind = CHAINS[model_type]
    shared_path("xwinograd-ja")  # the eval data (skips with a reason without ../shared)
    tokenizer = shared_tokenizer(tokenizer_name)
    torch.manual_seed(0)
    model = random_family_model(model_type, tokenizer)  # Gemma 3: llama.cpp's window pattern
    save_model(model, tokenizer, tmp_path / "base")
    spm = shared_path(f"{tokenizer_name}-tokenizer") / "tokenizer.model"  # GGUF export reads Llama 2's scores there
    if spm.exists():
        shutil.copy(spm, tmp_path / "base")
    path = recipe(tmp_path, kind)
    stages = [
        ("data", "data"),
        ("pretrain", "pretrain"),
        ("sft", "sft_chat"),
        ("quantize", "quantize"),
        ("export", "export"),
        ("eval", "eval_chat"),
        ("eval", "eval_chat_gptq"),
        ("report", "report"),
    ]
    for command, section in stages:
        assert cli.main([command, "--recipe", str(path), "--section", section]) == 0, (model_type, command)
    for folder in ("data", "pretrain", "sft_chat", "quantize_chat", "export", "eval_chat", "eval_chat_gptq"):
        assert is_complete(tmp_path / folder), (model_type, folder)
    sft = json.loads((tmp_path / "sft_chat" / "metrics.json").read_text())
    assert sft["steps"] == 1 and 0 < sft["heldout_response_loss_after"] < math.inf

    config = json.loads((tmp_path / "sft_chat" / "config.json").read_text())
    assert config["model_type"] == model_type and config["vocab_size"] == len(tokenizer)
    if kind == "template":  # the saved template is the base's own
        saved = json.loads((tmp_path / "sft_chat" / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert saved["chat_template"] == tokenizer.chat_template
    quant = json.loads((tmp_path / "quantize_chat" / "metrics.json").read_text())
    kl = quant["quality"]["ja"]["kl_gptq"]
    assert math.isfinite(kl) and kl > 0

    export = json.loads((tmp_path / "export" / "metrics.json").read_text())
    assert "lossless from GPTQ codes" in export["source"], export["source"]  # group 32 = Q4_0's block
    reader = gguf.GGUFReader(str(tmp_path / "export" / export["file"]))
    assert reader.fields["general.architecture"].contents() == family_of(config).gguf_arch
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == config["eos_token_id"]

    for name in ("eval_chat", "eval_chat_gptq"):
        scores = json.loads((tmp_path / name / "metrics.json").read_text())
        assert TASK in json.dumps(scores), (name, scores)
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    rows = {(r["variant"], r["precision"]): r for r in report["rows"] if r["present"]}
    assert set(rows) == {("base", "fp"), ("chat", "fp"), ("chat", "gptq")}, set(rows)
    for row in (rows[("chat", "fp")], rows[("chat", "gptq")]):
        assert math.isfinite(row["scores"][TASK])
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    for variant, precision in rows:
        assert variant in markdown and (precision != "gptq" or "gptq" in markdown.lower())
