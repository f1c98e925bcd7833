"""JP-8 metrics exactly as the jp-stable harness computes them (protocol section 6).

- ``normalize``: emoji removal, ``neologdn.normalize``, whitespace collapsing (``lm_eval/jasquad``);
  no lower-casing and no punctuation removal.
- ``exact_match`` / ``mecab_f1``: JSQuAD and JAQKET v2, max over all references; F1 over
  ``fugashi`` (``-Owakati``, unidic-lite) tokens with punctuation tokens dropped.
- ``rouge2``: XL-Sum-ja. The harness *intends* MeCab but, because the task sets
  ``LOAD_TOKENIZER = True``, really scores with **the evaluated model's tokenizer** pieces and no
  normalisation; ``rouge2(..., tokenizer=hf_tokenizer)`` reproduces that (the default of ``youri
  eval``), ``MecabTokenizer()`` is the named alternative (``rouge2_tokenizer: mecab``). Aggregation
  as the harness's ``rouge2_mecab``: ``rouge_score``'s ``BootstrapAggregator`` (1,000 resamples from
  NumPy's global RNG, seeded 1234 by ``simple_evaluate``), the median F of the resampled means.
- ``balanced_mean`` / ``macro_f1``: JNLI and MARC-ja's ``balanced_acc`` and ``macro_f1``
  (``lm_eval/metrics.py``); their ``mcc`` is lm-eval's ``matthews_corrcoef`` aggregation, the same
  sklearn call, and lm-eval bootstraps its stderr exactly as the harness does.
- ``mgsm_extract``: the last ASCII number of a completion, integral values only.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any, Sequence

import emoji
import neologdn
import numpy as np
from fugashi import Tagger
from rouge_score import rouge_scorer, scoring
from sklearn.metrics import f1_score

_EMOJI_RANGES = re.compile(
    "[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff\U00002702-\U000027b0]+",
    flags=re.UNICODE,
)
PUNCTUATION = set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
    + string.punctuation
)
_NUMBER = re.compile(r"(\-?[0-9\.\,]+)")


def normalize(text: str) -> str:
    """The JaSQuAD answer normalisation: emoji out, neologdn, single spaces."""

    text = "".join("" if emoji.is_emoji(c) else c for c in text)
    text = _EMOJI_RANGES.sub("", text)
    text = neologdn.normalize(text)
    return " ".join(text.split())


@lru_cache(maxsize=1)
def _tagger():

    return Tagger("-Owakati")


def mecab_tokens(text: str) -> list[str]:
    """MeCab (unidic-lite) word tokens of the normalised text."""
    return _tagger().parse(normalize(text)).split()


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference."""
    pred = normalize(prediction)
    return float(any(pred == normalize(ref) for ref in references))


def mecab_f1(prediction: str, references: Sequence[str]) -> float:
    """Token F1 over MeCab tokens with punctuation tokens dropped, max over the references."""
    pred = [t for t in mecab_tokens(prediction) if t not in PUNCTUATION]
    best = 0.0
    for ref in references:
        gold = [t for t in mecab_tokens(ref) if t not in PUNCTUATION]
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


class MecabTokenizer:
    """The tokenizer the harness's XLSum task was *meant* to use (``rouge2_tokenizer: mecab``)."""

    def tokenize(self, text: str) -> list[str]:
        return mecab_tokens(text)


class _Pieces:
    """Adapter: an HF tokenizer's ``tokenize`` pieces, unnormalised, as the harness really scored."""

    def __init__(self, hf_tokenizer: Any):
        self.hf_tokenizer = hf_tokenizer

    def tokenize(self, text: str) -> list[str]:
        return self.hf_tokenizer.tokenize(text)


def rouge2_score(reference: str, prediction: str, tokenizer: Any) -> tuple[float, float, float]:
    """ROUGE-2 ``(precision, recall, F)`` of one document; ``tokenizer``: an HF tokenizer or ``MecabTokenizer``."""
    if not isinstance(tokenizer, MecabTokenizer):
        tokenizer = _Pieces(tokenizer)
    score = rouge_scorer.RougeScorer(["rouge2"], tokenizer=tokenizer).score(reference, prediction)["rouge2"]
    return score.precision, score.recall, score.fmeasure


def rouge2_bootstrap(scores: Sequence[Sequence[float]]) -> float:
    """XL-Sum's aggregate: ``BootstrapAggregator().aggregate()["rouge2"].mid.fmeasure`` over per-document
    ``(P, R, F)``, drawing from NumPy's global RNG seeded 1234 as the harness's run does (state restored)."""
    state = np.random.get_state()
    np.random.seed(1234)
    try:
        aggregator = scoring.BootstrapAggregator()
        for precision, recall, fmeasure in scores:
            aggregator.add_scores({"rouge2": scoring.Score(precision, recall, fmeasure)})
        return float(aggregator.aggregate()["rouge2"].mid.fmeasure)
    finally:
        np.random.set_state(state)


def balanced_mean(items: Sequence[tuple[float, Any]]) -> float:
    """Mean over gold classes of each class's accuracy; ``items``: ``(acc, gold)`` per document."""
    by_class: dict[Any, list[float]] = {}
    for acc, label in items:
        by_class.setdefault(label, []).append(acc)
    return sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)


def macro_f1(items: Sequence[tuple[int, int]]) -> float:
    """sklearn's macro-averaged F1 over ``(gold, pred)`` per document."""
    golds, preds = zip(*items)
    return float(f1_score(golds, preds, average="macro"))


def rouge2(reference: str, prediction: str, tokenizer: Any) -> float:
    """ROUGE-2 F of one document with ``rouge_score``; ``tokenizer`` is an HF tokenizer or ``MecabTokenizer``."""
    return rouge2_score(reference, prediction, tokenizer)[2]


# XL-Sum's ROUGE-2 tokenizer for the current run. lm-eval's process_results has no handle on the LM,
# so ``youri eval`` sets the evaluated model's tokenizer (or ``MecabTokenizer()``) here before a run.
_ROUGE_TOKENIZER: list[Any] = [None]


def set_rouge_tokenizer(tokenizer: Any) -> None:
    _ROUGE_TOKENIZER[0] = tokenizer


def rouge_tokenizer() -> Any:
    if _ROUGE_TOKENIZER[0] is None:
        raise RuntimeError("ROUGE-2 needs a tokenizer: call jp_metrics.set_rouge_tokenizer first")
    return _ROUGE_TOKENIZER[0]


def mgsm_extract(completion: str) -> int | None:
    """The last number in ``completion`` (commas removed, dots stripped) if integral, else ``None``."""
    matches = _NUMBER.findall(completion)
    if not matches:
        return None
    try:
        value = float(matches[-1].strip(".").replace(",", ""))
    except ValueError:
        return None
    return int(value) if value.is_integer() else None
