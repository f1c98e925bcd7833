"""Packed token shards: the contract between ``youri data`` (writer) and the training stages (reader).

A data stage folder holds::

    index.json            format, seq_len, dtype, eos_id, bos_id (null: none), vocab_size, per-split shard lists, totals
    tokenizer/            the Hugging Face tokenizer the tokens were made with
    train/00000.bin ...   row-major [sequences, seq_len] little-endian token ids (dtype from the index)
    val/ja/00000.bin ...  held-out sequences per language, same layout

Every sequence is exactly ``seq_len`` tokens; documents are concatenated with EOS between them and
cut into rows (the standard "concatenate and chunk" packing of continued pretraining). Each shard is
written atomically and carries its sha256 in the index, so a resumed run can trust finished shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from youri.io import DataError, MissingField, atomic_write_bytes, read_json

INDEX = "index.json"
FORMAT = "youri-tokens-v1"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (Llama 2's 32k vocab), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_shard(path: str | os.PathLike, rows: np.ndarray, dtype: np.dtype) -> dict[str, Any]:
    """Write ``rows`` ([n, seq_len]) atomically; return its index entry (file name, sequences, sha256)."""
    if rows.ndim != 2:
        raise ValueError(f"shard rows must be 2-D [sequences, seq_len], got shape {rows.shape}")
    if rows.size and (rows.min() < 0 or rows.max() > np.iinfo(dtype).max):
        raise ValueError(f"token ids out of range for {dtype}")
    data = np.ascontiguousarray(rows, dtype=dtype).tobytes()
    atomic_write_bytes(path, data)
    return {"sequences": int(rows.shape[0]), "sha256": hashlib.sha256(data).hexdigest()}


def shard_is_valid(path: str | os.PathLike, entry: dict[str, Any]) -> bool:
    """A finished shard from an earlier (interrupted) run: present and with the recorded hash."""
    path = Path(path)
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == entry.get("sha256")


class ProgressLog:
    """The shards an interrupted ``youri data`` run finished: an append-only JSON Lines file, one
    fsync'd line per shard. Recording a shard costs the same at shard 10 and at shard 10,000 (the map
    it replaced was rewritten whole after every shard: quadratic in the shard count, see
    ``benchmarks/shard_bookkeeping.py``). A line cut short by a kill is ignored: that shard is rewritten."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        data = self.path.read_bytes() if self.path.is_file() else b""
        for line in data.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                self.entries[entry["file"]] = entry
        self._cut_line = bool(data) and not data.endswith(b"\n")  # the next line must not join it
        self._handle = None

    def get(self, name: str) -> dict[str, Any] | None:
        return self.entries.get(name)

    def record(self, entry: dict[str, Any]) -> None:
        if self._handle is None:
            self._handle = self.path.open("ab")
            if self._cut_line:
                self._handle.write(b"\n")
        self._handle.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[entry["file"]] = entry

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass
class TokenShards:
    """Random access to the packed rows of one split (``train`` or ``val/ja``, ``val/en`` ...)."""

    folder: Path
    split: str
    seq_len: int
    dtype: np.dtype
    files: list[Path]
    counts: list[int]

    @classmethod
    def open(cls, folder: str | os.PathLike, split: str = "train") -> "TokenShards":
        folder = Path(folder)
        index = read_index(folder)
        entries = index["splits"].get(split)
        if entries is None:
            raise MissingField(f"{folder}: no split '{split}' (have: {', '.join(index['splits'])})")
        shards = cls(
            folder=folder,
            split=split,
            seq_len=int(index["seq_len"]),
            dtype=np.dtype(index["dtype"]),
            files=[folder / e["file"] for e in entries],
            counts=[int(e["sequences"]) for e in entries],
        )
        shards.check()
        return shards

    def check(self) -> None:
        """Every shard file present with the size the index records; all damaged ones are named at once."""
        bad = []
        for file, count in zip(self.files, self.counts):
            want = count * self.seq_len * self.dtype.itemsize
            try:
                have = file.stat().st_size
            except FileNotFoundError:
                bad.append(f"{file.name} is missing")
                continue
            if have != want:
                bad.append(f"{file.name} has {have} bytes, the index says {want}")
        if bad:
            raise DataError(
                f"{self.folder}/{self.split}: {len(bad)} of {len(self.files)} shard files are damaged "
                f"(truncated or replaced?): {'; '.join(bad)}; run 'youri data' again into a new folder"
            )

    def __post_init__(self) -> None:
        self._offsets = np.cumsum([0] + self.counts)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def _rows(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(
                self.files[shard], dtype=self.dtype, mode="r", shape=(self.counts[shard], self.seq_len)
            )
        return self._maps[shard]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows in {self.folder}/{self.split}")
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return np.asarray(self._rows(shard)[i - self._offsets[shard]], dtype=np.int64)

    def batch(self, rows: list[int]) -> np.ndarray:
        return np.stack([self[i] for i in rows]) if rows else np.zeros((0, self.seq_len), np.int64)


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"{folder}: not a youri data folder (no {INDEX}); run 'youri data' first")
    index = read_json(folder / INDEX)
    if index.get("format") != FORMAT:
        raise ValueError(f"{folder / INDEX}: unknown format {index.get('format')!r}, expected {FORMAT!r}")
    return index
