"""``youri init``: a tiny English-first base model — the stand-in for Llama 2 in the demo and tests.

Tiny, on this CPU (a few minutes)::

    youri init --recipe recipes/demo.yaml                 # text: builtin:corpus_en.txt
    youri init --text ../shared/data/tinyshakespeare-en/input.txt --out runs/init

Multi-GPU (same loop, FSDP2): ``torchrun --nproc_per_node 8 -m youri init --hidden_size 1024 ...``

1. Trains a SentencePiece BPE tokenizer with byte fallback on English text, with Llama 2's settings
   (identity normalisation, dummy prefix, split digits, <unk>=0 <s>=1 </s>=2). Being English-only, it
   has almost no Japanese pieces: Japanese falls back to UTF-8 bytes, as with Llama 2.
2. Wraps it as a Hugging Face fast tokenizer that reproduces sentencepiece's ids exactly (checked).
3. Pretrains a tiny ``LlamaForCausalLM`` from scratch on the text with youri's training loop.

Output: a model folder for plain ``AutoModelForCausalLM``/``AutoTokenizer`` (safetensors, config,
generation config, tokenizer.json + tokenizer.model) plus ``youri.json`` and ``metrics.json``.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import sentencepiece as spm
import torch
from tokenizers import processors
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from youri.config import ConfigError, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range
from youri.io import DataError, read_text, resolve_path
from youri.stage import StageWriter
from youri.train import checkpoint
from youri.train.batches import HeldOut, ShardBatches
from youri.train.distributed import close_distributed, init_distributed
from youri.train.trainer import TrainConfig, train

# Round-trip probes: ASCII, whitespace runs, digits, Japanese (byte fallback), emoji.
PROBES = ["Hello, world! 1234 apples.", "  two  spaces\nand a newline", "吾輩は猫である。名前はまだ無い。", "🙂 ok"]


@dataclass
class InitTrainConfig(TrainConfig):
    """The training loop with from-scratch defaults (a higher LR than continued pretraining)."""

    lr: PositiveFloat = 2e-3
    """Peak learning rate."""
    min_lr: NonNegativeFloat = 2e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: NonNegativeInt = 30
    """Linear warmup steps."""
    max_steps: PositiveInt = 400
    """Optimizer steps."""
    micro_batch_size: PositiveInt = 16
    """Sequences per forward pass per process."""
    eval_every: NonNegativeInt = 100
    """English held-out perplexity every N steps."""
    eval_batches: PositiveInt = 4
    """Micro-batches per evaluation."""


@dataclass
class Config:
    text: str = "builtin:corpus_en.txt"
    """English training text: a .txt file of blank-line-separated documents."""
    out: str = "runs/demo/init"
    """Output stage folder."""
    vocab_size: PositiveInt = 4096
    """SentencePiece BPE vocabulary size (byte fallback pieces included)."""
    seq_len: PositiveInt = 128
    """Training sequence length."""
    hidden_size: PositiveInt = 128
    """Model width (a multiple of 128: GPTQ groups)."""
    intermediate_size: PositiveInt = 384
    """MLP width (a multiple of 128)."""
    num_layers: PositiveInt = 4
    """Decoder layers."""
    num_heads: PositiveInt = 4
    """Attention heads."""
    val_fraction: Annotated[float, Range(min=0, max=1, min_open=True, max_open=True)] = 0.05
    """Share of documents held out for the English perplexity."""
    train: InitTrainConfig = field(default_factory=InitTrainConfig)
    """The training loop."""


def read_documents(path) -> list[str]:
    """Blank-line-separated documents of a UTF-8 text file (one document if there is no blank line)."""
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text not found: {path}")
    docs = [d.strip("\n") for d in read_text(path).split("\n\n")]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{path}: no text")
    return docs


def train_tokenizer(docs: list[str], vocab_size: int, out_dir: str | Path):
    """Train the SentencePiece BPE model and save it as a HF tokenizer in ``out_dir``; return the HF tokenizer."""

    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(docs),
            model_writer=proto,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9999,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            max_sentence_length=1 << 20,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as err:  # e.g. a vocab_size below 256 byte pieces + 3 specials + the text's characters
        raise ConfigError(f"init.vocab_size: SentencePiece cannot make {vocab_size} pieces here: {err}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto.getvalue())
        # The generic converter keeps sentencepiece's exact whitespace handling; the LlamaTokenizer class
        # rebuilds its own normaliser and differs on leading spaces. We only add Llama's BOS template.
        tok = AutoTokenizer.from_pretrained(
            tmp, local_files_only=True, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.save_pretrained(str(out_dir))
    (out_dir / "tokenizer.model").write_bytes(proto.getvalue())
    check_tokenizer_round_trip(out_dir, proto.getvalue())
    return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)


def check_tokenizer_round_trip(folder: Path, proto: bytes, texts: list[str] = PROBES) -> None:
    """``AutoTokenizer`` on ``folder`` must give sentencepiece's ids (plus BOS) and decode back exactly."""

    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids == [1] + sp.encode(text), f"HF tokenizer differs from sentencepiece on {text!r}"
        assert tok.decode(ids, skip_special_tokens=True) == text, f"round trip failed on {text!r}"


