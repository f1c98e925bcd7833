"""The one training loop of youri: continued pretraining and SFT both call ``train``.

Contract (other stages build on it; change it only together with them)
--------------------------------------------------------------------
``train(model, *, cfg: TrainConfig, batches: BatchSource, evals: dict[str, EvalFn], run_dir, dist) -> dict``

* ``model`` — a plain HF causal LM (fp32 master weights, on CPU). ``train`` moves it to
  ``dist.device``, applies activation checkpointing, ``torch.compile`` and FSDP2
  (``distributed.shard_model``) as configured — in place, so after ``train`` the caller exports it with
  ``checkpoint.export_model(model, tokenizer, out, dist)``.
* ``batches.micro_batches(step, rank, world) -> list[dict[str, Tensor]]`` — this rank's micro-batches
  for optimizer step ``step`` (0-based). It must be a pure function of its arguments: that makes resume
  exact and the data position checkpointable (it *is* the step). Each dict holds ``input_ids [b, T]``
  and ``labels [b, T]`` (aligned like HF, -100 = not supervised; ``losses.token_loss_sum`` shifts) and
  optionally extra model kwargs (``position_ids``, ``attention_mask``) passed to the model unchanged.
  Every rank must return the same number of micro-batches.
* ``evals[name](rank, world) -> Iterable[dict]`` — this rank's micro-batches of a fixed held-out set
  (same number on every rank). The loop reports the token-weighted mean loss and ``ppl = exp(loss)``
  over all ranks, at step 0 (fresh runs), every ``eval_every`` steps and at the end.
* Loss normalisation: per optimizer step the loop counts the supervised tokens of all micro-batches,
  sums that count over ranks and divides the summed loss by this GLOBAL count, so
  batch 1 x accumulation 8 == batch 8 x accumulation 1 == 2 ranks x batch 4, for any label mask.
* ``run_dir`` holds ``checkpoints/`` (``checkpoint.save``/``load``, ``resume``) and ``tensorboard/``.
* Returns the curves: ``train_loss``/``lr``/``grad_norm`` as ``[step, value]`` lists, ``eval`` as
  ``{name: [[step, loss, ppl], ...]}``, ``initial``/``final`` ppl per eval, tokens, tok/s, MFU.

Optimiser: AdamW (fused where the device supports it; no weight decay on norms and biases), linear
warmup then cosine decay to ``min_lr`` (a pure function of the step), gradient clipping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Iterable, Literal, Protocol

import torch
from tqdm.auto import tqdm

from youri.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, Seed
from youri.families import decoder_layers
from youri.io import DataError
from youri.train import checkpoint
from youri.train.distributed import Dist, set_gradient_sync, shard_model
from youri.train.estimate import flops_per_token, peak_flops
from youri.train.losses import TokenObjective, token_loss_sum


@dataclass
class TrainConfig:
    lr: PositiveFloat = 3e-4
    """Peak learning rate (after warmup)."""
    min_lr: NonNegativeFloat = 3e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: NonNegativeInt = 10
    """Linear warmup steps."""
    max_steps: PositiveInt = 100
    """Optimizer steps in total (the cosine schedule ends here)."""
    micro_batch_size: PositiveInt = 8
    """Sequences per forward pass per process."""
    grad_accum: PositiveInt = 1
    """Micro-batches per optimizer step; global batch = micro_batch_size x grad_accum x processes."""
    weight_decay: NonNegativeFloat = 0.1
    """AdamW weight decay (matrices only)."""
    betas: list[Annotated[float, Range(min=0, max=1, max_open=True)]] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    grad_clip: NonNegativeFloat = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    eval_every: NonNegativeInt = 50
    """Held-out perplexity every N steps (and at step 0 and the end; 0 = only at the ends)."""
    eval_batches: PositiveInt = 8
    """Micro-batches per held-out set and evaluation."""
    save_every: Annotated[int, Range(min=0, allow=(-1,))] = 0
    """Checkpoint every N steps (and at the end; 0 = only at the end; -1 = never, e.g. benchmarks)."""
    keep_last: PositiveInt = 2
    """Checkpoints kept."""
    resume: str = "auto"
    """'auto' = latest complete checkpoint in the run folder if any, 'none', or a checkpoint folder."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype: bf16 autocast (master weights stay fp32); 'auto' = bf16 on GPU, fp32 on CPU."""
    compile: bool = False
    """torch.compile each decoder layer."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in the backward pass (less memory, ~30% more compute)."""
    log_every: PositiveInt = 1
    """Log line every N steps."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)."""
    seed: Seed = 0
    """Seed of the data order and of torch's RNG."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bitwise-reproducible runs (and resumes) on CPU."""
    peak_tflops: NonNegativeFloat = 0.0
    """Peak bf16 TFLOP/s per device for MFU; 0 = known GPU from its name, n/a on CPU."""
    progress: bool = True
    """Show a tqdm progress bar."""


