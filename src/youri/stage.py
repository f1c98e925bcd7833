"""Self-describing stage folders, written atomically.

Every stage (data, pretrain, sft, quantize, eval, ...) writes exactly one folder::

    OUT/
      youri.json     stage, resolved config, parent folder, youri version/commit, input fingerprints
      metrics.json   the stage's numbers (curves, counts, scores)
      ...            the stage's payload (HF weights + tokenizer, token shards, reports)

The folder is built under ``OUT.partial/`` and renamed to ``OUT`` only after ``youri.json`` and
``metrics.json`` are written, so a killed run never leaves a folder that looks complete. A stage that
can resume (``youri data`` shards, training checkpoints) keeps its progress inside ``OUT.partial/``
and finds it there on the next run with the same config fingerprint.

Nothing the user owns is deleted or renamed: ``OUT`` may be absent, an empty folder, or a complete
folder of the *same* stage (recognised by its ``youri.json``), and the latter is replaced only with
``--overwrite``. A file, a link, a non-empty folder without ``youri.json``, another stage's folder, or
an ``OUT.partial`` that youri did not make is a one-line ``StageExistsError`` naming the path, raised
before the stage does any work. When a stage fails, its traceback is kept in ``OUT.partial/error.log``
(the command line shows one line).

Usage::

    with StageWriter(cfg.out, stage="data", config=cfg, inputs=[...]) as stage:
        ... write files under stage.path ...
        stage.finish(metrics)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Any, Iterable

from youri import __version__
from youri.config import config_to_dict
from youri.io import atomic_write_json, read_json

MANIFEST = "youri.json"
METRICS = "metrics.json"
PARTIAL_SUFFIX = ".partial"
ERROR_LOG = "error.log"
PROMPTED_STAGES = ("sft", "prefer")
"""Stages whose recorded ``config.kind`` (instruction | chat) is the prompt format the model was trained in."""


class StageExistsError(FileExistsError):
    """The output path is taken by something youri may not replace (see the module docstring)."""


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file() and (Path(path) / METRICS).is_file()


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``youri.json`` of a stage folder, or ``None`` for a plain (non-youri) folder."""
    manifest = Path(path) / MANIFEST
    return read_json(manifest) if manifest.is_file() else None


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    metrics = Path(path) / METRICS
    return read_json(metrics) if metrics.is_file() else {}


