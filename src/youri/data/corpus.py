"""``youri data`` -- the corpus pipeline: raw Japanese + English text -> packed, sharded training tokens.

Tiny CPU run on the shipped samples (the Llama 2 tokenizer from ../shared, or any HF tokenizer folder)::

    youri data --recipe recipes/demo.yaml --tokenizer ../shared/data/llama2-tokenizer

Bigger machine: parallel datatrove tasks (the output is identical for any task/worker count)::

    youri data --recipe recipes/my.yaml --tasks 64 --workers 16

Steps: (1) a datatrove pipeline (``youri.data.steps``) reads every source, normalises (NFKC with
Japanese care, see ``youri.data.filters``), filters (each drop counted by reason), tokenises without
BOS/EOS and MinHash-sketches every document, in parallel tasks; (2) deterministic single-process
steps here: exact + near dedup across sources in canonical (source, file, record) order, ``val_docs``
held out per language, a seeded mixture to the token budget, packing (EOS after every document, cut
into ``seq_len`` rows) and shard writing in the ``youri.data.shards`` format.

Why the second half is not datatrove: datatrove's tokenizer/shuffler steps write their own format
and shuffle per task, so neither the exact token-budget mixture nor byte-identical, resumable shards
would follow from them. Step (2) only touches arrays of ids, so it stays cheap next to step (1).

Resume: datatrove marks finished tasks (``OUT.partial/datatrove/completions``) and skips them; every
finished shard is recorded with its sha256 in ``OUT.partial/progress.jsonl`` (one appended line per
shard, ``youri.data.shards.ProgressLog``) and is not rewritten when its file still has that hash.

Bad input (a malformed or non-UTF-8 line, a missing field) stops the task that met it and is raised
here as one ``DataError`` line, not as datatrove's logged task failure. The executor's processes die
with ``youri data`` (``kill -9`` included) and a Ctrl-C stops them all (``youri.data.processes``).
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datatrove import executor as executors
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from youri.config import ConfigError, NonNegativeInt, PositiveInt, Seed
from youri.data.filters import Filters, find_duplicates
from youri.data.processes import children_die_with_us, run_in_process_group
from youri.data.shards import FORMAT, INDEX, ProgressLog, shard_is_valid, token_dtype, write_shard
from youri.data.steps import (
    Dedup,
    Normalize,
    QualityFilter,
    ReadSources,
    Source,
    TokenizeSketch,
    load_counts,
    raise_task_errors,
    remember_tokenizer,
    source_files,
)
from youri.io import DataError, atomic_write_json, read_json, resolve_path
from youri.model import load_tokenizer
from youri.stage import StageWriter, check_stage_output

PROGRESS = "progress.jsonl"
STATS = "stats.json"


@dataclass
class Config:
    """``youri data``: sources -> normalised, filtered, deduplicated, mixed, packed token shards."""

    out: str = "runs/data"
    """Output folder (built under OUT.partial, renamed when complete)."""
    tokenizer: str = ""
    """The base model's tokenizer: a HF model/tokenizer folder or a SentencePiece tokenizer.model."""
    seq_len: PositiveInt = 512
    """Tokens per packed training sequence."""
    sources: list[Source] = field(default_factory=list)
    """Input corpora: [{path, lang, weight, kind, text_field, doc_split, name}, ...]."""
    token_budget: NonNegativeInt = 0
    """Training tokens (EOS included) to draw from the mixture; 0 = the corpus' natural size (sum over sources),
    split by the weights -- so a source is up- or down-sampled whenever its weight share differs from its size share."""
    filters: Filters = field(default_factory=Filters)
    """Quality filters."""
    dedup: Dedup = field(default_factory=Dedup)
    """Exact + MinHash near-duplicate removal across sources."""
    val_docs: NonNegativeInt = 16
    """Documents held out per language (after dedup, before mixing) for the val/LANG splits; more when they
    do not fill one sequence (up to half the language's documents); 0 = no validation splits."""
    shard_size: PositiveInt = 1024
    """Sequences per shard file."""
    seed: Seed = 0
    """Seed of the val draw and the mixture; the same seed gives byte-identical shards."""
    skip_bad_records: bool = False
    """Skip (and count in the report) malformed JSONL lines and records without text instead of failing."""
    tasks: PositiveInt = 1
    """datatrove tasks (each reads every ``tasks``-th record); the output does not depend on it."""
    workers: PositiveInt = 1
    """Tasks run at once (local: 1 = in this process, >1 = forkserver worker processes)."""
    executor: Literal["local", "slurm", "ray"] = "local"
    """datatrove executor of the parallel half: local processes, a Slurm job array or a Ray cluster."""
    executor_options: dict[str, Any] = field(default_factory=dict)
    """Extra executor arguments, e.g. {partition: cpu, time: '04:00:00', cpus_per_task: 4, venv_path: ...} (Slurm)."""
    batch_size: PositiveInt = 512
    """Documents per filter/tokenizer batch (tokenizer batches also stop at 128k characters)."""


