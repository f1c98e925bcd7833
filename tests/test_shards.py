"""Token shard format: write, index, random access."""

import numpy as np
import pytest

from youri.data.shards import FORMAT, INDEX, TokenShards, shard_is_valid, token_dtype, write_shard
from youri.io import atomic_write_json


def test_shards_round_trip_across_files(tmp_path):
    dtype = token_dtype(32000)
    rows_a = np.arange(12).reshape(3, 4)
    rows_b = np.arange(100, 108).reshape(2, 4)
    entries = []
    for name, rows in [("train/00000.bin", rows_a), ("train/00001.bin", rows_b)]:
        entries.append({"file": name, **write_shard(tmp_path / name, rows, dtype)})
    atomic_write_json(
        tmp_path / INDEX, {"format": FORMAT, "seq_len": 4, "dtype": dtype.str, "splits": {"train": entries}}
    )
    shards = TokenShards.open(tmp_path)
    assert len(shards) == 5 and shards.num_tokens == 20
    assert shards[3].tolist() == [100, 101, 102, 103]
    assert shards.batch([0, 4]).tolist() == [[0, 1, 2, 3], [104, 105, 106, 107]]
    assert shard_is_valid(tmp_path / "train/00000.bin", entries[0])
    (tmp_path / "train/00000.bin").write_bytes(b"\0" * 24)
    assert not shard_is_valid(tmp_path / "train/00000.bin", entries[0])
    with pytest.raises(IndexError):
        shards[5]
    with pytest.raises(ValueError, match="out of range"):
        write_shard(tmp_path / "x.bin", np.array([[70000]]), dtype)
