"""``youri vocab``: extend a tokenizer with Japanese pieces and resize the model.

Two kinds of base, told apart by the tokenizer files: a SentencePiece ``tokenizer.model`` (Llama 2; below),
and a byte-level BPE ``tokenizer.json`` (Llama 3, Qwen2/2.5/3: ``youri.data.bpe_vocab``, which says how its
merges are learned and which ids the new tokens get). Any other tokenizer.json (Gemma's SentencePiece-style
BPE with byte fallback, shipped without its tokenizer.model) is refused in one line. A model base's family
comes from its config.json (``youri.families``); tied embeddings stay tied.

The Llama 2 tokenizer spends ~1.2 tokens per Japanese character (most kanji fall back to three byte
tokens). This stage trains Japanese subword pieces with SentencePiece on a Japanese corpus, appends the
N best *new* pieces to the base ``tokenizer.model`` after the original ids (every original id keeps its
piece, score and type), writes a Hugging Face tokenizer whose slow (``tokenizer.model``) and fast
(``tokenizer.json``) forms give identical ids, and -- when the base is a model folder -- grows the input
embeddings and the LM head, each new row being the mean of the rows of the piece's original
tokenisation (plus optional noise). Before any training the extended model's logits on text made only
of old tokens equal the base model's.

The output is a stage folder that other stages accept as a model (config, safetensors, tokenizer)::

    youri vocab --base ../shared/data/llama2-tokenizer --corpus '[builtin:corpus_ja.jsonl]' \\
        --new_pieces 2000 --out runs/vocab                       # tokenizer only (tiny CPU run)
    youri vocab --base ../shared/data/llama3-tokenizer --corpus '[builtin:corpus_ja.jsonl]' \\
        --new_pieces 2000 --out runs/vocab-l3                    # byte-level BPE: Llama 3 / Qwen tokenizer.json
    youri vocab --recipe recipes/demo.yaml                        # the demo: tiny model + tokenizer
    youri vocab --base meta-llama-2-7b/ --corpus '[ja_wiki.jsonl, aozora.jsonl]' \\
        --new_pieces 16000 --out runs/vocab7b                     # a 7B model (CPU RAM bound, no GPU)
    youri data --tokenizer runs/vocab ...; youri pretrain --model runs/vocab ...

There is no multi-GPU form: training the pieces takes seconds and the resize is a copy of two
matrices, so even a 7B base runs on one CPU host (memory: the model once, in its own dtype).

Design choices, measured with the Llama 2 tokenizer, pieces learned on the shared Wikipedia train split +
Aozora, Japanese chars/token on Wikipedia dev+test (base 0.820; ``benchmarks/vocab_efficiency.py``):
- method: SentencePiece BPE beats unigram at every size (N=8k: 1.619 vs 1.557; 16k: 1.880 vs 1.783)
  and trains in seconds instead of a minute; BPE pieces also come in merge order, ready for a BPE model.
- ``split_by_unicode_script: false`` (kanji+kana pieces): 1.876 vs 1.750 with it true (N=16k).
- ``max_piece_chars`` 16 vs 8: 1.880 vs 1.876.
- Pieces are trained with identity normalisation and no dummy prefix, so they match raw text as the
  Llama model (identity ``normalizer_spec``, kept unchanged) sees it.
- A new piece made only of ASCII is skipped: English text can then never meet a new piece, so it keeps
  exactly its original ids.
- Every new piece is made reachable by BPE merges: its characters and, where needed, an intermediate
  split are added first (SentencePiece BPE merges any adjacent pair whose concatenation is a piece; the
  fast tokenizer needs both halves in the vocab).
- Scores: merged pieces get scores strictly below every original (non-whitespace) score, decreasing in
  the trainer's order. Original merges thus keep their priority and the order among new pieces is the
  trainer's; since id order and score order agree for the new pieces, the fast tokenizer that
  ``AutoTokenizer`` derives from ``tokenizer.model`` (merges sorted by score) matches SentencePiece.
  Scoring the new pieces above every original instead gives the same compression (1.879 vs 1.880 at
  N=16k): SentencePiece merges any adjacent pair whose concatenation is a piece, so order matters little.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterable, Iterator, Literal

import sentencepiece as spm
import torch
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from youri.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveInt, Range, Seed
from youri.data import bpe_vocab
from youri.families import family_of
from youri.io import DataError, atomic_write_text, iter_jsonl, read_json, read_text, require_field, resolve_path
from youri.model import load_model, load_tokenizer, save_model
from youri.stage import StageWriter

SPACE = "\u2581"  # SentencePiece's whitespace marker
MAX_LINE_CHARS = 1000  # SentencePiece drops sentences over 4192 bytes; Japanese is 3 bytes a character


@dataclass
class Config:
    base: str = ""
    """Base model folder (config.json + safetensors + tokenizer.model, or a byte-level BPE tokenizer.json), or a
    tokenizer folder / tokenizer.model / tokenizer.json file when only the tokenizer is extended."""
    base_tokenizer: str = ""
    """The base's SentencePiece tokenizer.model when the base model folder has none (only a SentencePiece-style
    tokenizer.json); it must encode like the model's tokenizer, which is checked on the corpus."""
    corpus: list[str] = field(default_factory=lambda: ["builtin:corpus_ja.jsonl"])
    """Japanese training text: JSONL files (field text_field) or plain .txt files."""
    out: str = "runs/vocab"
    """Output stage folder (model + extended tokenizer, or tokenizer only)."""
    new_pieces: PositiveInt = 16000
    """Number of new pieces appended after the original ids (16000: Llama 2 0.82 -> 1.88, Llama 3 1.35 -> 1.94
    Japanese chars/token)."""
    method: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece model type used to learn the pieces (the merged tokenizer stays BPE); bpe measured better.
    SentencePiece bases only, like max_piece_chars, character_coverage and split_by_unicode_script."""
    text_field: str = "text"
    """Field holding the text in JSONL corpus files."""
    input_sentence_size: NonNegativeInt = 0
    """Train on at most this many sentences (sampled; lines for a byte-level BPE base); 0 = all."""
    max_piece_chars: PositiveInt = 16
    """Longest new piece, in characters."""
    character_coverage: Annotated[float, Range(min=0, max=1, min_open=True)] = 0.9995
    """Share of corpus characters the trainer covers; rarer characters stay byte tokens."""
    split_by_unicode_script: bool = False
    """Keep pieces within one script; false lets kanji+kana pieces (行った) form, which compresses better."""
    init: Literal["mean"] = "mean"
    """New embedding / LM-head rows: the mean of the rows of the piece's original tokenisation."""
    init_noise_std: NonNegativeFloat = 0.0
    """Standard deviation of Gaussian noise added to each mean-initialised embedding / LM-head row."""
    seed: Seed = 0
    """Seed for sentence sampling and init noise."""
    check_docs: NonNegativeInt = 200
    """Corpus documents checked after writing (slow == fast ids, or tokenizer.json == AutoTokenizer ids and special
    ids kept; decode(encode(x)) == x); 0 = skip."""


