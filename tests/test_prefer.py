"""youri prefer: each loss equals TRL 1.16.0's own code on the same batch (DPOTrainer sigmoid, ORPOTrainer,
CPOTrainer loss_type=simpo; TRL in the mergekit/TRL venv of scripts/test.sh), the readers (three shapes,
file:line errors), exact resume with the cached reference log-probs, LoRA, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from youri.config import build_config
from youri.data.pref_data import PrefDatasetConfig, encode_pairs, read_pairs
from youri.io import DataError, resolve_path
from youri.model import load_tokenizer
from youri.prompts import IGNORE_INDEX
from youri.testing import char_tokenizer, save_random_llama
from youri.train import checkpoint
from youri.train.batches import collate_pairs
from youri.train.losses import PreferenceObjective, response_logps

SAMPLE = "builtin:preferences_ja.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random Llama whose character tokenizer covers the preference sample and both formats."""
    from youri.prompts import INSTRUCTION_INTRO

    text = (
        resolve_path(SAMPLE).read_text(encoding="utf-8")
        + INSTRUCTION_INTRO
        + "設定ユーザーシステム###指示入力応答：: \n"
    )
    root = tmp_path_factory.mktemp("prefer")
    return save_random_llama(root / "model", char_tokenizer(text), hidden_size=64, intermediate_size=128)


def _pairs(tiny: Path, n: int = 3, kind: str = "instruction"):
    tokenizer = load_tokenizer(tiny)
    pairs = read_pairs(PrefDatasetConfig(SAMPLE, max_examples=n))
    encoded, _ = encode_pairs(pairs, kind, tokenizer, 4096)
    return encoded, tokenizer


TRL = r"""
import json, sys, types
from collections import defaultdict
import torch
from transformers import AutoModelForCausalLM
from trl import DPOTrainer
from trl.trainer.utils import add_fused_lm_head
from trl.experimental.orpo import ORPOTrainer
from trl.experimental.cpo import CPOTrainer

spec = json.loads(open(sys.argv[1]).read())
ids, labels, lengths = (torch.tensor(spec[k]) for k in ("input_ids", "labels", "lengths"))
attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
b, pad = ids.shape[0] // 2, spec["pad_id"]
accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
out = {}

def plain():
    model = AutoModelForCausalLM.from_pretrained(spec["model"], local_files_only=True, dtype=torch.float32)
    return model.eval()

# DPO: DPOTrainer._compute_loss with precomputed reference log-probs (its fused LM head on the same model)
model = plain()
add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
dpo = DPOTrainer.__new__(DPOTrainer)
dpo.__dict__.update(model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
    precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
    beta=spec["beta"], use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
    _total_train_tokens=0, _tp_size=1)
ref = torch.tensor(spec["ref_logps"], dtype=torch.float32)
inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": (labels != -100).long(),
          "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
out["dpo"] = DPOTrainer._compute_loss(dpo, model, inputs, False).item()
out["dpo_reward_acc"] = dpo._metrics["eval"]["rewards/accuracies"][-1]

# ORPO and SimPO: get_batch_loss_metrics on the chosen_*/rejected_* batch TRL's collator makes
def split(rows):
    return {"input_ids": ids[rows], "attention_mask": attention[rows], "labels": labels[rows]}
batch = {f"{side}_{k}": v for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, None)))
         for k, v in split(rows).items()}
for name, cls, extra in (("orpo", ORPOTrainer, {}), ("simpo", CPOTrainer, {"loss_type": "simpo",
        "simpo_gamma": spec["gamma"], "cpo_alpha": 0.0, "label_smoothing": 0.0, "alpha": 0.0})):
    trainer = cls.__new__(cls)
    trainer.__dict__.update(model=plain(), accelerator=accelerator, aux_loss_enabled=False, is_encoder_decoder=False,
        padding_value=pad, pad_token_id=pad, beta=spec["beta"], **extra)
    loss, metrics = cls.get_batch_loss_metrics(trainer, trainer.model, batch)
    out[name] = loss.item()
    out[name + "_reward_acc"] = metrics["rewards/accuracies"]
print(json.dumps(out))
"""


