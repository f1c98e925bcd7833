"""The jp-stable prompt machinery shared by every JP-8 task: prompts, few-shot draws, request rendering.

This is the one place where the Stability-AI ``jp-stable`` harness's prompt assembly is reproduced
(``../shared/specs/jp-eval-protocol.md`` sections 2 and 5). lm-eval cannot do it by itself: its
few-shot sampler draws from a per-task RNG in *dataset* order with its own seed and delimiters, while
jp-stable shuffles the scored docs with ``random.Random(42)`` and then draws every doc's shots from
that *same* RNG object, doc after doc (so doc *i*'s shots depend on all earlier draws, over-length
retries included). youri therefore renders each document's full context string here and hands
lm-eval zero-shot documents whose text *is* that string (see ``youri.eval.lm_eval_bridge``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from youri.eval.tasks.formats import iter_rows
from youri.io import DataError

# Literals shared by many prompt versions: the Alpaca-ja preamble (0.3) and the Llama 2 system turn (0.6).
ALPACA = "以下は、タスクを説明する指示と、文脈のある入力の組み合わせです。要求を適切に満たす応答を書きなさい。\n\n"
LLAMA2_SYS = "<s>[INST] <<SYS>>\nあなたは役立つアシスタントです。\n<</SYS>>\n\n"

Doc = dict[str, Any]
TokenLen = Callable[[str], int]  # number of LM tokens of a string, no special tokens


@dataclass(frozen=True)
class Prompt:
    """One prompt version of one task (a harness class): the strings that make the context."""

    version: str  # the prompt version as reported (e.g. "0.3")
    description: str
    doc_to_text: Callable[[Doc], str]
    doc_to_target: Callable[[Doc], str]
    fewshot_sep: str
    sep: str = "\n"  # the class's SEP: generation stop for JSQuAD/JAQKET/XLSum
    choices: tuple[str, ...] = ()  # fixed continuations (JNLI, MARC-ja); else TaskDef.continuations(doc)
    length_rule: str | None = None  # overrides the variant's rule (an older commit's prompt)


@dataclass(frozen=True)
class Variant:
    """A task VERSION (``jnli-1.3``): its prompt versions and how it draws few-shot examples."""

    prompts: dict[str, Prompt]
    stratified: bool = False  # JNLI 1.3: few-shot drawn per label (protocol 2.3)
    length_rule: str = ""  # "", "fewer_shots" (MGSM/JAQKET 0.2 HEAD), "xlsum", "drop_earliest"


PARQUET_EXPORT = "refs/convert/parquet"  # the Hub's Parquet export of a dataset (youri.eval.download)


@dataclass(frozen=True)
class Source:
    """Where a task's splits live on the Hugging Face Hub: ``splits`` maps split -> glob of its file(s)."""

    repo: str
    revision: str
    splits: dict[str, str]


def jglue_sources(config: str, split: str) -> tuple[Source, ...]:
    """A JGLUE task's splits in the Hub's Parquet export of ``shunk031/JGLUE`` (its loader is a script)."""
    return (Source("shunk031/JGLUE", PARQUET_EXPORT, {"train": f"{config}/*train*", split: f"{config}/*{split}*"}),)


@dataclass(frozen=True)
class TaskDef:
    """A JP-8 task, every fact of it in one place: data loading, request type, metric, prompt variants, its
    lm-eval ``japanese_leaderboard`` twin (task name, metric, Hugging Face row layout) and its Hub sources."""

    name: str  # harness name, e.g. "jcommonsenseqa"
    variants: dict[str, Variant]  # task VERSION -> variant
    default_variant: str
    base_prompt: str  # what the bare harness name resolves to (base models)
    shots: int  # the ja8 standard shot count
    kind: str  # "mc", "gen" or "winograd"
    metric: str  # the metric that enters the average
    chance: float  # chance level of that metric, in percent
    load_eval: Callable[[str], list[Doc]]
    load_fewshot: Callable[[str], list[Doc]] | None
    continuations: Callable[[Doc], list[str]] | None = None
    gold: Callable[[Doc], Any] = lambda doc: doc["gold"]
    doc_id: Callable[[Doc], Any] = lambda doc: doc.get("id")
    stop: Callable[[Prompt, Any], list[str]] | None = None
    answer_lengths: Callable[[Doc, TokenLen], int] | None = None  # hf-causal per-request cap
    data_keys: tuple[str, ...] = ("eval", "fewshot")
    split: str = "validation"
    leaderboard: str = ""  # lm-eval's japanese_leaderboard task of the same data (youri.eval.leaderboard)
    leaderboard_metric: str = "acc"  # the metric that task reports as its score
    hf_row: Callable[[Doc], dict[str, Any]] | None = None  # a loaded doc in the Hugging Face dataset's fields
    sources: tuple[Source, ...] = ()  # Hub sources tried in order by `youri eval --download`
    withdrawn: str = ""  # why the sources may be gone and what to do instead (said when a download fails)


