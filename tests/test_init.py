"""youri init: an English-centric SentencePiece BPE tokenizer wrapped for HF, and a tiny Llama trained on it."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def init_out(tmp_path_factory):
    from youri.config import build_config
    from youri.train.init_base import Config, run

    out = tmp_path_factory.mktemp("init") / "base"
    cfg = build_config(
        Config,
        {
            "text": "builtin:corpus_en.txt",
            "out": str(out),
            "vocab_size": 512,
            "seq_len": 64,
            "num_layers": 2,
            "intermediate_size": 256,
            "train": {
                "max_steps": 8,
                "warmup_steps": 2,
                "micro_batch_size": 8,
                "eval_every": 0,
                "eval_batches": 2,
                "progress": False,
            },
        },
    )
    metrics = run(cfg)
    return out, metrics


def test_tokenizer_round_trip_matches_sentencepiece(init_out):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out, _ = init_out
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == sp.get_piece_size() == 512
    for text in [
        "The river begins as a thin stream.",
        "  leading  and trailing  ",
        "Digits 2024-11-29\ttab",
        "富士山は日本最高峰の山です。",
        "mixed 日本語 and English 🙂",
    ]:
        ids = tok(text)["input_ids"]
        assert ids == [1] + sp.encode(text), text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_japanese_falls_back_to_bytes_like_llama2(init_out):
    from transformers import AutoTokenizer

    out, metrics = init_out
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert metrics["japanese_pieces"] == 0
    pieces = tok.convert_ids_to_tokens(tok("猫", add_special_tokens=False)["input_ids"])
    assert pieces[-3:] == ["<0xE7>", "<0x8C>", "<0xAB>"]  # U+732B as its three UTF-8 bytes


def test_init_model_loads_with_plain_transformers_and_learned(init_out):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out, metrics = init_out
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert model.config.hidden_size % 128 == 0 and model.config.intermediate_size % 128 == 0
    assert GenerationConfig.from_pretrained(out).eos_token_id == 2
    curve = metrics["val"]["val/en"]
    assert curve[-1][2] < curve[0][2] * 0.8  # held-out English perplexity fell
    ids = tok("The river", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4
    manifest = json.loads((out / "youri.json").read_text())
    assert manifest["stage"] == "init" and not (out / "checkpoints").exists()
