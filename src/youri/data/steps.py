"""The parallel half of ``youri data``: datatrove pipeline steps (read -> normalise -> filter -> tokenise).

Each datatrove task (``rank`` of ``world_size``) reads every source but keeps the records whose
ordinal within the source is ``rank`` modulo ``world_size`` -- so even one big file spreads over all
tasks -- and writes one folder ``work/RANK/`` of numpy arrays (document keys, token ids, exact-hash,
MinHash signature) plus per-source counters. The deterministic half (dedup, mixing, packing) in
``youri.data.corpus`` sorts everything by document key, so the output does not depend on the task count.

Why not datatrove's own readers, ``DocumentTokenizer`` and MinHash steps: the JSONL reader skips
malformed lines with a log warning (we must fail naming file:line, or count under
``skip_bad_records``); plain text needs blank-line document splitting; ``DocumentTokenizer`` writes
its own ``.ds`` format with its own shuffling, not a seeded token-budget mixture; and datatrove's
MinHash needs a word segmenter for Japanese plus four executor stages. The steps below are ordinary
``PipelineStep``s, so the same list runs under ``LocalPipelineExecutor``, ``SlurmPipelineExecutor``
or ``RayPipelineExecutor``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import time
from array import array
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow.parquet as pq
from datasets import DatasetDict, load_from_disk
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.batching import batched
from datatrove.utils.typeshelper import StatHints
from tokenizers import Tokenizer

from youri.config import NonNegativeFloat, PositiveInt, UnitFloat
from youri.data.filters import Filters, boilerplate_phrases, drop_reason, features, normalize
from youri.io import (
    DataError,
    SkipCounter,
    atomic_write_json,
    atomic_write_text,
    failures_message,
    iter_jsonl,
    require_field,
    resolve_path,
)
from youri.model import load_tokenizer

# Test hook: seconds each task waits before reading (a run that is surely still going when a test stops it).
READ_DELAY_ENV = "YOURI_TEST_READ_DELAY"
KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".md": "text", ".parquet": "parquet"}


@dataclass
class Source:
    """One input corpus of the mixture."""

    path: str
    """A file, a folder or a glob (``builtin:NAME`` for the shipped samples)."""
    lang: str = "ja"
    """Language tag: ``ja`` sources get the Japanese-ratio filter; validation is held out per language."""
    weight: NonNegativeFloat = 1.0
    """Relative share of the training tokens (normalised over all sources)."""
    kind: Literal["", "jsonl", "text", "parquet", "hf_disk"] = ""
    """Reader; inferred from the suffix (a folder saved by ``datasets`` is ``hf_disk``) when empty."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet, datasets) holding the document text."""
    doc_split: Literal["blank_line", "line", "file"] = "blank_line"
    """How plain text is cut into documents: at blank lines, at every line, or one per file."""
    name: str = ""
    """Name in the report; the file name when empty."""

    def label(self) -> str:
        return self.name or Path(self.path.removeprefix("builtin:")).name


@dataclass
class Dedup:
    """Exact and MinHash near-duplicate removal across all sources (first occurrence wins)."""

    exact: bool = True
    """Drop documents whose normalised text equals an earlier one (reason: exact_dup)."""
    near: bool = True
    """Drop documents whose estimated Jaccard similarity to an earlier one reaches ``threshold`` (near_dup)."""
    threshold: UnitFloat = 0.8
    """Jaccard similarity of character n-gram sets above which two documents are near-duplicates."""
    ngram: PositiveInt = 5
    """Character n-gram (shingle) length for MinHash and the repeated-n-gram filter."""
    num_perm: PositiveInt = 112
    """MinHash signature length."""
    bands: PositiveInt = 14
    """LSH bands (num_perm / bands rows each): more bands find less similar pairs."""


# ----------------------------------------------------------------------------- reading


