"""Row readers for the file formats the jp-stable harness's datasets come in.

The harness reads its data through ``datasets.load_dataset``; what lands on disk is JSON Lines (JGLUE
on GitHub), one JSON array (JAQKET v2's ``*_jaqket_59.350.json``), CSV (``mkshing/xlsum_ja``) or Parquet
(the Hub's ``refs/convert/parquet`` exports, which the JGLUE loader itself falls back to for MARC-ja).
``iter_rows`` yields every record of any of them as a dict, in file order (= the harness's document
order), with a 1-based position for error messages: the line for JSON Lines, the record number otherwise.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from youri.io import DataError, iter_jsonl

Row = tuple[int, dict]


def iter_rows(path: str) -> Iterator[Row]:
    """``(position, record)`` for every record of a .jsonl/.json/.csv/.parquet file, in file order."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_rows(file)
    elif suffix == ".csv":
        yield from _csv_rows(file)
    elif _starts_with_bracket(file):  # one JSON array (JAQKET v2's raw files)
        yield from _array_rows(file)
    else:
        yield from _jsonl_rows(file)


def _jsonl_rows(file: Path) -> Iterator[Row]:
    try:
        yield from iter_jsonl(file)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def _starts_with_bracket(file: Path) -> bool:
    with file.open("rb") as handle:
        head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _array_rows(file: Path) -> Iterator[Row]:
    try:
        records = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(f"{file}:{err.lineno}: invalid JSON: {err.msg}") from err
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{file}: record {index} is not a JSON object (got {type(record).__name__})")
        yield index, record


def _csv_rows(file: Path) -> Iterator[Row]:
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a BOM is not part of the header
            for index, record in enumerate(csv.DictReader(handle), start=1):
                if None in record:  # more cells than header names
                    raise DataError(f"{file}: record {index} has more cells than the header has columns")
                yield index, record
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise DataError(f"{file}: malformed CSV: {err}") from err


def _parquet_rows(file: Path) -> Iterator[Row]:
    try:
        table = pq.read_table(file)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError subclasses for a damaged file
        raise DataError(f"{file}: not a readable Parquet file ({err})") from err
    for index, record in enumerate(table.to_pylist(), start=1):
        yield index, record
