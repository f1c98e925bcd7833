"""The tokenizer of a GGUF file: which of llama.cpp's tokenizers runs it, and its tokens, types, merges and ids.

Three kinds, chosen from the tokenizer files themselves (never from the model family, so an extended
vocabulary keeps its kind), as ``convert_hf_to_gguf.py`` writes them:

- ``llama`` (SentencePiece, Llama 2 / Mistral): pieces, scores and token types from ``tokenizer.model``
  (``TextModel._set_vocab_sentencepiece``).
- ``gpt2`` (byte-level BPE, Llama 3 / Qwen2 / Qwen3): the byte-level token strings, token types and merges of
  ``tokenizer.json`` (``TextModel._set_vocab_gpt2``), with ``tokenizer.ggml.pre`` naming llama.cpp's
  pre-tokenizer. convert picks it by hashing the tokens of a probe text; youri reads the pre-tokenizer's own
  split regex instead (``BPE_PRE_TOKENIZERS``), which stays right after ``youri vocab`` appends tokens and
  merges (a hash of the probe's tokens would change). ``tests/test_export.py`` checks both agree.
- ``gemma4`` (SentencePiece-style BPE in ``tokenizer.json``: ``▁`` for spaces, no prefix space, ``<0xXX>``
  byte fallback, merges over characters; Gemma 3's 262k vocabulary, which Gemma 4 shares): llama.cpp's
  ``LLAMA_VOCAB_PRE_TYPE_GEMMA4`` tokenizer, written as convert's ``Gemma4Model.set_vocab`` does (tokens,
  scores, types, merges, no space prefix, BOS added). Gemma checkpoints that ship a ``tokenizer.model``
  are read from ``tokenizer.json`` too: the same merges, exactly.

Special-token ids (BOS/EOS/UNK/PAD), the add-BOS flag and the chat template come through ``gguf.SpecialVocab``
(llama.cpp finds the end-of-turn token, ``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``, by its text).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import sentencepiece as spm

BPE_PRE_TOKENIZERS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+",
}
"""llama.cpp's byte-level pre-tokenizers youri writes, by the split regex of their ``tokenizer.json``
(``llama-vocab.cpp``: ``LLAMA_VOCAB_PRE_TYPE_LLAMA3`` and ``_QWEN2``; Llama 3 groups digits by three, Qwen
splits every digit)."""

KINDS = ("llama", "gpt2", "gemma4")


class TokenizerKindError(ValueError):
    """A tokenizer llama.cpp cannot run as youri would write it."""


@dataclass
class Vocab:
    model: str
    """``tokenizer.ggml.model``: one of ``KINDS``."""
    tokens: list[str] | list[bytes]
    types: list[int]
    scores: list[float] | None = None
    pre: str | None = None
    """``tokenizer.ggml.pre`` (byte-level BPE and SentencePiece: ``default``)."""
    merges: bool = False
    """Write ``tokenizer.json``'s merges."""


def read_tokenizer_json(tokenizer_dir: Path) -> dict | None:
    """The parsed ``tokenizer.json`` of ``tokenizer_dir`` (None without one); parse it once, it can be 30 MB."""
    file = Path(tokenizer_dir) / "tokenizer.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def tokenizer_kind(spec: dict | None) -> str:
    """``llama``, ``gpt2`` or ``gemma4`` for a parsed ``tokenizer.json`` (None: SentencePiece only)."""
    if spec is None:
        return "llama"
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        return "llama"  # Unigram / WordPiece json: only a SentencePiece tokenizer.model can say more
    if not model.get("byte_fallback", False):
        return "gpt2"
    if "Prepend" in json.dumps(spec.get("normalizer")) or "Metaspace" in json.dumps(spec.get("pre_tokenizer")):
        return "llama"  # Llama 2 / Mistral: a prefix space, which only llama.cpp's SentencePiece tokenizer adds
    return "gemma4"


