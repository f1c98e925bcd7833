"""JSQuAD (``jsquad-1.1-*``, ``jsquad-1.2-*`` with the title): extractive QA by greedy generation,
scored by exact match / MeCab-token F1 against every reference (protocol 4.1, 6.1).

Data: SQuAD-v1.1-style JSON ``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``,
questions taken in article -> paragraph -> qa order; ``eval`` = JGLUE ``valid-v1.x.json``,
``fewshot`` = ``train-v1.x.json`` (JGLUE ``test-v1.3.json`` is the stand-in pool when train is absent).
Or the rows ``shunk031/JGLUE`` yields in that same order (``id, title, context, question,
answers{text, answer_start}``; Parquet or JSON Lines, as ``youri eval --download`` writes them).
"""

from __future__ import annotations

import json
from pathlib import Path

from youri.eval.tasks.base import ALPACA, LLAMA2_SYS, Prompt, TaskDef, Variant, jglue_sources, read_records
from youri.io import DataError, read_json

EXTRACT = "与えられた文脈から、質問に対する答えを抜き出してください。"


def load(path: str) -> list[dict]:
    """JGLUE's SQuAD JSON, or the Hub's flat rows (one question per record, as ``shunk031/JGLUE`` yields them)."""
    if not Path(path).is_file():
        raise DataError(f"data file not found: {path}")
    if Path(path).suffix.lower() in (".parquet", ".csv", ".jsonl") or not _is_squad_object(path):
        return _load_rows(path)
    root = read_json(path)
    docs = []
    articles = root.get("data") if isinstance(root, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{path}: expected a SQuAD-style object with a 'data' list")
    for i, article in enumerate(articles):
        for j, para in enumerate(_field(article, "paragraphs", list, f"{path}: data[{i}]")):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            context = _field(para, "context", str, where)
            for k, qa in enumerate(_field(para, "qas", list, where)):
                at = f"{where}.qas[{k}]"
                answers = [_field(a, "text", str, f"{at}.answers") for a in _field(qa, "answers", list, at)]
                if not answers:
                    raise DataError(f"{at}: field 'answers' is empty")
                docs.append(
                    {
                        "id": _field(qa, "id", str, at),
                        "title": _field(article, "title", str, f"{path}: data[{i}]"),
                        "context": context,
                        "question": _field(qa, "question", str, at),
                        "answers": answers,
                    }
                )
    if not docs:
        raise DataError(f"{path}: no questions")
    return docs


def _is_squad_object(path: str) -> bool:
    """One JSON object with a ``data`` list (JGLUE's files) rather than JSON Lines."""
    with open(path, "rb") as handle:
        first = handle.readline()
    try:
        record = json.loads(first)
    except ValueError:  # the object spans lines: a pretty-printed SQuAD file
        return True
    return isinstance(record, dict) and "data" in record


def _load_rows(path: str) -> list[dict]:
    """``{id, title, context, question, answers: {text: [...], answer_start: [...]}}`` per record, file order."""
    docs = []
    for row, record in read_records(
        path, {"id": str, "title": str, "context": str, "question": str, "answers": (dict, list)}
    ):
        answers = record["answers"]
        texts = (
            answers.get("text")
            if isinstance(answers, dict)
            else [a.get("text") if isinstance(a, dict) else None for a in answers]
        )
        if not texts or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}:{row}: field 'answers' must hold a non-empty list of answer texts")
        docs.append(
            {
                "id": record["id"],
                "title": record["title"],
                "context": record["context"],
                "question": record["question"],
                "answers": list(texts),
            }
        )
    return docs


def _field(obj, name: str, kind: type, where: str):
    if not isinstance(obj, dict) or name not in obj:
        raise DataError(f"{where}: missing field '{name}'")
    if not isinstance(obj[name], kind):
        raise DataError(f"{where}: field '{name}' must be {kind.__name__}, got {type(obj[name]).__name__}")
    return obj[name]


