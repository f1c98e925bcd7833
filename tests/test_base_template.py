"""The newer bases in youri data / pretrain / sft (issue 22): the base's own chat template as an SFT format
(mask derived by rendering, prompt ids equal to transformers' ``apply_chat_template``, special-token strings
in user text stay text), the BOS/EOS policy per real tokenizer, and youri's loss == the HF model's own loss
per family, packed rows included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from conftest import shared_tokenizer as tokenizer

from youri.prompts import IGNORE_INDEX, SETTING, SYSTEM, USER, Turn, encode_prompt, encode_training, template_messages

# What each template writes after a reply (the test's oracle, typed here from the model cards; youri derives it).
END_OF_TURN = {"llama3": "<|eot_id|>", "qwen3": "<|im_end|>", "gemma3": "<end_of_turn>"}
LAST_REPLY_PREFIX = {"qwen3": "<think>\n\n</think>\n\n"}  # Qwen3's template writes it before the last reply
FAMILY_SPECIALS = {
    "llama3": ["<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>"],
    "qwen3": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
    "gemma3": ["<start_of_turn>", "<end_of_turn>", "<bos>"],
}
HOSTILE = " ".join(s for specials in FAMILY_SPECIALS.values() for s in specials)

CONVERSATIONS = [
    [Turn(USER, "日本の首都は？")],
    [Turn(SETTING, "あなたは親切なアシスタントです。"), Turn(USER, "こんにちは")],
    [Turn(USER, "Hi!"), Turn(SYSTEM, "Hello, how can I help?"), Turn(USER, " 2 + 2 は?\n")],
    [Turn(SETTING, "猫として話して"), Turn(USER, "名前は"), Turn(SYSTEM, "たまにゃ。"), Turn(USER, "年は？")],
]
TRAINING = [
    Turn(SETTING, "あなたは京都の和菓子屋です。"),
    Turn(USER, "おすすめは？"),
    Turn(SYSTEM, "桜もちどす。"),
    Turn(USER, "値段は？ Price?"),
    Turn(SYSTEM, " 一つ二百円です。 \n"),
]


def shared_tokenizer_template(name: str) -> str:
    config = shared_path(f"{name}-tokenizer", "tokenizer_config.json")
    return json.loads(config.read_text(encoding="utf-8"))["chat_template"]


def hf_prompt_ids(tok, turns) -> list[int]:
    out = tok.apply_chat_template(template_messages(turns), add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def supervised_runs(enc) -> list[list[int]]:
    runs, current = [], []
    for tid, label in zip(enc.input_ids, enc.labels):
        if label == IGNORE_INDEX:
            runs, current = (runs + [current], []) if current else (runs, [])
        else:
            assert label == tid  # HF-aligned: the label at t is the token at t
            current.append(tid)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3"])
def test_mask_is_the_replies_and_the_end_of_turn(name):
    tok = tokenizer(name)
    enc = encode_training(TRAINING, tok, base_template=True)
    runs = [tok.decode(run) for run in supervised_runs(enc)]
    last = LAST_REPLY_PREFIX.get(name, "") + "一つ二百円です。"
    assert runs == ["桜もちどす。" + END_OF_TURN[name], last + END_OF_TURN[name]]
    # Each reply's context is, token for token, the prompt youri gives at inference.
    starts = [t for t in range(1, len(enc.labels)) if enc.labels[t] != IGNORE_INDEX == enc.labels[t - 1]]
    assert [enc.input_ids[:t] for t in starts] == [
        encode_prompt(TRAINING[:2], tok, base_template=True),
        encode_prompt(TRAINING[:4], tok, base_template=True),
    ]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    assert enc.input_ids[: len(bos) + 1].count(tok.bos_token_id) == len(bos)  # BOS once, from the template


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3"])
def test_prompt_ids_equal_apply_chat_template(name):
    tok = tokenizer(name)
    for turns in CONVERSATIONS:
        assert encode_prompt(turns, tok, base_template=True) == hf_prompt_ids(tok, turns), turns


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3"])
def test_special_token_strings_in_user_text_stay_text(name):
    tok = tokenizer(name)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}  # <|eot_id|> too
    assert {tok.convert_tokens_to_ids(s) for s in FAMILY_SPECIALS[name]} <= special
    hostile = [Turn(SETTING, HOSTILE), Turn(USER, "a" + HOSTILE), Turn(SYSTEM, HOSTILE + "b"), Turn(USER, HOSTILE)]
    plain = [Turn(t.speaker, "x") for t in hostile]
    ids = encode_prompt(hostile, tok, base_template=True)
    # The only special ids are the template's: the same ones, in the same order, as with harmless text.
    assert [i for i in ids if i in special] == [
        i for i in encode_prompt(plain, tok, base_template=True) if i in special
    ]
    rendered = tok.apply_chat_template(template_messages(hostile), tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == rendered
    assert ids != hf_prompt_ids(tok, hostile)  # transformers itself would have read them as special tokens
    enc = encode_training(hostile[:3], tok, base_template=True)
    runs = supervised_runs(enc)
    assert tok.decode(runs[-1]) == LAST_REPLY_PREFIX.get(name, "") + HOSTILE + "b" + END_OF_TURN[name]
    assert runs[-1][-1] in special
    assert not special & set(runs[-1][:-1])


def test_templates_that_cannot_be_used_are_refused_in_one_line():
    from youri.prompts import PromptError, chat_template

    tok = tokenizer("qwen3")
    with pytest.raises(PromptError, match="rewrites the text"):  # Qwen3 moves reasoning out of the reply
        encode_training([Turn(USER, "q"), Turn(SYSTEM, "thinking</think>answer")], tok, base_template=True)
    try:
        tok.chat_template = chat_template("chat")  # youri's own: ends replies with no special token, could never stop
        with pytest.raises(PromptError, match="no special token"):
            encode_training([Turn(USER, "q"), Turn(SYSTEM, "a")], tok, base_template=True)
    finally:
        tok.chat_template = shared_tokenizer_template("qwen3")
    with pytest.raises(PromptError, match="refuses this conversation"):  # Gemma: roles must alternate
        encode_prompt([Turn(USER, "a"), Turn(USER, "b")], tokenizer("gemma3"), base_template=True)


# ----------------------------------------------------------------------------- youri data: BOS/EOS policy


@pytest.mark.parametrize(
    "name,bos,eos",
    [
        ("llama3", None, "<|end_of_text|>"),
        ("qwen3", None, "<|im_end|>"),
        ("gemma3", "<bos>", "<end_of_turn>"),
    ],
)
def test_document_policy_follows_the_tokenizer(tmp_path, name, bos, eos):
    from youri.data.corpus import ShardWriter, tokenizer_facts

    tok = tokenizer(name)
    facts = tokenizer_facts(shared_path(f"{name}-tokenizer"))  # what youri data reads from its copy of the folder
    assert (facts.bos_id, facts.eos_id, facts.vocab_size) == (
        None if bos is None else tok.convert_tokens_to_ids(bos),
        tok.convert_tokens_to_ids(eos),
        len(tok),
    )
    # The tokenizer's own encoding agrees: BOS exactly where it adds one itself.
    assert (tok("日本")["input_ids"][0] == tok.bos_token_id) == (bos is not None)

    class Docs:  # two documents of one task, as the tokenise step leaves them
        tokens = [np.array([11, 12, 13, 21, 22], dtype=np.uint32)]
        lengths, task, start = np.array([3, 2]), np.array([0, 0]), np.array([0, 3])

    writer = ShardWriter(tmp_path / "shards", 4, 10, np.dtype("<u4"), facts.eos_id, bos_id=facts.bos_id)
    writer.write("train", Docs, np.array([0, 1]))
    rows = np.fromfile(tmp_path / "shards" / "train" / "00000.bin", dtype="<u4").tolist()
    b, e = ([] if facts.bos_id is None else [facts.bos_id]), [facts.eos_id]
    stream = b + [11, 12, 13] + e + b + [21, 22] + e
    assert rows == stream[: len(stream) // 4 * 4]


# ----------------------------------------------------------------------------- loss == the HF model's own loss

MODEL_TOKENIZER = {
    "llama": "llama3",
    "mistral": "llama3",
    "qwen2": "qwen3",
    "qwen3": "qwen3",
    "gemma2": "gemma3",
    "gemma3_text": "gemma3",
}


@pytest.mark.parametrize("model_type", list(MODEL_TOKENIZER))
def test_youri_loss_equals_hf_loss_packed_and_plain(model_type):
    """SFT rows (base template, packed: position_ids restart, no attention mask, no cache) and pretraining
    rows (plain): youri's loss == the model's own ``labels=`` loss, and a packed row's loss == its examples'."""
    from youri.testing import random_family_model
    from youri.train.batches import collate, pack_examples
    from youri.train.losses import token_loss_sum

    tok = tokenizer(MODEL_TOKENIZER[model_type])
    model = random_family_model(model_type, tok, use_cache=False).eval()
    examples = [encode_training(turns, tok, base_template=True) for turns in (TRAINING, TRAINING[1:3])]
    rows = pack_examples(examples, 256, packing=True)
    assert len(rows) == 1 and rows[0].position_ids.count(0) == 2
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = collate(rows, pad)
    with torch.no_grad():
        out = model(**batch)  # the model's own loss (labels=) and its logits, one forward
        total, n = token_loss_sum(out.logits, batch["labels"])
        torch.testing.assert_close(total / n, out.loss, rtol=1e-5, atol=1e-5)
        alone = collate(pack_examples(examples, 256, packing=False), pad)  # one example per row, padded
        separate, _ = token_loss_sum(model(**alone).logits, alone["labels"])
        torch.testing.assert_close(total, separate, rtol=1e-4, atol=1e-3)
        plain = batch["input_ids"][:, :48]  # a pretraining row: labels = input ids, no position ids
        out = model(input_ids=plain, labels=plain)
        total, n = token_loss_sum(out.logits, plain)
        torch.testing.assert_close(total / n, out.loss, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- youri sft --kind template


def test_sft_template_run_keeps_the_base_template(tmp_path):
    from youri.cli import main
    from youri.model import load_tokenizer, save_model
    from youri.run.card import write_model_card
    from youri.serve.inference import encode_turns, prompt_kind
    from youri.testing import random_family_model

    base_tok_dir = shared_path("qwen3-tokenizer")
    tok = tokenizer("qwen3")
    base = save_model(random_family_model("qwen3", tok, tie_word_embeddings=True), tok, tmp_path / "base")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": f"{i}."}]})
            + "\n"
            for i in range(12)
        ),
        encoding="utf-8",
    )
    train = {"lr": 1e-3, "warmup_steps": 1, "max_steps": 2, "micro_batch_size": 2, "progress": False}
    section = {"kind": "template", "model": str(base), "out": str(tmp_path / "sft"), "seq_len": 64, "heldout": 1}
    section["datasets"] = [{"path": str(chats), "shape": "messages"}]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"sft": {**section, "train": train}}))  # JSON is YAML
    assert main(["sft", "--recipe", str(recipe), "--section", "sft"]) == 0
    out = tmp_path / "sft"
    saved = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    base_template = json.loads((base_tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    assert saved["chat_template"] == base_template
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert eos == tok.convert_tokens_to_ids("<|im_end|>")  # Qwen3: the end of a turn is its EOS
    loaded = load_tokenizer(out)
    assert prompt_kind(loaded) == "template"
    turns = CONVERSATIONS[3]
    assert encode_turns(turns, loaded, "template") == hf_prompt_ids(tok, turns)
    card = write_model_card(out).read_text(encoding="utf-8")  # shows what the base's template renders
    assert "<|im_start|>system\nあなたは親切なアシスタントです。<|im_end|>\n<|im_start|>user\n" in card
