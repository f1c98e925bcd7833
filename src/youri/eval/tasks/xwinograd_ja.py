"""XWinograd-ja (``xwinograd_ja``, no prompt version): 0-shot; each of the two whole sentences is scored
after a single EOS token and the gold one must be **strictly** more likely (protocol 3.4).

Data: JSON Lines (or Parquet/CSV) with ``sentence1``, ``sentence2``, ``answer`` (``"1"``/``"2"``) -- the
``polm-stability/xwinograd-ja`` form (``xwinograd_jp.jsonl`` in the shared folder); scored split ``test``.
"""

from __future__ import annotations

from youri.eval.tasks.base import PARQUET_EXPORT, Prompt, Source, TaskDef, Variant, read_records
from youri.io import DataError


def load(path: str) -> list[dict]:
    docs = []
    for row, (lineno, r) in enumerate(read_records(path, {"sentence1": str, "sentence2": str, "answer": (str, int)})):
        if str(r["answer"]) not in {"1", "2"}:
            raise DataError(f'{path}:{lineno}: field \'answer\' must be "1" or "2", got {r["answer"]!r}')
        docs.append({"id": row, "sentences": [r["sentence1"], r["sentence2"]], "gold": int(r["answer"]) - 1})
    return docs


# No prompt at all: the context is '' (the EOS token stands in for it).
_EMPTY = Prompt("1.0 (no prompt version)", "", lambda d: "", lambda d: "", "\n\n")


def hf_row(doc: dict) -> dict:
    return {"sentence1": doc["sentences"][0], "sentence2": doc["sentences"][1], "answer": str(doc["gold"] + 1)}


TASK = TaskDef(
    leaderboard="ja_leaderboard_xwinograd",
    leaderboard_metric="acc",
    hf_row=hf_row,
    sources=(
        Source("polm-stability/xwinograd-ja", "main", {"test": "*test*"}),
        Source("polm-stability/xwinograd-ja", PARQUET_EXPORT, {"test": "*test*"}),
    ),
    name="xwinograd_ja",
    variants={"1.0": Variant({"": _EMPTY})},
    default_variant="1.0",
    base_prompt="",
    shots=0,
    kind="winograd",
    metric="acc",
    chance=50.0,
    load_eval=load,
    load_fewshot=None,
    continuations=lambda d: list(d["sentences"]),
    data_keys=("eval",),
    split="test",
)
