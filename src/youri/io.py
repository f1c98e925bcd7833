"""Small, shared file I/O: atomic writes, JSONL reading with file:line errors, built-in sample paths.

Everything that writes a file a later run may trust goes through ``atomic_write_*`` (write a sibling
temporary file, fsync, ``os.replace``): a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import yaml
from safetensors import SafetensorError

BUILTIN_PREFIX = "builtin:"


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class MissingField(DataError, KeyError):
    """A key absent from a JSON object read by ``read_json``: a ``DataError`` naming the file (and still a
    ``KeyError``, for code that asks ``try: d[k] except KeyError``)."""

    __str__ = BaseException.__str__  # KeyError's would print the message quoted


CORRUPT_FILE_ERRORS = (SafetensorError, EOFError, zlib.error, gzip.BadGzipFile)
"""What reading a truncated or corrupted file raises without naming it: a safetensors header or body cut
short, a gzip stream that ends early or does not inflate."""


@contextmanager
def reading(path: str | os.PathLike, what: str = "cannot read"):
    """Inside the block, a corrupt or truncated ``path`` (``CORRUPT_FILE_ERRORS``) is one ``DataError``
    naming it: ``PATH: cannot read (truncated or corrupted?): <reason>``."""
    try:
        yield
    except CORRUPT_FILE_ERRORS as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataError(f"{path}: {what} (truncated or corrupted?): {reason}") from err


def failures_message(failed: list[str], total: int, what: str) -> str:
    """One line for a per-item loop over outside input that went on past its failures: the one failure as
    it is, or ``N of TOTAL WHAT: first | second | ...`` naming every failed item with its reason."""
    lines = [" ".join(str(f).split()) for f in failed]
    return lines[0] if len(lines) == 1 else f"{len(lines)} of {total} {what}: " + " | ".join(lines)


class JsonObject(dict):
    """A JSON object from ``read_json``: a missing key raises ``MissingField`` naming the file."""

    __slots__ = ("source",)

    def __missing__(self, key):
        present = ", ".join(sorted(map(str, self))) or "none"
        raise MissingField(
            f"{getattr(self, 'source', 'a JSON file')}: missing field '{key}' (fields present: {present})"
        )


def resolve_path(path: str | os.PathLike) -> Path:
    """``builtin:NAME`` -> the sample file shipped inside the package (``youri/sample/NAME``)."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        sample = Path(str(resources.files("youri") / "sample"))
        target = sample / text[len(BUILTIN_PREFIX) :]
        if not target.exists():
            available = sorted(p.name for p in sample.iterdir()) if sample.is_dir() else []
            raise FileNotFoundError(f"{text}: no such built-in sample; available: {', '.join(available)}")
        return target
    return Path(text).expanduser()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """JSON Lines (UTF-8, one object per line), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


yaml.SafeDumper.add_representer(JsonObject, yaml.representer.SafeRepresenter.represent_dict)  # dumps as a dict


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file; its objects are ``JsonObject``s, so a missing key is a one-line error naming ``path``."""
    path = Path(path)

    def obj(pairs: list[tuple[str, Any]]) -> JsonObject:
        record = JsonObject(pairs)
        record.source = path
        return record

    try:
        return json.loads(read_text(path), object_pairs_hook=obj)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (without a byte-order mark) with newlines as text mode reads them; bad bytes raise
    ``DataError`` naming the file, line, column and byte offset (``UnicodeDecodeError`` would name neither)."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(not_utf8(path, data, err.start)) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark (Windows editors) is not text
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def not_utf8(path: str | os.PathLike, data: bytes, offset: int, first_line: int = 1) -> str:
    """``file:line: not valid UTF-8 ...`` for the bad byte at ``offset`` of ``data`` (a whole file, or the
    part of one that starts at line ``first_line``)."""
    line = first_line + data.count(b"\n", 0, offset)
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    where = f"column {column}" + (f", byte offset {offset}" if first_line == 1 and line > 1 else "")
    return f"{path}:{line}: not valid UTF-8 (byte 0x{data[offset]:02x} at {where}); save the file as UTF-8"


