"""Document and scoring functions of youri's jp-stable lm-eval tasks (referenced by the YAML files).

Documents are the records of ``youri eval --write_requests`` (one per line: ``prompt``,
``continuations``, ``gold`` ...). Per-document values are 0-1; youri reports them x100.
"""

from __future__ import annotations

import numpy as np

from youri.eval import metrics as jp_metrics


def doc_to_text(doc: dict) -> str:
    return doc["prompt"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["continuations"])


def doc_to_target(doc: dict):
    gold = doc["gold"]
    return gold if isinstance(gold, int) else str(gold)


def process_mc(doc: dict, results) -> dict[str, float]:
    """``acc``: first maximum wins (NumPy argmax); ``acc_norm``: divided by the choice's character count."""
    lls = np.array([ll for ll, _ in results])
    lengths = np.array([float(len(c)) for c in doc["continuations"]])
    return {"acc": float(np.argmax(lls) == doc["gold"]), "acc_norm": float(np.argmax(lls / lengths) == doc["gold"])}


def process_balanced_mc(doc: dict, results) -> dict:
    """JNLI and MARC-ja (the harness's ``BalancedMultipleChoiceTask``): also the per-document items of
    ``balanced_acc`` ``(acc, gold)``, ``mcc`` and ``macro_f1`` ``(gold, pred)``."""
    out = process_mc(doc, results)
    pred = int(np.argmax(np.array([ll for ll, _ in results])))
    return {
        **out,
        "balanced_acc": (out["acc"], doc["gold"]),
        "mcc": (doc["gold"], pred),
        "macro_f1": (doc["gold"], pred),
    }


def balanced_mean(items) -> float:
    return jp_metrics.balanced_mean(items)


def macro_f1(items) -> float:
    return jp_metrics.macro_f1(items)


def process_winograd(doc: dict, results) -> dict[str, float]:
    """The harness compares the two ``(loglikelihood, is_greedy)`` pairs: on equal log-likelihoods the
    sentence that is the greedy continuation wins; a full tie scores 0."""
    gold = doc["gold"]
    pairs = [(float(ll), bool(greedy)) for ll, greedy in results]
    return {"acc": float(pairs[gold] > pairs[1 - gold])}


def process_gen(doc: dict, results) -> dict[str, float]:
    completion = results[0]
    name = doc["task"].split("-")[0]
    if name == "mgsm":
        return {"acc": float(jp_metrics.mgsm_extract(completion) == doc["gold"])}
    if name == "xlsum_ja":
        # (P, R, F): the harness aggregates all three with one bootstrap (metrics.rouge2_bootstrap)
        return {"rouge2": jp_metrics.rouge2_score(doc["gold"], completion, jp_metrics.rouge_tokenizer())}
    return {
        "exact_match": jp_metrics.exact_match(completion, doc["gold"]),
        "f1": jp_metrics.mecab_f1(completion, doc["gold"]),
    }
