"""youri pretrain and the shared training loop: exact resume, FSDP2 == one process, accumulation
invariance, the exported folder, the 7B dry run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from youri.config import build_config
from youri.data.shards import FORMAT, INDEX, token_dtype, write_shard
from youri.io import DataError, atomic_write_json
from youri.testing import save_random_llama
from youri.train import checkpoint
from youri.train.losses import token_loss_sum

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {
    "max_steps": 6,
    "warmup_steps": 2,
    "micro_batch_size": 4,
    "grad_accum": 2,
    "eval_every": 3,
    "eval_batches": 1,
    "save_every": 2,
    "deterministic": True,
    "progress": False,
}


def english_docs(n: int = 300, seed: int = 0) -> list[str]:
    words = (
        "the king queen speaks of love and war in fair verona where we lay our scene from ancient "
        "grudge break to new mutiny"
    ).split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


def write_token_data(folder: Path, vocab: int, seq_len: int = 32, rows: dict | None = None, eos_id: int = 2) -> Path:
    """A 'youri data'-format folder of random token rows (the loop does not care what the tokens mean)."""
    rng = np.random.default_rng(0)
    dtype = token_dtype(vocab)
    splits = {}
    for split, n in (rows or {"train": 64, "val/ja": 8, "val/en": 8}).items():
        data = rng.integers(3, vocab, size=(n, seq_len))
        splits[split] = [{"file": f"{split}/00000.bin", **write_shard(folder / split / "00000.bin", data, dtype)}]
    atomic_write_json(
        folder / INDEX,
        {
            "format": FORMAT,
            "seq_len": seq_len,
            "dtype": dtype.str,
            "eos_id": eos_id,
            "vocab_size": vocab,
            "splits": splits,
        },
    )
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama + its tokenizer (trained here, hermetic) and random-token shards."""
    from youri.train.init_base import train_tokenizer

    root = tmp_path_factory.mktemp("pretrain")
    tok = train_tokenizer(english_docs(), 300, root / "model")
    save_random_llama(root / "model", tok, tie_word_embeddings=False)
    return {"root": root, "model": root / "model", "data": write_token_data(root / "data", len(tok))}


def pretrain_cfg(tiny, out, **train):
    from youri.train.pretrain import Config

    return build_config(
        Config, {"model": str(tiny["model"]), "data": str(tiny["data"]), "out": str(out), "train": {**TRAIN, **train}}
    )