@dataclass
class SkipCounter:
    """Counts records skipped under an explicit ``skip_bad_records`` option, with the first reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(reason)


def iter_jsonl(path: str | os.PathLike, *, skip_bad: SkipCounter | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-empty line of a JSONL file (``.gz``: gzip-compressed).

    A line that is not UTF-8 or not a JSON object raises ``DataError("file:line: ...")``; when
    ``skip_bad`` is given it is counted there instead (the caller opted in to skipping). Lines are
    read as bytes and decoded one by one, so a bad byte costs its own line only. A UTF-8 byte-order
    mark at the start of the file is ignored.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open  # datasets are often published as .jsonl.gz
    with reading(path), opener(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            record, reason = _parse_line(path, raw, lineno)
            if record is not None:
                yield lineno, record
            elif reason is not None:
                if skip_bad is None:
                    raise DataError(reason + " (fix the line, or set skip_bad_records: true to skip it)")
                skip_bad.add(reason)


def _parse_line(path: Path, raw: bytes, lineno: int) -> tuple[dict | None, str | None]:
    """``(record, None)``, ``(None, None)`` for a blank line, or ``(None, reason)`` for a bad one."""
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return None, not_utf8(path, raw, err.start, first_line=lineno)
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except ValueError as err:
        return None, f"{path}:{lineno}: malformed JSONL line: {err}"
    if not isinstance(record, dict):
        return None, f"{path}:{lineno}: malformed JSONL line: expected a JSON object, got {type(record).__name__}"
    return record, None


def require_field(
    record: dict, name: str, path: str | os.PathLike, lineno: int, *, kind: type = str, nonempty: bool = False
) -> Any:
    """``record[name]`` checked for presence and type (and, with ``nonempty``, for holding something other
    than whitespace or an empty list); the error names file, line and field."""
    if name not in record:
        present = ", ".join(sorted(record)) or "none"
        raise DataError(f"{path}:{lineno}: missing field '{name}' (fields present: {present})")
    value = record[name]
    if not isinstance(value, kind):
        raise DataError(f"{path}:{lineno}: field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    if nonempty and not (value.strip() if isinstance(value, str) else value):
        raise DataError(f"{path}:{lineno}: field '{name}' is empty")
    return value


def iter_json_array(path: str | os.PathLike, *, skip_bad: SkipCounter | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each element of a file holding one JSON array of objects.

    Many instruction datasets are published this way (``[{...}, {...}]``); the line number is the line
    where the element starts, so errors name ``file:line`` as for JSONL. An element that is not an
    object is a bad record (counted under ``skip_bad``); broken JSON syntax always raises, because
    nothing after it can be located reliably.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({err.reason})") from err
    decoder = json.JSONDecoder()
    pos, line, counted = _skip_space(text, 0), 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    if not text.startswith("[", pos):
        raise DataError(
            f"{path}:{line_at(pos)}: expected a JSON array of records ('[{{...}}, ...]'); "
            "for one record per line name the file .jsonl"
        )
    pos = _skip_space(text, pos + 1)
    if text.startswith("]", pos):
        return
    while True:
        start = line_at(pos)
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from err
        if isinstance(record, dict):
            yield start, record
        else:
            reason = f"{path}:{start}: expected a JSON object, got {type(record).__name__}"
            if skip_bad is None:
                raise DataError(reason + " (fix the record, or set skip_bad_records: true to skip it)")
            skip_bad.add(reason)
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos = _skip_space(text, pos + 1)
        elif text.startswith("]", pos):
            return
        else:
            raise DataError(f"{path}:{line_at(pos)}: malformed JSON: expected ',' or ']' after a record")


def iter_records(path: str | os.PathLike, *, skip_bad: SkipCounter | None = None) -> Iterator[tuple[int, dict]]:
    """Records of a ``.json`` file (one JSON array) or of JSON Lines (``.jsonl``, ``.jsonl.gz``, any other name)."""
    reader = iter_json_array if Path(path).suffix == ".json" else iter_jsonl
    return reader(path, skip_bad=skip_bad)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
