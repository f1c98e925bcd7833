"""Training batches from ``youri data`` token shards: the shuffled train stream and held-out rows.

Shared by ``youri pretrain`` and ``youri init`` (both train on packed rows of the same format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from youri.io import DataError


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