def run(cfg: Config, *, overwrite: bool = False) -> Path:
    """Run the pipeline; returns the finished output folder (the partial one while cluster tasks still run)."""
    _validate(cfg)
    check_stage_output(cfg.out, "data", overwrite)  # before reading any input
    inputs = [p for s in cfg.sources for p in source_files(s)[0]] + [_tokenizer_input(cfg.tokenizer)]
    started = time.perf_counter()
    # Objects alive before the run (imported libraries: ~220k once torch/transformers are loaded) are kept
    # out of the cyclic GC's full collections while the documents stream through: those collections
    # took 0.16-0.19 s of a 1.3-1.4 s run on the shared corpora (0.015 s frozen). Undone at the end.
    gc.freeze()
    try:
        return _run(cfg, inputs, started, overwrite)
    finally:
        gc.unfreeze()


def _run(cfg: Config, inputs: list[Path], started: float, overwrite: bool) -> Path:
    with StageWriter(cfg.out, stage="data", config=cfg, inputs=inputs, overwrite=overwrite) as stage:
        tokenizer = _prepare_tokenizer(cfg.tokenizer, stage.path / "tokenizer")
        waiting = run_datatrove(cfg, stage.path)
        if waiting:
            print(
                f"youri data: {waiting} of {cfg.tasks} datatrove tasks are still running on the {cfg.executor} "
                f"executor (logs: {stage.path / 'datatrove'}); run the same command again when they finish"
            )
            return stage.path
        docs = load_documents(stage.path / "work")
        stats = source_stats(cfg, load_counts(stage.path / "work"))
        kept, val = select_documents(cfg, docs, stats)
        in_val = np.zeros(len(docs), dtype=bool)
        for picked in val.values():
            in_val[picked] = True
        order = mixture(cfg, docs, np.flatnonzero(kept & ~in_val), stats)
        index = write_shards(cfg, stage.path, tokenizer, docs, order, val, why_short=_why_short(stats))
        finish_stats(stats, docs, kept, in_val)
        atomic_write_json(stage.path / STATS, {"sources": stats, "splits": index["totals"]})
        print_table(stats, index["totals"])
        for scratch in ("work", "datatrove", PROGRESS, "errors"):
            target = stage.path / scratch
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return stage.finish(metrics_of(stats, index["totals"], time.perf_counter() - started))


def _validate(cfg: Config) -> None:
    if not cfg.sources:
        raise DataError("data: no sources; add e.g. sources: [{path: corpus.jsonl, lang: ja, weight: 1}]")
    if not cfg.tokenizer:
        raise DataError("data: no tokenizer; pass --tokenizer PATH (a HF tokenizer folder or tokenizer.model)")
    if any(s.weight < 0 for s in cfg.sources) or not any(s.weight > 0 for s in cfg.sources):
        raise DataError("data: source weights must be >= 0 with at least one > 0")
    if cfg.dedup.num_perm % cfg.dedup.bands:
        raise DataError(
            f"data: dedup.num_perm ({cfg.dedup.num_perm}) must be a multiple of dedup.bands ({cfg.dedup.bands})"
        )


