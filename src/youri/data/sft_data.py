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
(kind ``chat``; instruction records become ``設定: instruction`` + ``ユーザー: input`` turns, see
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

import torch

from youri.io import DataError, SkipCounter, iter_jsonl, iter_records, require_field, resolve_path
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
from youri.train.losses import IGNORE_INDEX


@dataclass
class DatasetConfig:
    path: str
    """A .jsonl (.jsonl.gz) file, a .json file holding one array of records, or a folder of them
    (``builtin:NAME`` for the packaged samples)."""
    shape: Literal["instruction", "messages", "persona", "dolly", "flan", "llm_japanese", "hh_rlhf"] = "instruction"
    """Record shape: instruction/input/output, OpenAI messages, RealPersonaChat dialogue, Dolly
    instruction/context/response, FLAN inputs/targets, llm-japanese-dataset, HH-RLHF chosen transcript."""
    epochs: float = 1.0
    """Passes over this dataset per SFT epoch: 2 = every example twice, 0.5 = a seeded random half."""
    personas: str = ""
    """persona shape only: personas JSONL (default: personas.jsonl beside the dialogues)."""
    max_examples: int = 0
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
    if kind == "chat":
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
        instruction = require_field(raw, "instruction", path, lineno)
        if "instances" in raw:
            instances = require_field(raw, "instances", path, lineno, kind=list)
            out = []
            for i, inst in enumerate(instances):
                if not isinstance(inst, dict):
                    raise DataError(f"{path}:{lineno}: field 'instances[{i}]' must be an object")
                inp = require_field(inst, "input", path, lineno) if "input" in inst else ""
                out.append(Instruction(instruction, inp, require_field(inst, "output", path, lineno)))
            return out
        inp = require_field(raw, "input", path, lineno) if raw.get("input") is not None else ""
        return [Instruction(instruction, inp, require_field(raw, "output", path, lineno))]

    return _records(path, skip, parse)


def _dolly_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[Instruction]:
        instruction = require_field(raw, "instruction", path, lineno)
        context = require_field(raw, "context", path, lineno) if raw.get("context") is not None else ""
        return [Instruction(instruction, context, require_field(raw, "response", path, lineno))]

    return _records(path, skip, parse)


def _flan_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[Instruction]:
        return [
            Instruction(require_field(raw, "inputs", path, lineno), "", require_field(raw, "targets", path, lineno))
        ]

    return _records(path, skip, parse)


# A turn marker of an HH-RLHF transcript: "\n\nHuman: " / "\n\nAssistant: " (the space is sometimes missing).
HH_MARKER = re.compile(r"\n\n(Human|Assistant): ?")
HH_SPEAKERS = {"Human": USER, "Assistant": SYSTEM}


def hh_turns(transcript: str) -> list[Turn]:
    """An HH-RLHF transcript as ユーザー/システム turns; ``DataError`` (naming field 'chosen') if the turns
    do not alternate Human/Assistant from a Human turn to an Assistant turn, or one is empty."""
    parts = HH_MARKER.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise DataError("field 'chosen': expected a transcript starting with '\\n\\nHuman: '")
    turns = []
    for number, (who, text) in enumerate(zip(parts[1::2], parts[2::2]), start=1):
        expected = "Human" if number % 2 else "Assistant"
        if who != expected:
            raise DataError(
                f"field 'chosen': turn {number} is {who}, expected {expected} "
                "(turns alternate Human/Assistant, starting with Human)"
            )
        if not text.strip():
            raise DataError(f"field 'chosen': turn {number} ({who}) is empty")
        turns.append(Turn(HH_SPEAKERS[who], text.strip()))
    if turns[-1].speaker != SYSTEM:
        raise DataError(f"field 'chosen': the last turn (turn {len(turns)}) is Human; it must be the Assistant's")
    return turns


def _hh_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[list[Turn]]:
        return [hh_turns(require_field(raw, "chosen", path, lineno))]

    return _records(path, skip, parse)


def _message_records(path: Path, skip: SkipCounter | None) -> Iterator[Record]:
    def parse(raw: dict, lineno: int) -> list[list[Turn]]:
        messages = require_field(raw, "messages", path, lineno, kind=list)
        return [messages_to_turns(messages, where="field 'messages'")]

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
        utterances = require_field(raw, "utterances", path, lineno, kind=list)
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
            turns.append(Turn(SYSTEM if who == system else USER, require_field(utt, "text", path, lineno)))
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
    train, held, counts = [], [], {}
    for index, spec in enumerate(specs):
        if spec.epochs < 0:
            raise DataError(f"datasets[{index}].epochs must be >= 0, got {spec.epochs}")
        records = read_dataset(spec, kind, skip)
        if not records:
            raise DataError(f"{spec.path}: no usable records")
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


def encode_all(records: list[Record], tokenizer, seq_len: int) -> tuple[list[Encoded], EncodeStats]:
    """Encode (long chats split into windows, see ``split_long_chat``) and cut to ``seq_len``;
    an example left with no supervised token is dropped and counted."""
    stats, out = EncodeStats(), []
    for record in records:
        examples = [record.example]
        if not isinstance(record.example, Instruction):
            examples = split_long_chat(list(record.example), tokenizer, seq_len)
            stats.split_chats += len(examples) > 1
        for example in examples:
            try:
                enc = encode_training(example, tokenizer)
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


@dataclass
class Row:
    """One training row: one or several examples, ``position_ids`` restarting at each example start."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack(examples: list[Encoded], seq_len: int, *, packing: bool) -> list[Row]:
    """Rows of at most ``seq_len`` tokens, examples kept in order (next-fit); one per row without packing."""
    rows: list[Row] = []
    current = Row([], [], [])
    for enc in examples:
        # The last token of one example must never be trained to predict the next example's first.
        assert enc.labels[0] == IGNORE_INDEX, "an example starts with a prompt token"
        if current.input_ids and (not packing or len(current.input_ids) + len(enc.input_ids) > seq_len):
            rows.append(current)
            current = Row([], [], [])
        current.input_ids += enc.input_ids
        current.labels += enc.labels
        current.position_ids += list(range(len(enc.input_ids)))
    if current.input_ids:
        rows.append(current)
    return rows


def collate(rows: list[Row], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Padding continues the last example's positions (so a batch with
    no packed row keeps the plain causal mask) and is never supervised; causal attention keeps real
    tokens from seeing it, so no ``attention_mask`` is needed (and none may be given, see above)."""
    width = max(len(r.input_ids) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r.input_ids)
        ids.append(r.input_ids + [pad_id] * pad)
        labels.append(r.labels + [IGNORE_INDEX] * pad)
        last = r.position_ids[-1]
        positions.append(r.position_ids + list(range(last + 1, last + 1 + pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "position_ids": torch.tensor(positions)}


@dataclass
class RowBatches:
    """``BatchSource`` over SFT rows: a seeded permutation per epoch (as ``youri.train.batches.ShardBatches``),
    ``micro_batch_size x grad_accum`` rows per rank and step, rank ``r`` taking its contiguous slice."""

    rows: list[Row]
    micro_batch_size: int
    grad_accum: int
    pad_id: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rows:
            raise DataError("no training rows: every example was held out or dropped")
        self._perm: tuple[int, list[int]] | None = None

    def _row(self, k: int) -> Row:
        epoch, i = divmod(k, len(self.rows))
        if self._perm is None or self._perm[0] != epoch:
            order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._perm = (epoch, order)
        return self.rows[self._perm[1][i]]

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        per_rank = self.micro_batch_size * self.grad_accum
        first = (step * world + rank) * per_rank
        rows = [self._row(k) for k in range(first, first + per_rank)]
        return [
            collate(rows[i : i + self.micro_batch_size], self.pad_id) for i in range(0, per_rank, self.micro_batch_size)
        ]


@dataclass
class HeldOutRows:
    """``EvalFn``: every held-out row, spread over ranks (the same number of micro-batches on each)."""

    rows: list[Row]
    micro_batch_size: int
    pad_id: int

    def __call__(self, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        n = len(self.rows) // world * world  # equal counts: FSDP ranks must run the same forwards
        mine = list(range(rank, n, world))
        for i in range(0, len(mine), self.micro_batch_size):
            yield collate([self.rows[j] for j in mine[i : i + self.micro_batch_size]], self.pad_id)
