"""Next-token cross-entropy: the ONLY place in youri where the training loss is computed.

``labels`` are aligned with ``input_ids`` exactly as in Hugging Face (``labels[t]`` is the token at
position ``t``; ``-100`` marks a position that is not supervised) and this function does the shift:
logits at position ``t`` predict ``labels[t + 1]``. It returns the *sum* over supervised tokens and
their count, so that a caller can normalise by a count taken over several micro-batches and ranks
(``trainer.train`` divides by the global count of one optimizer step; batch 1 x accumulation 8 then
equals batch 8 x accumulation 1 exactly, for pretraining and for SFT masks alike).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many positions ``token_loss_sum`` will score (labels after the shift that are not -100)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log p(label), number of supervised tokens)`` for logits ``[b, T, V]`` and labels ``[b, T]``."""
    logits = logits[:, :-1].reshape(-1, logits.size(-1))
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    # fp32 softmax: a bf16 log-sum-exp over 32k classes loses ~2 digits of the loss.
    loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()