def paragraph(doc: dict) -> str:
    return doc["context"].split("[SEP]")[-1].strip()


def answer0(doc: dict) -> str:
    return doc["answers"][0]


def extraction_prompts(context) -> dict[str, Prompt]:
    """Prompt versions 0.3-0.6 shared by JSQuAD and JAQKET v2; ``context(doc, newline)`` renders 文脈."""
    return {
        "0.3": Prompt(
            "0.3",
            ALPACA,
            lambda d: (
                f"### 指示:\n{EXTRACT}\n\n### 入力:\n文脈：{context(d, chr(10))}\n質問：{d['question']}\n\n### 応答:\n"
            ),
            answer0,
            "\n\n",
        ),
        "0.4": Prompt(
            "0.4",
            f"ユーザー: {EXTRACT}<NL>システム: 分かりました。<NL>",
            lambda d: f"ユーザー: 文脈：{context(d, '<NL>')}<NL>質問：{d['question']}<NL>システム: ",
            answer0,
            "<NL>",
            sep="<NL>",
        ),
        "0.5": Prompt(
            "0.5",
            f"ユーザー: {EXTRACT}\nシステム: 分かりました。\n",
            lambda d: f"ユーザー: 文脈：{context(d, chr(10))}\n質問：{d['question']}\nシステム: ",
            answer0,
            "\n",
        ),
        "0.6": Prompt(
            "0.6",
            LLAMA2_SYS,
            lambda d: f"{EXTRACT}\n\n文脈：{context(d, chr(10))}\n質問：{d['question']} [/INST] ",
            answer0,
            " </s><s>[INST] ",
        ),
    }


def _v11() -> dict[str, Prompt]:
    return {
        "0.1": Prompt(
            "0.1",
            "[題名]と[問題]から[質問]に対する[答え]を抜き出しなさい\n\n",
            lambda d: f"[題名]:{d['title']}\n[問題]:{paragraph(d)}\n[質問]:{d['question']}\n[答え]:",
            answer0,
            "\n\n",
        ),
        "0.2": Prompt(
            "0.2",
            "質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n",
            lambda d: f"文章:{paragraph(d)}\n質問:{d['question']}\n回答:",
            answer0,
            "\n\n",
        ),
        **extraction_prompts(lambda d, nl: paragraph(d)),
    }


def _v12() -> dict[str, Prompt]:  # 1.2 adds the title to the context
    return {
        "0.2": Prompt(
            "0.2",
            "質問に対する回答を題名と文章から一言で抽出してください。回答は名詞で答えてください。\n\n",
            lambda d: f"題名:{d['title']}\n文章:{paragraph(d)}\n質問:{d['question']}\n回答:",
            answer0,
            "\n\n",
        ),
        **extraction_prompts(lambda d, nl: f"{d['title']}{nl}{paragraph(d)}"),
    }


def answer_budget(doc: dict, token_len) -> int:
    """hf-causal's per-request cap: the longest reference answer in LM tokens (DYNAMIC_MAX_LENGTH)."""
    return max(token_len(a) for a in doc["answers"])


def hf_row(doc: dict) -> dict:
    return {
        "id": doc["id"],
        "title": doc["title"],
        "context": doc["context"],
        "question": doc["question"],
        "answers": {"text": doc["answers"], "answer_start": [-1] * len(doc["answers"])},
    }


TASK = TaskDef(
    leaderboard="ja_leaderboard_jsquad",
    leaderboard_metric="exact_match",
    hf_row=hf_row,
    sources=jglue_sources("JSQuAD", "validation"),
    name="jsquad",
    variants={"1.1": Variant(_v11()), "1.2": Variant(_v12())},
    default_variant="1.1",
    base_prompt="0.1",
    shots=2,
    kind="gen",
    metric="exact_match",
    chance=0.0,
    load_eval=load,
    load_fewshot=load,
    gold=lambda d: list(d["answers"]),
    answer_lengths=answer_budget,
)
