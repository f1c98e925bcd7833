"""youri merge: bit-identical to mergekit (task_arithmetic, linear), several shards with bounded memory,
vocabulary mismatch, skipped tensors, and an output transformers loads.

The oracle runs mergekit 0.1.5 in its own venv (scripts/test.sh builds it; YOURI_MERGE_REFERENCE_PYTHON)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from youri.config import build_config
from youri.model import save_model
from youri.testing import char_tokenizer, random_llama
from youri.train.merge import Config, run

SHAPE = {"hidden_size": 64, "intermediate_size": 128}


def _model(folder: Path, seed: int, vocab: int = 64, shard: str = "5GB") -> Path:
    torch.manual_seed(seed)
    model = random_llama(vocab, seed=seed, **SHAPE)
    save_model(model, char_tokenizer("あいうえおかきくけこ abc") if vocab >= 32 else None, folder, max_shard_size=shard)
    return folder


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A base and two models of the same shape (the 'CPT' and the 'instruct' model), one shard each."""
    root = tmp_path_factory.mktemp("merge")
    return _model(root / "base", 0), _model(root / "cpt", 1), _model(root / "inst", 2)


def _state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(file)))
    return out


def _merge(tmp_path: Path, name: str, **fields) -> tuple[Path, dict]:
    cfg = build_config(Config, {"out": str(tmp_path / name), **fields})
    return tmp_path / name, run(cfg)


MODELS = [("cpt", 1.0), ("inst", 0.5)]
METHODS = ("task_arithmetic", "linear")
MERGEKIT = (
    "import json, sys\n"
    "from mergekit.config import MergeConfiguration\n"
    "from mergekit.merge import run_merge\n"
    "from mergekit.options import MergeOptions\n"
    "for spec, out in json.loads(sys.argv[1]):\n"
    "    run_merge(MergeConfiguration.model_validate(spec), out, options=MergeOptions(copy_tokenizer=False))\n"
)


@pytest.fixture(scope="module")
def mergekit_outputs(trio, tmp_path_factory) -> dict[str, Path]:
    """mergekit's merge of the trio by each method, in one run of its venv (importing mergekit takes ~30 s)."""
    python = os.environ.get("YOURI_MERGE_REFERENCE_PYTHON", "")
    if not python:
        pytest.skip(
            "mergekit is not installed beside youri: set YOURI_MERGE_REFERENCE_PYTHON to a venv with "
            "mergekit==0.1.5 (scripts/test.sh builds it in ~/.cache/youri/mergeref)"
        )
    base, cpt, inst = trio
    root = tmp_path_factory.mktemp("mergekit")
    folders = {"cpt": cpt, "inst": inst}
    jobs = []
    for method in METHODS:
        spec = {
            "merge_method": method,
            "models": [{"model": str(folders[n]), "parameters": {"weight": w}} for n, w in MODELS],
            "dtype": "float32",
            "out_dtype": "float32",
        }
        if method == "task_arithmetic":
            spec["base_model"] = str(base)
        jobs.append([spec, str(root / method)])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = [python, "-c", MERGEKIT, json.dumps(jobs)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {method: root / method for method in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_bit_identical_to_mergekit(trio, mergekit_outputs, tmp_path, method):
    base, cpt, inst = trio
    folders = {"cpt": cpt, "inst": inst}
    models = [{"model": str(folders[n]), "weight": w} for n, w in MODELS]
    ours, _ = _merge(tmp_path, "youri", method=method, base=str(base), models=models)
    mine, theirs = _state(ours), _state(mergekit_outputs[method])
    assert set(mine) == set(theirs)
    different = [name for name in mine if not torch.equal(mine[name], theirs[name])]
    assert not different, f"{len(different)} tensors differ from mergekit's, e.g. {different[:3]}"
    # and the merge did something: not a copy of any input
    assert not torch.equal(mine["model.layers.0.mlp.up_proj.weight"], _state(cpt)["model.layers.0.mlp.up_proj.weight"])


def test_several_shards_bounded_memory_and_same_result(trio, tmp_path):
    """Inputs in many small shards, output in several: the same tensors as a one-shard merge, and youri never
    held more than one output shard plus one tensor per input (far below the model)."""
    base, cpt, inst = (_model(tmp_path / n, s, shard="40KB") for n, s in (("b", 0), ("c", 1), ("i", 2)))
    assert len(list(cpt.glob("*.safetensors"))) >= 4
    models = [{"model": str(cpt), "weight": 1.0}, {"model": str(inst), "weight": 0.5}]
    limit = 60_000
    sharded, metrics = _merge(tmp_path, "sharded", base=str(base), models=models, max_shard_bytes=limit)
    one_shard = [{**m, "model": str(f)} for m, f in zip(models, trio[1:])]
    whole, _ = _merge(tmp_path, "whole", base=str(trio[0]), models=one_shard)
    assert metrics["shards"] >= 4 and (sharded / "model.safetensors.index.json").is_file()
    a, b = _state(sharded), _state(whole)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    largest = max(t.numel() * t.element_size() for t in a.values())
    assert metrics["largest_shard_bytes"] <= limit
    assert metrics["peak_held_bytes"] <= limit + 4 * largest  # one output shard + base, two inputs, the result
    assert metrics["peak_held_bytes"] < metrics["output_bytes"] / 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(sharded), local_files_only=True)
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight, a["model.layers.1.self_attn.q_proj.weight"])


