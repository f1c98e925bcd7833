"""Training batches: packed ``youri data`` token shards (``youri pretrain``, ``youri init``) and rendered
SFT examples (``youri sft``), each as a shuffled train stream and held-out rows for the shared loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from youri.io import DataError
from youri.prompts import IGNORE_INDEX, Encoded


@dataclass
class ShardBatches:
    """``BatchSource`` over packed rows: a seeded permutation per epoch, ``micro_batch x accum x world`` rows per step.

    Global row ``k`` of the stream is ``perm_{k // N}[k % N]``; step ``s`` uses rows
    ``[s * G, (s + 1) * G)`` and rank ``r`` takes its contiguous slice, so 1 process x accumulation
    2 and 2 processes x accumulation 1 see the same global batch.
    """

    rows: Any  # TokenShards or an int array [N, T]
    micro_batch_size: int
    grad_accum: int
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.rows) == 0:
            raise DataError("no training sequences: the train split is empty")
        self._perms: dict[int, np.ndarray] = {}

    def _row(self, k: int) -> int:
        epoch, i = divmod(k, len(self.rows))
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return int(self._perms[epoch][i])

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        per_rank = self.micro_batch_size * self.grad_accum
        first = step * per_rank * world + rank * per_rank
        ids = [self._row(k) for k in range(first, first + per_rank)]
        tokens = torch.from_numpy(np.stack([np.asarray(self.rows[i], dtype=np.int64) for i in ids]))
        return [{"input_ids": chunk, "labels": chunk} for chunk in tokens.split(self.micro_batch_size)]


@dataclass
class HeldOut:
    """``EvalFn`` over the first ``micro_batch_size x batches`` rows of a split, spread evenly over ranks."""

    rows: Any
    micro_batch_size: int
    batches: int

    def __call__(self, rank: int, world: int):
        n = min(len(self.rows), self.micro_batch_size * self.batches) // world * world
        mine = list(range(rank, n, world))
        for i in range(0, len(mine), self.micro_batch_size):
            chunk = torch.from_numpy(
                np.stack([np.asarray(self.rows[j], dtype=np.int64) for j in mine[i : i + self.micro_batch_size]])
            )
            yield {"input_ids": chunk, "labels": chunk}


def check_tokenizer(data: Path, index: dict, model_config, tokenizer) -> None:
    """The shards must have been made with the model's tokenizer (same vocabulary size and EOS id)."""
    vocab, eos = index.get("vocab_size"), index.get("eos_id")
    problems = []
    if vocab is not None and vocab != len(tokenizer):
        problems.append(f"vocab_size {vocab} in {data / 'index.json'} but the model's tokenizer has {len(tokenizer)}")
    if vocab is not None and vocab > model_config.vocab_size:
        problems.append(f"vocab_size {vocab} > the model's embedding rows ({model_config.vocab_size})")
    if eos is not None and eos != tokenizer.eos_token_id:
        problems.append(f"eos_id {eos} in {data / 'index.json'} but the model's EOS is {tokenizer.eos_token_id}")
    if problems:
        raise DataError(
            f"{data}: the token shards were not made with this model's tokenizer: "
            + "; ".join(problems)
            + " -- rerun 'youri data' with --tokenizer set to the model folder"
        )


# ----------------------------------------------------------------------------- SFT rows


@dataclass
class Row:
    """One training row: one or several examples, ``position_ids`` restarting at each example start."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack_examples(examples: list[Encoded], seq_len: int, *, packing: bool) -> list[Row]:
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


class EpochOrder:
    """Stream position ``k`` -> item index: a seeded shuffle of ``range(n)`` per epoch (the current one cached)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perm: tuple[int, list[int]] | None = None

    def __call__(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if self._perm is None or self._perm[0] != epoch:
            order = list(range(self.n))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._perm = (epoch, order)
        return self._perm[1][i]


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
        self._order = EpochOrder(len(self.rows), self.seed)

    def _row(self, k: int) -> Row:
        return self.rows[self._order(k)]

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


# ----------------------------------------------------------------------------- preference pairs


def collate_pairs(
    pairs: list, pad_id: int, ref_logps: list[tuple[float, float]] | None = None
) -> dict[str, torch.Tensor]:
    """``b`` pairs as ``2b`` right-padded rows, chosen first (TRL's concatenated layout): ``input_ids``,
    ``labels`` (final reply only), ``lengths`` and, for DPO, the cached ``ref_logps`` in the same order."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(r.input_ids) for r in rows)
    batch = {
        "input_ids": torch.tensor([r.input_ids + [pad_id] * (width - len(r.input_ids)) for r in rows]),
        "labels": torch.tensor([r.labels + [IGNORE_INDEX] * (width - len(r.labels)) for r in rows]),
        "lengths": torch.tensor([len(r.input_ids) for r in rows]),
    }
    if ref_logps is not None:
        batch["ref_logps"] = torch.tensor([c for c, _ in ref_logps] + [r for _, r in ref_logps], dtype=torch.float64)
    return batch


@dataclass
class PairBatches:
    """``BatchSource`` over encoded preference pairs: a seeded permutation per epoch, ``micro_batch_size`` pairs
    per micro-batch, ``grad_accum`` micro-batches per rank and step (as ``RowBatches``)."""

    pairs: list
    micro_batch_size: int
    grad_accum: int
    pad_id: int
    seed: int = 0
    ref_logps: list[tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if not self.pairs:
            raise DataError("no training pairs: every pair was held out or dropped")
        self._index = EpochOrder(len(self.pairs), self.seed)

    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]:
        per_rank = self.micro_batch_size * self.grad_accum
        first = (step * world + rank) * per_rank
        ids = [self._index(k) for k in range(first, first + per_rank)]
        out = []
        for i in range(0, per_rank, self.micro_batch_size):
            chunk = ids[i : i + self.micro_batch_size]
            refs = [self.ref_logps[j] for j in chunk] if self.ref_logps is not None else None
            out.append(collate_pairs([self.pairs[j] for j in chunk], self.pad_id, refs))
        return out