class VocabError(ConfigError):
    """The vocab stage cannot run with this config (base, corpus or size)."""


# ----------------------------------------------------------------------------- corpus


def iter_corpus_texts(paths: Iterable[str], text_field: str = "text") -> Iterator[str]:
    """Documents of JSONL (``text_field``) or plain-text files, in file order."""
    for spec in paths:
        path = resolve_path(spec)
        if not path.is_file():
            raise VocabError(f"corpus file not found: {spec}")
        if path.suffix in {".jsonl", ".json"}:
            for lineno, record in iter_jsonl(path):
                yield require_field(record, text_field, path, lineno)
        else:
            yield read_text(path)


def training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Lines short enough for the SentencePiece trainer: paragraphs, split after 。 and chunked."""
    for text in texts:
        for line in text.split("\n"):
            while len(line) > MAX_LINE_CHARS:
                cut = line.rfind("。", 0, MAX_LINE_CHARS) + 1 or MAX_LINE_CHARS
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


# ----------------------------------------------------------------------------- SentencePiece model


def load_proto(path: str | os.PathLike):

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except DecodeError as err:
        raise VocabError(f"{path}: not a SentencePiece model (truncated or corrupted?): {err}") from err
    return proto


def train_pieces(
    lines: Iterable[str],
    *,
    method: str,
    vocab_size: int,
    max_piece_chars: int = 16,
    character_coverage: float = 0.9995,
    split_by_unicode_script: bool = False,
    input_sentence_size: int = 0,
    seed: int = 0,
) -> list[tuple[str, float]]:
    """Train a SentencePiece model on ``lines``; its normal pieces, best first."""

    buffer = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buffer,
        model_type=method,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        character_coverage=character_coverage,
        split_by_unicode_script=split_by_unicode_script,
        max_sentencepiece_length=max_piece_chars,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        split_digits=True,
        byte_fallback=False,
        num_threads=2,
        minloglevel=2,
    )

    proto = pb.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    normal = [(p.piece, p.score) for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    # The BPE trainer lists merges by creation (score -rank) and its single characters last; the best
    # order for the merged model is by score, with characters added on demand by select_new_pieces.
    return sorted(normal, key=lambda item: -item[1])


def _is_ascii_only(piece: str) -> bool:
    return all(ord(ch) < 128 for ch in piece.replace(SPACE, " "))


def select_new_pieces(base_pieces: Iterable[str], candidates: Iterable[str], n: int) -> list[str]:
    """Up to ``n`` new pieces from ``candidates`` (best first), each reachable by BPE merges.

    A candidate brings along the pieces it needs (its characters, an intermediate split) when the
    vocabulary lacks them; those come first so that they also outrank it. ASCII-only candidates are
    skipped so English text never meets a new piece.
    """
    vocab = set(base_pieces)
    chosen: list[str] = []
    for piece in candidates:
        if len(chosen) >= n:
            break
        if piece in vocab or _is_ascii_only(piece) or (SPACE in piece.lstrip(SPACE)):
            continue
        needed = _needed(piece, vocab, {})
        if len(chosen) + len(needed) > n:
            continue
        for extra in sorted(needed, key=len):
            vocab.add(extra)
            chosen.append(extra)
    return chosen


def _needed(piece: str, vocab: set[str], memo: dict[str, frozenset]) -> frozenset:
    """The smallest set of pieces to add so that ``piece`` can be built by pairwise merges."""
    if piece in vocab:
        return frozenset()
    if piece not in memo:
        best = frozenset([piece]) if len(piece) == 1 else None
        for cut in range(1, len(piece)):
            option = _needed(piece[:cut], vocab, memo) | _needed(piece[cut:], vocab, memo) | {piece}
            if best is None or len(option) < len(best):
                best = option
        memo[piece] = best
    return memo[piece]


def extend_proto(base, new_pieces: list[str]):
    """A copy of ``base`` with ``new_pieces`` appended (scores below every original merge score)."""

    proto = pb.ModelProto()
    proto.CopyFrom(base)
    # Whitespace-only pieces ("▁▁") carry -1e9 so that they merge last; stay above them, below the rest.
    floor = min((p.score for p in base.pieces if p.piece.strip(SPACE) and p.score > -1e8), default=0.0)
    for rank, piece in enumerate(new_pieces, start=1):
        proto.pieces.add(piece=piece, score=floor - rank, type=pb.ModelProto.SentencePiece.NORMAL)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto


def processor(proto, *, add_dummy_prefix: bool | None = None):
    """A ``SentencePieceProcessor`` for ``proto`` (optionally with the dummy prefix switched)."""

    if add_dummy_prefix is not None:
        copy = pb.ModelProto()
        copy.CopyFrom(proto)
        copy.normalizer_spec.add_dummy_prefix = add_dummy_prefix
        proto = copy
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


# ----------------------------------------------------------------------------- base and output


@dataclass
class Base:
    """Where the base lives: its folder, its SentencePiece model and whether it holds a model."""

    dir: Path
    sp_model: Path
    has_model: bool

    @property
    def tokenizer_dir(self) -> Path:
        """The folder whose HF tokenizer is extended: the base's own, else the tokenizer.model's."""
        own = any((self.dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))
        return self.dir if own else self.sp_model.parent


def locate_base(base: str, base_tokenizer: str = "") -> Base:
    """Resolve ``vocab.base`` (model folder, tokenizer folder or tokenizer.model) and its tokenizer.model."""
    if not str(base):
        raise VocabError("vocab.base: required (a model folder, a tokenizer folder or a tokenizer.model file)")
    path = resolve_path(base)
    if path.is_file():
        if path.name != "tokenizer.model":
            raise VocabError(f"vocab.base: {path} is a file but not a SentencePiece tokenizer.model")
        path = path.parent
    if not path.is_dir():
        raise VocabError(f"vocab.base: {path} not found")
    sp_model = resolve_path(base_tokenizer) if base_tokenizer else path / "tokenizer.model"
    if sp_model.is_dir():
        sp_model = sp_model / "tokenizer.model"
    if not sp_model.is_file():
        where = "vocab.base_tokenizer" if base_tokenizer else "vocab.base"
        raise VocabError(
            f"{where}: {sp_model} not found; extension needs the base's SentencePiece tokenizer.model"
            " (pass it as base_tokenizer when the model folder only has tokenizer.json)"
        )
    return Base(path, sp_model, (path / "config.json").is_file())


def check_same_tokenizer(base: Base, base_proto, texts: list[str]) -> None:
    """A separately given tokenizer.model must encode like the base folder's own tokenizer."""

    if base.sp_model.parent == base.tokenizer_dir:
        return
    own = load_tokenizer(base.tokenizer_dir)
    # split_special_tokens: SentencePiece reads "</s>" in text as characters, and so must the comparison.
    own_ids = own(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if own_ids != processor(base_proto).encode(texts):
        raise VocabError(f"vocab.base_tokenizer: {base.sp_model} does not encode like the tokenizer of {base.dir}")


def write_tokenizer(proto, base_size: int, base_tokenizer_dir: Path, out_dir: Path):
    """Write the extended ``tokenizer.model`` and a matching fast tokenizer into ``out_dir``.

    The fast tokenizer is the base's own (normaliser, pre-tokeniser, BOS/EOS template, decoder, config,
    chat template) with only its BPE model swapped for the one ``AutoTokenizer`` derives from the
    extended ``tokenizer.model`` -- merges ordered by piece score, as SentencePiece applies them.
    """

    base = load_tokenizer(base_tokenizer_dir)
    if len(base) != base_size:
        raise VocabError(
            f"{base_tokenizer_dir}: the tokenizer has {len(base)} tokens but its SentencePiece model "
            f"{base_size}; added tokens beyond the SentencePiece vocab are not supported"
        )
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tok-") as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto.SerializeToString())
        converted = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        state = json.loads(base.backend_tokenizer.to_str())
        state["model"] = json.loads(converted.backend_tokenizer.to_str())["model"]
    base.save_pretrained(str(out_dir))
    atomic_write_text(out_dir / "tokenizer.json", json.dumps(state, ensure_ascii=False))
    # save_pretrained may copy (or omit) the base's vocab file; the extended one is ours.
    (out_dir / "tokenizer.model").write_bytes(proto.SerializeToString())
    return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)


