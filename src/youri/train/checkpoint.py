"""Training checkpoints (exact resume) and the final Hugging Face export.

A checkpoint is one folder ``RUN/checkpoints/step_00000100/``::

    .metadata, __*_*.distcp   model + optimizer state, torch.distributed.checkpoint (DCP) format:
                              each rank writes its own shards (FSDP2), one process writes them all
    rng_<rank>.pt             each rank's torch CPU (and CUDA) RNG state
    state.json                written last: step, data position, curves so far, world size

It is written under ``checkpoints/.tmp-step_00000100/`` and renamed into place only when complete,
so a run killed while saving leaves the previous checkpoint intact and the temporary folder is
swept away by the next save. Only the last ``keep_last`` checkpoints are kept. ``latest`` finds the
newest complete one; ``resume_latest`` (``resume: auto``) also checks it -- ``state.json`` readable,
every file present with the size recorded in it -- and, when it is truncated or corrupt or fails to
load, says so and resumes from the one before. The learning-rate schedule is a pure function of the step
and the batches a pure function of the step (see ``trainer``), so step + optimizer + RNG is the
whole training state.

``export_model`` writes the final weights as plain HF safetensors (a gathered full state dict when
the model is FSDP-sharded), loadable by ``AutoModelForCausalLM.from_pretrained`` without youri.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from youri.io import DataError, atomic_write_json, read_json
from youri.model import save_model
from youri.train.distributed import Dist

STEP_DIR = re.compile(r"^step_(\d{8})$")
STATE = "state.json"
# Test hook: SIGKILL this process halfway through writing the checkpoint of that step.
KILL_IN_SAVE_ENV = "YOURI_TEST_KILL_IN_SAVE"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def latest(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root`` (one whose ``state.json`` exists), or None."""
    root = Path(root)
    done = [p for p in root.glob("step_*") if STEP_DIR.match(p.name) and (p / STATE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: p.name, default=None)


def save(
    root: str | os.PathLike, step: int, model, optimizer, state: dict[str, Any], dist: Dist, keep_last: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically (all ranks call this), then prune to ``keep_last``."""
    root = Path(root)
    final, tmp = step_dir(root, step), root / f".tmp-step_{step:08d}"
    if dist.is_main:
        for stale in root.glob(".tmp-step_*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng_{dist.rank}.pt")
    if os.environ.get(KILL_IN_SAVE_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()
    if dist.is_main:
        # Every file's size, so that a truncated checkpoint (a full disk, a bad copy) is caught at resume.
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_json(tmp / STATE, {**state, "step": step, "world": dist.world, "files": files})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob("step_*") if STEP_DIR.match(p.name))[: -max(keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def problem(path: str | os.PathLike) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from, or None when it looks complete."""
    path = Path(path)
    try:
        state = read_json(path / STATE)
    except (OSError, DataError) as err:
        return f"unreadable {STATE}: {err}"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE} holds no step"
    files = state.get("files")
    if not isinstance(files, dict):  # saved before sizes were recorded
        return None if (path / ".metadata").is_file() else "no .metadata"
    for name, size in files.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if (path / name).stat().st_size != size:
            return f"{name} has {(path / name).stat().st_size} bytes, {size} were written"
    return None


def resume_latest(root: str | os.PathLike, model, optimizer, dist: Dist) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint under ``root`` that is complete and loads: ``(path, state)``, or None
    when there is none. Each one passed over is reported; a failed load leaves the model half-restored,
    so when nothing loads after one, starting over from those weights would be wrong: an error."""
    root = Path(root)
    done = [p for p in root.glob("step_*") if STEP_DIR.match(p.name) and (p / STATE).is_file()] if root.is_dir() else []
    failed_load = None
    for path in sorted(done, key=lambda p: p.name, reverse=True):
        reason = problem(path)
        if reason is None:
            try:
                return path, load(path, model, optimizer, dist)
            except Exception as err:  # any failure to read it means: try the one before
                reason = failed_load = f"it does not load: {type(err).__name__}: {err}"
        dist.print0(f"checkpoint {path} is incomplete or corrupt ({reason}); resuming from the one before")
    if failed_load is not None:
        raise DataError(f"{root}: no checkpoint loads ({failed_load}); delete {root} to train from the start")
    return None


def load(path: str | os.PathLike, model, optimizer, dist: Dist) -> dict[str, Any]:
    """Restore model, optimizer and this rank's RNG from ``path``; return its ``state.json``."""
    path = Path(path)
    state = read_json(path / STATE)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optim": optim_sd}
    with _quiet_single_process():
        dcp.load(target, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    rng_file = path / f"rng_{dist.rank}.pt"
    if state.get("world") == dist.world and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return state


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it 'assumes' one process when there is no process group: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def export_model(model, tokenizer, out_dir: str | os.PathLike, dist: Dist, *, dtype: torch.dtype | None = None) -> None:
    """Plain HF safetensors + config + generation config + tokenizer in ``out_dir`` (rank 0 writes).

    ``dtype`` casts the floating-point weights (e.g. back to the bf16 of the input checkpoint while
    training kept fp32 master weights).
    """

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main:
        model.config.use_cache = True  # training switched the KV cache off; generation wants it
        if dtype is not None:
            full = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
            model.config.dtype = dtype
        save_model(model, tokenizer, out_dir, state_dict=full)
    dist.barrier()
