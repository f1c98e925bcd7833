"""JCommonsenseQA (``jcommonsenseqa-1.1-*``): 5-way multiple choice, JGLUE JSON Lines (protocol 3.1).

Data: ``eval`` = JGLUE ``valid-v1.x.json``, ``fewshot`` = ``train-v1.x.json``; fields ``q_id``,
``question``, ``choice0..choice4``, ``label`` (0-4).
"""

from __future__ import annotations

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, Prompt, TaskDef, Variant, jglue_sources, read_records
from youri.io import DataError

FIELDS = {"q_id": int, "question": str, **{f"choice{i}": str for i in range(5)}, "label": int}


def load(path: str) -> list[dict]:
    docs = []
    for lineno, r in read_records(path, FIELDS):
        if not 0 <= r["label"] <= 4:
            raise DataError(f"{path}:{lineno}: field 'label' must be 0-4, got {r['label']}")
        docs.append(
            {
                "id": r["q_id"],
                "question": r["question"],
                "choices": [r[f"choice{i}"] for i in range(5)],
                "gold": r["label"],
            }
        )
    return docs


def _gold_text(doc: dict) -> str:
    return doc["choices"][doc["gold"]]


def _dash(doc: dict, nl: str) -> str:
    return nl.join(f"- {c}" for c in doc["choices"])


PROMPTS = {
    "0.1": Prompt(
        "0.1",
        "[問題]に対する[答え]を[選択肢]の中から選んでください。\n\n",
        lambda d: f"[問題]:{d['question']}\n[選択肢]:[{', '.join(d['choices'])}]\n[答え]:",
        _gold_text,
        "\n\n",
    ),
    "0.2": Prompt(
        "0.2",
        "質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。"
        "なお、回答は選択肢の番号(例:0)でするものとします。 \n\n",
        lambda d: "質問:{}\n選択肢:{}\n回答:".format(
            d["question"], ",".join(f"{i}.{c}" for i, c in enumerate(d["choices"]))
        ),
        lambda d: str(d["gold"]),
        "\n\n",
    ),
    "0.2.1": Prompt(
        "0.2.1",
        "与えられた選択肢の中から、最適な答えを選んでください。 \n\n",
        lambda d: f"質問：{d['question']}\n選択肢：\n{_dash(d, chr(10))}\n回答：",
        _gold_text,
        "\n\n",
    ),
    "0.3": Prompt(
        "0.3",
        ALPACA,
        lambda d: (
            "### 指示:\n与えられた選択肢の中から、最適な答えを選んでください。出力は以下から選択してください："
            f"\n{_dash(d, chr(10))}\n\n### 入力:\n{d['question']}\n\n### 応答:\n"
        ),
        _gold_text,
        "\n\n",
    ),
    "0.4": Prompt(
        "0.4",
        "ユーザー: 与えられた選択肢の中から、最適な答えを選んでください。<NL>システム: 分かりました。<NL>",
        lambda d: f"ユーザー: 質問：{d['question']}<NL>選択肢：<NL>{_dash(d, '<NL>')}<NL>システム: ",
        _gold_text,
        "<NL>",
        sep="<NL>",
    ),
    "0.5": Prompt(
        "0.5",
        "ユーザー: 与えられた選択肢の中から、最適な答えを選んでください。\nシステム: 分かりました。\n",
        lambda d: f"ユーザー: 質問：{d['question']}\n選択肢：\n{_dash(d, chr(10))}\nシステム: ",
        _gold_text,
        "\n",
    ),
    "0.6": Prompt(
        "0.6",
        LLAMA2_SYS,
        lambda d: (
            "与えられた5つの選択肢の中から、最適な答えを選んでください。出力は以下から選択してください："
            f"\n{_dash(d, chr(10))}\n\n質問：{d['question']} [/INST] "
        ),
        _gold_text,
        " </s><s>[INST] ",
    ),
}


def hf_row(doc: dict) -> dict:
    return {
        "q_id": doc["id"],
        "question": doc["question"],
        "label": doc["gold"],
        **{f"choice{i}": c for i, c in enumerate(doc["choices"])},
    }


TASK = TaskDef(
    leaderboard="ja_leaderboard_jcommonsenseqa",
    leaderboard_metric="acc",
    hf_row=hf_row,
    sources=jglue_sources("JCommonsenseQA", "validation"),
    name="jcommonsenseqa",
    variants={"1.1": Variant(PROMPTS)},
    default_variant="1.1",
    base_prompt="0.1",
    shots=3,
    kind="mc",
    metric="acc",
    chance=20.0,
    load_eval=load,
    load_fewshot=load,
    continuations=lambda d: list(d["choices"]),
)