def check_tokenizer(out_dir: Path, texts: list[str]) -> dict:
    """Slow (SentencePiece) and fast (tokenizer.json) ids agree and decoding restores each text."""

    slow = processor(load_proto(out_dir / "tokenizer.model"))
    fast = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    fast_ids = fast(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]  # as SentencePiece
    mismatch = sum(a != b for a, b in zip(slow.encode(texts), fast_ids))
    not_restored = sum(fast.decode(ids) != text for ids, text in zip(fast_ids, texts))
    return {"checked_docs": len(texts), "slow_fast_mismatches": mismatch, "roundtrip_failures": not_restored}


def chars_per_token(sp, texts: list[str]) -> float:
    tokens = sum(len(ids) for ids in sp.encode(texts))
    return sum(map(len, texts)) / max(tokens, 1)


# ----------------------------------------------------------------------------- model resize


def original_tokenisation(base_proto, pieces: list[str]) -> list[list[int]]:
    """Each piece's ids under the base tokenizer (no dummy prefix: the piece is a span inside a text)."""
    sp = processor(base_proto, add_dummy_prefix=False)
    return sp.encode([piece.replace(SPACE, " ") for piece in pieces])


def resize_model(model, first_new_id: int, parts: list[list[int]], *, noise_std: float = 0.0, seed: int = 0) -> dict:
    """Grow the input embeddings and LM head; new row ``i`` = mean of the rows ``parts[i]`` (+ noise).

    Original rows are left untouched, so logits over the original vocabulary are unchanged. A tied head
    shares the input matrix and is initialised with it; an untied head gets the mean of its own rows.
    """

    old_rows = model.get_input_embeddings().weight.shape[0]
    if old_rows < first_new_id:
        raise VocabError(f"the model has {old_rows} embedding rows but its tokenizer {first_new_id} pieces")
    new_rows = max(old_rows, first_new_id + len(parts))
    model.resize_token_embeddings(new_rows, mean_resizing=False)
    inputs = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight.data_ptr() == inputs.data_ptr()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for matrix in [inputs] if tied else [inputs, head.weight]:
            for offset, ids in enumerate(parts):
                row = matrix[ids].float().mean(dim=0)
                if noise_std > 0:
                    row += torch.randn(row.shape, generator=generator) * noise_std
                matrix[first_new_id + offset] = row.to(matrix.dtype)
    return {
        "init_method": "mean of the rows of the piece's original tokenisation"
        + (f" + N(0, {noise_std}^2) noise" if noise_std > 0 else ""),
        "tied_lm_head": tied,
        "embedding_rows_before": old_rows,
        "embedding_rows_after": new_rows,
    }


