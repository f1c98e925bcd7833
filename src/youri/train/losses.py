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


# ----------------------------------------------------------------------------- objectives of the shared loop


class TokenObjective:
    """Next-token cross-entropy over the supervised tokens (``youri pretrain``, ``youri init``, ``youri sft``):
    the loop divides the summed loss by the global count of supervised tokens of one optimizer step."""

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return supervised_tokens(batch["labels"])

    def loss_sum(self, forward, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch.pop("labels")
        loss_sum, _ = token_loss_sum(forward(batch), labels)
        return loss_sum, {}


# ----------------------------------------------------------------------------- preference losses (youri prefer)
#
# The formulas of TRL 1.16.0 (tests/test_prefer_losses.py runs TRL's own code on the same batch):
#   DPO sigmoid (DPOTrainer, loss_type="sigmoid"):  -logsigmoid(beta * ((c - c_ref) - (r - r_ref))), c and r the
#       summed response log-probs; rewards beta * (logp - logp_ref).
#   ORPO (ORPOTrainer): NLL of the chosen rows -- over prompt AND response, as TRL's concatenated_forward does --
#       minus beta * mean(logsigmoid(log_odds)), log_odds = (c - r) - (log1mexp(c) - log1mexp(r)), c and r the
#       per-token AVERAGE response log-probs; rewards beta * c, beta * r.
#   SimPO (CPOTrainer, loss_type="simpo", cpo_alpha=0): -logsigmoid(beta * ((c - r) - gamma / beta)), c and r
#       average log-probs; rewards beta * c, beta * r.
# Each returns per-pair losses (the batch loss is their mean, plus ORPO's NLL) and the two rewards.


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: ``(sum of log p(label) over supervised positions, number of them)`` (labels shifted as above)."""
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    logits = logits[:, :-1]
    picked = logits.gather(-1, torch.where(mask, targets, 0)[..., None]).squeeze(-1).float()
    logps = picked - torch.logsumexp(logits.float(), dim=-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def dpo_sigmoid_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    chosen_logratios, rejected_logratios = chosen - ref_chosen, rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for x < 0, branching at -ln 2 to avoid cancellation."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio_loss(chosen_avg, rejected_avg, beta: float):
    """Per pair ``-beta * logsigmoid(log_odds)`` (the NLL term is added by the caller)."""
    chosen_avg, rejected_avg = chosen_avg.float(), rejected_avg.float()
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()


def simpo_loss(chosen_avg, rejected_avg, beta: float, gamma: float):
    logits = (chosen_avg - rejected_avg) - gamma / beta
    losses = -F.logsigmoid(beta * logits)
    return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()


class PreferenceObjective:
    """Pairs as the loop's unit: a micro-batch holds ``b`` chosen rows then ``b`` rejected rows (``input_ids``,
    ``labels`` masking all but the last reply, ``lengths`` = real tokens per row, DPO: ``ref_logps`` [2b] from
    the frozen reference). The loop divides the summed per-pair losses by the global pair count; ORPO's NLL is
    the token mean of each micro-batch's chosen rows, weighted by its pairs (= TRL's loss for one micro-batch)."""

    def __init__(self, method: str, beta: float, gamma: float = 0.0):
        self.method, self.beta, self.gamma = method, beta, gamma

    def units(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tensor(batch["input_ids"].shape[0] // 2)

    def pair_losses(self, logits, batch: dict[str, torch.Tensor]):
        """``(per-pair losses, chosen rewards, rejected rewards, summed chosen/rejected logps)``."""
        sums, counts = response_logps(logits, batch["labels"])
        b = sums.shape[0] // 2
        if self.method == "dpo":
            ref = batch["ref_logps"].to(sums.device)
            losses, rc, rr = dpo_sigmoid_loss(sums[:b], sums[b:], ref[:b], ref[b:], self.beta)
        else:
            avg = sums / counts.clamp(min=1)
            if self.method == "orpo":
                losses, rc, rr = orpo_odds_ratio_loss(avg[:b], avg[b:], self.beta)
                losses = losses + self._chosen_nll(logits[:b], batch)
            else:
                losses, rc, rr = simpo_loss(avg[:b], avg[b:], self.beta, self.gamma)
        return losses, rc, rr, sums.detach()

    def _chosen_nll(self, chosen_logits, batch) -> torch.Tensor:
        """TRL's ORPO NLL: mean next-token loss over every real token of the chosen rows (prompt included)."""
        ids, lengths = batch["input_ids"][: chosen_logits.shape[0]], batch["lengths"][: chosen_logits.shape[0]]
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        full = torch.where(positions < lengths.to(ids.device)[:, None], ids, IGNORE_INDEX)
        loss_sum, n = token_loss_sum(chosen_logits, full)
        return loss_sum / n.clamp(min=1)

    def loss_sum(self, forward, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = forward({"input_ids": batch["input_ids"]})
        losses, rc, rr, sums = self.pair_losses(logits, batch)
        b = losses.shape[0]
        stats = {
            "reward_acc": reward_hits(rc, rr).sum(),
            "reward_margin": (rc - rr).sum(),
            "logps_chosen": sums[:b].sum(),
            "logps_rejected": sums[b:].sum(),
        }
        return losses.sum(), {k: v.detach().double() for k, v in stats.items()}


def reward_hits(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """1 where the chosen reward is higher, 0.5 on a tie (a DPO policy equal to its reference: accuracy 0.5), else 0."""
    return (chosen_rewards > rejected_rewards).double() + 0.5 * (chosen_rewards == rejected_rewards).double()