def _tokenizer_input(path: str) -> Path:
    resolved = resolve_path(path)
    if not resolved.exists():
        raise FileNotFoundError(
            f"tokenizer not found: {resolved} (run 'youri init' for the demo's, or pass "
            "--tokenizer PATH: a HF model/tokenizer folder or a tokenizer.model)"
        )
    return resolved.parent if resolved.is_file() else resolved


# Files of a Hugging Face tokenizer folder, copied as they are into the output.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class TokenizerFacts:
    """What packing needs from the tokenizer: the EOS id put after every document, the vocabulary size and
    the BOS id put before every document -- only where the tokenizer's own encoding of a text starts with
    one (Gemma's post-processor; ``add_bos_token``), else None (Llama 2 as transformers 5 loads its
    ``tokenizer.model``, Llama 3's shared tokenizer.json, Qwen: no BOS). See README "Bases"."""

    eos_id: int
    vocab_size: int
    bos_id: int | None = None


def _prepare_tokenizer(path: str, target: Path) -> TokenizerFacts:
    """Put the tokenizer into the output folder (a resumed run finds it there) and read its facts.

    A HF folder with a ``tokenizer.json`` is copied file for file and read with the ``tokenizers``
    library alone: loading it through transformers costs ~0.2 s, a fifth of a small run, for two
    numbers. Anything else (a bare SentencePiece ``tokenizer.model``, a slow-only folder) is loaded by
    ``youri.model.load_tokenizer`` and saved with ``save_pretrained``.
    """
    if not (target / "tokenizer_config.json").is_file():
        source = resolve_path(path)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if source.is_dir() and (source / "tokenizer.json").is_file():
            tmp.mkdir(parents=True)
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
        else:
            load_tokenizer(path).save_pretrained(str(tmp))
        tmp.rename(target)
    facts = tokenizer_facts(target)
    if facts.eos_id is None:
        raise DataError(f"{path}: the tokenizer has no EOS token, which packing puts after every document")
    return facts


def tokenizer_facts(folder: Path) -> TokenizerFacts:
    """EOS id and ``len(tokenizer)`` of a HF tokenizer folder, without transformers when it has a
    ``tokenizer.json`` whose config names the EOS token (equal to the transformers tokenizer's: tested)."""
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    if (folder / "tokenizer.json").is_file() and isinstance(eos, str):
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        remember_tokenizer(folder, backend)  # the in-process tokenise step encodes with this same object
        bos = _leading_id(*(backend.encode(PROBE, add_special_tokens=a).ids for a in (True, False)))
        return TokenizerFacts(backend.token_to_id(eos), backend.get_vocab_size(with_added_tokens=True), bos)

    tokenizer = load_tokenizer(folder)
    remember_tokenizer(folder, tokenizer)
    bos = _leading_id(*(tokenizer(PROBE, add_special_tokens=a)["input_ids"] for a in (True, False)))
    return TokenizerFacts(tokenizer.eos_token_id, len(tokenizer), bos)


PROBE = "a"  # any text: what the tokenizer's own encoding adds around it is its document policy


def _leading_id(with_special: list[int], without: list[int]) -> int | None:
    """The id a tokenizer's own encoding puts before a text (its BOS), or None."""
    extra = len(with_special) - len(without)
    return with_special[0] if extra > 0 and with_special[1 : 1 + len(without)] == without else None


def pipeline_steps(cfg: Config, folder: Path) -> list:
    """The datatrove pipeline; hand it to any datatrove executor (logging_dir: FOLDER/datatrove)."""
    work = str(folder / "work")
    return [
        ReadSources(cfg.sources, work, cfg.skip_bad_records),
        Normalize(),
        QualityFilter(cfg.sources, cfg.filters, cfg.dedup, work, cfg.batch_size),
        TokenizeSketch(str(folder / "tokenizer"), work, cfg.dedup.num_perm, cfg.batch_size),
    ]


