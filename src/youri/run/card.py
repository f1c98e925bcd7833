"""Model cards: a hub-ready ``README.md`` for every model stage folder.

The card is derived from the folder's own ``youri.json`` and those of its ancestors (the ``parent``
chain): what the model is, its parent, the data sources and token counts, the prompt format with a
usage example, the evaluation table (when an eval folder of this model is given), the quantization
settings, and the license inherited from the root base model (Llama 2 Community License for Llama 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from youri.io import atomic_write_text
from youri.model import load_tokenizer
from youri.prompts import Instruction, Turn, chat_prompt, instruction_prompt
from youri.stage import PROMPTED_STAGES, read_manifest, read_metrics

LICENSES = {
    "llama2": ("llama2", "Llama 2 Community License Agreement (inherited from the Llama 2 base model)"),
    "youri": ("apache-2.0", "Apache-2.0 (tiny base trained from scratch by youri on its own sample text)"),
    "unknown": ("other", "inherited from the base model: check its license before redistribution"),
}

WHAT = {
    "init": "a tiny English-first Llama model trained from scratch by `youri init` (a stand-in for Llama 2)",
    "vocab": "a Llama model whose vocabulary was extended with Japanese pieces by `youri vocab`",
    "pretrain": "a Japanese base model: continued pretraining on Japanese + English text (`youri pretrain`)",
    "sft:instruction": "a Japanese instruction-following model (Alpaca-ja format SFT, `youri sft`)",
    "sft:chat": "a Japanese multi-turn chat model with persona (設定) role-play (`youri sft`)",
    "quantize": "a GPTQ 4-bit twin made by `youri quantize`",
}


def lineage(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``[(folder, manifest), (parent, manifest), ...]`` up to the first folder that is not a youri stage."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    current: Path | None = Path(folder)
    while current is not None and len(chain) < 16:
        manifest = read_manifest(current)
        chain.append((current, manifest or {}))
        parent = (manifest or {}).get("parent")
        current = Path(parent) if parent else None
    return chain


def license_of(chain: list[tuple[Path, dict[str, Any]]]) -> tuple[str, str]:
    root, manifest = chain[-1]
    if manifest.get("stage") == "init":
        return LICENSES["youri"]
    text = json.dumps(_read_config(root)).lower() + str(root).lower()
    license_file = next((p for p in root.glob("LICENSE*")), None) if root.is_dir() else None
    if "llama-2" in text or "llama2" in text or (license_file and "LLAMA 2" in license_file.read_text(errors="ignore")):
        return LICENSES["llama2"]
    return LICENSES["unknown"]


def write_model_card(folder: Path, *, eval_metrics: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    chain = lineage(folder)
    manifest = chain[0][1]
    stage, config = manifest.get("stage", "model"), manifest.get("config", {})
    kind = _kind(chain)
    key = f"sft:{config.get('kind')}" if stage == "sft" else stage
    license_id, license_text = license_of(chain)
    lines = [
        "---",
        f"license: {license_id}",
        "language: [ja, en]",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [youri, llama, japanese]",
        "---",
        "",
        f"# {folder.name}",
        "",
        f"This is {WHAT.get(key, 'a youri model')}.",
        "",
        "## Lineage",
        "",
    ]
    for path, man in chain:
        lines.append(f"- `{path}` — {man.get('stage', 'base model (not a youri stage)')}")
    lines += ["", "## Training data", ""] + _data_lines(chain)
    lines += ["", "## Prompt format", ""] + _usage(kind, folder)
    lines += _gguf_lines(folder)
    quant = _read_config(folder).get("quantization_config")
    if quant:
        lines += ["", "## Quantization", "", "```json", json.dumps(quant, indent=2, ensure_ascii=False), "```"]
    if eval_metrics:
        lines += [
            "",
            "## Evaluation (Stability jp-stable protocol)",
            "",
            "| task | score | ± | chance |",
            "|---|---|---|---|",
        ]
        for task, t in eval_metrics.get("tasks", {}).items():
            lines.append(f"| {task} | {t['score']:.2f} | {t['stderr']:.2f} | {t['chance']:.2f} |")
        name = eval_metrics.get("average_name") or "average of the tasks above"  # older eval folders
        lines.append(f"| **{name}** | {eval_metrics.get('average')} | | |")
        for subset, value in eval_metrics.get("subsets", {}).items():
            lines.append(f"| {subset} | {value['value']} | | |")
        lines += ["", eval_metrics.get("average_note", "")]
    lines += ["", "## License", "", license_text, ""]
    atomic_write_text(folder / "README.md", "\n".join(lines))
    return folder / "README.md"


def _kind(chain: list[tuple[Path, dict[str, Any]]]) -> str:
    for _, man in chain:
        if man.get("stage") in PROMPTED_STAGES:
            return man.get("config", {}).get("kind", "chat")
    return "base"


def _data_lines(chain: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = []
    for path, man in chain:
        stage, config = man.get("stage"), man.get("config", {})
        if stage == "pretrain" and config.get("data"):
            data_manifest = read_manifest(Path(config["data"])) or {}
            data_metrics = read_metrics(Path(config["data"]))
            for source in data_manifest.get("config", {}).get("sources", []):
                lines.append(f"- {source.get('lang')}: `{source.get('path')}` (weight {source.get('weight')})")
            tokens = read_metrics(path).get("tokens")
            if tokens:
                lines.append(
                    f"- continued pretraining: {tokens:,} tokens seen "
                    f"(corpus: {data_metrics.get('tokens', 'n/a')} tokens after filtering)"
                )
        elif stage == "sft":
            for ds in config.get("datasets", []):
                lines.append(f"- SFT ({config.get('kind')}): `{ds.get('path')}` (weight {ds.get('weight', 1)})")
        elif stage == "init":
            lines.append(f"- tiny base: English text `{config.get('text')}`")
    return lines or ["- see the parent model"]


def _usage(kind: str, folder: Path) -> list[str]:
    if kind == "base":
        return [
            "Plain text continuation (no template):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"tok = AutoTokenizer.from_pretrained('{folder}')",
            f"model = AutoModelForCausalLM.from_pretrained('{folder}')",
            "ids = tok('日本で一番高い山は', return_tensors='pt', add_special_tokens=False)",
            "print(tok.decode(model.generate(**ids, max_new_tokens=32)[0]))",
            "```",
        ]

    if kind == "instruction":  # the instruction template reads system = instruction, user = input
        first, second = "次の文を英語に翻訳してください。", "今日は良い天気です。"
        example = instruction_prompt(Instruction(instruction=first, input=second))
    elif kind == "template":  # the base's own chat template, kept by youri sft: show what it renders
        first, second = "あなたは親切なアシスタントです。", "こんにちは。"
        messages = [{"role": "system", "content": first}, {"role": "user", "content": second}]
        example = load_tokenizer(folder).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        first, second = "あなたは親切なアシスタントです。", "こんにちは。"
        example = chat_prompt([Turn("設定", first), Turn("ユーザー", second)])
    return [
        "The tokenizer's `chat_template` renders exactly this prompt "
        "(`tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`)"
        + (", starting with a line break as in rinna's youri-7b-instruction card:" if kind == "instruction" else ":"),
        "",
        "```",
        example,
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"tok = AutoTokenizer.from_pretrained('{folder}')",
        f"model = AutoModelForCausalLM.from_pretrained('{folder}')",
        f"messages = [{{'role': 'system', 'content': '{first}'}}, {{'role': 'user', 'content': '{second}'}}]",
        "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
        "print(tok.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))",
        "```",
    ]


def _read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _gguf_lines(folder: Path) -> list[str]:
    """The GGUF files ``youri export`` made of this model (sibling export stages whose parent it is)."""
    lines, modelfile = [], ""
    for export in sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder):
        manifest = read_manifest(export) or {}
        metrics = read_metrics(export) if manifest.get("stage") == "export" else {}
        if manifest.get("parent") != str(folder) or not metrics.get("file"):
            continue
        quality = metrics.get("quality", {}).get("ja", {})
        measured = f"; held-out Japanese KL {quality['kl']} ({quality['runtime']})" if "kl" in quality else ""
        size = f"{metrics['bytes'] / 2**20:.1f} MiB, {metrics['size_ratio']:.2f} of fp16"
        how = f", {metrics['weights']}" if metrics.get("weights") else ""
        lines.append(f"- `{export.name}/{metrics['file']}` — {metrics['type']} ({size}{how}){measured}")
        if (export / "Modelfile").is_file():
            modelfile = (export / "Modelfile").read_text(encoding="utf-8")
    if not lines:
        return []
    lines = ["", "## GGUF (llama.cpp, Ollama, LM Studio)", ""] + lines
    lines += ["", "llama.cpp (the GGUF carries the chat template): `llama-cli -m FILE.gguf --jinja -cnv`"]
    if modelfile:
        lines += ["", f"Ollama (`ollama create {folder.name} -f Modelfile` in the export folder):", "", "```"]
        lines += [modelfile.rstrip("\n"), "```"]
    return lines