@dataclass
class RenderOptions:
    """What the tokenizer-dependent rules need; ``token_len=None`` disables them (no tokenizer given)."""

    token_len: TokenLen | None = None
    max_length: int = 4096
    max_gen_toks: int = 256
    eos_token: str = "</s>"
    decode_prefix: Callable[[str, int], str] | None = None  # XLSum: decode(enc(s)[:n])
    stats: dict[str, int] = field(default_factory=dict)


class FewshotSampler:
    """``rnd.sample(pool, k)``, or JNLI 1.3's stratified draw, from one shared ``random.Random``."""

    def __init__(self, pool: Sequence[Doc], rnd: random.Random, target: Callable[[Doc], str], stratified: bool):
        self.pool = list(pool)
        self.rnd = rnd
        self.stratified = stratified
        self.groups: dict[str, list[Doc]] = {}
        if stratified:
            for doc in self.pool:  # first-occurrence order of strata, pool order inside each
                self.groups.setdefault(target(doc), []).append(doc)

    def draw(self, k: int) -> list[Doc]:
        if k > len(self.pool):
            raise DataError(f"few-shot pool has {len(self.pool)} examples, {k} requested")
        if not self.stratified:
            return self.rnd.sample(self.pool, k)
        names = list(self.groups)
        counts = [int(len(self.groups[t]) / len(self.pool) * k) for t in names]
        while sum(counts) < k:
            counts[counts.index(min(counts))] += 1
        shots: list[Doc] = []
        for name, n in zip(names, counts):
            shots += self.rnd.sample(self.groups[name], n)
        self.rnd.shuffle(shots)
        return shots


def fewshot_context(prompt: Prompt, doc: Doc, k: int, sampler: FewshotSampler | None) -> str:
    """``Task.fewshot_context`` of jp-stable (protocol 2.4): targets glued to texts with no delimiter."""
    if k == 0:
        return prompt.description + prompt.doc_to_text(doc)
    assert sampler is not None
    shots = sampler.draw(k)
    body = prompt.fewshot_sep.join(prompt.doc_to_text(ex) + prompt.doc_to_target(ex) for ex in shots)
    return prompt.description + body + prompt.fewshot_sep + prompt.doc_to_text(doc)


def build_context(
    task: TaskDef,
    variant: Variant,
    prompt: Prompt,
    doc: Doc,
    k: int,
    sampler: FewshotSampler | None,
    opts: RenderOptions,
) -> str:
    """One document's context, applying the variant's over-length rule when a tokenizer is known."""
    rule = variant.length_rule if prompt.length_rule is None else prompt.length_rule
    if rule == "fewer_shots" and opts.token_len is not None:
        budget = opts.max_length - _gen_budget(task, doc, opts)
        for n in range(k, -1, -1):  # a fresh draw per attempt, as the harness does (extra RNG draws)
            ctx = fewshot_context(prompt, doc, n, sampler)
            if opts.token_len(ctx) <= budget:
                if n < k:
                    opts.stats["fewer_shots"] = opts.stats.get("fewer_shots", 0) + 1
                return ctx
        # Even 0-shot is too long: the harness returns an error object here; we keep the 0-shot
        # context and let the model's left truncation apply (counted in the stats).
        opts.stats["overlong_zero_shot"] = opts.stats.get("overlong_zero_shot", 0) + 1
        return ctx
    ctx = fewshot_context(prompt, doc, k, sampler)
    if rule == "drop_earliest" and opts.token_len is not None:
        budget = opts.max_length - opts.max_gen_toks
        while opts.token_len(ctx) > budget:
            head, *parts = ctx.split("問題：")
            if len(parts) < 2:
                raise DataError(
                    f"{task.name}: context over {budget} tokens and no example left to drop "
                    "(the pre-a4565e7 harness raises here too)"
                )
            ctx = "問題：".join([head] + parts[1:])
    if rule == "xlsum" and opts.token_len is not None:
        ctx = xlsum_truncate(ctx, prompt, opts.max_length - _gen_budget(task, doc, opts), opts)
    return ctx


def _gen_budget(task: TaskDef, doc: Doc, opts: RenderOptions) -> int:
    if task.answer_lengths is not None and opts.token_len is not None:
        return task.answer_lengths(doc, opts.token_len)
    return opts.max_gen_toks


# XLSum piece/summary markers per prompt version (protocol 5.4).
XLSUM_MARKERS = {
    "0.0": ("ニュース記事:", "要約:"),
    "0.3": ("### 指示:\n与えられたニュース記事を要約してください。\n\n### 入力:\n", "### 応答:\n"),
    "0.4": ("ユーザー: ", "<NL>システム: "),
    "0.5": ("ユーザー: ", "\nシステム: "),
    "0.6": ("与えられたニュース記事を要約してください。\n\n", " [/INST] "),
}