def test_chat_vector_with_extended_vocabulary_and_skip(tmp_path):
    """A CPT model with 80 rows vs base/instruct with 64: shared rows get the vector, new rows keep the CPT's;
    skipped tensors are the target's; metrics.json says what was done."""
    base, inst = _model(tmp_path / "base", 0, vocab=64), _model(tmp_path / "inst", 2, vocab=64)
    cpt = _model(tmp_path / "cpt", 1, vocab=80)
    models = [{"model": str(cpt), "weight": 1.0}, {"model": str(inst), "weight": 0.5}]
    out, metrics = _merge(tmp_path, "cv", base=str(base), models=models, skip=["norm"])
    s, b, c, i = _state(out), _state(base), _state(cpt), _state(inst)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert s[name].shape == c[name].shape == (80, 64)
        expected = c[name][:64] + 0.5 * (i[name] - b[name])
        torch.testing.assert_close(s[name][:64], expected, rtol=0, atol=1e-6)
        assert torch.equal(s[name][64:], c[name][64:])
    assert torch.equal(s["model.norm.weight"], c["model.norm.weight"])
    assert "model.norm.weight" in metrics["skipped_tensors"]
    notes = {n["tensor"]: n for n in metrics["vocab_mismatch"]}
    assert notes["lm_head.weight"] == {
        "tensor": "lm_head.weight",
        "target_rows": 80,
        "shared_rows": 64,
        "kept_target_rows": 16,
    }
    manifest = json.loads((out / "youri.json").read_text())
    assert manifest["stage"] == "merge" and str(inst) in manifest["inputs"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 80


def test_bad_merge_inputs_are_one_line_errors(trio, tmp_path):
    base, cpt, _ = trio
    with pytest.raises(ValueError, match="base: task_arithmetic needs"):
        _merge(tmp_path, "a", models=[{"model": str(cpt)}])
    with pytest.raises(ValueError, match=r"tensor_weights: '\(' is not a regular expression"):
        _merge(tmp_path, "b", base=str(base), models=[{"model": str(cpt), "tensor_weights": {"(": 0.0}}])
    other = tmp_path / "wide"
    save_model(random_llama(64, hidden_size=32, intermediate_size=64, num_attention_heads=4), None, other)
    with pytest.raises(ValueError, match="differ beyond the first"):
        _merge(tmp_path, "c", base=str(base), models=[{"model": str(cpt)}, {"model": str(other)}])