def run_datatrove(cfg: Config, folder: Path) -> int:
    """Run the parallel half; returns how many tasks are still unfinished (a cluster executor may return early).

    Finished tasks are skipped (datatrove's completion markers), so calling this again resumes.
    """

    steps, logs = pipeline_steps(cfg, folder), str(folder / "datatrove")
    classes = {"local": "LocalPipelineExecutor", "slurm": "SlurmPipelineExecutor", "ray": "RayPipelineExecutor"}
    options = {"workers": min(cfg.workers, cfg.tasks), **cfg.executor_options}
    try:
        runner = getattr(executors, classes[cfg.executor])(steps, tasks=cfg.tasks, logging_dir=logs, **options)
    except TypeError as err:  # a missing or unknown executor argument
        raise ConfigError(f"data.executor_options for {classes[cfg.executor]}: {err}") from err
    if cfg.executor == "local" and options["workers"] > 1:
        run_in_process_group(runner.run)  # manager, forkserver and workers: one group that dies with us
    else:
        with children_die_with_us():  # the executor's manager process
            runner.run()
    raise_task_errors(folder / "work", folder / "datatrove")
    return len(runner.get_incomplete_ranks(skip_completed=True))


# ----------------------------------------------------------------------------- documents


@dataclass
class Documents:
    """Every document that passed the filters, in canonical (source, file, record) order."""

    keys: np.ndarray  # [n, 3] source, file, record
    lengths: np.ndarray  # [n] tokens (no EOS)
    chars: np.ndarray  # [n]
    digest: np.ndarray  # [n, 2] exact hash of the normalised text
    sig: np.ndarray  # [n, num_perm] MinHash signature
    task: np.ndarray  # [n] which work/TASK folder holds the tokens
    start: np.ndarray  # [n] offset of the document in that folder's tokens
    tokens: list  # per task: flat uint32 token ids (memory-mapped)

    def __len__(self) -> int:
        return len(self.keys)


def load_documents(work: Path) -> Documents:
    """Every task's arrays, concatenated and sorted by document key (so the task count does not matter)."""
    folders = sorted(p for p in work.iterdir() if p.is_dir() and p.name.isdigit())
    parts = {name: [] for name in ("keys", "lengths", "chars", "digest", "sig", "task", "start")}
    tokens = []
    for task, folder in enumerate(folders):
        arrays = {name: np.load(folder / f"{name}.npy") for name in ("keys", "lengths", "chars", "digest", "sig")}
        # Memory-mapped, viewed as a plain array: slicing a np.memmap per document is several times slower.
        tokens.append(np.load(folder / "tokens.npy", mmap_mode="r").view(np.ndarray))
        for name, array in arrays.items():
            parts[name].append(array)
        parts["task"].append(np.full(len(arrays["keys"]), task, dtype=np.int32))
        parts["start"].append(np.cumsum(arrays["lengths"]) - arrays["lengths"])
    if not tokens:
        raise DataError(f"{work}: the datatrove tasks wrote no output")
    merged = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    keys = merged["keys"]
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    return Documents(**{name: array[order] for name, array in merged.items()}, tokens=tokens)