def source_files(source: Source) -> tuple[list[Path], str]:
    """The files (or datasets folder) of a source, sorted, and its kind."""
    text = str(source.path)
    if any(ch in text for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(Path(text).expanduser()), recursive=True))]
        if not files:
            raise FileNotFoundError(f"source {text}: the pattern matches no file")
    else:
        path = resolve_path(text)
        if not path.exists():
            raise FileNotFoundError(f"source not found: {path}")
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            return [path], source.kind or "hf_disk"
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in KINDS) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"source {path}: no {', '.join(KINDS)} files in the folder")
    kind = source.kind or KINDS.get(files[0].suffix)
    if kind is None:
        raise DataError(
            f"source {files[0]}: cannot infer the kind from '{files[0].suffix}'; set kind: "
            "jsonl | text | parquet | hf_disk"
        )
    return files, kind


def iter_records(
    source: Source, skip: SkipCounter | None, keep=lambda ordinal: True, *, empty: list[str] | None = None
) -> Iterator[tuple[int, int, str]]:
    """``(file_index, record_index, text)`` of every document of ``source`` whose ordinal ``keep`` accepts;
    ``empty`` collects the files that hold no document at all (named when the corpus comes out empty)."""
    files, kind = source_files(source)
    ordinal = -1
    for file_index, path in enumerate(files):
        before = ordinal
        for record_index, text in _READERS[kind](path, source, skip):
            ordinal += 1
            if keep(ordinal):
                yield file_index, record_index, text
        if empty is not None and ordinal == before:
            empty.append(str(path))


def _read_jsonl(path: Path, source: Source, skip: SkipCounter | None) -> Iterator[tuple[int, str]]:
    for lineno, record in iter_jsonl(path, skip_bad=skip):
        try:
            yield lineno, require_field(record, source.text_field, path, lineno)
        except DataError as err:
            if skip is None:
                raise DataError(f"{err} (set text_field, or skip_bad_records: true to skip the record)") from err
            skip.add(str(err))


def _read_text(path: Path, source: Source, skip: SkipCounter | None) -> Iterator[tuple[int, str]]:
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not text
    try:
        text, bad_bytes = raw.decode("utf-8"), False
    except UnicodeDecodeError:  # every bad byte becomes one lone surrogate, looked for per document below
        text, bad_bytes = raw.decode("utf-8", "surrogateescape"), True
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    if source.doc_split == "file":
        parts = [(0, text)]
    else:
        parts = _split_at(text, r"\n(?:[ \t\r]*\n)+" if source.doc_split == "blank_line" else r"\n")
    for index, (start, part) in enumerate(parts):
        found = _BAD_BYTE.search(part) if bad_bytes else None
        if found:
            offset = start + found.start()
            line, column = text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)
            reason = f"{path}:{line}: not valid UTF-8 (byte 0x{ord(found.group()) - 0xDC00:02x} at column {column})"
            if skip is None:
                raise DataError(reason + "; save the file as UTF-8, or set skip_bad_records: true to skip the document")
            skip.add(reason)
        elif part.strip():
            yield index, part


_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _split_at(text: str, pattern: str) -> list[tuple[int, str]]:
    """``re.split(pattern, text)`` with the offset where each part starts."""
    parts, start = [], 0
    for match in re.finditer(pattern, text):
        parts.append((start, text[start : match.start()]))
        start = match.end()
    parts.append((start, text[start:]))
    return parts


def _read_table_rows(rows: Iterator[list], where: str, source: Source, skip: SkipCounter | None):
    index = -1
    for batch in rows:
        for value in batch:
            index += 1
            if isinstance(value, str):
                yield index, value
                continue
            reason = f"{where}: row {index}: field '{source.text_field}' is {type(value).__name__}, not text"
            if skip is None:
                raise DataError(reason)
            skip.add(reason)


def _read_parquet(path: Path, source: Source, skip: SkipCounter | None) -> Iterator[tuple[int, str]]:

    try:
        handle = pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid (a ValueError) or ArrowIOError (an OSError)
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if source.text_field not in handle.schema_arrow.names:
        columns = ", ".join(handle.schema_arrow.names)
        raise DataError(f"{path}: missing column '{source.text_field}' (columns: {columns})")
    batches = (b.column(0).to_pylist() for b in handle.iter_batches(batch_size=1024, columns=[source.text_field]))
    yield from _read_table_rows(batches, str(path), source, skip)


