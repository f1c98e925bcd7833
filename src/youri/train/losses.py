"""Next-token cross-entropy: the ONLY place in youri where the training loss is computed.

``labels`` are aligned with ``input_ids`` exactly as in Hugging Face (``labels[t]`` is the token at
position ``t``; ``-100`` marks a position that is not supervised) and this function does the shift:
logits at position ``t`` predict ``labels[t + 1]``. It returns the *sum* over supervised tokens and
their count, so that a caller can normalise by a count taken over several micro-batches and ranks
(``trainer.train`` divides by the global count of one optimizer step; batch 1 x accumulation 8 then
equals batch 8 x accumulation 1, for pretraining and for SFT masks alike).

Why not ``F.cross_entropy``: for a small model the ``[tokens, vocab]`` logits are the largest tensor
of the step, and the stock op walks them through main memory ~6 times (log-softmax out, NLL grad,
log-softmax grad). ``_SumCrossEntropy`` keeps only the per-row log-sum-exp and, in backward, forms
``softmax - onehot`` in place in one new buffer (softmax, one scatter, one row scale) that becomes the
gradient: same values (fp32 arithmetic), fewer passes, less memory. The labels are shifted instead of
the logits (no copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from youri.prompts import IGNORE_INDEX


def supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """How many positions ``token_loss_sum`` will score (labels after the shift that are not -100)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -log p(label), number of supervised tokens)`` for logits ``[b, T, V]`` and labels ``[b, T]``."""
    targets = F.pad(labels.to(logits.device), (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    loss_sum = _SumCrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets)
    return loss_sum, (targets != IGNORE_INDEX).sum()


class _SumCrossEntropy(torch.autograd.Function):
    """``sum_i [logsumexp(z_i) - z_i[y_i]]`` over rows with ``y_i != -100``; fp32 math for any logits dtype."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = targets != IGNORE_INDEX
        safe = torch.where(mask, targets, 0)
        lse = torch.logsumexp(logits.float(), dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1).float()
        ctx.save_for_backward(logits, safe, mask, lse)
        return ((lse - picked) * mask).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe, mask, lse = ctx.saved_tensors
        grad = torch.softmax(logits.float(), dim=-1)  # one fused pass; a new tensor, logits stay intact
        grad.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))  # softmax - onehot
        grad.mul_((mask.float() * grad_out.float())[:, None])
        return grad.to(logits.dtype), None