class BatchSource(Protocol):
    def micro_batches(self, step: int, rank: int, world: int) -> list[dict[str, torch.Tensor]]: ...


EvalFn = Callable[[int, int], Iterable[dict[str, torch.Tensor]]]


class Objective(Protocol):
    """What one optimizer step minimises (``youri.train.losses``: ``TokenObjective``, ``PreferenceObjective``)."""

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """How many units (supervised tokens, preference pairs) this micro-batch's loss sums over."""
        ...

    def loss_sum(self, forward, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss summed over the units, and detached statistics summed the same way (logged per unit);
        ``forward(model_kwargs) -> logits`` runs the model under the loop's autocast."""
        ...


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def prepare_model(model, cfg: TrainConfig, dist: Dist):
    """Device, activation checkpointing, compile, FSDP2 — in the order torchtitan applies them."""
    model.to(dist.device).train()
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        for layer in decoder_layers(model):
            layer.compile()
    amp = compute_dtype(cfg, dist.device)
    return shard_model(model, dist, param_dtype=amp if amp != torch.float32 else None)


def build_optimizer(model, cfg: TrainConfig, dist: Dist) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # One fused kernel per step on GPU and CPU; sharded (DTensor) params on CPU take the foreach path.
    fused = dist.device.type == "cuda" or not dist.enabled
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused, foreach=None if fused else True)


