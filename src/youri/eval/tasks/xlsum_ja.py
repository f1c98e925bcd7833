"""XL-Sum-ja (``xlsum_ja-1.0-*``): 1-shot news summarisation by greedy generation, ROUGE-2 (protocol 4.3,
5.4, 6.3).

Data (not in the shared folder; ``youri eval --download`` fetches it): the ``mkshing/xlsum_ja`` split files
(CSV on the Hub; JSON Lines or Parquet work too) with ``text`` and ``summary`` (also ``id``, ``url``,
``title``), in file order; ``eval`` = the **test** split, ``fewshot`` = train.
Over-long contexts are shortened sentence by sentence with the model's tokenizer, as the harness does.
"""

from __future__ import annotations

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, PARQUET_EXPORT, Prompt, Source, TaskDef, Variant, read_records

SUMMARISE = "与えられたニュース記事を要約してください。"


def load(path: str) -> list[dict]:
    return [
        {"id": r.get("id", lineno), "text": r["text"], "summary": r["summary"]}
        for lineno, r in read_records(path, {"text": str, "summary": str})
    ]


def summary(doc: dict) -> str:
    return doc["summary"]


PROMPTS = {
    "0.0": Prompt("0.0", f"{SUMMARISE}\n\n", lambda d: f"ニュース記事:{d['text']}\n要約:", summary, "\n\n"),
    "0.3": Prompt(
        "0.3",
        ALPACA,
        lambda d: f"### 指示:\n{SUMMARISE}\n\n### 入力:\nニュース記事:{d['text']}\n\n### 応答:\n",
        summary,
        "\n\n",
    ),
    "0.4": Prompt(
        "0.4",
        f"ユーザー: {SUMMARISE}<NL>システム: 分かりました。<NL>",
        lambda d: f"ユーザー: ニュース記事:{d['text']}<NL>システム: ",
        summary,
        "<NL>",
        sep="<NL>",
    ),
    "0.5": Prompt(
        "0.5",
        f"ユーザー: {SUMMARISE}\nシステム: 分かりました。\n",
        lambda d: f"ユーザー: ニュース記事:{d['text']}\nシステム: ",
        summary,
        "\n",
    ),
    "0.6": Prompt(
        "0.6", LLAMA2_SYS, lambda d: f"{SUMMARISE}\n\nニュース記事:{d['text']} [/INST] ", summary, " </s><s>[INST] "
    ),
}


def hf_row(doc: dict) -> dict:
    return {"id": str(doc["id"]), "text": doc["text"], "summary": doc["summary"]}


TASK = TaskDef(
    leaderboard="ja_leaderboard_xlsum",
    leaderboard_metric="rouge2",
    hf_row=hf_row,
    sources=(
        Source("mkshing/xlsum_ja", "main", {"train": "*train*", "test": "*test*"}),
        Source("mkshing/xlsum_ja", PARQUET_EXPORT, {"train": "*train*", "test": "*test*"}),
    ),
    name="xlsum_ja",
    variants={"1.0": Variant(PROMPTS, length_rule="xlsum")},
    default_variant="1.0",
    base_prompt="0.0",
    shots=1,
    kind="gen",
    metric="rouge2",
    chance=0.0,
    load_eval=load,
    load_fewshot=load,
    gold=summary,
    answer_lengths=lambda d, n: n(d["summary"]) + 10,
    split="test",
)
