"""Issue 14, class 6 (and the command-line side of class 5): interrupts and kills are clean, and input
errors reach the user as youri's one line, not as a traceback.

* ``kill -9`` of ``youri data`` leaves none of its processes (datatrove's manager, forkserver, workers).
* Ctrl-C (SIGINT to the terminal's process group) prints one line and exits 130.
* A truncated or corrupt newest checkpoint is passed over, with a message, for the one before; the
  resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_data import _tiny_bpe
from test_pretrain import losses, pretrain_cfg, tiny  # noqa: F401 -- tiny is a fixture used here

from youri import cli
from youri.data.processes import run_in_process_group
from youri.data.steps import READ_DELAY_ENV
from youri.io import DataError
from youri.stage import read_manifest
from youri.train import checkpoint, pretrain
from youri.train.pretrain import run

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "builtin:corpus_en.txt"
GOOD = b'{"text": "fine line of text"}\n'


def _youri(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m youri ARGS`` in a session of its own: its process group stands for the terminal's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "youri", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_sigint_as_from_a_shell,
    )


def _sigint_as_from_a_shell() -> None:
    """In the child before exec: SIGINT at its default, as an interactive shell starts a foreground command.
    An ignored SIGINT is inherited across exec (a test run launched with ``&`` from a script has one), and a
    Python started with SIGINT ignored keeps ignoring it: the Ctrl-C tests would test the launcher."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _data_run_in_flight(tmp_path: Path, workers: int, tokenizer: Path) -> tuple[subprocess.Popen, list[int]]:
    """A ``youri data`` run whose datatrove tasks have all started (and wait); returns it and its processes."""
    out = tmp_path / "out"
    proc = _youri(
        "data",
        "--tokenizer",
        str(tokenizer),
        "--sources",
        f"[{{path: {CORPUS}, lang: en}}]",
        "--out",
        str(out),
        "--tasks",
        str(workers),
        "--workers",
        str(workers),
        env={READ_DELAY_ENV: "120"},
    )
    logs = tmp_path / "out.partial" / "datatrove" / "logs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(logs.glob("task_*.log"))) < workers:
        time.sleep(0.1)
    time.sleep(1.0)  # the tasks are now inside the (delayed) reader
    assert proc.poll() is None, proc.communicate()
    return proc, _descendants(proc.pid)


def _gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(map(_alive, pids)):
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:  # never leave them to the rest of the suite
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    _tiny_bpe(folder)
    return folder


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_of_youri_data_leaves_no_process_behind(tmp_path, tokenizer, workers):
    proc, processes = _data_run_in_flight(tmp_path, workers, tokenizer)
    assert len(processes) >= (1 if workers == 1 else 4), processes  # the manager; + forkserver and workers
    proc.kill()
    proc.communicate(timeout=60)
    assert _gone(processes) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, tokenizer, workers):
    proc, processes = _data_run_in_flight(tmp_path, workers, tokenizer)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    last = stderr.strip().splitlines()[-1]
    assert last == f"youri data: interrupted; progress is kept in {tmp_path / 'out.partial'} (the same command resumes)"
    assert _gone(processes) == []


def _wait_for_a_minute() -> None:
    time.sleep(60)


def test_ctrl_c_received_by_another_thread_still_stops_the_run():
    """The kernel may deliver a terminal's SIGINT to any thread of ``youri data`` (tqdm's monitor, fsspec's
    loop); Python then only flags it for the main thread. A main thread blocked in a bare ``waitpid`` never
    saw it (Ctrl-C did nothing until the run ended); the waiting parent must notice it within a moment, and
    the child's group goes with it."""
    started = time.time()

    def interrupt_from_this_thread() -> None:
        time.sleep(1.0)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # delivered here, not to the main thread

    helper = threading.Thread(target=interrupt_from_this_thread, daemon=True)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever we inherited
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            run_in_process_group(_wait_for_a_minute)
        helper.join()
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert time.time() - started < 10  # not the minute the child would have taken
    assert not multiprocessing.active_children()


