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
from pathlib import Path
from typing import Any, Iterable

from youri import __version__
from youri.config import config_to_dict
from youri.io import atomic_write_json, read_json

MANIFEST = "youri.json"
METRICS = "metrics.json"
PARTIAL_SUFFIX = ".partial"


class StageExistsError(FileExistsError):
    """The output folder already holds a complete stage; refuse to clobber it silently."""


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
        self.config = config_to_dict(config) if not isinstance(config, dict) else config
        self.parent = str(parent) if parent is not None else None
        self.inputs = {str(p): fingerprint(p) for p in inputs}
        self.facts: dict[str, Any] = {}
        """Derived fingerprints worth recording that are not input paths (e.g. a calibration sample's hash)."""
        self.fingerprint = config_fingerprint(stage, self.config, self.inputs)
        self.path = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self.finished = False
        if is_complete(self.out) and not overwrite:
            raise StageExistsError(
                f"{self.out} already holds a complete '{read_manifest(self.out).get('stage')}' "
                "stage; choose another --out or pass --overwrite"
            )

    def __enter__(self) -> "StageWriter":
        stamp = self.path / ".fingerprint"
        if self.path.exists() and (not stamp.is_file() or stamp.read_text() != self.fingerprint):
            # Progress left by a run with another config or other inputs is not ours to resume.
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        stamp.write_text(self.fingerprint)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return False  # on error the partial folder stays, for resume; it never looks complete

    def finish(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` and ``youri.json``, then rename the partial folder into place."""
        atomic_write_json(self.path / METRICS, metrics)
        atomic_write_json(self.path / MANIFEST, self.manifest())
        (self.path / ".fingerprint").unlink(missing_ok=True)
        if self.out.exists():
            trash = self.out.with_name(self.out.name + ".old")
            shutil.rmtree(trash, ignore_errors=True)
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
