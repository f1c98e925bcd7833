"""SFT data: JSON/JSONL readers (seven shapes), mixtures, held-out split, encoding and packing.

Shapes (``DatasetConfig.shape``)
--------------------------------
* ``instruction`` -- ``{"instruction", "input"?, "output"}`` (Dolly-ja) or ``{"instruction",
  "instances": [{"input", "output"}, ...]}`` (Alpaca-ja seed tasks: one example per instance).
* ``messages`` -- OpenAI ``{"messages": [{"role": "system"|"user"|"assistant", "content"}]}``.
* ``dolly`` -- databricks-dolly-15k ``{"instruction", "context", "response", "category"}``: ``context``
  becomes the input (empty context: no input block), ``category`` is not used. (kunishou's Dolly-ja
  renames the fields to ``input``/``output``: read it with ``instruction``.)
* ``flan`` -- FLAN ``{"inputs", "targets", ...}`` (Muennighoff/flan; the translated FLAN sets of
  CohereForAI/aya_collection keep the two fields): ``inputs`` is the instruction, there is no input.
* ``llm_japanese`` -- izumi-lab llm-japanese-dataset ``{"index", "instruction", "input", "output"}``;
  the same fields as ``instruction``, under its own name so recipes say what they read. Its sections
  are folders of JSON-array files (``datasets*/SECTION/data/000000.json``): give a section's folder.
* ``hh_rlhf`` -- Anthropic HH-RLHF ``{"chosen", "rejected"}``: the ``chosen`` transcript
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) becomes ユーザー/システム turns; ``rejected`` is not used.
  The turns must alternate, start with Human and end with Assistant, each non-empty.
* ``persona`` -- RealPersonaChat dialogues ``{"dialogue_id", "interlocutors": [a, b], "utterances":
  [{"interlocutor_id", "text"}]}`` with speaker personas from ``personas.jsonl`` (``{"interlocutor_id",
  "persona": [sentences]}``; by default the file of that name beside the dialogues). The speaker who
  opens the dialogue (``interlocutors[0]``) is the ユーザー; the other one is the システム, and the
  システム speaker's persona sentences, concatenated, become the dialogue's ``設定`` line -- so the
  chat model learns to keep the persona it is given, in the prompt shape users will send. Consecutive
  utterances of one speaker stay separate turns (none occur in the shared sample).

A dataset ``path`` is a ``.jsonl`` file (``.jsonl.gz`` too), a ``.json`` file holding one JSON array of
records, or a folder of such files (read in sorted order; not for ``persona``).

Every record becomes a ``prompts.Instruction`` (kind ``instruction``) or a list of ``prompts.Turn``
(kinds ``chat`` and ``template``; instruction records become ``設定: instruction`` + ``ユーザー: input`` turns, see
``prompts.instruction_to_turns``). A bad record raises ``DataError`` naming file, line and field, or,
with ``skip_bad_records``, is skipped and counted (``SkipCounter``).

A dataset's ``epochs`` says how often its examples appear in the mixture: 2 repeats every example
twice, 0.5 keeps a seeded random half. (``youri data``'s source ``weight`` is a *relative* share of a
token budget; SFT has no budget, so the absolute count gets its own name.) The held-out split
(``heldout`` examples per dataset, seeded) is taken before repetition, so it never overlaps training
and is the same for every ``epochs``.

Packing puts several encoded examples into one row; ``position_ids`` restart at 0 for every example.
With transformers >= 5 and no ``attention_mask``, ``masking_utils.find_packed_sequence_indices`` turns
restarting ``position_ids`` into a block-diagonal causal mask (sdpa and eager), so examples never
attend to each other -- which is why batches carry ``position_ids`` and never an ``attention_mask``
(a 2D mask switches the detection off, and so does a KV cache: the model must run with
``use_cache=False``, as ``trainer.prepare_model`` sets it). ``tests/test_sft.py`` checks per-example losses of a
packed batch against the unpacked ones.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from youri.config import NonNegativeFloat, NonNegativeInt
from youri.io import DataError, SkipCounter, failures_message, iter_jsonl, iter_records, require_field, resolve_path
from youri.prompts import (
    SETTING,
    SYSTEM,
    USER,
    Encoded,
    Example,
    Instruction,
    PromptError,
    Turn,
    encode_training,
    instruction_to_turns,
    messages_to_turns,
    turns_to_instruction,
)


@dataclass
class DatasetConfig:
    path: str
    """A .jsonl (.jsonl.gz) file, a .json file holding one array of records, or a folder of them
    (``builtin:NAME`` for the packaged samples)."""
    shape: Literal["instruction", "messages", "persona", "dolly", "flan", "llm_japanese", "hh_rlhf"] = "instruction"
    """Record shape: instruction/input/output, OpenAI messages, RealPersonaChat dialogue, Dolly
    instruction/context/response, FLAN inputs/targets, llm-japanese-dataset, HH-RLHF chosen transcript."""
    epochs: NonNegativeFloat = 1.0
    """Passes over this dataset per SFT epoch: 2 = every example twice, 0.5 = a seeded random half."""
    personas: str = ""
    """persona shape only: personas JSONL (default: personas.jsonl beside the dialogues)."""
    max_examples: NonNegativeInt = 0
    """Read at most this many examples (0 = all); for quick runs."""


@dataclass
class Record:
    example: Example
    where: str  # file:line, for messages about this record


# ----------------------------------------------------------------------------- readers


def read_dataset(spec: DatasetConfig, kind: str, skip: SkipCounter | None = None) -> list[Record]:
    """All records of one dataset in the form ``kind`` trains on."""
    path = resolve_path(spec.path)
    if spec.shape == "persona":
        if not path.is_file():
            raise FileNotFoundError(f"dataset not found: {spec.path} (persona: a dialogues .jsonl file)")
        personas = _read_personas(Path(spec.personas) if spec.personas else path.with_name("personas.jsonl"), skip)
        readers = [_persona_records(path, personas, skip)]
    elif spec.shape in READERS:
        readers = [READERS[spec.shape](file, skip) for file in _dataset_files(path, spec.path)]
    else:
        raise DataError(f"{spec.path}: unknown shape {spec.shape!r}; expected persona or one of {', '.join(READERS)}")
    records = []
    for record in (r for reader in readers for r in reader):
        try:
            example = _as_kind(record.example, kind)
        except PromptError as err:
            _bad(f"{record.where}: {err}", skip)
            continue
        records.append(Record(example, record.where))
        if spec.max_examples and len(records) >= spec.max_examples:
            break
    return records


def _dataset_files(path: Path, given: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(RECORD_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"dataset folder {given} holds no {', '.join(RECORD_SUFFIXES)} files")
        return files
    raise FileNotFoundError(f"dataset not found: {given}")


def _as_kind(example: Example, kind: str) -> Example:
    if kind in ("chat", "template"):  # template: chat turns rendered by the base's own chat_template
        return instruction_to_turns(example) if isinstance(example, Instruction) else list(example)
    return example if isinstance(example, Instruction) else turns_to_instruction(example)


def _bad(reason: str, skip: SkipCounter | None) -> None:
    if skip is None:
        raise DataError(reason + " (fix the record, or set skip_bad_records: true to skip it)")
    skip.add(reason)


def _records(path: Path, skip: SkipCounter | None, parse) -> Iterator[Record]:
    for lineno, raw in iter_records(path, skip_bad=skip):
        try:
            for example in parse(raw, lineno):
                yield Record(example, f"{path}:{lineno}")
        except (DataError, PromptError) as err:
            message = str(err) if str(err).startswith(str(path)) else f"{path}:{lineno}: {err}"
            _bad(message, skip)


def _instruction_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[Instruction]:
        instruction = require_field(raw, "instruction", path, lineno, nonempty=True)
        if "instances" in raw:
            instances = require_field(raw, "instances", path, lineno, kind=list)
            out = []
            for i, inst in enumerate(instances):
                if not isinstance(inst, dict):
                    raise DataError(f"{path}:{lineno}: field 'instances[{i}]' must be an object")
                inp = require_field(inst, "input", path, lineno) if "input" in inst else ""
                output = require_field(inst, "output", path, lineno, nonempty=True)
                out.append(Instruction(instruction, inp, output))
            return out
        inp = require_field(raw, "input", path, lineno) if raw.get("input") is not None else ""
        return [Instruction(instruction, inp, require_field(raw, "output", path, lineno, nonempty=True))]

    return _records(path, skip, parse)


def _dolly_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[Instruction]:
        instruction = require_field(raw, "instruction", path, lineno, nonempty=True)
        context = require_field(raw, "context", path, lineno) if raw.get("context") is not None else ""
        return [Instruction(instruction, context, require_field(raw, "response", path, lineno, nonempty=True))]

    return _records(path, skip, parse)


def _flan_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[Instruction]:
        return [
            Instruction(
                require_field(raw, "inputs", path, lineno, nonempty=True),
                "",
                require_field(raw, "targets", path, lineno, nonempty=True),
            )
        ]

    return _records(path, skip, parse)


# A turn marker of an HH-RLHF transcript: "\n\nHuman: " / "\n\nAssistant: " (the space is sometimes missing).
HH_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
HH_SPEAKERS = {"Human": USER, "Assistant": SYSTEM}


def hh_turns(transcript: str, name: str = "chosen") -> list[Turn]:
    """An HH-RLHF transcript as ユーザー/システム turns; ``DataError`` (naming field ``name``) if the turns
    do not alternate Human/Assistant from a Human turn to an Assistant turn, or one is empty."""
    parts = HH_MARKER.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"field '{name}': expected a transcript starting with '\\n\\nHuman: '")
    turns = []
    for number, (who, text) in enumerate(zip(parts[1::2], parts[2::2]), start=1):
        expected = "Human" if number % 2 else "Assistant"
        if who != expected:
            raise DataError(
                f"field '{name}': turn {number} is {who}, expected {expected} "
                "(turns alternate Human/Assistant, starting with Human)"
            )
        if not text.strip():
            raise DataError(f"field '{name}': turn {number} ({who}) is empty")
        turns.append(Turn(HH_SPEAKERS[who], text.strip()))
    if turns[-1].speaker != SYSTEM:
        raise DataError(f"field '{name}': the last turn (turn {len(turns)}) is Human; it must be the Assistant's")
    return turns


def _hh_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[list[Turn]]:
        return [hh_turns(require_field(raw, "chosen", path, lineno, nonempty=True))]

    return _records(path, skip, parse)


def _message_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[list[Turn]]:
        messages = require_field(raw, "messages", path, lineno, kind=list, nonempty=True)
        turns = messages_to_turns(messages, where="field 'messages'")
        for i, turn in enumerate(turns):
            if not turn.text.strip():
                raise DataError(f"{path}:{lineno}: field 'messages[{i}].content' is empty")
        return [turns]

    return _records(path, skip, parse)


def _read_personas(path: Path, skip: SkipCounter | None) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"personas file not found: {path} (set personas: in the dataset entry)")
    personas = {}
    for lineno, raw in iter_jsonl(path, skip_bad=skip):
        try:
            speaker = require_field(raw, "interlocutor_id", path, lineno)
            sentences = require_field(raw, "persona", path, lineno, kind=list)
            personas[speaker] = "".join(str(s) for s in sentences)
        except DataError as err:
            _bad(str(err), skip)
    return personas


def _persona_records(path: Path, personas: dict[str, str], skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[list[Turn]]:
        speakers = require_field(raw, "interlocutors", path, lineno, kind=list)
        utterances = require_field(raw, "utterances", path, lineno, kind=list, nonempty=True)
        if len(speakers) != 2:
            raise DataError(f"{path}:{lineno}: field 'interlocutors' must name two speakers, got {speakers!r}")
        user, system = speakers
        if system not in personas:
            raise DataError(f"{path}:{lineno}: field 'interlocutors': no persona for {system!r} in personas file")
        turns = [Turn(SETTING, personas[system])]
        for i, utt in enumerate(utterances):
            if not isinstance(utt, dict):
                raise DataError(f"{path}:{lineno}: field 'utterances[{i}]' must be an object")
            who = require_field(utt, "interlocutor_id", path, lineno)
            if who not in (user, system):
                raise DataError(
                    f"{path}:{lineno}: field 'utterances[{i}].interlocutor_id': {who!r} is not "
                    f"one of the interlocutors {speakers!r}"
                )
            text = require_field(utt, "text", path, lineno, nonempty=True)
            turns.append(Turn(SYSTEM if who == system else USER, text))
        return [turns]

    return _records(path, skip, parse)


RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")
READERS = {
    "instruction": _instruction_records,
    "messages": _message_records,
    "dolly": _dolly_records,
    "flan": _flan_records,
    "llm_japanese": _instruction_records,
    "hh_rlhf": _hh_records,
}


# ----------------------------------------------------------------------------- mixture and split


@dataclass
class Mixture:
    train: list[Record]
    heldout: list[Record]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def build_mixture(
    specs: list[DatasetConfig], kind: str, *, heldout: int, seed: int, skip: SkipCounter | None = None
) -> Mixture:
    """Read every dataset, hold out ``heldout`` seeded examples of each, repeat the rest ``epochs`` times."""
    if not specs:
        raise DataError("no datasets: give at least one entry under datasets:")
    train, held, counts, failed = [], [], {}, []
    for index, spec in enumerate(specs):
        if spec.epochs < 0:
            raise DataError(f"datasets[{index}].epochs must be >= 0, got {spec.epochs}")
        try:  # one dataset's failure is named with every other's, after all were read
            records = read_dataset(spec, kind, skip)
            if not records:
                raise DataError(f"{spec.path}: no usable records")
        except (DataError, OSError) as err:
            failed.append(str(err))
            continue
        rng = random.Random(f"{seed}:{index}:{spec.path}")
        order = list(range(len(records)))
        rng.shuffle(order)
        n_held = min(heldout, len(records) // 10)  # never more than a tenth of a small dataset
        held += [records[i] for i in order[:n_held]]
        rest = [records[i] for i in sorted(order[n_held:])]
        whole, frac = divmod(spec.epochs, 1.0)
        weighted = rest * int(whole) + rng.sample(rest, round(frac * len(rest)))
        train += weighted
        counts[spec.path] = {"records": len(records), "heldout": n_held, "train": len(weighted)}
    if failed:
        raise DataError(failures_message(failed, len(specs), "datasets could not be read"))
    return Mixture(train, held, counts)


# ----------------------------------------------------------------------------- encoding and packing


@dataclass
class EncodeStats:
    examples: int = 0
    split_chats: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    supervised_tokens: int = 0
    tokens: int = 0


def split_long_chat(turns: list[Turn], tokenizer, seq_len: int) -> list[list[Turn]]:
    """Windows of a chat that each fit ``seq_len`` (estimated per turn), every one repeating the leading
    設定 turns and ending with a システム reply; user turns after a cut open the next window."""
    head = [t for t in turns[:1] if t.speaker == SETTING]
    body = turns[len(head) :]
    lines = [f"{t.speaker}: {t.text}" for t in turns]
    encoded = tokenizer(lines, add_special_tokens=False, split_special_tokens=True)["input_ids"]  # as the renderer
    lengths = [len(ids) + 1 for ids in encoded]
    budget = seq_len - sum(lengths[: len(head)]) - 4  # 4: the "▁" prefix and boundary slack
    if sum(lengths) + 4 <= seq_len or budget <= 0:
        return [turns]
    body_lengths = lengths[len(head) :]
    windows: list[list[Turn]] = []
    start = 0  # body index where the open window starts
    for i in range(len(body)):
        replies = [j for j in range(start, i) if body[j].speaker == SYSTEM]
        if replies and sum(body_lengths[start : i + 1]) > budget:
            windows.append(head + body[start : replies[-1] + 1])
            start = replies[-1] + 1
    if any(t.speaker == SYSTEM for t in body[start:]):
        windows.append(head + body[start:])
    return windows


def encode_all(
    records: list[Record], tokenizer, seq_len: int, *, base_template: bool = False
) -> tuple[list[Encoded], EncodeStats]:
    """Encode (long chats split into windows, see ``split_long_chat``) and cut to ``seq_len``;
    an example left with no supervised token is dropped and counted. ``base_template``: chats are
    rendered with the tokenizer's own ``chat_template`` (``youri.prompts``)."""
    stats, out = EncodeStats(), []
    for record in records:
        examples = [record.example]
        if not isinstance(record.example, Instruction):
            examples = split_long_chat(list(record.example), tokenizer, seq_len)
            stats.split_chats += len(examples) > 1
        for example in examples:
            try:
                enc = encode_training(example, tokenizer, base_template=base_template)
            except PromptError as err:
                raise DataError(f"{record.where}: {err}") from err
            if len(enc.input_ids) > seq_len:
                enc = Encoded(enc.input_ids[:seq_len], enc.labels[:seq_len])
                stats.truncated += 1
            if enc.n_supervised == 0:
                stats.dropped_no_target += 1
                continue
            out.append(enc)
            stats.examples += 1
            stats.tokens += len(enc.input_ids)
            stats.supervised_tokens += enc.n_supervised
    return out, stats