# ----------------------------------------------------------------------------- stage


def _validate(cfg: Config) -> None:
    if cfg.new_pieces <= 0:
        raise VocabError(f"vocab.new_pieces: must be > 0, got {cfg.new_pieces}")
    if not cfg.corpus:
        raise VocabError("vocab.corpus: give at least one Japanese JSONL or text file")
    if not 0 < cfg.character_coverage <= 1:
        raise VocabError(f"vocab.character_coverage: must be in (0, 1], got {cfg.character_coverage}")
    if cfg.init_noise_std < 0:
        raise VocabError(f"vocab.init_noise_std: must be >= 0, got {cfg.init_noise_std}")
    for spec in cfg.corpus:
        try:
            path = resolve_path(spec)
        except FileNotFoundError as err:
            raise VocabError(f"vocab.corpus: {err}") from err
        if not path.is_file():
            raise VocabError(f"vocab.corpus: file not found: {spec}")


def learn_new_pieces(cfg: Config, base_proto, texts: list[str]) -> list[str]:
    """Train on ``texts`` and pick ``cfg.new_pieces`` new, reachable, non-ASCII pieces."""
    lines = list(training_lines(texts))
    # The trainer's vocabulary holds every kept character plus the merges; leave headroom for pieces
    # the base already has and ASCII pieces, which are skipped.
    characters = len(set().union(*map(set, lines)))
    trainer_size = characters + int(cfg.new_pieces * 1.5) + 100
    trained = train_pieces(
        lines,
        method=cfg.method,
        vocab_size=trainer_size,
        max_piece_chars=cfg.max_piece_chars,
        character_coverage=cfg.character_coverage,
        split_by_unicode_script=cfg.split_by_unicode_script,
        input_sentence_size=cfg.input_sentence_size,
        seed=cfg.seed,
    )
    return select_new_pieces((p.piece for p in base_proto.pieces), (p for p, _ in trained), cfg.new_pieces)


