"""Process-group setup and FSDP2 sharding: the one place that knows about torchrun.

One process (``python -m youri ...``) and ``torchrun --nproc_per_node=N`` (or multi-node, see
docs/launch.md) run the same training loop. ``init_distributed`` reads the torchrun environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), picks NCCL on GPUs and gloo on CPU, and returns a ``Dist``.
``shard_model`` applies FSDP2 (``torch.distributed.fsdp.fully_shard``): every decoder layer is its
own unit (its parameters are all-gathered just before use and freed after), then the root, which
holds the embeddings, final norm and LM head. Gradients are reduce-scattered in fp32.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from youri.families import decoder_layers


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place); a no-op for one process."""
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def print0(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)


def init_distributed() -> Dist:
    """A ``Dist`` for this process; initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not torch_dist.is_initialized():
        torch_dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30), device_id=device if cuda else None
        )
    return Dist(rank=rank, world=world, local_rank=local_rank, device=device)


def close_distributed(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def shard_model(model, dist: Dist, *, param_dtype: torch.dtype | None = None):
    """Apply FSDP2 in place (per decoder layer, then the root) when running on several processes.

    ``param_dtype`` (e.g. bf16) makes FSDP all-gather parameters in that dtype for compute while the
    sharded fp32 master weights and the fp32 gradient reduction stay exact.
    """
    if not dist.enabled:
        return model

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def set_gradient_sync(model, enabled: bool) -> None:
    """Skip FSDP2's reduce-scatter on all but the last micro-batch of an accumulation step."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
