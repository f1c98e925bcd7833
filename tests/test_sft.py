"""youri sft: readers and bad records, packing without cross-contamination, loss invariance through the
shared loop, and end-to-end runs (full and LoRA) producing loadable folders with a chat template."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path

from youri.data.sft_data import DatasetConfig, build_mixture, encode_all, read_dataset
from youri.io import DataError, SkipCounter
from youri.prompts import SETTING, SYSTEM, USER, Instruction, chat_prompt, messages_to_turns
from youri.testing import random_llama
from youri.train.batches import Row, RowBatches, collate, pack_examples
from youri.train.losses import token_loss_sum


@pytest.fixture(scope="module")
def tok(llama2_tokenizer_dir):
    from youri.model import load_tokenizer

    return load_tokenizer(llama2_tokenizer_dir)


def tiny_llama(attn: str = "sdpa", seed: int = 0):
    # use_cache off as in training: with a KV cache transformers skips packed-sequence detection.
    return random_llama(32000, seed=seed, attn_implementation=attn, use_cache=False)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tok):
    """A tiny random Llama saved with the Llama 2 tokenizer: the parent of the SFT runs."""
    from youri.model import save_model

    out = tmp_path_factory.mktemp("base") / "base"
    save_model(tiny_llama(), tok, out)
    return out


def write_jsonl(path, rows):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


INSTRUCTIONS = [
    {"instruction": f"{i}に1を足してください。", "input": "" if i % 2 else f"数: {i}", "output": f"{i + 1}です。"}
    for i in range(40)
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "あなたは猫です。"},
            {"role": "user", "content": f"{i}は？"},
            {"role": "assistant", "content": f"{i}にゃ。"},
            {"role": "user", "content": "ほかには？"},
            {"role": "assistant", "content": "にゃーん。"},
        ]
    }
    for i in range(40)
]


# ----------------------------------------------------------------------------- readers and bad records


def test_readers_shapes(tmp_path):
    seeds = read_dataset(
        DatasetConfig(str(shared_path("alpaca-ja-seed-tasks", "seed_tasks_jp_cleaned.jsonl"))), "instruction"
    )
    raw = [json.loads(x) for x in shared_path("alpaca-ja-seed-tasks", "seed_tasks_jp_cleaned.jsonl").open()]
    assert len(seeds) == sum(len(r["instances"]) for r in raw)
    assert all(isinstance(r.example, Instruction) and r.example.output for r in seeds)

    chats = read_dataset(DatasetConfig(str(write_jsonl(tmp_path / "c.jsonl", CHATS[:2])), shape="messages"), "chat")
    assert [t.speaker for t in chats[0].example] == [SETTING, USER, SYSTEM, USER, SYSTEM]

    rpc = read_dataset(
        DatasetConfig(
            str(shared_path("real-persona-chat-ja", "dialogues.sample600.jsonl")), shape="persona", max_examples=1
        ),
        "chat",
    )[0].example
    first = json.loads(shared_path("real-persona-chat-ja", "dialogues.sample600.jsonl").open().readline())
    personas = {
        json.loads(x)["interlocutor_id"]: json.loads(x)["persona"]
        for x in shared_path("real-persona-chat-ja", "personas.jsonl").open()
    }
    opener, other = first["interlocutors"]
    assert rpc[0].speaker == SETTING and rpc[0].text == "".join(personas[other])  # the システム side's persona
    assert [t.speaker for t in rpc[1:3]] == [USER, SYSTEM] and rpc[1].text == first["utterances"][0]["text"]
    assert len(rpc) == 1 + len(first["utterances"])


def test_bad_records_fail_with_file_line_field_or_are_skipped(tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            INSTRUCTIONS[0],
            {"instruction": "x", "input": ""},
            "{not json",
            {"instruction": "y", "output": 3},
            INSTRUCTIONS[1],
        ],
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'output'"):
        read_dataset(DatasetConfig(str(bad)), "instruction")
    skip = SkipCounter()
    records = read_dataset(DatasetConfig(str(bad)), "instruction", skip)
    assert len(records) == 2 and skip.count == 3
    assert any(":4: field 'output' must be str" in e for e in skip.examples)

    msgs = write_jsonl(tmp_path / "m.jsonl", [CHATS[0], {"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r"m.jsonl:2: .*messages'\[0\].role"):
        read_dataset(DatasetConfig(str(msgs), shape="messages"), "chat")
    with pytest.raises(DataError, match=r"m.jsonl:1: .*instruction model takes"):  # multi-turn -> instruction
        read_dataset(DatasetConfig(str(msgs), shape="messages"), "instruction")

    dialog = {"interlocutors": ["A", "B"], "utterances": [{"interlocutor_id": "C", "text": "x"}]}
    dialogs = write_jsonl(tmp_path / "d.jsonl", [dialog])
    write_jsonl(tmp_path / "personas.jsonl", [{"interlocutor_id": "B", "persona": ["猫。"]}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'utterances\[0\].interlocutor_id'"):
        read_dataset(DatasetConfig(str(dialogs), shape="persona"), "chat")


def test_mixture_weights_and_heldout(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", INSTRUCTIONS)
    b = write_jsonl(tmp_path / "b.jsonl", INSTRUCTIONS[:20])
    mix = build_mixture(
        [DatasetConfig(str(a), epochs=2), DatasetConfig(str(b), epochs=0.5)], "instruction", heldout=3, seed=0
    )
    assert mix.counts[str(a)] == {"records": 40, "heldout": 3, "train": 74}
    assert mix.counts[str(b)] == {"records": 20, "heldout": 2, "train": 9}
    held_a = {r.where for r in mix.heldout if r.where.startswith(str(a))}
    assert len(held_a) == 3 and not held_a & {r.where for r in mix.train}


def test_long_chats_split_into_windows_that_fit(tok):
    from youri.data.sft_data import split_long_chat
    from youri.prompts import encode_training

    path = shared_path("real-persona-chat-ja", "dialogues.sample600.jsonl")
    turns = read_dataset(DatasetConfig(str(path), shape="persona", max_examples=1), "chat")[0].example
    assert len(encode_training(turns, tok).input_ids) > 768
    windows = split_long_chat(turns, tok, 768)
    assert len(windows) > 1
    body = []
    for w in windows:
        assert w[0] == turns[0] and w[-1].speaker == SYSTEM  # persona repeated, ends with a reply
        assert len(encode_training(w, tok).input_ids) <= 768
        body += w[1:]
    assert body == turns[1 : len(body) + 1]  # in order, nothing repeated or skipped


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked(tok, attn):
    from youri.prompts import Turn

    model = tiny_llama(attn).eval()
    examples = [
        Instruction("足して", "1と2", "3です"),
        [Turn(USER, "やあ"), Turn(SYSTEM, "こんにちは"), Turn(USER, "元気？"), Turn(SYSTEM, "はい")],
        Instruction("猫とは？", "", "動物です。"),
    ]
    from youri.prompts import encode_training

    encoded = [encode_training(e, tok) for e in examples]
    rows = pack_examples(encoded, 512, packing=True)
    assert len(rows) == 1 and rows[0].position_ids.count(0) == 3
    batch = collate(
        rows + [Row(encoded[0].input_ids, encoded[0].labels, list(range(len(encoded[0].input_ids))))], tok.eos_token_id
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        plain = model(input_ids=batch["input_ids"][:1]).logits  # same row, no position reset
    start = 0
    for enc in encoded:
        end = start + len(enc.input_ids)
        with torch.no_grad():
            ref, n_ref = token_loss_sum(
                model(input_ids=torch.tensor([enc.input_ids])).logits, torch.tensor([enc.labels])
            )
        got, n = token_loss_sum(logits[:1, start:end], batch["labels"][:1, start:end])
        assert n == n_ref and n > 0
        assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
        if start > 0:  # the control: without reset positions later examples see earlier ones
            leak, _ = token_loss_sum(plain[:, start:end], batch["labels"][:1, start:end])
            assert abs(leak.item() - ref.item()) > 1e-3
        start = end
    # The padded second row scores exactly like the example alone.
    ref, _ = token_loss_sum(
        model(input_ids=torch.tensor([encoded[0].input_ids])).logits, torch.tensor([encoded[0].labels])
    )
    got, _ = token_loss_sum(logits[1:], batch["labels"][1:])
    assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))


def test_batch1_accum8_equals_batch8_accum1(tok, tmp_path):
    from youri.train.distributed import Dist
    from youri.train.trainer import TrainConfig, train

    path = write_jsonl(
        tmp_path / "c.jsonl", [{"messages": c["messages"][1 : 3 + 2 * (i % 2)]} for i, c in enumerate(CHATS)]
    )
    encoded, _ = encode_all(read_dataset(DatasetConfig(str(path), shape="messages"), "chat"), tok, 96)
    rows = pack_examples(encoded, 96, packing=True)
    assert len(rows) >= 8 and any(r.position_ids.count(0) > 1 for r in rows)  # packed rows, uneven masks
    curves, weights = [], []
    for micro, accum in ((1, 8), (8, 1)):
        cfg = TrainConfig(
            lr=1e-3,
            warmup_steps=1,
            max_steps=2,
            micro_batch_size=micro,
            grad_accum=accum,
            progress=False,
            log_every=100,
            resume="none",
        )
        model = tiny_llama()
        out = train(
            model,
            cfg=cfg,
            batches=RowBatches(rows, micro, accum, tok.eos_token_id, seed=1),
            evals={},
            run_dir=tmp_path / f"run{micro}",
            dist=Dist(),
        )
        curves.append([loss for _, loss in out["train_loss"]])
        weights.append(model.model.layers[0].self_attn.q_proj.weight.detach().clone())
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


# ----------------------------------------------------------------------------- end to end


def test_sft_instruction_then_chat_end_to_end(tmp_path, base_dir, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from youri.cli import main
    from youri.stage import read_manifest, read_metrics

    ins = write_jsonl(tmp_path / "ins.jsonl", INSTRUCTIONS + ['{"instruction": "broken"}'])
    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    train = {"lr": 3e-3, "warmup_steps": 1, "max_steps": 4, "micro_batch_size": 4, "progress": False}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {  # JSON is YAML
                "sft_instruction": {
                    "kind": "instruction",
                    "model": str(base_dir),
                    "out": str(tmp_path / "ins"),
                    "datasets": [{"path": str(ins)}],
                    "seq_len": 256,
                    "heldout": 4,
                    "skip_bad_records": True,
                    "train": train,
                },
                "sft_chat": {
                    "kind": "chat",
                    "model": str(tmp_path / "ins"),
                    "out": str(tmp_path / "chat"),
                    "datasets": [{"path": str(ins), "epochs": 0.5}, {"path": str(chats), "shape": "messages"}],
                    "seq_len": 256,
                    "heldout": 4,
                    "skip_bad_records": True,
                    "train": train,
                },
            }
        )
    )
    assert main(["sft", "--recipe", str(recipe)]) == 0
    assert main(["sft", "--recipe", str(recipe), "--section", "sft_chat"]) == 0

    metrics = read_metrics(tmp_path / "chat")
    assert metrics["skipped_records"] == 1 and metrics["kind"] == "chat"
    assert metrics["heldout_response_loss_after"] < metrics["heldout_response_loss_before"]
    assert read_manifest(tmp_path / "chat")["parent"] == str(tmp_path / "ins")
    config = json.loads((tmp_path / "chat" / "tokenizer_config.json").read_text())
    assert "chat_template" in config and not (tmp_path / "chat" / "chat_template.jinja").exists()
    assert json.loads((tmp_path / "chat" / "generation_config.json").read_text())["eos_token_id"] == 2

    # Plain transformers, no youri code: the folder loads and its template renders our prompt.
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "chat"), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "chat"), local_files_only=True)
    messages = CHATS[0]["messages"][:2]
    text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == chat_prompt(messages_to_turns(messages)) and text.endswith("\nシステム: ")
    ids = hf_tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] <= ids.shape[1] + 2
    ins_tok = AutoTokenizer.from_pretrained(str(tmp_path / "ins"), local_files_only=True)
    assert ins_tok.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    ).endswith("### 指示:\nx\n\n### 応答:\n")


def test_sft_lora_merges_into_plain_weights(tmp_path, base_dir):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from youri.config import build_config
    from youri.train.sft import Config, run

    ins = write_jsonl(tmp_path / "ins.jsonl", INSTRUCTIONS)
    cfg = build_config(
        Config,
        {
            "model": str(base_dir),
            "out": str(tmp_path / "lora"),
            "seq_len": 128,
            "heldout": 4,
            "datasets": [{"path": str(ins)}],
            "lora": {"enabled": True, "r": 4},
            "train": {"lr": 1e-2, "warmup_steps": 1, "max_steps": 2, "micro_batch_size": 4, "progress": False},
        },
    )
    metrics = run(cfg)
    assert metrics["lora"] is True
    merged = load_file(str(tmp_path / "lora" / "model.safetensors"))
    parent = load_file(str(base_dir / "model.safetensors"))
    assert set(merged) == set(parent)  # no adapter tensors: plain weights
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], parent[key])
    assert torch.equal(merged["model.embed_tokens.weight"], parent["model.embed_tokens.weight"])