def run(cfg: Config, *, overwrite: bool = False) -> Path:
    """Extend the tokenizer (and resize the model when ``base`` is a model folder) into ``cfg.out``."""
    _validate(cfg)
    path = resolve_path(cfg.base) if cfg.base and not cfg.base_tokenizer else None
    byte_level = bpe_vocab.byte_level_base(path) if path is not None and path.exists() else None
    if byte_level is not None:
        return run_byte_level(cfg, byte_level, overwrite=overwrite)
    base = locate_base(cfg.base, cfg.base_tokenizer)
    if base.has_model:
        family_of(read_json(base.dir / "config.json"), str(base.dir / "config.json"))
    base_proto = load_proto(base.sp_model)
    spec = base_proto.trainer_spec
    if spec.model_type != spec.BPE:
        raise VocabError(
            f"vocab.base: {base.sp_model} is a SentencePiece {spec.ModelType.Name(spec.model_type)} "
            "model; only BPE (Llama-family) tokenizers are extended"
        )
    started = time.time()
    texts = list(iter_corpus_texts(cfg.corpus, cfg.text_field))
    if not texts:
        raise DataError(f"vocab.corpus: no documents in {', '.join(cfg.corpus)}")
    sample = texts[: cfg.check_docs]
    check_same_tokenizer(base, base_proto, sample or texts[:20])
    new = learn_new_pieces(cfg, base_proto, texts)
    if not new:
        raise DataError(f"vocab.corpus: no new pieces could be learned from {', '.join(cfg.corpus)}")
    proto = extend_proto(base_proto, new)
    inputs = [base.dir, base.sp_model] + [resolve_path(spec) for spec in cfg.corpus]
    with StageWriter(
        cfg.out,
        stage="vocab",
        config=cfg,
        inputs=dict.fromkeys(inputs),
        parent=base.dir if base.has_model else None,
        overwrite=overwrite,
    ) as stage:
        write_tokenizer(proto, len(base_proto.pieces), base.tokenizer_dir, stage.path)
        metrics = {
            "base_vocab": len(base_proto.pieces),
            "vocab": len(proto.pieces),
            "new_pieces": len(new),
            "new_pieces_requested": cfg.new_pieces,
            "method": cfg.method,
            "score_rule": "new pieces score below every original merge, in trainer order",
            "corpus_docs": len(texts),
            "corpus_chars_per_token_base": round(chars_per_token(processor(base_proto), texts), 4),
            "corpus_chars_per_token_extended": round(chars_per_token(processor(proto), texts), 4),
        }
        if sample:
            metrics.update(check_tokenizer(stage.path, sample))
            # Without byte fallback the base itself cannot restore characters outside its vocabulary.
            lossy = metrics["roundtrip_failures"] and base_proto.trainer_spec.byte_fallback
            if metrics["slow_fast_mismatches"] or lossy:
                raise AssertionError(f"extended tokenizer self-check failed: {metrics}")
        if base.has_model:
            metrics.update(_extend_model(base, base_proto, new, stage.path, cfg))
        metrics["seconds"] = round(time.time() - started, 1)
        print(
            f"youri vocab: {len(base_proto.pieces)} + {len(new)} pieces; chars/token on the corpus "
            f"{metrics['corpus_chars_per_token_base']} -> {metrics['corpus_chars_per_token_extended']}; "
            f"{'model resized' if base.has_model else 'tokenizer only'} -> {cfg.out}"
        )
        return stage.finish(metrics)