def _read_hf_disk(path: Path, source: Source, skip: SkipCounter | None) -> Iterator[tuple[int, str]]:

    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError) as err:  # a cut Arrow file or state.json: pyarrow's and json's own errors
        raise DataError(f"{path}: not a readable datasets folder ({' '.join(str(err).split())})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(dataset)})")
        dataset = dataset["train"]
    if source.text_field not in dataset.column_names:
        raise DataError(f"{path}: missing column '{source.text_field}' (columns: {', '.join(dataset.column_names)})")
    batches = (b[source.text_field] for b in dataset.select_columns([source.text_field]).iter(batch_size=1024))
    yield from _read_table_rows(batches, str(path), source, skip)


_READERS = {"jsonl": _read_jsonl, "text": _read_text, "parquet": _read_parquet, "hf_disk": _read_hf_disk}


# ----------------------------------------------------------------------------- pipeline steps


class _Counting:
    """Per-source counters of a step, saved as ``work/counts/RANK.STEP.json`` when the task ends."""

    counts_name = "step"

    def _save_counts(self, counts: dict, rank: int) -> None:
        atomic_write_json(Path(self.work_dir) / "counts" / f"{rank:05d}.{self.counts_name}.json", counts)


class ReadSources(PipelineStep, _Counting):
    """Reads every source; this task keeps the records whose ordinal is ``rank`` mod ``world_size``."""

    name = "youri sources"
    type = "📖 - READER"
    counts_name = "read"

    def __init__(self, sources: list[Source], work_dir: str, skip_bad_records: bool = False):
        super().__init__()
        self.sources, self.work_dir, self.skip_bad_records = sources, work_dir, skip_bad_records

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        error_file = Path(self.work_dir) / "errors" / f"{rank:05d}.txt"
        error_file.unlink(missing_ok=True)
        if os.environ.get(READ_DELAY_ENV):
            time.sleep(float(os.environ[READ_DELAY_ENV]))
        failed: list[str] = []
        yield from self._read(rank, world_size, failed)
        if failed:
            # Bad input is youri's one-line error, not a task failure: raised through datatrove it is logged
            # with a 150-line traceback first. What this task read is never used; ``raise_task_errors``
            # raises the message, naming every source that failed, once the executor returns.
            atomic_write_text(error_file, failures_message(failed, len(self.sources), "sources could not be read"))

    def _read(self, rank: int, world_size: int, failed: list[str]) -> DocumentsPipeline:
        counts = {}
        for index, source in enumerate(self.sources):
            skip = SkipCounter() if self.skip_bad_records else None
            docs = chars = 0
            empty: list[str] = []
            records = iter_records(source, skip, lambda o: o % world_size == rank, empty=empty)
            try:
                for file_index, record_index, text in records:
                    docs += 1
                    chars += len(text)
                    yield Document(
                        text=text,
                        id=f"{index}/{file_index}/{record_index}",
                        metadata={"source": index, "key": (index, file_index, record_index)},
                    )
            except (DataError, OSError) as err:  # this source's failure: the others are still read and checked
                failed.append(str(err))
                continue
            # Every task parses every line of a file, so malformed lines and empty files are counted by task 0.
            first = rank == 0
            bad = (skip.count, skip.examples) if skip is not None and first else (0, [])
            self.stat_update("documents", value=docs, unit="source")
            counts[index] = {"docs_in": docs, "chars_in": chars, "bad_records": bad[0], "bad_examples": bad[1]}
            counts[index]["empty_files"] = empty if first else []
        self._save_counts(counts, rank)


def raise_task_errors(work_dir: Path, logging_dir: Path) -> None:
    """Raise the first input error a task recorded; its task is marked unfinished, so a rerun redoes it."""
    errors = sorted((work_dir / "errors").glob("*.txt")) if (work_dir / "errors").is_dir() else []
    for error in errors:
        (logging_dir / "completions" / error.stem).unlink(missing_ok=True)
    if errors:
        raise DataError(errors[0].read_text(encoding="utf-8"))