def bpe_pre_tokenizer(spec: dict, file: Path | str = "tokenizer.json") -> str:
    """llama.cpp's name for the byte-level pre-tokenizer of a parsed ``tokenizer.json`` (``BPE_PRE_TOKENIZERS``)."""
    regexes = re.findall(r'"Regex": ("(?:[^"\\]|\\.)*")', json.dumps(spec.get("pre_tokenizer")))
    for name, regex in BPE_PRE_TOKENIZERS.items():
        if [json.loads(r) for r in regexes] == [regex]:
            return name
    raise TokenizerKindError(
        f"{file}: byte-level BPE pre-tokenizer {[json.loads(r) for r in regexes]} is not one youri writes for "
        f"llama.cpp ({', '.join(BPE_PRE_TOKENIZERS)}: Llama 3, Qwen2/Qwen3)"
    )


def sentencepiece_vocab(model_file: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and llama.cpp token types of a SentencePiece model, padded to the model's vocab size."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if sp.vocab_size() > vocab_size:
        raise TokenizerKindError(
            f"{model_file}: {sp.vocab_size()} pieces but the model has only {vocab_size} embedding rows"
        )
    kinds = gguf.TokenType
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]  # rows past the tokenizer: unused, as convert does
    scores, types = [-10000.0] * vocab_size, [int(kinds.UNUSED)] * vocab_size
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.id_to_piece(i).encode("utf-8"), sp.get_score(i)
        kind = (
            kinds.UNKNOWN
            if sp.is_unknown(i)
            else kinds.CONTROL
            if sp.is_control(i)
            else kinds.UNUSED
            if sp.is_unused(i)
            else kinds.BYTE
            if sp.is_byte(i)
            else kinds.NORMAL
        )
        types[i] = int(kind)
    return tokens, scores, types


def _looks_special(token: str) -> bool:
    """convert's ``does_token_look_special``: added tokens some tokenizers forget to mark special."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<｜") and token.endswith("｜>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def hf_vocab(spec: dict, vocab_size: int, kind: str, file: Path | str = "tokenizer.json") -> Vocab:
    """Tokens and types of a ``tokenizer.json`` BPE vocabulary (``gpt2`` or ``gemma4``), padded to the model's
    embedding rows: convert's ``get_vocab_base`` (added tokens: special or special-looking -> CONTROL, others
    USER_DEFINED with ``▁`` as a space; ``<0xXX>`` -> BYTE for ``gemma4``)."""
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= vocab_size:
        raise TokenizerKindError(f"{file}: token id {max(by_id)} but the model has only {vocab_size} embedding rows")
    kinds = gguf.TokenType
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(int(kinds.UNUSED))
        elif i in added:
            special = added[i]["special"] or _looks_special(token)
            tokens.append(token if special else token.replace("\u2581", " "))
            types.append(int(kinds.CONTROL if special else kinds.USER_DEFINED))
        else:
            tokens.append(token)
            byte = kind == "gemma4" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token)
            types.append(int(kinds.BYTE if byte else kinds.NORMAL))
    if kind == "gpt2":
        return Vocab("gpt2", tokens, types, pre=bpe_pre_tokenizer(spec, file), merges=True)
    scores = [-1000.0] * vocab_size  # as convert's Gemma4Model (LlamaHfVocab): the merges order, not scores
    return Vocab("gemma4", tokens, types, scores=scores, merges=True)


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab, tokenizer_dir: Path) -> None:
    """Write ``tokenizer.*``: the vocabulary, then ids, add-BOS flag, merges and chat template (SpecialVocab)."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=vocab.merges, n_vocab=len(vocab.tokens))
    if vocab.merges and not special.merges:
        raise TokenizerKindError(f"{tokenizer_dir}/tokenizer.json: a BPE tokenizer without merges")
    special.add_to_gguf(writer, quiet=True)
    if vocab.model == "gemma4":  # convert's Gemma4Model: no prefix space, BOS always (llama.cpp forces it too)
        writer.add_add_space_prefix(False)
        if special.add_special_token.get("bos") is None:
            writer.add_add_bos_token(True)
