"""The two greedy-generation rules of the jp-stable harness, selectable per run (``--generation``).

``hf-causal-experimental`` (``lm_eval/models/huggingface.py``, the Llama-2 rows): every request gets
``max_gen_toks`` new tokens whatever it asks for; generation stops on any stop string or EOS, text
decoded without special tokens and cut at each stop string. lm-eval's own ``hf`` backend does exactly
this, so youri leaves it to lm-eval (with one sane divergence: the harness returns empty strings for a
context longer than ``max_length - max_gen_toks`` because it slices the output by the untruncated
length; lm-eval, and so youri, truncate the context on the left and generate).

``hf-causal`` (``lm_eval/models/gpt2.py`` on ``BaseLM.greedy_until`` of ``lm_eval/base.py``, rinna's
runs) is implemented here, line for line:

- the request's own cap (``DYNAMIC_MAX_LENGTH``: JSQuAD/JAQKET the longest gold answer in tokens,
  XL-Sum the summary + 10; else 256) arrives as the request's ``max_gen_toks``;
- the context is encoded without special tokens and keeps its last ``max_length - cap`` tokens;
- ``generate(max_length=len(context) + cap, eos_token_id=pad_token_id=<last token of the first stop
  string>)``: the model's own EOS does **not** stop it (for MGSM the first stop string *is* the EOS);
- the new tokens are decoded **with** special tokens, then cut at each stop string in order.

One request at a time, as the harness does (its hf-causal has no batching).
"""

from __future__ import annotations

from typing import Sequence

import torch

HF_CAUSAL = "hf-causal"
HF_CAUSAL_EXPERIMENTAL = "hf-causal-experimental"


def primary_stop_id(tokenizer, until: Sequence[str]) -> int:
    """The id generation stops on: the last token of the first stop string (EOS when it encodes to nothing)."""
    ids = tokenizer.encode(until[0], add_special_tokens=False) if until else []
    return ids[-1] if ids else tokenizer.eos_token_id


def hf_causal_generate(
    model, tokenizer, context: str, until: Sequence[str], max_new: int, max_length: int, device
) -> str:
    """One ``hf-causal`` greedy generation (module docstring); returns the cut continuation."""
    keep = max_length - max_new
    if keep <= 0:  # the harness would slice from the wrong end here; refuse instead
        raise ValueError(f"generation cap {max_new} leaves no room for a context in max_length {max_length}")
    context_ids = tokenizer.encode(context, add_special_tokens=False)[-keep:]
    stop_id = primary_stop_id(tokenizer, until)
    inputs = torch.tensor([context_ids], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_length=len(context_ids) + max_new,
            eos_token_id=stop_id,
            pad_token_id=stop_id,
            do_sample=False,
        )
    text = tokenizer.decode(out[0, len(context_ids) :].tolist())
    for term in until:
        text = text.split(term)[0]
    return text