def _extend_model(base: Base, base_proto, new: list[str], out_dir: Path, cfg: Config) -> dict:

    model = load_model(base.dir)
    info = resize_model(
        model,
        len(base_proto.pieces),
        original_tokenisation(base_proto, new),
        noise_std=cfg.init_noise_std,
        seed=cfg.seed,
    )
    save_model(model, None, out_dir)
    return info


# ----------------------------------------------------------------------------- byte-level BPE bases

SENTENCEPIECE_ONLY = ("method", "max_piece_chars", "character_coverage", "split_by_unicode_script")


def run_byte_level(cfg: Config, tokenizer_json: Path, *, overwrite: bool = False) -> Path:
    """``run`` for a byte-level BPE base (Llama 3, Qwen2/3): append learned tokens and merges (``bpe_vocab``)."""
    for name in SENTENCEPIECE_ONLY:
        if getattr(cfg, name) != Config.__dataclass_fields__[name].default:
            raise VocabError(f"vocab.{name}: applies to SentencePiece bases only; {tokenizer_json} is byte-level BPE")
    folder = tokenizer_json.parent
    has_model = (folder / "config.json").is_file()
    if has_model:
        family_of(read_json(folder / "config.json"), str(folder / "config.json"))
    started = time.time()
    texts = list(iter_corpus_texts(cfg.corpus, cfg.text_field))
    if not texts:
        raise DataError(f"vocab.corpus: no documents in {', '.join(cfg.corpus)}")
    base = Tokenizer.from_file(str(tokenizer_json))
    state = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    extension = bpe_vocab.learn(base, state, texts, cfg.new_pieces, sample_lines=cfg.input_sentence_size, seed=cfg.seed)
    if not extension.tokens:
        raise DataError(f"vocab.corpus: no new tokens could be learned from {', '.join(cfg.corpus)}")
    extended_state = bpe_vocab.extend_state(state, extension)
    first_id = bpe_vocab.first_new_id(state)
    inputs = [folder, *(resolve_path(spec) for spec in cfg.corpus)]
    with StageWriter(
        cfg.out, stage="vocab", config=cfg, inputs=inputs, parent=folder if has_model else None, overwrite=overwrite
    ) as stage:
        for name in bpe_vocab.TOKENIZER_FILES:  # the base's own config, special tokens and chat template, unchanged
            if (folder / name).is_file():
                shutil.copyfile(folder / name, stage.path / name)
        text = json.dumps(extended_state, ensure_ascii=False)
        atomic_write_text(stage.path / "tokenizer.json", text)
        extended = Tokenizer.from_str(text)
        metrics = {
            "base_vocab": first_id,
            "vocab": first_id + len(extension.tokens),
            "new_pieces": len(extension.tokens),
            "new_pieces_requested": cfg.new_pieces,
            "first_new_id": first_id,
            "base_merges": len(state["model"]["merges"]),
            "new_merges": len(extension.merges),
            "method": "byte-level BPE merges learned on the base tokenisation, appended after the original merges",
            "corpus_docs": len(texts),
            "corpus_chars_per_token_base": round(bpe_vocab.chars_per_token(base, texts), 4),
            "corpus_chars_per_token_extended": round(bpe_vocab.chars_per_token(extended, texts), 4),
        }
        sample = texts[: cfg.check_docs]
        if sample:
            metrics.update(bpe_vocab.check_tokenizer(stage.path, extended, base, sample))
            failed = ("auto_tokenizer_mismatches", "roundtrip_failures", "added_token_ids_moved")
            if any(metrics[name] for name in failed):
                raise AssertionError(f"extended tokenizer self-check failed: {metrics}")
        if has_model:
            model = load_model(folder)
            parts = bpe_vocab.original_ids(base, extension.tokens)
            metrics.update(resize_model(model, first_id, parts, noise_std=cfg.init_noise_std, seed=cfg.seed))
            save_model(model, None, stage.path)
        metrics["seconds"] = round(time.time() - started, 1)
        print(
            f"youri vocab: {first_id} + {len(extension.tokens)} tokens (ids {first_id}..), "
            f"{len(extension.merges)} merges appended; chars/token on the corpus "
            f"{metrics['corpus_chars_per_token_base']} -> {metrics['corpus_chars_per_token_extended']}; "
            f"{'model resized' if has_model else 'tokenizer only'} -> {cfg.out}"
        )
        return stage.finish(metrics)