@pytest.mark.parametrize(
    "content, needle, tasks",
    [
        (GOOD + b'{"text": "bad \xff byte"}\n', ":2: not valid UTF-8 (byte 0xff at column 15)", 1),
        (GOOD + b'{"text": "bad \xff byte"}\n', ":2: not valid UTF-8 (byte 0xff at column 15)", 3),
        (GOOD + b'{"text": 5}\n', ":2: field 'text' must be str, got int", 1),
        (GOOD + b'{"text": "cut\n', ":2: malformed JSONL line", 2),
    ],
)
def test_input_errors_reach_the_user_as_one_line_without_traceback(tmp_path, tokenizer, capfd, content, needle, tasks):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(content)
    sources = f"[{{path: {corpus}, lang: en}}]"
    out = tmp_path / "out"
    code = cli.main(
        ["data", "--tokenizer", str(tokenizer), "--sources", sources, "--out", str(out), "--tasks", str(tasks)]
    )
    stdout, stderr = capfd.readouterr()  # file descriptors: datatrove's logger writes there too
    assert code == 2, stderr
    assert "Traceback" not in stdout + stderr and "| ERROR" not in stdout + stderr, stderr
    errors = [line for line in (stdout + stderr).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"youri data: error: {corpus}{needle}"), errors
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints


def _truncate_largest(step: Path) -> str:
    target = max((p for p in step.iterdir() if p.suffix == ".distcp"), key=lambda p: p.stat().st_size)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return target.name


def _garble_state(step: Path) -> str:
    (step / checkpoint.STATE).write_bytes(b'{"step": 6, "hist')
    return checkpoint.STATE


def _remove_metadata(step: Path) -> str:
    (step / ".metadata").unlink()
    return ".metadata"


def _kept_checkpoints(tiny, out: Path):  # noqa: F811
    cfg = pretrain_cfg(tiny, out, keep_last=3)
    cfg.keep_checkpoints = True  # steps 2, 4 and 6 stay in the finished folder
    return cfg


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("reference") / "ref"
    run(_kept_checkpoints(tiny, out))
    return out


@pytest.mark.parametrize("damage", [_truncate_largest, _garble_state, _remove_metadata])
def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(tiny, reference, tmp_path, capsys, damage):  # noqa: F811
    # The same run, killed after its last checkpoint: its partial folder holds steps 2, 4 and 6.
    partial = tmp_path / "again.partial"
    shutil.copytree(reference / "checkpoints", partial / "checkpoints")
    (partial / ".fingerprint").write_text(read_manifest(reference)["fingerprint"])
    newest = partial / "checkpoints" / "step_00000006"
    broken = damage(newest)
    assert broken in checkpoint.problem(newest)
    capsys.readouterr()
    run(_kept_checkpoints(tiny, tmp_path / "again"))
    log = capsys.readouterr().out
    assert f"checkpoint {newest} is incomplete or corrupt" in log and broken in log, log
    assert f"resumed from {partial / 'checkpoints' / 'step_00000004'} at step 4" in log
    assert losses(tmp_path / "again") == losses(reference)


def test_a_named_checkpoint_that_is_incomplete_is_an_error(tiny, reference, tmp_path):  # noqa: F811
    step = tmp_path / "step_00000004"
    shutil.copytree(reference / "checkpoints" / "step_00000004", step)
    name = _truncate_largest(step)
    with pytest.raises(DataError, match=rf"resume: {step} is not a complete checkpoint \({name} has"):
        run(pretrain_cfg(tiny, tmp_path / "out", resume=str(step)))


def test_ctrl_c_in_any_stage_is_one_line_naming_the_progress_kept(tmp_path, monkeypatch, capsys):
    def interrupted(cfg, *, overwrite=False):
        Path(f"{cfg.out}.partial").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "run", interrupted)
    assert cli.main(["pretrain", "--out", str(tmp_path / "p")]) == 130
    assert capsys.readouterr().err == (
        f"youri pretrain: interrupted; progress is kept in {tmp_path / 'p.partial'} (the same command resumes)\n"
    )
