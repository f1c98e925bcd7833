"""``DynamicHF``: the decode batch interface (``rows``, ``prefill``, ``decode``, ``keep``) of
``youri.serve.decoder`` over any causal LM's own forward and a ``DynamicCache`` -- the path for models the lean
static-cache step does not know, so that they still generate correctly."""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def _pad_left(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class DynamicHF:
    """The same interface over the model's own forward and a ``DynamicCache`` (left padding, cat/gather)."""

    def __init__(self, model):
        # transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40).
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.model = model
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.rows = 0
        self.cache = None
        self.mask: torch.Tensor | None = None  # [rows, cached length]: 1 = real token, 0 = left padding

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1, :]

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], pad_id: int) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        logits = self._forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        if self.rows:
            self._merge(cache, mask)
        else:
            self.cache, self.mask = cache, mask
        self.rows += len(prompts)
        return logits

    def _merge(self, new_cache, new_mask) -> None:
        """Concatenate two left-padded batches along the batch axis (the shorter one padded left)."""
        length = max(self.mask.shape[1], new_mask.shape[1])
        for layer, new_layer in zip(self.cache.layers, new_cache.layers):
            layer.keys = torch.cat([_pad_left(layer.keys, length, 2), _pad_left(new_layer.keys, length, 2)])
            layer.values = torch.cat([_pad_left(layer.values, length, 2), _pad_left(new_layer.values, length, 2)])
        self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(new_mask, length, 1)])

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return self._forward(tokens[:, None], self.mask, self.mask.sum(-1, keepdim=True) - 1, self.cache)

    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        if not rows:
            self.reset()
            return
        index = torch.tensor(rows, device=self.device)
        self.mask = self.mask[index]
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # columns that are padding in every row go
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.rows = len(rows)
