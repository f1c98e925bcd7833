"""``youri eval --download DIR``: every JP-8 dataset from the Hugging Face Hub, in the layout recipes read.

The jp-stable harness loads its data with ``datasets.load_dataset(DATASET_PATH, DATASET_NAME)`` and names
no revision (the Hub's default branch at run time). Four of those Hub repositories are loading *scripts*
(``shunk031/JGLUE``, ``kumapo/JAQKET``, ``juletxara/mgsm``) that current ``datasets`` releases no longer run.
youri therefore fetches files, never code, with ``huggingface_hub``: the raw data files a script reads
where they live on the Hub (JAQKET v2's JSON), else the Hub's own Parquet export of the loaded dataset
(``refs/convert/parquet`` -- the same rows ``load_dataset`` produced, and the source the JGLUE loader
itself falls back to for MARC-ja). Each split is written as ``DIR/<task>/<split>.jsonl`` in the
harness's field names and document order; ``DIR/sources.json`` records repository, revision, resolved
commit and file hashes, and ``DIR/eval-data.yaml`` is the ``eval:`` recipe section that reads them.

``HF_ENDPOINT`` selects another Hub (a mirror; the tests use a local fake one).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import huggingface_hub
import yaml
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

from youri.eval.tasks import TASKS
from youri.eval.tasks.formats import iter_rows
from youri.io import DataError, atomic_write_text

MARK = "written by youri eval --download"
DATA_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


class DownloadError(DataError):
    """A dataset that could not be fetched; the message says why and what to do instead."""


def download(out: str | os.PathLike) -> dict[str, Any]:
    """Fetch every JP-8 dataset into ``out``; raise ``DownloadError`` naming the ones that failed (after
    writing all the others)."""
    if hub_constants.HF_HUB_OFFLINE:
        raise DownloadError(
            "--download needs the Hugging Face Hub, but HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) "
            "is set; unset it for this command"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fetched, failed = {}, {}
    with tempfile.TemporaryDirectory(dir=out, prefix=".hub-cache-") as cache:
        for name in TASKS:
            try:
                fetched[name] = _fetch_task(name, out, Path(cache))
                print(
                    f"{name}: {fetched[name]['repo']}@{fetched[name]['revision']} -> "
                    + ", ".join(f"{s}.jsonl ({f['rows']} rows)" for s, f in fetched[name]["splits"].items())
                )
            except Exception as err:  # noqa: BLE001 -- one task's failure (a broken transfer, a file name the Hub
                # client refuses, a file that does not parse) is that task's: the others go on, it is named at the end
                failed[name] = str(err) if isinstance(err, DataError) else f"{name}: {_first_line(err)}"
                print(f"NOT DOWNLOADED {failed[name]}")
    _write_own(
        out / "sources.json",
        json.dumps({"note": MARK, "tasks": fetched, "failed": failed}, ensure_ascii=False, indent=2) + "\n",
    )
    _write_own(out / "eval-data.yaml", _recipe_section(out, fetched))
    if failed:
        kept = f"the {len(fetched)} others are in {out} (eval-data.yaml reads them); " if fetched else ""
        reasons = " | ".join(failed[name] for name in failed if TASKS[name].withdrawn)  # the one a user must know
        raise DownloadError(
            f"not downloaded: {', '.join(failed)}; {kept}reasons above and in {out}/sources.json"
            + (f". {reasons}" if reasons else "")
        )
    return {"tasks": fetched}


def _fetch_task(name: str, out: Path, cache: Path) -> dict[str, Any]:
    reasons = []
    for source in TASKS[name].sources:
        try:
            folder = Path(
                huggingface_hub.snapshot_download(
                    source.repo,
                    repo_type="dataset",
                    revision=source.revision,
                    cache_dir=cache,
                    allow_patterns=list(source.splits.values()),
                    endpoint=os.environ.get("HF_ENDPOINT") or None,
                )
            )
        except (HfHubHTTPError, EntryNotFoundError, OSError) as err:  # OSError: connection, missing cache
            reasons.append(f"{source.repo}@{source.revision}: {_first_line(err)}")
            continue
        files = {split: _matching(folder, pattern) for split, pattern in source.splits.items()}
        missing = [f"{split} ({source.splits[split]})" for split, found in files.items() if not found]
        if missing:
            reasons.append(f"{source.repo}@{source.revision}: no file for {', '.join(missing)}")
            continue
        splits = {split: _write_split(out / name / f"{split}.jsonl", folder, found) for split, found in files.items()}
        return {"repo": source.repo, "revision": source.revision, "commit": folder.name, "splits": splits}
    why = f"{TASKS[name].withdrawn}; " if TASKS[name].withdrawn else ""
    raise DownloadError(f"{name}: cannot be obtained: {why}tried {'; '.join(reasons)}")


def _matching(folder: Path, pattern: str) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and fnmatch.fnmatch(p.relative_to(folder).as_posix(), pattern)
    )


def _write_split(target: Path, folder: Path, files: list[Path]) -> dict[str, Any]:
    """All rows of ``files`` (shards in name order) as JSON Lines; refuses to replace a different file."""
    rows = [record for file in files for _, record in iter_rows(str(file))]
    text = "".join(_json_line(r) for r in rows)
    if target.exists() and target.read_bytes() != text.encode("utf-8"):
        raise DownloadError(f"{target} exists with other content; move it away or choose another DIR")
    atomic_write_text(target, text)
    return {
        "file": target.name,
        "rows": len(rows),
        "sources": [
            {"path": f.relative_to(folder).as_posix(), "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
            for f in files
        ],
    }


def _write_own(path: Path, text: str) -> None:
    """Write a file this command owns: a same-named file that an earlier download did not write stays."""
    if path.exists() and MARK not in path.read_text(encoding="utf-8", errors="replace")[:200]:
        raise DownloadError(
            f"{path} exists and was not written by youri eval --download; move it away or choose another DIR"
        )
    atomic_write_text(path, text)


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"  # default: e.g. a Parquet timestamp


def _recipe_section(out: Path, fetched: dict[str, dict]) -> str:
    data = {}
    for name, info in fetched.items():
        task = TASKS[name]
        entry = {"eval": f"{name}/{task.split}.jsonl"}
        if "train" in info["splits"] and "fewshot" in task.data_keys:
            entry["fewshot"] = f"{name}/train.jsonl"
        data[name] = entry
    header = f"# {MARK}: paste into a recipe's eval: section, or pass --data_dir and --data\n"
    return header + yaml.safe_dump({"data_dir": str(out.resolve()), "data": data}, allow_unicode=True, sort_keys=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
