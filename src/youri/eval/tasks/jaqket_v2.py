"""JAQKET v2 (``jaqket_v2-0.2-*``, HEAD; ``jaqket_v2-0.1-*``, the 2023 results): open-domain QA over
five retrieved passages by greedy generation, exact match / F1 (protocol 4.2, 5.5, 6.1).

Data (not in the shared folder; ``youri eval --download`` fetches it): the files the ``kumapo/JAQKET``
loader reads, ``train_jaqket_59.350.json`` (``fewshot``) and ``dev_jaqket_59.350.json`` (``eval``, the
harness's validation split) -- one JSON array each, or the same records as JSON Lines: ``qid``,
``question``, ``answers`` (list of strings), ``ctxs`` (list of ``{id, title, text, score, has_answer}``).
As the loader does with the harness's ``num_contexts=5``, the first five passages are kept (fewer are
used as they are) and questions with no answer-bearing passage among them are dropped; file order is
kept. The Hugging Face form (``answers: {text: [...]}``, ``ctxs`` as a mapping of lists) is accepted too.

0.2 at HEAD (``9999d17``) lowers the shot count while the context exceeds ``max_length`` minus the
longest answer; the ``5921154`` era's answer-passage-only examples are not reproduced.
"""

from __future__ import annotations

from youri.eval.tasks.base import Prompt, Source, TaskDef, Variant, read_records
from youri.eval.tasks.jsquad import answer0, answer_budget, extraction_prompts
from youri.io import DataError

NUM_CONTEXTS = 5


def load(path: str) -> list[dict]:
    docs = []
    for lineno, r in read_records(
        path, {"qid": (str, int), "question": str, "answers": (list, dict), "ctxs": (list, dict)}
    ):
        where = f"{path}:{lineno}"
        answers = r["answers"]["text"] if isinstance(r["answers"], dict) else r["answers"]
        ctxs = _contexts(r["ctxs"], where)[:NUM_CONTEXTS]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: field 'answers' must be a non-empty list of strings")
        if not any(c["has_answer"] for c in ctxs):
            continue  # the loader drops questions without an answer-bearing passage in the top 5
        docs.append(
            {
                "id": r["qid"],
                "question": r["question"],
                "answers": list(answers),
                "titles": [c["title"] for c in ctxs],
                "texts": [c["text"] for c in ctxs],
            }
        )
    if not docs:
        raise DataError(f"{path}: no question has an answer-bearing passage among its first {NUM_CONTEXTS}")
    return docs


def _contexts(ctxs, where: str) -> list[dict]:
    if isinstance(ctxs, dict):  # Hugging Face form: a mapping of parallel lists
        try:
            ctxs = [dict(zip(ctxs, values)) for values in zip(*ctxs.values())]
        except TypeError as err:
            raise DataError(f"{where}: field 'ctxs' must map names to lists") from err
    for i, c in enumerate(ctxs):
        for name in ("title", "text", "has_answer"):
            if not isinstance(c, dict) or name not in c:
                raise DataError(f"{where}: ctxs[{i}] is missing field '{name}'")
    return ctxs


def _texts(doc: dict, nl: str) -> str:
    return nl.join(doc["texts"])


def _prompts(with_06: bool) -> dict[str, Prompt]:
    table = {
        "0.1": Prompt(
            "0.1",
            "[題名]と[問題]から[質問]に対する[答え]を抜き出しなさい\n\n",
            lambda d: (
                "".join(f"[題名]:{t}\n[問題]:{x}\n" for t, x in zip(d["titles"], d["texts"]))
                + f"[質問]:{d['question']}\n[答え]:"
            ),
            answer0,
            "\n\n",
        ),
        "0.2": Prompt(
            "0.2",
            "質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。\n\n",
            lambda d: f"文章:{_texts(d, chr(10))}\n質問:{d['question']}\n回答:",
            answer0,
            "\n\n",
        ),
        **extraction_prompts(_texts),
    }
    if not with_06:
        del table["0.6"]
    return table


def hf_row(doc: dict) -> dict:
    return {
        "qid": str(doc["id"]),
        "question": doc["question"],
        "answers": {"text": doc["answers"], "answer_start": [-1] * len(doc["answers"])},
        "ctxs": {"title": doc["titles"], "text": doc["texts"]},
    }


TASK = TaskDef(
    leaderboard="ja_leaderboard_jaqket_v2",
    leaderboard_metric="exact_match",
    hf_row=hf_row,
    sources=(
        Source("kumapo/JAQKET", "main", {"train": "train_jaqket_59.350.json", "validation": "dev_jaqket_59.350.json"}),
    ),
    name="jaqket_v2",
    variants={"0.2": Variant(_prompts(True), length_rule="fewer_shots"), "0.1": Variant(_prompts(False))},
    default_variant="0.2",
    base_prompt="0.1",
    shots=1,
    kind="gen",
    metric="exact_match",
    chance=0.0,
    load_eval=load,
    load_fewshot=load,
    gold=lambda d: list(d["answers"]),
    answer_lengths=answer_budget,
)
