"""JNLI (``jnli-1.3-*`` Japanese label words, stratified few-shot; ``jnli-1.1-*`` English label words,
plain few-shot): 3-way multiple choice over JGLUE JSON Lines (protocol 3.2).

Data: ``eval`` = JGLUE ``valid-v1.x.json`` (v1.1 labels for the 2023 ``jnli-1.1`` results),
``fewshot`` = ``train-v1.x.json``. Without the train split, JGLUE ``test-v1.3.json`` is the stand-in
pool the reference vectors use (description, doc order, query and continuations stay exact).
Fields ``sentence_pair_id``, ``sentence1``, ``sentence2``, ``label`` (name or index).
"""

from __future__ import annotations

from dataclasses import replace

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, Prompt, TaskDef, Variant, jglue_sources, label_index, read_records

LABELS = ["entailment", "contradiction", "neutral"]  # the dataset's ClassLabel order -> gold index
META_SYS = (
    "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as "
    "possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, "
    "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and "
    "positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain "
    "why instead of answering something not correct. If you don't know the answer to a question, please "
    "don't share false information.\n<</SYS>>\n\n"
)
FIELDS = {"sentence_pair_id": (str, int), "sentence1": str, "sentence2": str, "label": (str, int)}


def load(path: str) -> list[dict]:
    return [
        {
            "id": r["sentence_pair_id"],
            "premise": r["sentence1"],
            "hypothesis": r["sentence2"],
            "gold": label_index(r["label"], LABELS, f"{path}:{lineno}: field 'label'"),
        }
        for lineno, r in read_records(path, FIELDS)
    ]


def prompts(choices: list[str], system_06: str) -> dict[str, Prompt]:
    a, b, c = choices
    target = lambda d: choices[d["gold"]]  # noqa: E731
    table = {
        "0.2": Prompt(
            "0.2",
            f"前提と仮説の関係を{a}、{b}、{c}の中から回答してください。\n\n制約:\n"
            f"- 前提から仮説が、論理的知識や常識的知識を用いて導出可能である場合は{a}と出力\n"
            f"- 前提と仮説が両立しえない場合は{b}と出力\n- そのいずれでもない場合は{c}と出力\n\n",
            lambda d: f"前提:{d['premise']}\n仮説:{d['hypothesis']}\n関係:",
            target,
            "\n\n",
        ),
        "0.3": Prompt(
            "0.3",
            ALPACA,
            lambda d: (
                f"### 指示:\n与えられた前提と仮説の関係を回答してください。\n\n出力は以下から選択してください："
                f"\n{a}\n{b}\n{c}\n\n### 入力:\n前提：{d['premise']}\n仮説：{d['hypothesis']}"
                "\n\n### 応答:\n"
            ),
            target,
            "\n\n",
        ),
        "0.4": Prompt(
            "0.4",
            f"ユーザー: 与えられた前提と仮説の関係を回答してください。出力は以下から選択してください："
            f"<NL>{a}<NL>{b}<NL>{c}<NL>システム: 分かりました。<NL>",
            lambda d: f"ユーザー: 前提：{d['premise']}<NL>仮説：{d['hypothesis']}<NL>システム: ",
            target,
            "<NL>",
            sep="<NL>",
        ),
        "0.5": Prompt(
            "0.5",
            f"ユーザー: 与えられた前提と仮説の関係を回答してください。出力は以下から選択してください："
            f"\n{a}\n{b}\n{c}\nシステム: 分かりました。\n",
            lambda d: f"ユーザー: 前提：{d['premise']}\n仮説：{d['hypothesis']}\nシステム: ",
            target,
            "\n",
        ),
        "0.6": Prompt(
            "0.6",
            system_06,
            lambda d: (
                f"与えられた前提と仮説の関係を回答してください。\n\n出力は以下から選択してください："
                f"\n{a}\n{b}\n{c}\n\n前提：{d['premise']}\n仮説：{d['hypothesis']} [/INST] "
            ),
            target,
            " </s><s>[INST] ",
        ),
    }
    return {name: replace(p, choices=tuple(choices)) for name, p in table.items()}


JA_CHOICES = ["含意", "矛盾", "中立"]


def hf_row(doc: dict) -> dict:
    return {
        "sentence_pair_id": str(doc["id"]),
        "sentence1": doc["premise"],
        "sentence2": doc["hypothesis"],
        "label": doc["gold"],
    }


TASK = TaskDef(
    leaderboard="ja_leaderboard_jnli",
    leaderboard_metric="acc",
    hf_row=hf_row,
    sources=jglue_sources("JNLI", "validation"),
    name="jnli",
    variants={
        "1.3": Variant(prompts(JA_CHOICES, LLAMA2_SYS), stratified=True),
        "1.1": Variant(prompts(LABELS, META_SYS)),
    },
    default_variant="1.3",
    base_prompt="0.2",
    shots=3,
    kind="mc",
    metric="acc",
    chance=100 / 3,
    load_eval=load,
    load_fewshot=load,
    doc_id=lambda d: d["id"],
)