class Normalize(PipelineStep):
    """NFKC (Japanese-aware) + whitespace normalisation, see ``youri.data.filters``."""

    name = "youri normalise"
    type = "✂️ - FORMAT"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for batch in batched(data, 512):  # per-document timing would cost more than short documents' NFKC
            with self.track_time("batch"):
                for doc in batch:
                    doc.text = normalize(doc.text)
            yield from batch


class QualityFilter(BaseFilter, _Counting):
    """Length, Japanese-ratio, repetition and boilerplate filters; drops are counted per source and reason.

    Works on batches (``filter_batch``) so the n-gram hashing and MinHash run as array operations; the
    signature of each kept document rides along in ``doc.metadata["minhash"]`` to the tokenizer step.
    """

    name = "youri quality"
    counts_name = "filter"

    def __init__(self, sources: list[Source], filters: Filters, dedup: Dedup, work_dir: str, batch_size: int = 512):
        super().__init__(batch_size=batch_size)
        self.langs = [s.lang for s in sources]
        self.filters, self.ngram, self.num_perm, self.work_dir = filters, dedup.ngram, dedup.num_perm, work_dir
        self._phrases = boilerplate_phrases(filters.boilerplate)
        self._dropped: Counter = Counter()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        found = features([doc.text for doc in batch], self.ngram, self.num_perm)
        results = []
        for i, doc in enumerate(batch):
            source = doc.metadata["source"]
            reason = drop_reason(
                doc.text,
                self.langs[source],
                float(found.ja_ratio[i]),
                float(found.dup_ngram_frac[i]),
                self.filters,
                self._phrases,
            )
            if reason is None:
                doc.metadata["minhash"] = found.signatures[i]
                results.append(True)
            else:
                self._dropped[(source, reason)] += 1
                results.append((False, reason))
        return results

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """``BaseFilter.run`` with statistics per batch instead of per document (a third of the filter's cost)."""
        self._dropped = Counter()
        for batch in batched(data, self.batch_size):
            with self.track_time("batch"):
                results = self.filter_batch(batch)
            kept = [doc for doc, result in zip(batch, results) if result is True]
            self.stat_update(StatHints.total, value=len(batch), unit="batch")
            self.stat_update(StatHints.forwarded, value=len(kept), unit="batch")
            self.stat_update(StatHints.dropped, value=len(batch) - len(kept), unit="batch")
            yield from kept
        counts: dict = {}
        for (source, reason), n in sorted(self._dropped.items()):
            counts.setdefault(source, {})["drop:" + reason] = n
        self._save_counts(counts, rank)