def test_losses_equal_trls_on_the_same_batch(tiny, tmp_path):
    python = os.environ.get("YOURI_MERGE_REFERENCE_PYTHON", "")
    if not python:
        pytest.skip(
            "TRL is not installed beside youri: set YOURI_MERGE_REFERENCE_PYTHON to a venv with trl==1.16.0 "
            "(scripts/test.sh builds it in ~/.cache/youri/mergeref)"
        )
    from youri.model import load_model

    encoded, tokenizer = _pairs(tiny, n=4)
    assert len(encoded) == 4
    model = load_model(tiny, dtype=torch.float32).eval()
    batch = collate_pairs(encoded, tokenizer.eos_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    # a reference a few nats away from the policy, so that the DPO loss is neither 0 nor saturated
    sums = response_logps(logits, batch["labels"])[0].double() + torch.linspace(-3, 2, 8, dtype=torch.float64)
    batch["ref_logps"] = sums
    beta, gamma = 0.7, 0.3
    spec = {k: batch[k].tolist() for k in ("input_ids", "labels", "lengths")}
    spec.update(
        model=str(tiny), pad_id=tokenizer.eos_token_id, beta=beta, gamma=gamma, ref_logps=batch["ref_logps"].tolist()
    )
    (tmp_path / "batch.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [python, "-c", TRL, str(tmp_path / "batch.json")], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])

    for method in ("dpo", "orpo", "simpo"):
        losses, rc, rr, _ = PreferenceObjective(method, beta, gamma).pair_losses(logits, dict(batch))
        assert abs(losses.mean().item() - theirs[method]) < 1e-5, (method, losses.mean().item(), theirs[method])
        assert (rc > rr).float().mean().item() == pytest.approx(theirs[method + "_reward_acc"])


def test_readers_shapes_and_file_line_errors(tiny, tmp_path):
    tokenizer = load_tokenizer(tiny)
    hh = tmp_path / "hh.jsonl"
    prefix = "\n\nHuman: こんにちは\n\nAssistant: はい、こんにちは。\n\nHuman: 天気は？"
    hh.write_text(
        json.dumps({"chosen": prefix + "\n\nAssistant: 晴れです。", "rejected": prefix + "\n\nAssistant: 知りません。"})
        + "\n",
        encoding="utf-8",
    )
    (pair,) = read_pairs(PrefDatasetConfig(str(hh), shape="hh_rlhf"))
    assert [t.text for t in pair.prompt] == ["こんにちは", "はい、こんにちは。", "天気は？"]
    assert (pair.chosen, pair.rejected) == ("晴れです。", "知りません。")
    (enc,), _ = encode_pairs([pair], "chat", tokenizer, 4096)
    scored = [i for i, label in zip(enc.chosen.input_ids[1:], enc.chosen.labels[1:]) if label != IGNORE_INDEX]
    assert tokenizer.decode(scored[:-1]).replace(" ", "") == "晴れです。"  # only the final reply (+ </s>)

    uf = tmp_path / "uf.jsonl"
    user = {"role": "user", "content": "猫とは？"}
    uf.write_text(
        json.dumps(
            {
                "prompt": "猫とは？",
                "chosen": [user, {"role": "assistant", "content": "動物です。"}],
                "rejected": [user, {"role": "assistant", "content": "はい。"}],
            }
        )
        + "\n",
        encoding="utf-8",
    )
    (pair,) = read_pairs(PrefDatasetConfig(str(uf), shape="ultrafeedback"))
    assert pair.prompt[0].text == "猫とは？" and pair.chosen == "動物です。"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: missing field 'rejected'"):
        read_pairs(PrefDatasetConfig(str(bad)))
    hh.write_text(
        json.dumps({"chosen": prefix + "\n\nAssistant: x", "rejected": "\n\nHuman: 別\n\nAssistant: y"}) + "\n"
    )
    with pytest.raises(DataError, match=r"hh.jsonl:1: fields 'chosen' and 'rejected' differ"):
        read_pairs(PrefDatasetConfig(str(hh), shape="hh_rlhf"))
    # the shipped sample: 80 pairs, all renderable as instructions
    encoded, too_long = encode_pairs(read_pairs(PrefDatasetConfig(SAMPLE)), "instruction", tokenizer, 4096)
    assert len(encoded) == 80 and too_long == 0


def _cfg(tiny: Path, out: Path, **fields):
    from youri.train.prefer import Config

    train = {
        "lr": 1e-3,
        "min_lr": 1e-4,
        "warmup_steps": 1,
        "max_steps": 4,
        "micro_batch_size": 2,
        "grad_accum": 2,
        "save_every": 2,
        "eval_every": 0,
        "deterministic": True,
        "progress": False,
    }
    values = {
        "model": str(tiny),
        "out": str(out),
        "heldout": 2,
        "seq_len": 200,
        "datasets": [{"path": SAMPLE, "max_examples": 24}],
        "train": train,
        "keep_checkpoints": True,
    }
    return build_config(Config, {**values, **fields})


def test_dpo_exact_resume_reads_the_cached_reference(tiny, tmp_path, monkeypatch, capsys):
    from youri.train import prefer

    reference = prefer.run(_cfg(tiny, tmp_path / "ref"))
    assert reference["reward_acc_before"] == 0.5  # policy == reference: every reward ties
    assert (tmp_path / "ref" / prefer.REFERENCE).is_file()
    assert set(reference["train_stats"]) == {"reward_acc", "reward_margin", "logps_chosen", "logps_rejected"}

    save = checkpoint.save

    def save_then_stop(root, step, *args, **kwargs):
        save(root, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        prefer.run(_cfg(tiny, tmp_path / "cut"))
    monkeypatch.setattr(checkpoint, "save", save)
    calls = []
    monkeypatch.setattr(prefer, "pair_logps", lambda *a, **k: calls.append(1) or [])
    capsys.readouterr()
    resumed = prefer.run(_cfg(tiny, tmp_path / "cut"))
    log = capsys.readouterr().out
    assert "resumed from" in log and "reference log-probs: read from" in log and not calls
    assert resumed["loss_curve"] == reference["loss_curve"]
    assert resumed["train_stats"] == reference["train_stats"]
    assert resumed["heldout_after"] == reference["heldout_after"]


def test_orpo_with_lora_and_simpo_train(tiny, tmp_path):
    """The reference-free methods: no reference log-probs, LoRA merged into plain weights on save."""
    pytest.importorskip("peft")
    from youri.train.prefer import run

    lora = {"enabled": True, "r": 4, "alpha": 8.0, "dropout": 0.0}
    short = {"lr": 1e-3, "max_steps": 2, "warmup_steps": 1, "micro_batch_size": 2, "save_every": -1, "progress": False}
    for method, extra in (("orpo", {"lora": lora}), ("simpo", {"gamma": 0.2})):
        result = run(
            _cfg(tiny, tmp_path / method, method=method, beta=0.5, keep_checkpoints=False, train=short, **extra)
        )
        assert result["reference_logps"] is None and result["lora"] is (method == "orpo") and result["steps"] == 2
        assert (tmp_path / method / "model.safetensors").is_file()
        assert not (tmp_path / method / "checkpoints").exists()
        assert result["heldout_after"]["loss"] != result["heldout_before"]["loss"]