def pack(docs: list[str], tokenizer, seq_len: int) -> np.ndarray:
    """``doc EOS doc EOS ...`` cut into rows of ``seq_len`` (the remainder is dropped), as ``youri data`` packs."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_token_id)), dtype=np.int64)
    n = len(flat) // seq_len
    if n == 0:
        raise DataError(f"text too short: {len(flat)} tokens, need at least seq_len={seq_len}")
    return flat[: n * seq_len].reshape(n, seq_len)


def build_model(cfg: Config, vocab_size: int):

    for name in ("hidden_size", "intermediate_size"):
        if getattr(cfg, name) % 128:
            raise ValueError(f"{name}={getattr(cfg, name)}: use a multiple of 128 (GPTQ group size)")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(cfg.train.seed)
    return LlamaForCausalLM(config)


def run(cfg: Config, *, overwrite: bool = False) -> dict:

    text = resolve_path(cfg.text)
    docs = read_documents(text)
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    train_docs, val_docs = docs[n_val:], docs[:n_val]
    dist = init_distributed()
    stage = StageWriter(cfg.out, stage="init", config=cfg, inputs=[text], overwrite=overwrite)
    if dist.is_main:
        stage.__enter__()
        tokenizer = train_tokenizer(train_docs, cfg.vocab_size, stage.path / "tokenizer")
    dist.barrier()
    if not dist.is_main:
        tokenizer = AutoTokenizer.from_pretrained(str(stage.path / "tokenizer"), local_files_only=True)
    rows, val_rows = pack(train_docs, tokenizer, cfg.seq_len), pack(val_docs, tokenizer, cfg.seq_len)
    model = build_model(cfg, len(tokenizer))
    t = cfg.train
    dist.print0(
        f"init: {len(docs)} documents, {rows.size:,} training tokens, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    result = train(
        model,
        cfg=t,
        batches=ShardBatches(rows, t.micro_batch_size, t.grad_accum, t.seed),
        evals={"val/en": HeldOut(val_rows, t.micro_batch_size, t.eval_batches)},
        run_dir=stage.path,
        dist=dist,
    )
    checkpoint.export_model(model, tokenizer, stage.path, dist)
    metrics = {
        "loss_curve": result["train_loss"],
        "val": result["eval"],
        "final_ppl": result["final"],
        "train_tokens": int(rows.size),
        "tokens_seen": result["tokens"],
        "vocab_size": len(tokenizer),
        "japanese_pieces": japanese_pieces(tokenizer),
        "tokens_per_s": result["tokens_per_s"],
    }
    if dist.is_main:
        shutil.rmtree(stage.path / "checkpoints", ignore_errors=True)
        shutil.copy(stage.path / "tokenizer" / "tokenizer.model", stage.path / "tokenizer.model")
        shutil.rmtree(stage.path / "tokenizer")
        stage.finish(metrics)
        print(json.dumps({"out": str(stage.out), "final_ppl": result["final"]}))
    close_distributed(dist)
    return metrics


def japanese_pieces(tokenizer) -> int:
    """Vocabulary pieces containing kana or kanji (Llama 2 has a few hundred of its 32k; we expect ~0)."""

    def is_ja(ch: str) -> bool:
        return "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff"

    return sum(any(is_ja(ch) for ch in piece) for piece in tokenizer.get_vocab())
