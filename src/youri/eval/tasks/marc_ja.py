"""MARC-ja (``marc_ja-1.1-*``): positive/negative review classification (protocol 3.3).

Data (not in the shared folder): what ``shunk031/JGLUE`` (config ``MARC-ja``) yields -- ``sentence``,
``label`` (ClassLabel index 0 = positive, 1 = negative, or the name) and ``review_id``, in file order;
``eval`` = validation, ``fewshot`` = train; JSON Lines, a JSON array, CSV or Parquet. The loader builds
MARC-ja from the Amazon reviews download, which was withdrawn in 2023; its fallback is the Hub's
Parquet export (``refs/convert/parquet``, ``MARC-ja/``), which is what ``youri eval --download``
fetches while it exists. Few-shot is plain ``rnd.sample`` (never stratified).
"""

from __future__ import annotations

from dataclasses import replace

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, Prompt, TaskDef, Variant, jglue_sources, label_index, read_records

LABELS = ["positive", "negative"]  # ClassLabel positive=0, negative=1 (neutral is filtered by the loader)
JA = ["ポジティブ", "ネガティブ"]
INSTRUCTION = "与えられた製品レビューを、ポジティブまたはネガティブの感情クラスのいずれかに分類してください。"


def load(path: str) -> list[dict]:
    return [
        {
            "id": r.get("review_id", lineno),
            "sentence": r["sentence"],
            "gold": label_index(r["label"], LABELS, f"{path}:{lineno}: field 'label'"),
        }
        for lineno, r in read_records(path, {"sentence": str, "label": (str, int)})
    ]


def _target(choices):
    return lambda d: choices[d["gold"]]


def _prompts() -> dict[str, Prompt]:
    en, ja = _target(LABELS), _target(JA)
    table = {
        "0.2": Prompt(
            "0.2",
            "製品レビューをnegativeかpositiveのいずれかのセンチメントに分類してください。出力は小文字化してください。 \n\n",
            lambda d: f"製品レビュー:{d['sentence']}\nセンチメント:",
            en,
            "\n\n",
        ),
        "0.3": Prompt(
            "0.3",
            ALPACA,
            lambda d: (
                "### 指示:\n以下の製品レビューを、ポジティブまたはネガティブの感情クラスのいずれかに分類してください。"
                f"\n\n### 入力:\n{d['sentence']}\n\n### 応答:\n"
            ),
            ja,
            "\n\n",
        ),
        "0.4": Prompt(
            "0.4",
            f"ユーザー: {INSTRUCTION}<NL>システム: 分かりました。<NL>",
            lambda d: f"ユーザー: {d['sentence']}<NL>システム: ",
            ja,
            "<NL>",
            sep="<NL>",
        ),
        "0.5": Prompt(
            "0.5",
            f"ユーザー: {INSTRUCTION}\nシステム: 分かりました。\n",
            lambda d: f"ユーザー: {d['sentence']}\nシステム: ",
            ja,
            "\n",
        ),
        "0.6": Prompt(
            "0.6",
            LLAMA2_SYS,
            lambda d: (
                "以下の製品レビューを、ポジティブまたはネガティブの感情クラスのいずれかに分類してください。"
                f"\n\n{d['sentence']} [/INST] "
            ),
            ja,
            " </s><s>[INST] ",
        ),
    }
    return {name: replace(p, choices=tuple(LABELS if name == "0.2" else JA)) for name, p in table.items()}


PROMPTS = _prompts()


def hf_row(doc: dict) -> dict:
    return {"sentence": doc["sentence"], "label": doc["gold"], "review_id": str(doc["id"])}


TASK = TaskDef(
    leaderboard="ja_leaderboard_marc_ja",
    leaderboard_metric="acc",
    hf_row=hf_row,
    sources=jglue_sources("MARC-ja", "validation"),
    withdrawn=(
        "MARC-ja is built from the Amazon Multilingual Reviews corpus, whose download "
        "(s3://amazon-reviews-pds) was withdrawn in 2023, so the JGLUE loader cannot rebuild it, and its fallback, "
        "the Hub's Parquet export, is gone too; evaluate without it (the average is then not the JP-8 average) or "
        "point eval.data.marc_ja at a copy you hold (sentence, label, review_id)"
    ),
    name="marc_ja",
    variants={"1.1": Variant(PROMPTS)},
    default_variant="1.1",
    base_prompt="0.2",
    shots=3,
    kind="mc",
    metric="acc",
    chance=50.0,
    load_eval=load,
    load_fewshot=load,
)