def xlsum_truncate(ctx: str, prompt: Prompt, budget: int, opts: RenderOptions) -> str:
    """``XLSumJa.preprocess_ctx``: shorten every piece's article to its share of ``budget`` tokens."""
    token_len = opts.token_len
    assert token_len is not None
    if token_len(ctx) <= budget:
        return ctx
    opts.stats["xlsum_truncated"] = opts.stats.get("xlsum_truncated", 0) + 1
    piece_start, summary_start = XLSUM_MARKERS[prompt.version]
    pieces = [piece_start + c for c in ctx.split(piece_start)]
    description = ""
    if summary_start not in pieces[0]:
        description = pieces[0].replace(piece_start, "")
        pieces = pieces[1:]
    per = budget // len(pieces)
    out = description
    for piece in pieces:
        text, summary = piece.split(summary_start)
        kept: list[str] = []
        for sentence in text.split("。"):
            if token_len("。".join(kept + [sentence])) <= per:
                kept.append(sentence)
                continue
            if kept:
                kept[-1] = kept[-1] + "。" + prompt.sep
            else:
                assert opts.decode_prefix is not None
                kept.append(opts.decode_prefix(sentence, per) + prompt.sep)
            break
        out += "。".join(kept) + summary_start + summary
    if prompt.version == "0.4":
        out = out.replace("<NL><NL>", "<NL>")
    return out


def render(
    task: TaskDef,
    variant_name: str,
    prompt_name: str,
    docs: list[Doc],
    pool: list[Doc] | None,
    shots: int,
    limit: int | None,
    opts: RenderOptions,
) -> list[dict[str, Any]]:
    """Every request of one task, in evaluation order, as vector-schema records."""
    variant = task.variants[variant_name]
    prompt = variant.prompts[prompt_name]
    rnd = random.Random()
    rnd.seed(42)
    order = list(range(len(docs)))
    rnd.shuffle(order)  # the doc shuffle and every few-shot draw share this one RNG (protocol 2.2)
    sampler = None
    if shots > 0:
        if not pool:
            raise DataError(f"{task.name}: {shots}-shot needs a few-shot pool (data key 'fewshot')")
        sampler = FewshotSampler(pool, rnd, prompt.doc_to_target, variant.stratified)
    key = task_key(task, variant_name, prompt_name)
    records = []
    for index, row in enumerate(order[:limit] if limit else order):
        doc = docs[row]
        record: dict[str, Any] = {
            "task": key,
            "version": prompt.version,
            "doc_index": index,
            "doc_id": task.doc_id(doc),
            "source_row": row,
        }
        if task.kind == "winograd":
            record.update(prompt="", contexts=["", ""], continuations=task.continuations(doc))
        else:
            record["prompt"] = build_context(task, variant, prompt, doc, shots, sampler, opts)
            if task.kind == "mc":
                record["continuations"] = list(prompt.choices) or task.continuations(doc)
        record["gold"] = task.gold(doc)
        if task.kind == "gen":
            record["stop_sequences"] = task.stop(prompt, opts) if task.stop else [prompt.sep]
            record["max_new_tokens"] = _gen_budget(task, doc, opts)
        records.append(record)
    return records


def task_key(task: TaskDef, variant_name: str, prompt_name: str) -> str:
    if not prompt_name:
        return task.name
    return f"{task.name}-{variant_name}-{prompt_name}"


# ----------------------------------------------------------------------------- data helpers


def read_records(path: str, fields: dict[str, type | tuple[type, ...]]) -> list[tuple[int, Doc]]:
    """``(position, record)`` of a JSON Lines, JSON array, CSV or Parquet file (``formats.iter_rows``), each
    checked to hold ``fields`` of the given types."""
    out = []
    for lineno, record in iter_rows(path):
        for name, kind in fields.items():
            if name not in record:
                present = ", ".join(sorted(record)) or "none"
                raise DataError(f"{path}:{lineno}: missing field '{name}' (fields present: {present})")
            if not isinstance(record[name], kind) or isinstance(record[name], bool):
                want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
                raise DataError(f"{path}:{lineno}: field '{name}' must be {want}, got {type(record[name]).__name__}")
        out.append((lineno, record))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def label_index(value: Any, labels: Sequence[str], where: str) -> int:
    """A label given as its name (``"neutral"``) or its 0-based ClassLabel index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    if isinstance(value, str) and value in labels:
        return list(labels).index(value)
    raise DataError(f"{where}: label {value!r} is not one of {list(labels)} (or their index)")