def fingerprint(path: str | os.PathLike) -> str:
    """A content hash of a file or folder. A youri stage folder is summarised by its manifest hash."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is not None:
            return manifest["fingerprint"]
        digest = hashlib.sha256()
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode())
            digest.update(_file_digest(child).encode())
        return digest.hexdigest()
    return _file_digest(path)


def config_fingerprint(stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
    """What decides a stage's output: its name, resolved config (minus ``out``) and input contents."""
    payload = {"stage": stage, "config": {k: v for k, v in config.items() if k != "out"}, "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class StageWriter:
    """Builds a stage folder under ``OUT.partial`` and publishes it atomically on ``finish``."""

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        stage: str,
        config: Any,
        inputs: Iterable[str | os.PathLike] = (),
        parent: str | os.PathLike | None = None,
        overwrite: bool = False,
    ):
        self.out = Path(out)
        self.stage = stage
        self.path = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self.overwrite = overwrite
        check_output(self.out, stage, overwrite)  # before hashing inputs: refuse before any work
        check_partial(self.path)
        self.config = config_to_dict(config) if not isinstance(config, dict) else config
        self.parent = str(parent) if parent is not None else None
        self.inputs = {str(p): fingerprint(p) for p in inputs}
        self.facts: dict[str, Any] = {}
        """Derived fingerprints worth recording that are not input paths (e.g. a calibration sample's hash)."""
        self.fingerprint = config_fingerprint(stage, self.config, self.inputs)
        self.finished = False

    def __enter__(self) -> "StageWriter":
        stamp = self.path / ".fingerprint"
        if self.path.exists() and (not stamp.is_file() or stamp.read_text() != self.fingerprint):
            # Progress left by a run with another config or other inputs is not ours to resume.
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        stamp.write_text(self.fingerprint)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        # On error the partial folder stays, for resume; it never looks complete. The command line shows
        # one line, so the whole traceback is kept beside the progress.
        if exc is not None and isinstance(exc, Exception) and self.path.is_dir():
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            (self.path / ERROR_LOG).write_text(text, encoding="utf-8")
        return False

    def finish(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` and ``youri.json``, then rename the partial folder into place."""
        atomic_write_json(self.path / METRICS, metrics)
        atomic_write_json(self.path / MANIFEST, self.manifest())
        (self.path / ".fingerprint").unlink(missing_ok=True)
        (self.path / ERROR_LOG).unlink(missing_ok=True)  # left by an earlier, failed attempt
        check_output(self.out, self.stage, self.overwrite)  # again: the path may have been taken meanwhile
        if self.out.exists():
            # A fresh, empty sibling to park the replaced folder in: never a name the user may own.
            trash = tempfile.mkdtemp(prefix=f".{self.out.name}.replaced-", dir=self.out.parent)
            os.replace(self.out, trash)
            os.replace(self.path, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.path, self.out)
        self.finished = True
        return self.out

    def manifest(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "youri_version": __version__,
            "git_commit": _git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "parent": self.parent,
            "inputs": self.inputs,
            "facts": self.facts,
            "fingerprint": self.fingerprint,
            "config": self.config,
        }


def check_stage_output(out: str | os.PathLike, stage: str, overwrite: bool) -> None:
    """``StageWriter``'s refusals, for a stage to call before its work (reading data, loading a model)."""
    out = Path(out)
    check_output(out, stage, overwrite)
    check_partial(out.with_name(out.name + PARTIAL_SUFFIX))


def check_output(out: Path, stage: str, overwrite: bool) -> None:
    """Raise ``StageExistsError`` unless ``out`` may become this stage's folder: absent, an empty folder,
    or (with ``overwrite``) a complete folder of the same stage."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a link" if out.is_symlink() else "a file"
        raise StageExistsError(f"{out} is {kind}, not a stage folder; youri never replaces it: choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = read_manifest(out)
    if manifest is None:
        raise StageExistsError(
            f"{out} is a folder youri did not make (no {MANIFEST}); youri never replaces it: choose another --out"
        )
    if manifest.get("stage") != stage:
        raise StageExistsError(
            f"{out} holds a '{manifest.get('stage')}' stage, not a '{stage}' one; youri replaces "
            "only a folder of the same stage: choose another --out"
        )
    if not overwrite:
        raise StageExistsError(
            f"{out} already holds a complete '{stage}' stage; choose another --out or pass --overwrite"
        )


def check_partial(partial: Path) -> None:
    """``OUT.partial`` must be youri's own work folder (stamped, or finished but not yet renamed) or absent."""
    if partial.is_symlink() or (partial.exists() and not partial.is_dir()):
        raise StageExistsError(
            f"{partial} is in the way of the stage's work folder and youri did not make it; "
            "move it away or choose another --out"
        )
    if (
        partial.is_dir()
        and any(partial.iterdir())
        and not any((partial / name).is_file() for name in (".fingerprint", MANIFEST))
    ):
        raise StageExistsError(
            f"{partial} is a folder youri did not make (no .fingerprint); move it away or choose another --out"
        )


def check_new_file(path: str | os.PathLike, overwrite: bool, what: str = "--out") -> None:
    """A single output file (not a stage folder): absent, or an existing regular file with ``overwrite``."""
    path = Path(path)
    if path.is_dir() or path.is_symlink():
        raise StageExistsError(f"{path} is a {'link' if path.is_symlink() else 'folder'}; give {what} a file path")
    if path.exists() and not overwrite:
        raise StageExistsError(f"{path} already exists; choose another {what} or pass --overwrite to replace it")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
