"""Preference data for ``youri prefer``: readers of three record shapes, the held-out split, and encoding
of each pair through the SFT renderer with only the final reply supervised.

Shapes (``PrefDatasetConfig.shape``)
------------------------------------
* ``pairs`` -- ``{"prompt", "chosen", "rejected"}`` (TRL's explicit-prompt format): ``prompt`` is a
  string (one user turn) or OpenAI messages; ``chosen`` / ``rejected`` are strings or message lists whose
  last message is the assistant reply.
* ``hh_rlhf`` -- Anthropic HH-RLHF ``{"chosen", "rejected"}`` transcripts (``\\n\\nHuman:`` /
  ``\\n\\nAssistant:``): the turns both share before their last Assistant turn become the prompt.
* ``ultrafeedback`` -- HuggingFaceH4/ultrafeedback_binarized ``{"prompt", "chosen": [messages],
  "rejected": [messages]}``: the messages before the last assistant one are the prompt (the same in both).

A bad record raises ``DataError`` naming file:line and field (or, with ``skip_bad_records``, is counted),
as the SFT readers do. Each pair is rendered twice with ``youri.prompts.encode_training`` -- the prompt
turns plus the chosen, then the rejected reply -- in the stage's ``kind`` (any format youri trains), and
every label but the final reply and its ``</s>`` becomes -100: earlier replies of a multi-turn prompt are
context, not the response being compared.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from youri.config import NonNegativeInt
from youri.data.sft_data import RECORD_SUFFIXES, hh_turns
from youri.io import DataError, SkipCounter, iter_records, require_field, resolve_path
from youri.prompts import (
    IGNORE_INDEX,
    SYSTEM,
    USER,
    Encoded,
    PromptError,
    Turn,
    encode_training,
    messages_to_turns,
    turns_to_instruction,
)


@dataclass
class PrefDatasetConfig:
    path: str
    """A .jsonl (.jsonl.gz) file, a .json array or a folder of them (``builtin:preferences_ja.jsonl``)."""
    shape: Literal["pairs", "hh_rlhf", "ultrafeedback"] = "pairs"
    """Record shape: {prompt, chosen, rejected}, HH-RLHF transcripts, UltraFeedback-binarized messages."""
    max_examples: NonNegativeInt = 0
    """Read at most this many pairs (0 = all)."""


@dataclass
class Pair:
    prompt: list[Turn]
    chosen: str
    rejected: str
    where: str  # file:line


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    where: str


# ----------------------------------------------------------------------------- readers


def read_pairs(spec: PrefDatasetConfig, skip: SkipCounter | None = None) -> list[Pair]:
    path = resolve_path(spec.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(RECORD_SUFFIXES))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"dataset not found: {spec.path}")
    parse = PARSERS[spec.shape]
    pairs: list[Pair] = []
    for file in files:
        for pair in _pairs(file, parse, skip):
            pairs.append(pair)
            if spec.max_examples and len(pairs) >= spec.max_examples:
                return pairs
    return pairs


def _bad(reason: str, skip: SkipCounter | None) -> None:
    if skip is None:
        raise DataError(reason + " (fix the record, or set skip_bad_records: true to skip it)")
    skip.add(reason)


def _pairs(path: Path, parse, skip: SkipCounter | None) -> Iterator[Pair]:
    for lineno, raw in iter_records(path, skip_bad=skip):
        try:
            prompt, chosen, rejected = parse(raw, path, lineno)
            if not chosen.strip() or not rejected.strip():
                raise DataError(f"field '{'chosen' if not chosen.strip() else 'rejected'}': the reply is empty")
            yield Pair(prompt, chosen, rejected, f"{path}:{lineno}")
        except (DataError, PromptError) as err:
            message = str(err) if str(err).startswith(str(path)) else f"{path}:{lineno}: {err}"
            _bad(message, skip)


def _reply(value, name: str, path: Path, lineno: int) -> tuple[list[Turn], str]:
    """A chosen/rejected value: a string, or messages ending with the assistant reply -> (turns before, reply)."""
    if isinstance(value, str):
        return [], value
    if not isinstance(value, list) or not value:
        raise DataError(f"{path}:{lineno}: field '{name}' must be a string or a non-empty list of messages")
    turns = messages_to_turns(value, where=f"field '{name}'")
    if turns[-1].speaker != SYSTEM:
        raise DataError(f"{path}:{lineno}: field '{name}': the last message must be the assistant's reply")
    return turns[:-1], turns[-1].text


def _parse_pairs(raw: dict, path: Path, lineno: int) -> tuple[list[Turn], str, str]:
    prompt = raw.get("prompt")
    if isinstance(prompt, str):
        turns = [Turn(USER, require_field(raw, "prompt", path, lineno, nonempty=True))]
    else:
        turns = messages_to_turns(
            require_field(raw, "prompt", path, lineno, kind=list, nonempty=True), "field 'prompt'"
        )
    before_c, chosen = _reply(require_field(raw, "chosen", path, lineno, kind=object), "chosen", path, lineno)
    before_r, rejected = _reply(require_field(raw, "rejected", path, lineno, kind=object), "rejected", path, lineno)
    if before_c or before_r:
        raise DataError(
            f"{path}:{lineno}: field 'chosen'/'rejected' hold more than the reply (use shape ultrafeedback)"
        )
    return turns, chosen, rejected


def _parse_ultrafeedback(raw: dict, path: Path, lineno: int) -> tuple[list[Turn], str, str]:
    before_c, chosen = _reply(
        require_field(raw, "chosen", path, lineno, kind=list, nonempty=True), "chosen", path, lineno
    )
    before_r, rejected = _reply(
        require_field(raw, "rejected", path, lineno, kind=list, nonempty=True), "rejected", path, lineno
    )
    if before_c != before_r:
        raise DataError(f"{path}:{lineno}: fields 'chosen' and 'rejected' differ before their last message")
    if not before_c:
        raise DataError(f"{path}:{lineno}: field 'chosen': no user message before the reply")
    return before_c, chosen, rejected


def _parse_hh(raw: dict, path: Path, lineno: int) -> tuple[list[Turn], str, str]:
    chosen = hh_turns(require_field(raw, "chosen", path, lineno, nonempty=True), "chosen")
    rejected = hh_turns(require_field(raw, "rejected", path, lineno, nonempty=True), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{path}:{lineno}: fields 'chosen' and 'rejected' differ before their last Assistant turn")
    return chosen[:-1], chosen[-1].text, rejected[-1].text


PARSERS = {"pairs": _parse_pairs, "hh_rlhf": _parse_hh, "ultrafeedback": _parse_ultrafeedback}


# ----------------------------------------------------------------------------- split and encoding


def split_pairs(pairs: list[Pair], heldout: int, seed: int, name: str) -> tuple[list[Pair], list[Pair]]:
    """``heldout`` seeded pairs (at most a tenth) held out; the rest in file order."""
    order = list(range(len(pairs)))
    random.Random(f"{seed}:{name}").shuffle(order)
    n_held = min(heldout, len(pairs) // 10)
    held = sorted(order[:n_held])
    kept = set(held)
    return [p for i, p in enumerate(pairs) if i not in kept], [pairs[i] for i in held]


def final_reply_only(enc: Encoded) -> Encoded:
    """Keep the labels of the last supervised run (the final reply + its ``</s>``); -100 elsewhere."""
    labels = list(enc.labels)
    end = len(labels)
    start = end
    while start > 1 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return Encoded(enc.input_ids, [IGNORE_INDEX] * start + labels[start:end])


def encode_pair(pair: Pair, kind: str, tokenizer) -> EncodedPair:
    def one(reply: str) -> Encoded:
        turns = pair.prompt + [Turn(SYSTEM, reply)]
        example = turns_to_instruction(turns) if kind == "instruction" else turns
        return final_reply_only(encode_training(example, tokenizer))

    try:
        return EncodedPair(one(pair.chosen), one(pair.rejected), pair.where)
    except PromptError as err:
        raise DataError(f"{pair.where}: {err}") from err


def encode_pairs(
    pairs: list[Pair], kind: str, tokenizer, seq_len: int, skip: SkipCounter | None = None
) -> tuple[list[EncodedPair], int]:
    """Encoded pairs and how many were dropped for a side longer than ``seq_len`` tokens."""
    out, too_long = [], 0
    for pair in pairs:
        try:
            enc = encode_pair(pair, kind, tokenizer)
        except DataError as err:
            _bad(str(err), skip)
            continue
        if max(len(enc.chosen.input_ids), len(enc.rejected.input_ids)) > seq_len:
            too_long += 1
            continue
        out.append(enc)
    return out, too_long
