"""Token rows for calibration and held-out measurements, found through a model's lineage.

Shared by ``youri quantize`` (GPTQ calibration rows, held-out KL) and ``youri export`` (llama.cpp's held-out
KL): a youri data folder gives its packed rows; text files are tokenised as in pretraining (text is text:
``</s>`` inside a document stays characters), and SFT records in their prompt format (``youri.prompts``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from youri import prompts
from youri.data.shards import TokenShards
from youri.io import DataError, iter_jsonl, read_json, read_text
from youri.stage import read_manifest


def data_folder(model: Path, depth: int = 8) -> Path | None:
    """The youri data folder a model was (pre)trained on, following SFT stages back to their parent."""
    manifest = read_manifest(model) if depth > 0 else None
    if manifest is None:
        return None
    config = manifest.get("config", {})
    for value in config.values():
        if isinstance(value, str) and value and (Path(value) / "index.json").is_file():
            return Path(value)
    above = manifest.get("parent") or config.get("model")
    return data_folder(Path(above), depth - 1) if isinstance(above, str) and above else None


def heldout_source(parent: Path, explicit: str, lang: str) -> Path | None:
    """``explicit`` when given, else the data folder of the model's lineage when it holds ``val/LANG``."""
    if explicit:
        return Path(explicit)
    data = data_folder(parent)
    if data is not None and f"val/{lang}" in read_json(data / "index.json")["splits"]:
        return data
    return None


def token_rows(
    sources: list[Path], tokenizer, count: int, length: int, split: str, *, text_field: str = "text"
) -> torch.Tensor:
    """``count`` rows of ``length`` tokens, evenly spaced through ``sources`` (deterministic).

    A youri data folder gives its packed rows of ``split``; text files are tokenised (JSONL instruction or
    messages records rendered by youri.prompts), joined with EOS and cut into rows, as in pretraining.
    """
    for source in sources:
        if not source.exists():
            raise FileNotFoundError(f"calibration/held-out source not found: {source}")
    if len(sources) == 1 and sources[0].is_dir():
        shards = TokenShards.open(sources[0], split)
        picks = np.linspace(0, len(shards) - 1, num=min(count, len(shards))).astype(int) if len(shards) else []
        rows = [shards[int(i)][:length] for i in picks]
        return torch.tensor(np.stack(rows)) if rows else torch.zeros(0, length, dtype=torch.long)
    ids: list[int] = []
    for source in sources:
        if source.suffix == ".jsonl":
            for lineno, record in iter_jsonl(source):
                ids += render_record(record, tokenizer, text_field, f"{source}:{lineno}")
        else:
            text = read_text(source)
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]  # text is text
            ids.append(tokenizer.eos_token_id)
    return chunk(ids, count, length)


def chunk(ids: list[int], count: int, length: int) -> torch.Tensor:
    """Concatenated ids cut into rows of ``length``; ``count`` of them, evenly spaced."""
    rows = torch.tensor(ids[: len(ids) // length * length], dtype=torch.long).view(-1, length)
    if len(rows) > count:
        rows = rows[torch.linspace(0, len(rows) - 1, count).long()]
    return rows


def render_record(record: dict, tokenizer, text_field: str, where: str) -> list[int]:
    """Token ids of one JSONL record: plain text, or an SFT example in its prompt format (youri.prompts)."""
    if isinstance(record.get(text_field), str):
        ids = tokenizer(record[text_field], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids + [tokenizer.eos_token_id]  # the only EOS: "</s>" inside the text stays text

    if isinstance(record.get("messages"), list):
        return prompts.encode_training(prompts.messages_to_turns(record["messages"], where), tokenizer).input_ids
    if isinstance(record.get("instruction"), str):
        example = prompts.Instruction(
            record["instruction"], str(record.get("input") or ""), str(record.get("output") or "")
        )
        return prompts.encode_training(example, tokenizer).input_ids
    raise DataError(
        f"{where}: no '{text_field}' text, 'messages' or 'instruction' field to calibrate on "
        f"(fields present: {', '.join(sorted(record)) or 'none'})"
    )