@torch.no_grad()
def evaluate(model, evals: dict[str, EvalFn], dist: Dist, amp: torch.dtype) -> dict[str, tuple[float, float]]:
    """``{name: (mean loss per supervised token, perplexity)}`` over every rank's held-out batches."""
    model.eval()
    results = {}
    for name, fn in evals.items():
        total = torch.zeros(2, dtype=torch.float64, device=dist.device)
        for batch in fn(dist.rank, dist.world):
            batch = {k: v.to(dist.device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with _autocast(dist.device, amp):
                loss_sum, n = token_loss_sum(model(**batch).logits, labels)
            total += torch.stack([loss_sum.double(), n.double()])
        loss = (dist.all_reduce_sum(total)[0] / total[1].clamp(min=1)).item()
        results[name] = (loss, math.exp(min(loss, 700.0)))
    model.train()
    return results


def train(
    model,
    *,
    cfg: TrainConfig,
    batches: BatchSource,
    evals: dict[str, EvalFn],
    run_dir,
    dist: Dist,
    objective: Objective | None = None,
) -> dict:
    objective = objective or TokenObjective()
    if dist.device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(cfg.seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(cfg.deterministic or was_deterministic)
    amp = compute_dtype(cfg, dist.device)
    model = prepare_model(model, cfg, dist)
    optimizer = build_optimizer(model, cfg, dist)
    run_dir, ckpt_root = Path(run_dir), Path(run_dir) / "checkpoints"
    hist = {"train_loss": [], "lr": [], "grad_norm": [], "eval": {name: [] for name in evals}, "stats": {}}

    # ---------------------------------------------------------------- resume or start fresh
    start = 0
    found = _resume(cfg, ckpt_root, model, optimizer, dist)
    if found is not None:
        resume_from, state = found
        start, hist = state["step"], state["history"]
        dist.print0(f"resumed from {resume_from} at step {start}")
    else:
        _record_evals(hist, 0, evaluate(model, evals, dist, amp), dist)

    # ---------------------------------------------------------------- the loop
    log = _Logger(cfg, dist, run_dir, model.config, start)
    for step in range(start, cfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = batches.micro_batches(step, dist.rank, dist.world)
        n_tokens = dist.all_reduce_sum(sum(objective.units(b) for b in micro).double().to(dist.device))
        loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        stat_sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro):
            set_gradient_sync(model, i == len(micro) - 1)
            batch = {k: v.to(dist.device, non_blocking=True) for k, v in batch.items()}
            loss, stats = objective.loss_sum(_forward(model, dist.device, amp), batch)
            # FSDP averages gradients over ranks; x world turns that into a sum over the global batch.
            (loss * (dist.world / n_tokens.clamp(min=1))).backward()
            loss_sum += loss.detach()
            for name, value in stats.items():
                stat_sums[name] = stat_sums.get(name, 0) + value
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean_loss = (dist.all_reduce_sum(loss_sum) / n_tokens.clamp(min=1)).item()
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        done = step + 1
        hist["train_loss"].append([done, mean_loss])
        hist["lr"].append([done, lr])
        hist["grad_norm"].append([done, grad_norm])
        step_stats = {k: (dist.all_reduce_sum(v) / n_tokens.clamp(min=1)).item() for k, v in stat_sums.items()}
        for name, value in step_stats.items():
            hist.setdefault("stats", {}).setdefault(name, []).append([done, value])
        tokens = sum(b["input_ids"].numel() for b in micro) * dist.world
        log.step(
            done, mean_loss, lr, grad_norm, tokens, time.perf_counter() - t0, micro[0]["input_ids"].shape[1], step_stats
        )

        last = done == cfg.max_steps
        if evals and (last or (cfg.eval_every > 0 and done % cfg.eval_every == 0)):
            _record_evals(hist, done, evaluate(model, evals, dist, amp), dist, log)
        if cfg.save_every >= 0 and (last or (cfg.save_every > 0 and done % cfg.save_every == 0)):
            checkpoint.save(
                ckpt_root,
                done,
                model,
                optimizer,
                {"history": hist, "data_position": done},
                dist,
                keep_last=cfg.keep_last,
            )
    log.close()
    torch.use_deterministic_algorithms(was_deterministic)  # a global switch: leave it as we found it
    return _summary(hist, log)


# ---------------------------------------------------------------------------- helpers


def _resume(cfg: TrainConfig, ckpt_root: Path, model, optimizer, dist: Dist) -> tuple[Path, dict] | None:
    """``(checkpoint, its state)`` to continue from, or None. ``resume: auto`` passes over a truncated or
    corrupt newest checkpoint, saying so; a checkpoint named in ``resume`` must be complete."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        return checkpoint.resume_latest(ckpt_root, model, optimizer, dist)
    reason = checkpoint.problem(cfg.resume)
    if reason is not None:
        raise DataError(f"resume: {cfg.resume} is not a complete checkpoint ({reason})")
    return Path(cfg.resume), checkpoint.load(cfg.resume, model, optimizer, dist)


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of giving it back to the OS.

    By default every buffer over a few MB (logits, their gradient, the softmax) is a fresh ``mmap``
    that is unmapped when freed, so each training step page-faults all of them back in: ~210k minor
    faults and ~18 % of the step on the CPU benchmark model. With the mmap threshold at 1 GiB and no
    trimming, the same heap memory is reused step after step (~40k faults). Process-wide and kept
    for the life of the process (resident memory stays at its peak); a no-op off glibc. Returns
    whether the settings were applied.
    """

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h; mallopt takes a C int
    return bool(mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _forward(model, device: torch.device, amp: torch.dtype):
    """``forward(model_kwargs) -> logits`` under the loop's autocast (what an ``Objective`` calls)."""

    def forward(kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        with _autocast(device, amp):
            return model(**kwargs).logits

    return forward


def _autocast(device: torch.device, amp: torch.dtype):
    return torch.autocast(device.type, dtype=amp) if amp != torch.float32 else nullcontext()


def _record_evals(hist: dict, step: int, results: dict, dist: Dist, log: "_Logger | None" = None) -> None:
    for name, (loss, ppl) in results.items():
        hist["eval"][name].append([step, loss, ppl])
    if results:
        line = f"eval step {step} | " + " | ".join(
            f"{n} loss {loss:.4f} ppl {p:.2f}" for n, (loss, p) in results.items()
        )
        log.write(line) if log else dist.print0(line)
        if log:
            for name, (_, ppl) in results.items():
                log.scalar(f"{name}/ppl", ppl, step)


def _summary(hist: dict, log: "_Logger") -> dict:
    evals = hist["eval"]
    return {
        **hist,
        "steps": len(hist["train_loss"]),
        "tokens": log.tokens,
        "tokens_per_s": log.median_tok_s(),
        "mfu": log.median_mfu(),
        "initial": {n: c[0][2] for n, c in evals.items() if c},
        "final": {n: c[-1][2] for n, c in evals.items() if c},
    }


class _Logger:
    """One line per step (step, loss, lr, grad norm, tok/s, MFU, peak memory, ETA) + tqdm + TensorBoard."""

    def __init__(self, cfg: TrainConfig, dist: Dist, run_dir: Path, model_config, start: int):

        self.cfg, self.dist, self.model_config = cfg, dist, model_config
        name = torch.cuda.get_device_name(dist.device) if dist.device.type == "cuda" else "cpu"
        self.peak = peak_flops(name, cfg.peak_tflops)
        self.bar = tqdm(
            total=cfg.max_steps,
            initial=start,
            disable=not (cfg.progress and dist.is_main),
            dynamic_ncols=True,
            leave=False,
        )
        self.tb = None
        if cfg.tensorboard and dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from err
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.tokens, self.times, self.tok_s, self.mfus = 0, [], [], []

    def step(
        self,
        step: int,
        loss: float,
        lr: float,
        gnorm: float,
        tokens: int,
        dt: float,
        seq_len: int,
        stats: dict[str, float] | None = None,
    ) -> None:
        self.tokens += tokens
        self.times.append(dt)
        tok_s = tokens / dt
        self.tok_s.append(tok_s)
        mfu = tok_s * flops_per_token(self.model_config, seq_len) / (self.peak * self.dist.world) if self.peak else None
        if mfu is not None:
            self.mfus.append(mfu)
        self.bar.update(1)
        self.scalar("train/loss", loss, step)
        self.scalar("train/lr", lr, step)
        for name, value in (stats or {}).items():
            self.scalar(f"train/{name}", value, step)
        if step % self.cfg.log_every and step != self.cfg.max_steps:
            return
        recent = sorted(self.times[-20:])[len(self.times[-20:]) // 2]  # median: robust to eval/save pauses
        eta = recent * (self.cfg.max_steps - step)
        self.write(
            f"step {step}/{self.cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | gnorm {gnorm:.3f} | "
            + "".join(f"{name} {value:.4f} | " for name, value in (stats or {}).items())
            + f"tok/s {tok_s:,.0f} | mfu {f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | "
            f"mem {_peak_memory_gib(self.dist.device):.2f}GiB | eta {_hms(eta)}"
        )

    def write(self, line: str) -> None:
        if self.dist.is_main:
            self.bar.write(line) if not self.bar.disable else print(line, flush=True)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def median_tok_s(self) -> float | None:
        return sorted(self.tok_s)[len(self.tok_s) // 2] if self.tok_s else None

    def median_mfu(self) -> float | None:
        return sorted(self.mfus)[len(self.mfus) // 2] if self.mfus else None

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
