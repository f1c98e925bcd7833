"""Cost per shard of ``youri data``'s shard writing as the shard count grows, youri vs the old bookkeeping.

    python benchmarks/shard_bookkeeping.py            # 100 and 1,000 shards on the temp disk, best of 3 repeats
    python benchmarks/shard_bookkeeping.py --quick    # the same counts in /dev/shm, one repeat (< 60 s)

Both sides run the real ``ShardWriter.write`` (packing + an atomic, fsync'd shard file per shard) on
the same synthetic documents; only the record of finished shards (what a resumed run trusts) differs:

* youri: ``ProgressLog``, one fsync'd JSON line appended per shard (O(1) per shard);
* reference: the scheme it replaced, the whole ``progress.json`` map rewritten atomically (temporary
  file + fsync + rename) after every shard (O(shards) per shard, O(shards^2) per run).

Shards are small (64 rows x 16 tokens) so that bookkeeping, not token copying, is what grows; the
1,000-shard run has 10x the documents of the 100-shard one. ``ratio`` = seconds per shard at 1,000
shards / seconds per shard at 100 (1.0 = linear; target <= 1.5). ``--quick`` writes to /dev/shm
(tmpfs: the same bookkeeping without the disk's fsync latency, which on a busy disk dominates both
sides alike and takes minutes); ``--dir`` picks any folder. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from youri.data.corpus import Documents, ShardWriter
from youri.data.shards import ProgressLog
from youri.io import atomic_write_json

SEQ_LEN, SHARD_ROWS, DOC_TOKENS = 16, 64, 24


class RewriteAllProgress:
    """The old bookkeeping: ``progress.json`` (every finished shard) rewritten atomically after each shard."""

    def __init__(self, path: Path):
        self.path, self.entries = path, {}

    def get(self, name: str) -> dict | None:
        return self.entries.get(name)

    def record(self, entry: dict) -> None:
        self.entries[entry["file"]] = entry
        atomic_write_json(self.path, self.entries)

    def close(self) -> None:
        pass


def documents(shards: int) -> Documents:
    """Enough random documents for ``shards`` full shards (one task's flat token array)."""
    n = shards * SHARD_ROWS * SEQ_LEN // (DOC_TOKENS + 1) + 1
    tokens = np.random.default_rng(0).integers(3, 32000, size=n * DOC_TOKENS, dtype=np.uint32)
    lengths = np.full(n, DOC_TOKENS, dtype=np.int64)
    zeros = np.zeros(n, dtype=np.int64)
    return Documents(
        keys=np.stack([zeros, zeros, np.arange(n)], axis=1),
        lengths=lengths,
        chars=lengths,
        digest=np.zeros((n, 2), np.uint64),
        sig=np.zeros((n, 1), np.uint64),
        task=np.zeros(n, np.int32),
        start=np.arange(n) * DOC_TOKENS,
        tokens=[tokens],
    )


def seconds_per_shard(docs: Documents, progress_cls, workdir: Path) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        progress = progress_cls(folder / "progress")
        writer = ShardWriter(folder, SEQ_LEN, SHARD_ROWS, np.dtype("<u2"), eos_id=2, progress=progress)
        started = time.perf_counter()
        entries, _ = writer.write("train", docs, np.arange(len(docs)))
        elapsed = time.perf_counter() - started
        progress.close()
    return elapsed / len(entries), len(entries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat (< 60 s)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3, quick 1)")
    parser.add_argument("--dir", default=None, help="where the shards are written (default: the system temp dir)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    counts = (100, 1000)
    sides = {"youri (append-only log)": ProgressLog, "rewrite progress.json (reference)": RewriteAllProgress}
    best: dict[tuple[str, int], float] = {}
    shards: dict[int, int] = {}
    shm = Path("/dev/shm")
    workdir = Path(args.dir or (shm if args.quick and shm.is_dir() else tempfile.gettempdir()))
    for count in counts:
        docs = documents(count)
        for _ in range(repeats):
            for name, cls in sides.items():  # alternating, so drifting machine load hits both alike
                per_shard, shards[count] = seconds_per_shard(docs, cls, workdir)
                best[name, count] = min(best.get((name, count), float("inf")), per_shard)
    print(f"\n{'bookkeeping':<36}" + "".join(f"{f'ms/shard @ {shards[c]:,}':>20}" for c in counts) + f"{'ratio':>8}")
    ratios = {}
    for name in sides:
        ratios[name] = best[name, counts[1]] / best[name, counts[0]]
        print(f"{name:<36}" + "".join(f"{1e3 * best[name, c]:>20.3f}" for c in counts) + f"{ratios[name]:>8.2f}")
    youri_name, ref_name = list(sides)
    print(
        f"ratio = ms/shard at {shards[counts[1]]:,} shards / at {shards[counts[0]]:,} (1.0 = linear); "
        f"best of {repeats} repeat(s); shards of {SHARD_ROWS} x {SEQ_LEN} tokens in {workdir}"
    )
    print(
        json.dumps(
            {
                "benchmark": "shard_bookkeeping",
                "quick": args.quick,
                "repeats": repeats,
                "shards": [shards[c] for c in counts],
                "youri_s_per_shard": [round(best[youri_name, c], 6) for c in counts],
                "reference_s_per_shard": [round(best[ref_name, c], 6) for c in counts],
                "ratio": round(ratios[youri_name], 3),
                "reference_ratio": round(ratios[ref_name], 3),
                "target_ratio": 1.5,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