class TokenizeSketch(PipelineStep):
    """Batch-tokenises documents (no BOS/EOS) and sketches them; writes ``work/RANK/`` at the end.

    Tokens go through the fast tokenizer's ``encode_batch_fast`` (ids equal ``tokenizer(texts,
    add_special_tokens=False, split_special_tokens=True)``, minus the offset bookkeeping we do not
    need: a "</s>" in a document is text, not an EOS) and are appended per
    batch as one flat uint32 array, so no per-document Python lists survive the batch.
    """

    name = "youri tokenise+sketch"
    type = "🔢 - TOKENIZER"

    def __init__(
        self, tokenizer_dir: str, work_dir: str, num_perm: int, batch_size: int = 512, batch_chars: int = 1 << 17
    ):
        super().__init__()
        self.tokenizer_dir, self.work_dir = tokenizer_dir, work_dir
        self.num_perm, self.batch_size, self.batch_chars = num_perm, batch_size, batch_chars
        # Batches handed to the encoder before this thread waits for the oldest: deep enough that one
        # book-length document (encoded on one core: a 320k-character Aozora novel takes ~0.2 s) does not
        # stall the reading/filtering of everything after it.
        self.in_flight = 16

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        encode = _batch_encoder(self.tokenizer_dir)
        parts: dict[str, list] = {"keys": [], "tokens": [], "lengths": [], "chars": [], "digest": [], "sig": []}
        # The tokenizer releases the GIL: batch k is encoded in a thread while this thread reads,
        # normalises and filters batch k+1 (the upstream steps run lazily inside this loop). Batches
        # are bounded in characters too, so that a run of book-length documents (Aozora) does not make
        # one long encode that nothing overlaps with, above all at the end of the input.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: deque = deque()
            for batch in _batches_by_size(data, self.batch_size, self.batch_chars):
                pending.append((batch, pool.submit(encode, [doc.text for doc in batch])))
                if len(pending) > self.in_flight:
                    yield from self._collect(*pending.popleft(), parts)
            while pending:
                yield from self._collect(*pending.popleft(), parts)
        self._save(parts, rank)

    def _collect(self, batch: list[Document], future, parts: dict[str, list]) -> list[Document]:
        ids = future.result()
        with self.track_time("batch"):
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = array("I")
            for seq in ids:
                flat.extend(seq)
            parts["tokens"].append(np.frombuffer(flat, dtype=np.uint32))
            parts["lengths"].append(lengths)
            parts["keys"].append(np.array([doc.metadata["key"] for doc in batch], dtype=np.int64).reshape(-1, 3))
            parts["chars"].append(np.array([len(doc.text) for doc in batch], dtype=np.int64))
            digests = b"".join(hashlib.blake2b(doc.text.encode(), digest_size=16).digest() for doc in batch)
            parts["digest"].append(np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2))
            parts["sig"].append(np.stack([doc.metadata.pop("minhash") for doc in batch]))
            self.stat_update("tokens", value=int(lengths.sum()))
        return batch

    def _save(self, parts: dict[str, list], rank: int) -> None:
        """One folder per task, renamed into place so a half-written task output is never read."""
        final = Path(self.work_dir) / f"{rank:05d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        empty = {
            "keys": (0, 3),
            "tokens": (0,),
            "lengths": (0,),
            "chars": (0,),
            "digest": (0, 2),
            "sig": (0, self.num_perm),
        }
        dtypes = {
            "keys": np.int64,
            "tokens": np.uint32,
            "lengths": np.int64,
            "chars": np.int64,
            "digest": np.uint64,
            "sig": np.uint64,
        }
        for name, chunks in parts.items():
            array = np.concatenate(chunks) if chunks else np.zeros(empty[name], dtype=dtypes[name])
            np.save(tmp / f"{name}.npy", array)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


def _batches_by_size(data: DocumentsPipeline, max_docs: int, max_chars: int) -> Iterator[list[Document]]:
    """Consecutive documents in lists of at most ``max_docs`` documents and ``max_chars`` characters
    (a single longer document makes a batch of its own)."""
    batch, chars = [], 0
    for doc in data:
        if batch and (len(batch) >= max_docs or chars + len(doc.text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc.text)
    if batch:
        yield batch


def _batch_encode_fast(backend, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


_LOADED: dict[str, object] = {}  # tokenizers already in memory in this process, by folder


def remember_tokenizer(folder: str | os.PathLike, tokenizer) -> None:
    """Let steps running in this process (``workers: 1``) reuse a loaded tokenizer instead of reloading it."""
    _LOADED[str(folder)] = tokenizer


def _batch_encoder(tokenizer_dir: str):
    """``texts -> ids`` with no special token added or read from the text: the tokenizers backend when
    there is one."""

    tokenizer = _LOADED.get(str(tokenizer_dir))
    if tokenizer is None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
        # The saved fast tokenizer alone, without importing transformers (and torch) in a worker process.

        tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_dir)
    backend = tokenizer if hasattr(tokenizer, "encode_batch_fast") else getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # Document text is text: "</s>" or "<s>" in it (HTML strike-through, posts about LLMs) stays
        # characters; the only EOS in a shard is the one packing puts after each document.
        backend.encode_special_tokens = True
        return partial(_batch_encode_fast, backend)
    return lambda texts: tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def load_counts(work_dir: Path) -> dict[int, dict]:
    """Merge the per-task counters of every step into ``{source: {counter: value}}``."""
    merged: dict[int, dict] = {}
    for path in sorted((work_dir / "counts").glob("*.json")):
        for source, values in json.loads(path.read_text(encoding="utf-8")).items():
            slot = merged.setdefault(int(source), {})
            for key, value in values.items():
                if isinstance(value, list):
                    slot[key] = (slot.get(key, []) + value)[:5]
                else:
                    slot[key] = slot.get(key, 0) + value
    return merged