def select_documents(cfg: Config, docs: Documents, stats: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dedup across sources (drops counted in ``stats``), then the validation hold-out: (kept mask, val)."""
    drops = find_duplicates(
        docs.digest,
        docs.sig,
        exact=cfg.dedup.exact,
        near=cfg.dedup.near,
        threshold=cfg.dedup.threshold,
        bands=cfg.dedup.bands,
    )
    for source, reason in zip(docs.keys[:, 0].tolist(), drops):
        if reason is not None:
            stats[source]["dropped"][reason] = stats[source]["dropped"].get(reason, 0) + 1
    kept = np.array([r is None for r in drops], dtype=bool)
    return kept, hold_out(cfg, docs, kept)


def hold_out(cfg: Config, docs: Documents, kept: np.ndarray) -> dict[str, np.ndarray]:
    """``val_docs`` kept documents per language, drawn with the seed, in canonical order."""
    langs = sorted({s.lang for s in cfg.sources})
    source_lang = np.array([langs.index(s.lang) for s in cfg.sources])
    doc_lang = source_lang[docs.keys[:, 0]] if len(docs) else np.zeros(0, int)
    val = {}
    for i, lang in enumerate(langs):
        pool = np.random.default_rng([cfg.seed, 1, i]).permutation(np.flatnonzero(kept & (doc_lang == i)))
        count = min(cfg.val_docs, len(pool))
        if cfg.val_docs:  # short documents: take more until one full sequence, but leave half for training
            enough = int(np.searchsorted(np.cumsum(docs.lengths[pool] + 1), cfg.seq_len)) + 1
            count = max(count, min(enough, len(pool) // 2))
        val[lang] = np.sort(pool[:count])
    return val


def mixture(cfg: Config, docs: Documents, train: np.ndarray, stats: list[dict]) -> np.ndarray:
    """The training documents in packing order: each source drawn to its weight share, then shuffled.

    A source gets ``budget * weight / sum(weights)`` tokens (EOS included): whole epochs of all its
    documents, then a seeded random subset for the fraction. Effective epochs land in ``stats``.
    """
    cost = docs.lengths + 1  # EOS after every document
    by_source = [train[docs.keys[train, 0] == i] for i in range(len(cfg.sources))]
    natural = [int(cost[d].sum()) for d in by_source]
    budget = cfg.token_budget or sum(n for n, s in zip(natural, cfg.sources) if s.weight > 0)
    total_weight = sum(s.weight for s in cfg.sources)
    picked = []
    for i, (source, pool) in enumerate(zip(cfg.sources, by_source)):
        target = budget * source.weight / total_weight
        if target > 0 and natural[i] == 0:
            raise DataError(
                f"source {source.label()}: weight {source.weight} but no documents are left after "
                "filtering, dedup and the validation hold-out"
            )
        epochs = int(target // natural[i]) if natural[i] else 0
        rest = target - epochs * natural[i]
        chosen = [pool] * epochs
        if rest > 0:
            shuffled = np.random.default_rng([cfg.seed, 2, i]).permutation(pool)
            take = int(np.searchsorted(np.cumsum(cost[shuffled]), rest, side="left")) + 1
            chosen.append(shuffled[:take])
        chosen = np.concatenate(chosen) if chosen else pool[:0]
        stats[i]["train_tokens"] = int(cost[chosen].sum())
        stats[i]["effective_epochs"] = round(stats[i]["train_tokens"] / natural[i], 4) if natural[i] else 0.0
        picked.append(chosen)
    everything = np.concatenate(picked)
    return everything[np.random.default_rng([cfg.seed, 3]).permutation(len(everything))]


def write_shards(
    cfg: Config,
    folder: Path,
    tokenizer: TokenizerFacts,
    docs: Documents,
    order: np.ndarray,
    val: dict[str, np.ndarray],
    why_short: str = "",
) -> dict:
    """Pack and write the train and val/LANG splits, then ``index.json``; returns the index. ``why_short``
    (empty source files, sources left with nothing) is added to the error when not one sequence fills."""
    dtype = token_dtype(tokenizer.vocab_size)
    index = {
        "format": FORMAT,
        "seq_len": cfg.seq_len,
        "dtype": dtype.str,
        "eos_id": int(tokenizer.eos_id),
        "bos_id": tokenizer.bos_id,
        "vocab_size": tokenizer.vocab_size,
        "splits": {},
        "totals": {},
    }
    writer = ShardWriter(folder, cfg.seq_len, cfg.shard_size, dtype, index["eos_id"], bos_id=tokenizer.bos_id)
    for split, picked in [("train", order)] + [(f"val/{lang}", p) for lang, p in sorted(val.items())]:
        entries, index["totals"][split] = writer.write(split, docs, picked)
        if entries or split == "train":  # a language too small for one val sequence gets no (empty) split
            index["splits"][split] = entries
    writer.progress.close()
    if index["totals"]["train"]["sequences"] == 0:
        raise DataError(
            f"data: the training mixture has {index['totals']['train']['tail_tokens_dropped']} tokens, "
            f"fewer than one sequence of seq_len {cfg.seq_len}{why_short}; add data or raise token_budget"
        )
    atomic_write_json(folder / INDEX, index)
    return index


class ShardWriter:
    """Packs documents ([BOS] + document + EOS) into ``seq_len`` rows, ``shard_size`` rows a file; finished
    shards are skipped."""

    def __init__(
        self,
        folder: Path,
        seq_len: int,
        shard_size: int,
        dtype: np.dtype,
        eos_id: int,
        progress=None,
        bos_id: int | None = None,
    ):
        self.folder, self.seq_len, self.shard_size, self.dtype, self.eos_id = folder, seq_len, shard_size, dtype, eos_id
        self.bos = [] if bos_id is None else [np.array([bos_id], dtype=np.uint32)]
        # Finished shards (get/record/close); the benchmark passes the old rewrite-everything scheme here.
        self.progress = progress if progress is not None else ProgressLog(folder / PROGRESS)
        self.written = 0  # shards actually written by this run (the rest were resumed)

    def write(self, split: str, docs: Documents, order: np.ndarray) -> tuple[list[dict], dict]:
        cost = docs.lengths[order] + 1 + len(self.bos)
        ends = np.cumsum(cost)
        total = int(ends[-1]) if len(ends) else 0
        rows = total // self.seq_len
        per_shard = self.shard_size * self.seq_len
        entries = []
        for shard, first in enumerate(range(0, rows * self.seq_len, per_shard)):
            last = min(first + per_shard, rows * self.seq_len)
            name = f"{split}/{shard:05d}.bin"
            entry = self.progress.get(name)
            if entry is None or not shard_is_valid(self.folder / name, entry):
                tokens = self._tokens(docs, order, ends, first, last)
                entry = {"file": name, **write_shard(self.folder / name, tokens.reshape(-1, self.seq_len), self.dtype)}
                self.progress.record(entry)
                self.written += 1
            entries.append(entry)
        totals = {
            "documents": int(len(order)),
            "sequences": rows,
            "tokens": rows * self.seq_len,
            "tail_tokens_dropped": total - rows * self.seq_len,
            "shards": len(entries),
        }
        return entries, totals

    def _tokens(self, docs: Documents, order: np.ndarray, ends: np.ndarray, first: int, last: int) -> np.ndarray:
        """Tokens [first, last) of the packed stream ``[BOS,] doc, EOS, [BOS,] doc, EOS, ...``: the documents that
        overlap the range, concatenated as slices of their tasks' token arrays, then cut to the range."""
        lo = int(np.searchsorted(ends, first, side="right"))
        hi = int(np.searchsorted(ends, last, side="left")) + 1
        picked = order[lo:hi]
        eos = np.array([self.eos_id], dtype=np.uint32)
        pieces = []
        for task, start, length in zip(
            docs.task[picked].tolist(), docs.start[picked].tolist(), docs.lengths[picked].tolist()
        ):
            pieces += self.bos
            pieces.append(docs.tokens[task][start : start + length])
            pieces.append(eos)
        # stream position where the first document (its BOS) starts
        begin = int(ends[lo] - docs.lengths[picked[0]] - 1 - len(self.bos))
        return np.concatenate(pieces)[first - begin : last - begin].astype(np.int64)


# ----------------------------------------------------------------------------- report


def source_stats(cfg: Config, counts: dict[int, dict]) -> list[dict]:
    stats = []
    for i, source in enumerate(cfg.sources):
        c = counts.get(i, {})
        dropped = {k[5:]: v for k, v in sorted(c.items()) if k.startswith("drop:")}
        if c.get("bad_records"):
            dropped["bad_record"] = c["bad_records"]
        stats.append(
            {
                "source": source.label(),
                "path": source.path,
                "lang": source.lang,
                "weight": source.weight,
                "docs_in": c.get("docs_in", 0) + c.get("bad_records", 0),
                "chars_in": c.get("chars_in", 0),
                "dropped": dropped,
                "bad_record_examples": c.get("bad_examples", []),
                "empty_files": c.get("empty_files", []),
            }
        )
    return stats


def _why_short(stats: list[dict]) -> str:
    """What left the mixture short, for its error: files without a single document (named), and how many
    documents the filters, dedup and bad records dropped."""
    empty = [f for s in stats for f in s["empty_files"]]
    dropped: dict[str, int] = {}
    for entry in stats:
        for reason, count in entry["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
    parts = [f"empty source file{'s' if len(empty) > 1 else ''}: {', '.join(empty)}"] if empty else []
    if dropped:
        parts.append("documents dropped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items())))
    return f" ({'; '.join(parts)})" if parts else ""


def finish_stats(stats: list[dict], docs: Documents, kept: np.ndarray, in_val: np.ndarray) -> None:
    """Per source: kept documents, their characters and tokens (val included), val documents."""
    source = docs.keys[:, 0]
    for i, entry in enumerate(stats):
        mine = kept & (source == i)
        entry["kept"] = int(mine.sum())
        entry["val_docs"] = int((mine & in_val).sum())
        entry["chars"] = int(docs.chars[mine].sum())
        entry["tokens"] = int(docs.lengths[mine].sum())
        entry["chars_per_token"] = round(entry["chars"] / entry["tokens"], 4) if entry["tokens"] else 0.0
        entry["dropped"] = dict(sorted(entry["dropped"].items()))


def metrics_of(stats: list[dict], totals: dict, seconds: float) -> dict:
    natural_tokens = sum(s["tokens"] for s in stats)
    return {
        "docs_in": sum(s["docs_in"] for s in stats),
        "docs_kept": sum(s["kept"] for s in stats),
        "docs_dropped": {
            r: sum(s["dropped"].get(r, 0) for s in stats) for r in sorted({r for s in stats for r in s["dropped"]})
        },
        "chars": sum(s["chars"] for s in stats),
        "tokens": natural_tokens,
        "train_tokens": totals["train"]["tokens"],
        "val_tokens": {k: v["tokens"] for k, v in totals.items() if k != "train"},
        "seconds": round(seconds, 3),
        "tokens_per_second": round(natural_tokens / seconds, 1) if seconds > 0 else None,
    }


def print_table(stats: list[dict], totals: dict) -> None:

    table = Table(title="youri data", show_lines=False)
    for column in (
        "source",
        "lang",
        "docs in",
        "kept",
        "dropped (reason: n)",
        "chars",
        "tokens",
        "chars/tok",
        "weight",
        "train tokens",
        "epochs",
    ):
        table.add_column(column, justify="left" if column in ("source", "lang", "dropped (reason: n)") else "right")
    for s in stats:
        dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "-"
        table.add_row(
            s["source"],
            s["lang"],
            f"{s['docs_in']:,}",
            f"{s['kept']:,}",
            dropped,
            f"{s['chars']:,}",
            f"{s['tokens']:,}",
            f"{s['chars_per_token']:.2f}",
            f"{s['weight']:g}",
            f"{s.get('train_tokens', 0):,}",
            f"{s.get('effective_epochs', 0):.2f}",
        )
    console = Console()
    Console(width=max(console.width, 160) if not console.is_terminal else None).print(table)
    for split, t in totals.items():
        print(
            f"{split}: {t['sequences']:,} sequences x seq_len = {t['tokens']:,} tokens in {t['shards']} shard(s) "
            f"({t['documents']:,} documents; {t['tail_tokens_dropped']:,} tail tokens dropped)"
        )
