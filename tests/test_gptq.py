"""GPTQ: packing layout, QuantLinear, GPTQ vs RTN, `youri quantize` end to end, bad inputs, reload.

The optional round trip through plain transformers needs a GPTQ backend (GPTQModel 7.6.0 + optimum),
which pins numpy 2.2.6, so it lives in its own venv: set YOURI_GPTQ_REFERENCE_PYTHON to that venv's
python (see the test's skip reason for the install line).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from youri.config import ConfigError
from youri.data.shards import FORMAT, token_dtype, write_shard
from youri.families import UnsupportedModelError
from youri.io import DataError
from youri.model import save_model
from youri.quant.gptq import (
    LLAMA_2_7B,
    gptq_quantize,
    group_gptq_error,
    quant_params,
    rtn_quantize,
    search_group_params,
    twin_sizes,
)
from youri.runtime import kernels
from youri.runtime.gptq_format import QuantConfigError, _pack_rows, _unpack_rows, dequantize, pack, unpack
from youri.runtime.quant_linear import QuantLinear, kernel_summary, prepare_kernels
from youri.testing import char_tokenizer, random_llama

JA_TEXT = (
    "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で"
    "ニャーニャー泣いていた事だけは記憶している。人称とは、文法の用語で、ある発話の話し手および聞き手"
    "という役割とそれ以外を区別するために使われる。"
) * 8


def _autogptq_pack(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's reference loop (qlinear_cuda_old.pack), written out independently of youri's packer."""
    w = intweight.astype(np.uint32)
    q = np.zeros((w.shape[0] // 32 * bits, w.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < q.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                q[row] |= w[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
            continue
        for j in range(i, i + 10):
            q[row] |= w[j] << (3 * (j - i))
        i += 10
        q[row] |= w[i] << 30
        row += 1
        q[row] |= (w[i] >> 2) & 1
        i += 1
        for j in range(i, i + 10):
            q[row] |= w[j] << (3 * (j - i) + 1)
        i += 10
        q[row] |= w[i] << 31
        row += 1
        q[row] |= (w[i] >> 1) & 0x3
        i += 1
        for j in range(i, i + 10):
            q[row] |= w[j] << (3 * (j - i) + 2)
        i += 10
        row += 1
    return q.view(np.int32)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip_and_autogptq_layout(bits):
    torch.manual_seed(bits)
    codes = torch.randint(0, 2**bits, (256, 64))
    packed = _pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (256 * bits // 32, 64)
    assert np.array_equal(packed.numpy(), _autogptq_pack(codes.numpy(), bits))
    assert torch.equal(_unpack_rows(packed, bits, 256).long(), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_v1_tensors_shapes_and_zero_minus_one(bits):
    W = torch.randn(96 if bits != 3 else 64, 256)
    codes, scales, zeros, g_idx = rtn_quantize(W, bits=bits, group_size=64, sym=False)
    t = pack(codes, scales, zeros, g_idx, bits)
    N, K = W.shape
    assert t["qweight"].shape == (K * bits // 32, N) and t["qzeros"].shape == (K // 64, N * bits // 32)
    assert t["scales"].dtype == torch.float16 and t["g_idx"].dtype == torch.int32
    got_codes, got_zeros = unpack(t["qweight"], t["qzeros"], bits, K)
    assert torch.equal(got_codes.T, codes) and torch.equal(got_zeros, zeros)
    # v1 stores zero - 1: the raw nibbles of a 4-bit symmetric layer are 7, not 8
    if bits == 4:
        sym = pack(*rtn_quantize(W, bits=4, group_size=64, sym=True), bits=4)
        assert (sym["qzeros"] == 0x77777777).all()
    assert zeros.min() >= 1  # v1 cannot store zero 0


def test_quant_linear_equals_dequantized_dense_and_stays_packed():
    torch.manual_seed(0)
    W, x = torch.randn(128, 256), torch.randn(3, 5, 256)
    tensors = pack(*rtn_quantize(W, bits=4, group_size=128), bits=4)
    layer = QuantLinear(256, 128, bits=4, group_size=128, bias=True)
    layer.load_state_dict({**tensors, "bias": torch.randn(128).half()})
    dense = dequantize(**tensors, bits=4)
    expected = x @ dense.T + layer.bias.float()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert {n: b.dtype for n, b in layer.named_buffers()}["qweight"] == torch.int32
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) < W.numel() * 2 / 3  # packed, no cache
    assert (dense - W).abs().max() < 0.5 * W.abs().max() / 7  # within one 4-bit step


@pytest.mark.parametrize("sym,act_order", [(True, False), (False, False), (True, True)])
def test_gptq_beats_rtn_with_correlated_inputs(sym, act_order):
    torch.manual_seed(1)
    X = torch.randn(2048, 256) @ torch.randn(256, 256) * 0.3  # correlated input features
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(128, 256) * 0.05

    def err(result):
        dense = dequantize(**pack(*result, bits=4), bits=4)
        return ((X @ (dense - W).T) ** 2).mean().item()

    gptq = gptq_quantize(W, H, bits=4, group_size=64, sym=sym, act_order=act_order)
    rtn = rtn_quantize(W, bits=4, group_size=64, sym=sym)
    assert err(gptq) < 0.7 * err(rtn)
    g_idx = gptq[3]
    assert torch.bincount(g_idx.long()).tolist() == [64] * 4
    assert act_order == bool((g_idx[1:] < g_idx[:-1]).any())  # act-order: groups follow the permutation


def _hessian_error(W, H, result) -> float:
    """tr((W - Q) H (W - Q)ᵀ): the layer loss ‖(W - Q)X‖² GPTQ minimises, up to the 2/n in H."""
    D = W - dequantize(**pack(*result, bits=4), bits=4)
    return ((D @ H) * D).sum().item()


def test_scale_search_lowers_the_hessian_weighted_error_of_a_layer():
    torch.manual_seed(2)
    X = torch.randn(4096, 256) @ (torch.eye(256) + 0.02 * torch.randn(256, 256))  # correlated features
    X *= torch.rand(256) ** 2  # uneven feature scales, as in real activations
    H = 2 * X.T @ X / X.shape[0]
    W = torch.distributions.Laplace(0.0, 0.02).sample((128, 256))  # heavy tails: clipping pays
    plain = gptq_quantize(W, H, bits=4, group_size=64, scale_search=False)
    searched = gptq_quantize(W, H, bits=4, group_size=64, scale_search=True)
    assert _hessian_error(W, H, searched) < 0.9 * _hessian_error(W, H, plain)
    # the first group sees the original weights, so its scales can only shrink from min/max
    minmax = quant_params(W[:, :64], 4, True)[0].half().float()
    assert (searched[1][0] <= minmax).all() and (searched[1][0] < 0.95 * minmax).any()
    for scales in (plain[1], searched[1]):  # codes were chosen against the fp16 scales the checkpoint stores
        assert torch.equal(scales, scales.half().float())


@pytest.mark.parametrize("sym", [True, False])
def test_group_search_never_errs_more_than_min_max(sym):
    torch.manual_seed(3)
    X = torch.randn(1024, 128) * torch.rand(128)
    H = 2 * X.T @ X / X.shape[0] + 0.01 * torch.eye(128)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = torch.distributions.StudentT(3.0).sample((64, 128)) * 0.02
    scale, zero = search_group_params(cols, Hinv, 4, sym)
    base_scale, base_zero = quant_params(cols, 4, sym)
    ours = group_gptq_error(cols, Hinv, scale[None], zero[None], 4)[0]
    base = group_gptq_error(cols, Hinv, base_scale.half().float()[None], base_zero[None], 4)[0]
    assert (ours <= base).all() and ours.sum() < 0.9 * base.sum()
    # the group error is the layer loss of GPTQ over these columns alone: check it against a direct pass
    Q = cols.clone()
    for i in range(128):  # textbook GPTQ, one column at a time, with the searched parameters
        q = torch.clamp(torch.round(Q[:, i] / scale) + zero, 0, 15)
        err = (Q[:, i] - scale * (q - zero)) / Hinv[i, i]
        Q[:, i:] -= err[:, None] * Hinv[i, i:]
        Q[:, i] = scale * (q - zero)
    D = cols - Q
    Hd = torch.linalg.inv(Hinv.T @ Hinv)  # the damped H the factor came from
    torch.testing.assert_close((D @ Hd * D).sum(1), ours, rtol=1e-3, atol=1e-6)


def test_bad_bits_and_shapes_are_rejected():
    with pytest.raises(QuantConfigError, match="bits=5"):
        rtn_quantize(torch.randn(64, 128), bits=5, group_size=128)
    with pytest.raises(QuantConfigError, match="not divisible by group_size"):
        QuantLinear(688, 128, bits=4, group_size=128)
    with pytest.raises(QuantConfigError, match="multiples of 32"):
        QuantLinear(128, 40, bits=3, group_size=128)


def test_size_ratio_llama2_7b():
    sizes = twin_sizes(LLAMA_2_7B, bits=4, group_size=128)
    assert sizes["fp16_bytes"] == 2 * 6_738_415_616  # Llama-2-7b's parameter count
    assert 0.27 < sizes["ratio"] < 0.30  # Youri's published twin: 3.9 GB / 13.5 GB = 0.29
    assert twin_sizes(LLAMA_2_7B, bits=4, group_size=32)["ratio"] > sizes["ratio"]  # more scales per weight


# ----------------------------------------------------------------------------- the stage


def _tokenizer(folder: Path):
    """A character-level fast tokenizer built in process (no shared data, no network)."""
    from youri.prompts import INSTRUCTION_HEADER, INSTRUCTION_INTRO, SPEAKERS

    alphabet = JA_TEXT + "abcdefghijklmnopqrstuvwxyz .,:\n" + INSTRUCTION_INTRO + INSTRUCTION_HEADER + "".join(SPEAKERS)
    return char_tokenizer(alphabet, folder)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny random Llama with youri.json pointing at a youri data folder (its 'training data')."""
    root = tmp_path_factory.mktemp("gptq")
    model_dir, data_dir = root / "parent", root / "data"
    tok = _tokenizer(model_dir)
    # 256 embedding rows (more than the tokenizer's characters): random calibration ids stay below 256.
    # Quantized linears take multiples of 128 (GPTQ groups).
    shape = {"hidden_size": 128, "intermediate_size": 384, "max_position_embeddings": 256}
    save_model(random_llama(256, tie_word_embeddings=False, **shape), None, model_dir)
    ids = np.array(tok(JA_TEXT, add_special_tokens=False)["input_ids"])
    rows = ids[: len(ids) // 64 * 64].reshape(-1, 64)
    index = {"format": FORMAT, "seq_len": 64, "dtype": "<u2", "eos_id": 2, "vocab_size": 256, "splits": {}}
    for split in ("train", "val/ja"):
        entry = write_shard(data_dir / split / "00000.bin", rows, token_dtype(256))
        index["splits"][split] = [{"file": f"{split}/00000.bin", **entry}]
    (data_dir / "index.json").write_text(json.dumps(index))
    (model_dir / "youri.json").write_text(
        json.dumps({"stage": "pretrain", "config": {"data": str(data_dir)}, "fingerprint": "parent"})
    )
    (model_dir / "metrics.json").write_text("{}")
    return model_dir


@pytest.fixture(scope="module")
def twin(parent) -> Path:
    from youri.quant.quantize import Config, run

    return run(
        Config(
            model=str(parent), out=str(parent.parent / "twin"), num_samples=8, seq_len=64, eval_samples=2, device="cpu"
        )
    )


@pytest.mark.parametrize("true_sequential", [True, False])
def test_hessians_equal_plain_x_xt_of_each_linear_input(parent, true_sequential):
    """Shared Hessians (q/k/v, gate/up) and early-stopped batches give exactly 2/n Σ x xᵀ per linear,
    also when all seven linears are collected in one pass (inputs of different linears never alias)."""
    from youri.families import LLAMA_SEQUENTIAL as SEQUENTIAL_GROUPS
    from youri.model import load_model
    from youri.quant.quantize import _collect_hessians, _layer_inputs

    model = load_model(parent, dtype=torch.float32)
    inputs, kwargs = _layer_inputs(model, torch.randint(3, 256, (6, 32)), torch.device("cpu"), 4)
    kwargs = kwargs[0]
    layer = model.model.layers[0]
    names = sum(SEQUENTIAL_GROUPS, ())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        layer.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        for x, kw in zip(inputs, kwargs):
            layer(x, **kw)
    for h in handles:
        h.remove()
    groups = SEQUENTIAL_GROUPS if true_sequential else (names,)
    got = {n: H for group in groups for n, H in _collect_hessians(layer, group, inputs, kwargs).items()}
    for name in names:
        X = torch.cat(seen[name])
        torch.testing.assert_close(got[name], 2 * X.T @ X / X.shape[0], rtol=1e-5, atol=1e-6)
    assert got["self_attn.q_proj"] is got["self_attn.v_proj"]  # one Hessian for one shared input
    assert not torch.equal(got["mlp.gate_proj"], got["self_attn.q_proj"])


def test_quantize_folder_is_gptq_v1(twin, parent):
    from safetensors.torch import load_file

    config = json.loads((twin / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": 128,
        "desc_act": False,
        "sym": True,
        "damp_percent": 0.01,
        "true_sequential": True,
        "static_groups": False,
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
    }
    loader_config = json.loads((twin / "quantize_config.json").read_text())  # AutoGPTQ / GPTQModel's own file
    assert loader_config == {
        **{k: config["quantization_config"][k] for k in ("bits", "group_size", "damp_percent", "desc_act", "sym")},
        "static_groups": False,
        "true_sequential": True,
        "model_name_or_path": None,
        "model_file_base_name": "model",
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "pack_dtype": "int32",
    }
    assert (twin / f"{loader_config['model_file_base_name']}.safetensors").is_file()
    state = load_file(str(twin / "model.safetensors"))
    assert state["model.layers.1.mlp.down_proj.qweight"].shape == (384 * 4 // 32, 128)
    assert state["model.layers.1.mlp.down_proj.qzeros"].shape == (3, 128 * 4 // 32)
    assert state["model.layers.0.self_attn.k_proj.scales"].dtype == torch.float16
    assert "model.layers.0.mlp.up_proj.weight" not in state
    assert state["model.embed_tokens.weight"].dtype == torch.float16
    assert (twin / "tokenizer_config.json").is_file() and (twin / "generation_config.json").is_file()
    manifest = json.loads((twin / "youri.json").read_text())
    metrics = json.loads((twin / "metrics.json").read_text())
    assert manifest["stage"] == "quantize" and manifest["parent"] == str(parent)
    assert str(parent.parent / "data") in manifest["inputs"]  # default calibration: the parent's own data
    assert len(metrics["calibration"]["fingerprint"]) == 64 and metrics["calibration"]["sequences"] > 0
    ja = metrics["quality"]["ja"]
    assert ja["kl_gptq"] > 0 and ja["kl_rtn"] > 0 and ja["ppl_gptq"] > 1
    assert "skipped" in metrics["quality"]["en"]
    assert metrics["size"]["quantized_bytes"] < metrics["size"]["parent_fp16_bytes"]


def test_load_model_gives_dequantized_reference_logits(twin, parent):
    from safetensors.torch import load_file

    from youri.model import load_model

    quant = load_model(twin, dtype=torch.float32)
    assert isinstance(quant.model.layers[0].mlp.down_proj, QuantLinear)
    if kernels.kernel_for(torch.device("cpu")) is not None:  # converted once at load time
        summary = f"GPTQ matmul: {kernels.kernel_for(torch.device('cpu'))} on 14/14 layers"
        assert kernel_summary(quant).startswith(summary)
    reference = load_model(parent, dtype=torch.float32)
    state = load_file(str(twin / "model.safetensors"))
    for name, module in reference.named_modules():
        if f"{name}.qweight" in state:
            tensors = {k: state[f"{name}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")}
            module.weight.data = dequantize(**tensors, bits=4)
        elif f"{name}.weight" in state:
            module.weight.data = state[f"{name}.weight"].float()
    ids = torch.arange(3, 60)[None]
    with torch.no_grad():
        fast, expected = quant(ids).logits, reference(ids).logits
        prepare_kernels(quant, use_kernel=False)
        torch.testing.assert_close(quant(ids).logits, expected, rtol=1e-4, atol=1e-4)
    # The int4 kernel: the same logits to bf16 rounding (activations enter each matmul as bf16).
    torch.testing.assert_close(fast, expected, rtol=0, atol=0.02 * expected.abs().max().item())
    assert (fast.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9


def _config(parent: Path, tmp_path: Path, **kw):
    from youri.quant.quantize import Config

    return Config(
        **{"model": str(parent), "out": str(tmp_path / "out"), "num_samples": 4, "seq_len": 32, "eval_samples": 0, **kw}
    )


def _copy_with_config(parent: Path, dest: Path, **changes) -> Path:
    import shutil

    shutil.copytree(parent, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(changes)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize(
    "case,error,match",
    [
        ("quantized", ConfigError, "already quantized"),
        ("gpt2", UnsupportedModelError, "model_type 'gpt2' is not supported"),
        ("bits", ConfigError, "bits=5 is not supported"),
        ("group", ConfigError, "not divisible by group_size 96"),
        ("empty", DataError, "calibration set is empty"),
    ],
)
def test_bad_input_fails_before_any_work(parent, twin, tmp_path, case, error, match):
    from youri.quant.quantize import run

    kw = {}
    model = parent
    if case == "quantized":
        model = twin
    elif case == "gpt2":
        model = _copy_with_config(parent, tmp_path / "gpt2", model_type="gpt2")
    elif case == "bits":
        kw = {"bits": 5}
    elif case == "group":
        kw = {"group_size": 96}
    elif case == "empty":
        (tmp_path / "empty.txt").write_text("")
        kw = {"calibration": str(tmp_path / "empty.txt")}
    cfg = _config(model, tmp_path, **kw)
    with pytest.raises(error, match=match):
        run(cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_positional_model_and_sft_style_calibration(parent, tmp_path):
    """``youri quantize MODEL`` with a JSONL of instruction records rendered in the prompt format."""
    from youri.cli import main

    calib = tmp_path / "sft.jsonl"
    calib.write_text(
        "\n".join(
            json.dumps({"instruction": JA_TEXT[i : i + 40], "output": JA_TEXT[i + 40 : i + 90]}, ensure_ascii=False)
            for i in range(0, 400, 50)
        )
    )
    assert (
        main(
            [
                "quantize",
                str(parent),
                "--out",
                str(tmp_path / "q"),
                "--calibration",
                str(calib),
                "--num_samples",
                "4",
                "--seq_len",
                "32",
                "--eval_samples",
                "0",
                "--bits",
                "3",
                "--desc_act",
                "true",
                "--sym",
                "false",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert (config["bits"], config["desc_act"], config["sym"]) == (3, True, False)


def test_sft_parent_calibrates_on_its_datasets_in_its_prompt_format(parent, tmp_path):
    import shutil

    from youri.data.rows import chunk as _chunk
    from youri.data.sft_data import DatasetConfig, read_dataset
    from youri.model import load_tokenizer
    from youri.prompts import encode_training
    from youri.quant.quantize import _rows_fingerprint, run

    data = tmp_path / "dolly.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(
                {
                    "instruction": JA_TEXT[i : i + 30],
                    "input": JA_TEXT[i + 30 : i + 50],
                    "output": JA_TEXT[i + 50 : i + 120],
                },
                ensure_ascii=False,
            )
            for i in range(0, 600, 40)
        ),
        encoding="utf-8",
    )
    sft = tmp_path / "sft"
    shutil.copytree(parent, sft)
    spec = {"path": str(data), "shape": "instruction", "epochs": 1.0, "personas": "", "max_examples": 0}
    (sft / "youri.json").write_text(
        json.dumps(
            {
                "stage": "sft",
                "parent": str(parent),
                "fingerprint": "sft",
                "config": {"kind": "chat", "model": str(parent), "datasets": [spec]},
            }
        )
    )
    metrics = json.loads((run(_config(sft, tmp_path, eval_samples=1)) / "metrics.json").read_text())
    assert metrics["calibration"]["format"] == "chat" and metrics["calibration"]["sources"] == [str(data)]
    tok = load_tokenizer(sft)

    def fingerprint(kind):
        ids = [i for r in read_dataset(DatasetConfig(**spec), kind) for i in encode_training(r.example, tok).input_ids]
        return _rows_fingerprint(_chunk(ids, 4, 32))

    assert metrics["calibration"]["fingerprint"] == fingerprint("chat") != fingerprint("instruction")
    assert metrics["quality"]["ja"]["kl_gptq"] > 0  # held-out text found through the SFT stage's parent


REFERENCE_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
out = {}
for i, folder in enumerate(sys.argv[2:]):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu", local_files_only=True)
    for name, module in model.named_modules():
        if hasattr(module, "dequantize_weight"):  # GPTQModel's own unpacking, before any kernel repacking
            out[f"{i}:{name}"] = module.dequantize_weight().float().T.contiguous()
    with torch.no_grad():
        out[f"{i}:logits"] = model(torch.arange(3, 60)[None]).logits
assert "youri" not in sys.modules
torch.save(out, sys.argv[1])
"""


def test_plain_transformers_reload_matches_youri(twin, parent, tmp_path):
    """Acceptance: the folder reloads with transformers + a GPTQ backend (no youri import), same weights and
    logits within kernel tolerance (GPTQModel's CPU int4 kernel runs in bf16) -- for the default 4-bit twin
    and a 3-bit asymmetric act-order one."""
    python = os.environ.get("YOURI_GPTQ_REFERENCE_PYTHON", "")
    if not python:
        pytest.skip(
            "no GPTQ backend for transformers: GPTQModel 7.6.0 pins numpy==2.2.6, so it lives in its "
            "own venv; set YOURI_GPTQ_REFERENCE_PYTHON=/tmp/gptqref/bin/python after `python -m venv "
            "--system-site-packages /tmp/gptqref && /tmp/gptqref/bin/pip install gptqmodel==7.6.0 "
            "optimum==2.3.0 torch==2.13.0 transformers==5.24.0`"
        )
    from youri.model import load_model
    from youri.quant.quantize import run

    odd = run(_config(parent, tmp_path, bits=3, sym=False, desc_act=True, group_size=64))
    folders = [twin, odd]
    out = tmp_path / "reference.pt"
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [python, "-c", REFERENCE_SCRIPT, str(out), *map(str, folders)], check=True, env=env, cwd=tmp_path, timeout=300
    )
    theirs = torch.load(out, weights_only=True)
    for i, folder in enumerate(folders):
        ours = load_model(folder, dtype=torch.float32)
        layers = {name: m for name, m in ours.named_modules() if isinstance(m, QuantLinear)}
        assert len(layers) == 14 and all(f"{i}:{name}" in theirs for name in layers)
        for name, layer in layers.items():
            dense = dequantize(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, layer.bits)
            torch.testing.assert_close(theirs[f"{i}:{name}"], dense, rtol=0, atol=1e-3)
        with torch.no_grad():
            logits = ours(torch.arange(3, 60)[None]).logits
        torch.testing.assert_close(theirs[f"{i}:logits"], logits, rtol=0, atol=0.02 * logits.abs().max().item())
        assert (theirs[f"{i}:logits"].argmax(-1) == logits.argmax(-1)).float().mean() > 0.9


NATIVE_LOADER_SCRIPT = """
import sys, torch
loader, out_file, folders = sys.argv[1], sys.argv[2], sys.argv[3:]
out = {}
for i, folder in enumerate(folders):
    if loader == "autogptq":  # rinna's model cards: AutoGPTQForCausalLM.from_quantized(path, use_safetensors=True)
        from auto_gptq import AutoGPTQForCausalLM
        model = AutoGPTQForCausalLM.from_quantized(
            folder, use_safetensors=True, device="cpu", torch_dtype=torch.float32, disable_exllama=True,
            disable_exllamav2=True)
    else:  # GPTQModel's own loader reads quantize_config.json
        from gptqmodel import GPTQModel
        model = GPTQModel.load(folder, device="cpu")
    with torch.no_grad():
        out[f"{i}:logits"] = model.model(torch.arange(3, 60)[None]).logits.float()
assert "youri" not in sys.modules
torch.save(out, out_file)
"""


@pytest.mark.parametrize("loader", ["autogptq", "gptqmodel"])
def test_gptq_loaders_open_the_folder_as_is(twin, parent, tmp_path, loader):
    """AutoGPTQ 0.7.1 (its 2024 dependency pins, own venv) and GPTQModel's native loader open the twin from
    quantize_config.json alone and give youri's logits: AutoGPTQ's fp32 torch path exactly, for the 4-bit default
    and a 3-bit asymmetric act-order twin; GPTQModel's bf16 CPU kernel within its tolerance, for the default
    (GPTQModel.load refuses every asymmetric v1 checkpoint not written by GPTQModel >= 0.9, whatever its zeros)."""
    variable = {"autogptq": "YOURI_AUTOGPTQ_PYTHON", "gptqmodel": "YOURI_GPTQ_REFERENCE_PYTHON"}[loader]
    python = os.environ.get(variable, "")
    if not python:
        pytest.skip(
            f"{loader} not installed: set {variable} to the python of the venv scripts/test.sh builds "
            "(AutoGPTQ 0.7.1 does not import against transformers 5; GPTQModel pins numpy 2.2.6)"
        )
    from youri.model import load_model
    from youri.quant.quantize import run

    folders = [twin]
    if loader == "autogptq":
        folders.append(run(_config(parent, tmp_path, bits=3, sym=False, desc_act=True, group_size=64)))
    out = tmp_path / f"{loader}.pt"
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [python, "-c", NATIVE_LOADER_SCRIPT, loader, str(out), *map(str, folders)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    theirs = torch.load(out, weights_only=True)
    for i, folder in enumerate(folders):
        model = load_model(folder, dtype=torch.float32)
        prepare_kernels(model, use_kernel=False)  # youri's exact dequantised path, not the int4 kernel
        with torch.no_grad():
            ours = model(torch.arange(3, 60)[None]).logits
        gap = (theirs[f"{i}:logits"] - ours).abs().max().item()
        agree = (theirs[f"{i}:logits"].argmax(-1) == ours.argmax(-1)).float().mean().item()
        print(f"{loader} {folder.name}: max |logit diff| {gap:.2e}, argmax agreement {agree:.3f}")
        if loader == "autogptq":
            torch.testing.assert_close(theirs[f"{i}:logits"], ours, rtol=0, atol=1e-4)
        else:
            assert gap <= 0.02 * ours.abs().max().item() and agree > 0.9