def cli(tiny, out, *extra, env=None, launcher=(sys.executable, "-m", "youri")):
    args = [*launcher, "pretrain", "--model", str(tiny["model"]), "--data", str(tiny["data"]), "--out", str(out)]
    for key, value in TRAIN.items():
        args += [f"--train.{key}", str(value).lower()]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        **(env or {}),
    }
    return subprocess.Popen(
        [*args, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def losses(out: Path) -> list[float]:
    return [loss for _, loss in json.loads((out / "metrics.json").read_text())["loss_curve"]]


def test_token_loss_sum_matches_hf_and_shifts():
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    labels[0, :3] = -100
    loss_sum, n = token_loss_sum(logits, labels)
    assert n.item() == 2 * 4 - 2  # the first label is never predicted; two more are masked
    hf = ForCausalLMLoss(logits, labels, vocab_size=11)
    torch.testing.assert_close(loss_sum / n, hf)


def test_accumulation_invariance(tiny, tmp_path):
    """batch 1 x accumulation 8 == batch 8 x accumulation 1 (the loss is normalised by the global token count)."""
    from youri.data.shards import TokenShards
    from youri.model import load_model
    from youri.train.batches import ShardBatches
    from youri.train.distributed import Dist
    from youri.train.trainer import TrainConfig, train

    curves = []
    for micro, accum in [(1, 8), (8, 1)]:
        cfg = build_config(
            TrainConfig, {**TRAIN, "micro_batch_size": micro, "grad_accum": accum, "max_steps": 4, "save_every": 0}
        )
        rows = TokenShards.open(tiny["data"], "train")
        result = train(
            load_model(tiny["model"], dtype=torch.float32),
            cfg=cfg,
            batches=ShardBatches(rows, micro, accum),
            evals={},
            run_dir=tmp_path / f"r{micro}",
            dist=Dist(),
        )
        curves.append([loss for _, loss in result["train_loss"]])
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-6)
    assert curves[0][0] != curves[0][-1]


def test_exact_resume_after_sigkill_and_kill_during_save(tiny, tmp_path):
    from youri.train.pretrain import run

    reference = run(pretrain_cfg(tiny, tmp_path / "ref"))
    ref_losses = [loss for _, loss in reference["loss_curve"]]
    out = tmp_path / "killed"
    partial = out.with_name("killed.partial") / "checkpoints"

    # 1) killed while writing the step-4 checkpoint: step 2 must survive, the half-written one must not count.
    proc = cli(tiny, out, env={checkpoint.KILL_IN_SAVE_ENV: "4"})
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == -signal.SIGKILL, log
    assert checkpoint.latest(partial) == partial / "step_00000002"
    assert (partial / ".tmp-step_00000004").is_dir() and not (partial / "step_00000004").exists()

    # 2) resumed, then SIGKILLed from outside as soon as the step-4 checkpoint is complete.
    proc = cli(tiny, out)
    deadline = time.time() + 120
    while checkpoint.latest(partial) != partial / "step_00000004" and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate(timeout=60)[0]
    assert "resumed from" in log and "step_00000002" in log, log
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"

    # 3) resumed to the end: the same per-step losses, bitwise, as the uninterrupted run.
    proc = cli(tiny, out)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, log
    assert "resumed from" in log
    assert losses(out) == ref_losses
    assert json.loads((out / "metrics.json").read_text())["final_ppl"] == reference["final_ppl"]


def test_torchrun_two_processes_fsdp_matches_one_process(tiny, tmp_path):
    """2 ranks x micro 4 x accum 1 (gloo, FSDP2-sharded) == 1 process x micro 4 x accum 2."""
    from youri.train.pretrain import run

    single = run(pretrain_cfg(tiny, tmp_path / "single", save_every=0))
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "youri")
    proc = cli(tiny, tmp_path / "fsdp", "--train.grad_accum", "1", "--train.save_every", "3", launcher=launcher)
    log = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, log
    assert "2 process(es)" in log
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), [loss for _, loss in single["loss_curve"]], rtol=1e-5)
    for split, ppl in single["final_ppl"].items():
        assert metrics["final_ppl"][split] == pytest.approx(ppl, rel=1e-5)
    # The gathered FSDP export equals the single-process weights.
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("single", "fsdp"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_output_loads_with_plain_transformers(tiny, tmp_path):
    """The folder needs no youri: AutoModel/AutoTokenizer load it, and its logits reproduce the final ppl."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from youri.data.shards import TokenShards
    from youri.train.pretrain import run

    metrics = run(pretrain_cfg(tiny, tmp_path / "out", save_every=0))
    out = tmp_path / "out"
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert GenerationConfig.from_pretrained(out).eos_token_id == tok.eos_token_id == 2
    rows = torch.from_numpy(TokenShards.open(tiny["data"], "val/ja").batch(list(range(4))))
    with torch.no_grad():
        loss_sum, n = token_loss_sum(model(input_ids=rows).logits, rows)
    assert float(torch.exp(loss_sum / n)) == pytest.approx(metrics["final_ppl"]["val/ja"], rel=1e-5)
    assert metrics["final_ppl"]["val/ja"] != metrics["initial_ppl"]["val/ja"]
    assert not (out / "checkpoints").exists()


def test_tokenizer_mismatch_is_a_clear_error(tiny, tmp_path):
    from youri.train.pretrain import run

    data = write_token_data(tmp_path / "other", vocab=32000, eos_id=2)
    cfg = pretrain_cfg(tiny, tmp_path / "out")
    cfg.data = str(data)
    with pytest.raises(DataError, match="not made with this model's tokenizer.*vocab_size 32000"):
        run(cfg)


def test_dry_run_7b_recipe(capsys):
    from youri.cli import main

    assert main(["pretrain", "--recipe", str(ROOT / "recipes" / "youri-7b.yaml"), "--dry_run", "true"]) == 0
    text = capsys.readouterr().out
    assert "6.74 B parameters" in text
    assert "nothing loaded" in text and "wall clock" in text
    from youri.config import load_recipe
    from youri.train.pretrain import Config, dry_run

    plan = dry_run(build_config(Config, load_recipe(ROOT / "recipes" / "youri-7b.yaml")["pretrain"]))
    assert 3.5e6 <= plan["global_batch_tokens"] <= 4.5e6 and plan["seq_len"] == 4096
    assert 38e9 <= plan["total_tokens"] <= 42e9
    assert plan["memory_per_gpu_gib"]["total"] < 80


PAGE_FAULTS_PROBE = """
import resource, sys, torch
from youri.train.trainer import retain_freed_memory

def faults_filling(mb):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(mb << 18)  # float32: mb MiB, every page touched
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

applied = sys.argv[1] == "retain" and retain_freed_memory()
print(applied, *[faults_filling(64) for _ in range(4)])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tuning (mallopt) is Linux-only")
def test_cpu_training_reuses_freed_buffers_instead_of_page_faulting():
    """retain_freed_memory: freed 64 MB buffers are reused by the next ones instead of being unmapped and
    page-faulted back in (glibc's default for blocks over 32 MB). In a fresh process: the heap state of a
    long test session decides where glibc can grow its heap."""

    def probe(mode: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", PAGE_FAULTS_PROBE, mode], capture_output=True, text=True, check=True
        )
        return done.stdout.split()

    applied, *tuned = probe("retain")
    _, *default = probe("default")
    tuned, default = [int(n) for n in tuned], [int(n) for n in default]
    assert applied == "True"
    assert min(default[1:]) > 4000  # 16384 pages of 4 KiB: by default every buffer is new memory
    assert tuned[-1] < default[-1] / 8, (tuned, default)
