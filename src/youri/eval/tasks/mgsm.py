"""MGSM-ja (``mgsm-1.0-*``): grade-school maths with chain-of-thought few-shot from the 8 exemplars,
greedy generation, accuracy of the last number (protocol 4.4, 5.3, 6.2).

Data: ``eval`` = ``mgsm_ja.tsv`` (``question<TAB>answer``, no header) or JSON Lines with ``question``
and ``answer_number``; ``fewshot`` = the exemplars as JSON Lines with ``question`` (starting
``問題：``), ``answer_cot`` (or ``answer``, starting ``ステップごとの答え：``) and ``answer_number``.
``mgsm-1.0-0.3-d4bdbfa`` is the 0.3 prompt before ``5a857e3`` (the 2023-08 Llama-2 results).
"""

from __future__ import annotations

from pathlib import Path

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, PARQUET_EXPORT, Prompt, Source, TaskDef, Variant, read_records
from youri.io import DataError, read_text

STEPS = "与えられた問題に対して、ステップごとに答えを導き出してください。"


def load_eval(path: str) -> list[dict]:
    if not path.endswith(".tsv"):
        return [
            {"id": row, "question": r["question"], "cot": "", "gold": r["answer_number"]}
            for row, (lineno, r) in enumerate(read_records(path, {"question": str, "answer_number": int}))
        ]
    if not Path(path).is_file():
        raise DataError(f"data file not found: {path}")
    docs = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 2:
            raise DataError(f"{path}:{lineno}: expected 2 tab-separated columns (question, answer), got {len(cells)}")
        try:
            number = int(cells[1].replace(",", ""))  # "2,125": a thousands separator
        except ValueError as err:
            raise DataError(f"{path}:{lineno}: answer column must be an integer, got {cells[1]!r}") from err
        docs.append({"id": len(docs), "question": cells[0], "cot": "", "gold": number})
    return docs


def load_exemplars(path: str) -> list[dict]:
    docs = []
    for lineno, r in read_records(path, {"question": str, "answer_number": int}):
        cot = r.get("answer_cot", r.get("answer"))
        if not isinstance(cot, str):
            raise DataError(f"{path}:{lineno}: missing field 'answer_cot' (the chain of thought)")
        docs.append({"id": r.get("id", lineno), "question": r["question"], "cot": cot, "gold": r["answer_number"]})
    return docs


def question(doc: dict) -> str:
    return doc["question"].replace("問題：", "")


def cot(doc: dict) -> str:
    return doc["cot"].replace("ステップごとの答え：", "")


PROMPTS = {
    "0.0": Prompt("0.0", "", lambda d: f"問題：{question(d)}\nステップごとの答え：", cot, "\n\n"),
    "0.3": Prompt(
        "0.3", ALPACA, lambda d: f"### 指示:\n{STEPS}\n\n### 入力:\n{question(d)}\n\n### 応答:\n", cot, "\n\n"
    ),
    "0.4": Prompt(
        "0.4",
        "ユーザー: 与えられた問題をステップごとに解説してください。<NL>システム: 分かりました。<NL>",
        lambda d: f"ユーザー: 問題：{question(d)}<NL>システム: ステップごとの答え：",
        cot,
        "<NL>",
    ),
    # 0.5 inherits 0.4's doc_to_text, literal <NL> included (protocol 4.4).
    "0.5": Prompt(
        "0.5",
        "ユーザー: 与えられた問題をステップごとに解説してください。\nシステム: 分かりました。\n",
        lambda d: f"ユーザー: 問題：{question(d)}<NL>システム: ステップごとの答え：",
        cot,
        "\n",
    ),
    "0.6": Prompt("0.6", LLAMA2_SYS, lambda d: f"{STEPS}\n\n{question(d)} [/INST] ", cot, " </s><s>[INST] "),
    "0.3-d4bdbfa": Prompt(
        "0.3",
        ALPACA,
        lambda d: f"### 指示:\n{STEPS}### 入力:\n{question(d)}\n\n### 応答:\n",
        cot,
        "\n\n",
        length_rule="drop_earliest",
    ),
}


def hf_row(doc: dict) -> dict:
    # "" rather than None for test rows: datasets infers one schema over all files of the task.
    return {"question": doc["question"], "answer": doc["cot"], "answer_number": doc["gold"]}


TASK = TaskDef(
    leaderboard="ja_leaderboard_mgsm",
    leaderboard_metric="acc",
    hf_row=hf_row,
    sources=(Source("juletxara/mgsm", PARQUET_EXPORT, {"train": "ja/*train*", "test": "ja/*test*"}),),
    name="mgsm",
    variants={"1.0": Variant(PROMPTS, length_rule="fewer_shots")},
    default_variant="1.0",
    base_prompt="0.0",
    shots=5,
    kind="gen",
    metric="acc",
    chance=0.0,
    load_eval=load_eval,
    load_fewshot=load_exemplars,
    stop=lambda prompt, opts: [opts.eos_token, "\n"],
    split="test",
)
