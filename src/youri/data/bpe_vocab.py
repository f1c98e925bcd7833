"""Japanese tokens for a byte-level BPE ``tokenizer.json`` (Llama 3, Qwen2/2.5/3), used by ``youri vocab``.

A byte-level BPE tokenizer (GPT-2's byte alphabet, a regex pre-tokeniser, ranked merges) is extended by
*appending*: every original token keeps its id, every original merge keeps its rank, and the new merges
rank after all of them. New tokens get the ids after the highest id in the file, added tokens included
(Llama 3: 128256 on, after ``<|begin_of_text|>`` .. ``<|reserved_special_token_250|>``; Qwen3: 151669 on,
after ``<|endoftext|>`` .. ``</think>``), so special tokens keep their ids and the ids stay contiguous, as
transformers and llama.cpp's converter expect.

How the merges are learned: each corpus word (the base's own normaliser and pre-tokeniser) is first
encoded by the *base* tokenizer, and BPE merges are learned over those base-token sequences with the
``tokenizers`` BPE trainer (each base id is one trainer character). Because a new merge ranks after every
old one, encoding with the extended tokenizer is the base encoding followed by the new merges -- exactly
what was learned on, so every new token is reachable (learning from raw bytes instead would build tokens
that the base's own merges never let form).

English keeps its ids: a word is cut between two neighbouring ASCII-only base tokens before learning, so
no new merge joins two ASCII-only tokens and no new token is ASCII-only; text made of ASCII bytes only
therefore never meets a new merge.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from tokenizers import Tokenizer, models, trainers

from youri.config import ConfigError
from youri.model import load_tokenizer

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
"""The base's tokenizer files copied unchanged beside the extended tokenizer.json (a stale vocab.json/merges.txt
is not copied: tokenizer.json is the tokenizer)."""
CHAR_OFFSET = 0x10000
"""Base id ``i`` is the trainer character ``chr(CHAR_OFFSET + i)``: above the BMP, so never a surrogate."""


class TokenizerKindError(ConfigError):
    """A base tokenizer that ``youri vocab`` cannot extend faithfully."""


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (the inverse of ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = printable + [256 + n for n in range(len(others))]
    return {chr(c): b for c, b in zip(chars, printable + others)}


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level token stands for."""
    decoder = byte_decoder()
    return bytes(decoder[ch] for ch in token)


def _types(node: Any) -> list[str]:
    if not isinstance(node, dict):
        return []
    children = node.get("pretokenizers") or node.get("decoders") or node.get("normalizers") or []
    return [node.get("type", "")] + [t for child in children for t in _types(child)]


def describe(state: dict) -> str:
    """A short description of a tokenizer.json (model type and the features that matter for extension)."""
    model = state.get("model") or {}
    features = [f"pre-tokenizer {'+'.join(_types(state.get('pre_tokenizer'))) or 'none'}"]
    if model.get("byte_fallback"):
        features.append("byte fallback")
    if "Metaspace" in _types(state.get("pre_tokenizer")) or "\u2581" in json.dumps(
        state.get("normalizer"), ensure_ascii=False
    ):
        features.append("▁ spaces")
    return f"{model.get('type', 'unknown')} tokenizer ({', '.join(features)})"


def is_byte_level(state: dict) -> bool:
    """A byte-level BPE: BPE model without byte fallback, ByteLevel pre-tokeniser and decoder."""
    model = state.get("model") or {}
    return (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and "ByteLevel" in _types(state.get("pre_tokenizer"))
        and "ByteLevel" in _types(state.get("decoder"))
    )


def byte_level_base(path: Path) -> Path | None:
    """The tokenizer.json of a byte-level BPE base folder, None for a SentencePiece base (tokenizer.model, or
    no tokenizer at all), a one-line ``TokenizerKindError`` for any other tokenizer.json."""
    folder = path.parent if path.is_file() and path.name == "tokenizer.json" else path
    file = folder / "tokenizer.json"
    if not file.is_file() or (folder / "tokenizer.model").is_file():
        return None
    state = json.loads(file.read_text(encoding="utf-8"))
    if is_byte_level(state):
        return file
    raise TokenizerKindError(
        f"vocab.base: {file} is a {describe(state)} without a tokenizer.model, which youri vocab cannot extend "
        "faithfully; it extends byte-level BPE tokenizer.json (Llama 3, Qwen2/3) and SentencePiece tokenizer.model "
        "(Llama 2; pass it as base_tokenizer)"
    )


# ----------------------------------------------------------------------------- learning


@dataclass
class Extension:
    """What is appended: new merges in rank order, new tokens in id order."""

    merges: list[tuple[str, str]]
    tokens: list[str]


def base_sequences(tokenizer: Tokenizer, texts: list[str]) -> Counter:
    """Each corpus word's base ids (the base's own normaliser, pre-tokeniser and merges), counted; a word is cut
    at added tokens and between two ASCII-only tokens (so no new merge ever joins them)."""
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    boundary = {tokenizer.token_to_id(content) for content in special}
    ascii_only: dict[int, bool] = {}

    def cut(left: int, right: int) -> bool:
        for token_id in (left, right):
            if token_id not in ascii_only:
                ascii_only[token_id] = token_id in boundary or max(token_bytes(tokenizer.id_to_token(token_id))) < 128
        return ascii_only[left] and ascii_only[right] or left in boundary or right in boundary

    sequences: Counter = Counter()
    for encoding in _encodings(tokenizer, texts):
        ids, word_ids = encoding.ids, encoding.word_ids
        start = 0
        for end in range(1, len(ids) + 1):
            if end == len(ids) or word_ids[end] != word_ids[end - 1] or cut(ids[end - 1], ids[end]):
                if end - start > 1:
                    sequences[tuple(ids[start:end])] += 1
                start = end
    return sequences


