"""An exact prefix cache: the K/V of prompt prefixes kept across requests, LRU-bounded in tokens.

A prompt is cut into blocks of ``block`` tokens; a block is stored under the exact token ids of the
whole prefix it ends (a tuple key: no hash collision can return another prompt's K/V). A lookup walks
the blocks of a new prompt while they are cached (the persona text of a chat, a few-shot prefix) and
returns their K/V, so that only the rest of the prompt is computed; at least the prompt's last token is
always computed (its logits start the reply). Keys are stored after rotary at their prompt positions,
which a reused prefix keeps. Least recently used blocks are evicted past ``max_tokens``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [kv_heads, tokens, head_dim]


class PrefixCache:
    def __init__(self, max_tokens: int, block: int = 32):
        self.block, self.capacity = block, max(1, max_tokens // block)
        self.blocks: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.stats = {"queries": 0, "hits": 0, "hit_tokens": 0, "evicted_blocks": 0}

    def _keys(self, ids: list[int]):
        """The keys of the blocks a prompt may reuse (never its last token)."""
        for end in range(self.block, len(ids), self.block):
            yield tuple(ids[:end])

    def lookup(self, ids: list[int]) -> tuple[int, KV | None]:
        """``(tokens, K/V)`` of the longest cached block prefix of ``ids`` (``(0, None)``: none)."""
        found = []
        for key in self._keys(ids):
            entry = self.blocks.get(key)
            if entry is None:
                break
            self.blocks.move_to_end(key)
            found.append(entry)
        self.stats["queries"] += 1
        if not found:
            return 0, None
        self.stats["hits"] += 1
        self.stats["hit_tokens"] += len(found) * self.block
        kv = [
            (torch.cat([e[layer][0] for e in found], dim=-2), torch.cat([e[layer][1] for e in found], dim=-2))
            for layer in range(len(found[0]))
        ]
        return len(found) * self.block, kv

    def store(self, ids: list[int], cached: int, read: Callable[[int, int], KV]) -> None:
        """Keep the blocks of ``ids`` beyond the ``cached`` tokens it reused; ``read(begin, end)`` gives their K/V."""
        keys = list(self._keys(ids))[cached // self.block :]
        if not keys:
            return
        begin = cached
        whole = read(begin, begin + len(keys) * self.block)
        for i, key in enumerate(keys):
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            part = slice(i * self.block, (i + 1) * self.block)
            self.blocks[key] = [(k[:, part].clone(), v[:, part].clone()) for k, v in whole]
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)
            self.stats["evicted_blocks"] += 1