def _trainer_words(sequences: Counter) -> Iterator[str]:
    for ids, count in sequences.items():
        word = "".join(chr(CHAR_OFFSET + i) for i in ids)
        for _ in range(count):
            yield word


def learn(
    tokenizer: Tokenizer, state: dict, texts: list[str], n: int, *, sample_lines: int = 0, seed: int = 0
) -> Extension:
    """Up to ``n`` new tokens (and their merges) learned on ``texts`` over the base tokenisation (``tokenizer``,
    whose tokenizer.json is ``state``).

    ``sample_lines``: learn on that many lines sampled with ``seed`` (0: every text, whole).
    """
    if sample_lines:
        lines = [line for text in texts for line in text.split("\n") if line.strip()]
        texts = random.Random(seed).sample(lines, min(sample_lines, len(lines)))
    sequences = base_sequences(tokenizer, texts)
    alphabet = {i for ids in sequences for i in ids}
    # Some learned merges build tokens the base already has (under another split); leave headroom.
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + n + n // 2 + 100, min_frequency=2, show_progress=False)
    learner = Tokenizer(models.BPE())
    learner.train_from_iterator(_trainer_words(sequences), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]["merges"]
    return _append_order(tokenizer, state, learned, n)


def _append_order(tokenizer: Tokenizer, state: dict, learned: list, n: int) -> Extension:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    base_merges = {_pair(merge) for merge in state["model"]["merges"]}
    extension = Extension([], [])
    seen: set[tuple[str, str]] = set()
    for merge in learned:
        left, right = _pair(merge)
        pair = (_base_text(tokenizer, left), _base_text(tokenizer, right))
        if pair in base_merges or pair in seen:
            continue
        seen.add(pair)
        merged = pair[0] + pair[1]
        if merged not in vocab:
            if len(extension.tokens) == n:
                break
            vocab[merged] = -1
            extension.tokens.append(merged)
        extension.merges.append(pair)
    return extension


def original_ids(tokenizer: Tokenizer, tokens: list[str]) -> list[list[int]]:
    """Each new token's ids under the base BPE (its bytes as one word): the rows its embedding is the mean of."""
    return [[token.id for token in tokenizer.model.tokenize(text)] for text in tokens]


def _base_text(tokenizer: Tokenizer, trainer_token: str) -> str:
    return "".join(tokenizer.id_to_token(ord(ch) - CHAR_OFFSET) for ch in trainer_token)


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge as a pair: tokenizer.json writes ``"a b"`` (older files, Llama 3) or ``["a", "b"]`` (Qwen)."""
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


# ----------------------------------------------------------------------------- the extended tokenizer.json


def first_new_id(state: dict) -> int:
    """The id after every id in the file: model vocabulary and added tokens."""
    ids = [*state["model"]["vocab"].values(), *(token["id"] for token in state.get("added_tokens") or [])]
    return max(ids) + 1


def extend_state(state: dict, extension: Extension) -> dict:
    """A copy of a tokenizer.json state with the new tokens and merges appended (merges in the file's format)."""
    model = {**state["model"], "vocab": dict(state["model"]["vocab"]), "merges": list(state["model"]["merges"])}
    state = {**state, "model": model}
    start = first_new_id(state)
    # `tokenizers` ignores the ids stored with added tokens and numbers those missing from the model vocabulary
    # from the vocabulary's size on; with the new tokens after them, that would move every special token. Listing
    # them in the model vocabulary at their own ids keeps them (no merge builds them; added tokens match first).
    for token in state.get("added_tokens") or []:
        model["vocab"].setdefault(token["content"], token["id"])
    for offset, token in enumerate(extension.tokens):
        model["vocab"][token] = start + offset
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    model["merges"].extend(f"{a} {b}" if as_strings else [a, b] for a, b in extension.merges)
    return state


def chars_per_token(tokenizer: Tokenizer, texts: list[str]) -> float:
    tokens = sum(len(encoding.ids) for encoding in _encodings(tokenizer, texts))
    return sum(map(len, texts)) / max(tokens, 1)


def _encodings(tokenizer: Tokenizer, texts: list[str], batch: int = 512) -> Iterator:
    """Encodings of ``texts`` without special tokens, a batch at a time (a large corpus's would not fit at once)."""
    for start in range(0, len(texts), batch):
        yield from tokenizer.encode_batch(texts[start : start + batch], add_special_tokens=False)


def check_tokenizer(out_dir: Path, extended: Tokenizer, base: Tokenizer, texts: list[str]) -> dict:
    """``AutoTokenizer`` on ``out_dir`` gives the ids of the tokenizer.json written there (``extended``), decoding
    restores every text the base restores (Qwen's NFC normaliser changes some texts, in the base as well), and
    every added (special) token has its base id."""
    auto = load_tokenizer(out_dir)
    ids = [encoding.ids for encoding in extended.encode_batch(texts, add_special_tokens=False)]
    mismatches = sum(a != b for a, b in zip(ids, auto(texts, add_special_tokens=False)["input_ids"]))
    base_ids = [encoding.ids for encoding in base.encode_batch(texts, add_special_tokens=False)]
    restorable = [base.decode(x, skip_special_tokens=False) == text for x, text in zip(base_ids, texts)]
    failures = sum(ok and auto.decode(x) != text for ok, x, text in zip(restorable, ids, texts))
    added = base.get_added_tokens_decoder().items()
    moved = sum(auto.convert_tokens_to_ids(token.content) != token_id for token_id, token in added)
    return {
        "checked_docs": len(texts),
        "auto_tokenizer_mismatches": mismatches,
        "roundtrip_failures": failures,
        "added_token_ids_moved": moved,
    }
