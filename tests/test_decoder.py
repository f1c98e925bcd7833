"""youri.serve.decoder: the static-cache batch gives Hugging Face's logits for every row, through growth,
merges of newcomers, dropped rows and compaction -- with its stacked matmuls and without them, around GPTQ
layers and hooks, after weights change; the DynamicHF fallback gives the same."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from youri.quant.gptq import rtn_quantize
from youri.runtime import kernels
from youri.runtime.gptq_format import pack
from youri.runtime.quant_linear import QuantLinear, prepare_kernels
from youri.serve import decoder
from youri.serve.decoder import DynamicHF, StaticLlama, make_batch
from youri.testing import random_llama


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU (see tests/test_serve.py)
    return random_llama(300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).eval()


def _reference(model, ids: list[int]) -> torch.Tensor:
    """The last-token logits of Hugging Face's own forward over the whole sequence, alone (no padding)."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1]


def _check(model, batch, sequences: list[list[int]], logits: torch.Tensor, rows) -> None:
    for logits_row, row in enumerate(rows):
        torch.testing.assert_close(logits[logits_row], _reference(model, sequences[row]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["stacked", "per-module", "dynamic"])
def test_every_row_gets_hf_logits_through_merges_drops_and_growth(model, kind, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(3, 300, (n,), generator=gen).tolist()  # noqa: E731
    if kind == "per-module":  # nothing is small enough to copy: every projection is the model's own F.linear
        monkeypatch.setattr(decoder, "FUSE_MAX_ELEMENTS", 0)
    # A 4-column, 1-row start: the batch must grow in both directions and compact its left padding.
    batch = StaticLlama(model, 256, rows=1, columns=4) if kind != "dynamic" else DynamicHF(model)
    if kind != "dynamic":
        assert batch.fused == [("qkv", "gate_up") if kind == "stacked" else ()] * 2
    sequences: list[list[int]] = []

    def admit(*lengths):
        new = [prompt(n) for n in lengths]
        with torch.inference_mode():
            logits = batch.prefill(new, 0)
        sequences.extend(new)
        _check(model, batch, sequences, logits, range(len(sequences) - len(new), len(sequences)))

    def decode(steps):
        for _ in range(steps):
            tokens = torch.randint(3, 300, (len(sequences),), generator=gen)
            for seq, token in zip(sequences, tokens.tolist()):
                seq.append(token)
            with torch.inference_mode():
                logits = batch.decode(tokens)
            _check(model, batch, sequences, logits, range(len(sequences)))

    admit(5, 9)  # two prompts of different lengths, one forward
    decode(3)
    admit(3)  # shorter than the running rows: placed in their columns
    decode(2)
    admit(30)  # longer: the running rows move right
    decode(2)
    batch.keep([1, 2])  # the first and the longest row leave: every column left of the others is padding
    sequences[:] = [sequences[1], sequences[2]]
    decode(40)  # past the capacity: that padding is compacted away (then the buffers grow)
    if kind != "dynamic":
        assert batch.low == 0 and batch.valid.shape[0] == 4  # rows grew only as far as needed
    batch.keep([])
    assert batch.rows == 0
    sequences.clear()
    admit(4)
    decode(2)
    batch.keep([])
    sequences.clear()
    admit(6, 6)  # rows that start together: the step without a position gather or a mask
    decode(3)


def test_make_batch_takes_the_lean_path_for_llama_and_hf_otherwise(model):
    assert isinstance(make_batch(model, 64), StaticLlama)
    other = random_llama(300, hidden_size=64)
    other.config.model_type = "not-llama"
    assert isinstance(make_batch(other, 64), DynamicHF)


def _left_padded_run(batch, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Logits of a left-padded batch's prefill and of ``steps`` decode steps fed fixed tokens (from empty)."""
    batch.keep([])
    with torch.inference_mode():
        logits = [batch.prefill(prompts, 0)]
        for step in range(steps):
            logits.append(batch.decode(torch.tensor([7 + step] * len(prompts))))
    return logits


def test_stacked_matmuls_give_the_per_module_logits_on_left_padded_rows(model, monkeypatch):
    prompts = [[5, 9, 14], [3, 8, 21, 40, 41, 42, 43], [11, 12, 13, 14, 15, 16, 17]]
    stacked = StaticLlama(model, 64)
    monkeypatch.setattr(decoder, "FUSE_MAX_ELEMENTS", 0)
    separate = StaticLlama(model, 64)
    assert stacked.fused == [("qkv", "gate_up")] * 2 and separate.fused == [()] * 2
    for fast, slow in zip(_left_padded_run(stacked, prompts, 4), _left_padded_run(separate, prompts, 4)):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)  # the same numerics up to fp32 rounding
    sequences = [p + [7, 8, 9, 10] for p in prompts]
    for row, sequence in enumerate(sequences):
        torch.testing.assert_close(_left_padded_run(stacked, prompts, 4)[-1][row], _reference(model, sequence))


def _quantized(linear: torch.nn.Linear, group: int = 128) -> QuantLinear:
    quant = QuantLinear(linear.in_features, linear.out_features, bits=4, group_size=group, bias=linear.bias is not None)
    state = pack(*rtn_quantize(linear.weight.data, bits=4, group_size=group), bits=4)
    quant.load_state_dict(state | ({} if linear.bias is None else {"bias": linear.bias.data.half()}))
    return quant


def _quantize_all(model) -> None:
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, _quantized(child))


def test_gptq_and_hooked_layers_are_called_as_modules():
    """A QuantLinear or a hooked linear is never copied: the lean step calls it, and the logits stay HF's."""
    model = random_llama(300, seed=2, hidden_size=128, intermediate_size=256).eval()
    first = model.model.layers[0]
    first.self_attn.q_proj = _quantized(first.self_attn.q_proj)
    first.mlp.down_proj = _quantized(first.mlp.down_proj)
    calls = []
    first.self_attn.q_proj.register_forward_hook(lambda *_: calls.append("q"))
    first.mlp.up_proj.register_forward_hook(lambda *_: calls.append("up"))  # a plain linear with a hook
    batch = StaticLlama(model, 64)
    assert batch.fused == [(), ("qkv", "gate_up")]
    prompts = [[4, 5, 6, 7, 8], [9, 10]]
    logits = _left_padded_run(batch, prompts, 2)
    assert calls.count("q") == calls.count("up") == 3  # the prefill and two steps
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[-1][row], _reference(model, prompt + [7, 8]), rtol=1e-4, atol=1e-4)


def test_small_gptq_layers_on_youris_kernel_are_stacked_exactly(monkeypatch):
    """A tiny GPTQ twin on youri's int4 kernel (AVX2 or AVX-512): q/k/v (+ their rotate_half rows, signs in the
    scales) and gate/up become one kernel call each, with the per-module logits; a kernel switched after the batch
    was built is followed at the next prefill."""
    kernel = kernels.kernel_for(torch.device("cpu"))
    if kernel not in kernels.ROW_KERNELS:
        pytest.skip(f"youri's int4 kernels are not available here: {kernels.avx2_library()[1]}")
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    model = random_llama(300, seed=4, hidden_size=128, num_attention_heads=4, num_key_value_heads=2).eval()
    _quantize_all(model)
    assert prepare_kernels(model) == {kernel: 14}
    prompts = [[4, 5, 6, 7, 8], [9, 10]]
    stacked = StaticLlama(model, 64)
    assert stacked.fused == [("qkv", "gate_up")] * 2
    monkeypatch.setattr(decoder, "FUSE_MAX_ELEMENTS", 0)
    separate = StaticLlama(model, 64)
    assert separate.fused == [()] * 2
    stacked._native = separate._native = None  # the PyTorch step (the C step has its own test)
    for fast, slow in zip(_left_padded_run(stacked, prompts, 3), _left_padded_run(separate, prompts, 3)):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    prepare_kernels(model, use_kernel=False)  # the exact dequantising path, picked up at the next prefill
    logits = _left_padded_run(stacked, prompts, 2)
    assert stacked.fused == [()] * 2
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[-1][row], _reference(model, prompt + [7, 8]), rtol=1e-4, atol=1e-4)


def test_weights_and_hooks_changed_after_the_batch_was_built_are_used():
    """The stacked matmuls are copies: a weight changed in place (or replaced), or a hook added, is picked up
    at the next prefill."""
    model = random_llama(300, seed=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).eval()
    batch = StaticLlama(model, 64)
    prompt = [5, 6, 7, 8]
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight.mul_(3.0)
        model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(torch.randn(128, 64) * 0.1)
    with torch.inference_mode():
        logits = batch.prefill([prompt], 0)
    torch.testing.assert_close(logits[0], _reference(model, prompt), rtol=1e-4, atol=1e-4)
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda module, args, out: out * 2)
    assert batch.fused == [("qkv", "gate_up")] * 2  # the plan is refreshed at prefill, not before
    batch.keep([])
    with torch.inference_mode():
        logits = batch.prefill([prompt], 0)
    torch.testing.assert_close(logits[0], _reference(model, prompt), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_is_the_modules_own_result(dtype):
    norm = LlamaRMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)).mul(4).to(dtype)
    with torch.inference_mode():
        assert torch.equal(decoder._rms_norm(norm)(x), norm(x))


def test_biased_projections_are_stacked_with_their_biases():
    """Llama configs with ``attention_bias``/``mlp_bias``: the stacked matmul carries (rotated) biases too."""
    model = random_llama(
        300, seed=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):  # Hugging Face initialises biases to zero: make them matter
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    batch = StaticLlama(model, 64)
    assert batch.fused == [("qkv", "gate_up")] * 2
    prompts = [[4, 5, 6, 7, 8], [9, 10]]
    logits = _left_padded_run(batch, prompts, 2)
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[-1][row], _reference(model, prompt + [7, 8]), rtol=1e-4, atol=1e-4)


def test_an_lm_head_of_exact_fp16_values_runs_on_the_fp16_matmul():
    """A GPTQ twin's LM head (fp16 on disk, fp32 in memory) is read through its fp16 copy: Hugging Face's logits
    (fp32 products, another summation order); a head changed in place to a value fp16 cannot hold goes back to
    the float path at the next prefill."""
    if kernels.avx2_library()[0] is None:
        pytest.skip(f"youri's kernel library is unavailable: {kernels.avx2_library()[1]}")
    model = random_llama(300, seed=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).eval()
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight.half().float())
    batch, prompts = StaticLlama(model, 64), [[4, 5, 6, 7, 8], [9, 10]]
    logits = _left_padded_run(batch, prompts, 2)
    assert batch._lm_head.func is kernels.half_matmul
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[-1][row], _reference(model, prompt + [7, 8]), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-5
    logits = _left_padded_run(batch, prompts, 1)
    assert getattr(batch._lm_head, "func", None) is not kernels.half_matmul
    torch.testing.assert_close(logits[-1][0], _reference(model, prompts[0] + [7]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_a_gptq_model_decodes_every_row_in_one_c_call_with_the_per_op_logits(family):
    """Every projection on youri's int4 kernel: a decode step runs through ``decode_step.c`` (q/k/v biases, QK-norms,
    K/V buffers grown past their first 64 columns), for one sequence and for five left-padded rows of different
    lengths, with the logits of the PyTorch step and, per row, of Hugging Face's forward; the same at 1 and 2
    threads (each output, row and head is one thread's: bit for bit); a hooked projection takes the PyTorch step."""
    if kernels.kernel_for(torch.device("cpu")) not in kernels.ROW_KERNELS:
        pytest.skip(f"youri's int4 kernels are not available here: {kernels.avx2_library()[1]}")
    shape = dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=300, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(5)
    model = (
        {
            "llama": lambda: random_llama(**shape),
            "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**shape)),
            "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=64)),
        }[family]()
        .float()
        .eval()
    )
    _quantize_all(model)
    prepare_kernels(model)
    native, per_op = StaticLlama(model, 128), StaticLlama(model, 128)
    assert native._native is not None
    per_op._native = None
    gen = torch.Generator().manual_seed(1)
    prompt = lambda n: torch.randint(3, 300, (n,), generator=gen).tolist()  # noqa: E731
    fed = [7, 8, 9, 10, 11, 12]  # what _left_padded_run feeds
    threads = torch.get_num_threads()
    # 5 x 40 rows: the prefill stays on the int4 kernel (KERNEL_MAX_ROWS), whose results never depend on threads
    for prompts in ([prompt(60)], [prompt(n) for n in (40, 9, 33, 2, 27)]):
        runs = [_left_padded_run(native, prompts, len(fed)), _left_padded_run(per_op, prompts, len(fed))]
        try:
            torch.set_num_threads(2)
            runs.append(_left_padded_run(native, prompts, len(fed)))
        finally:
            torch.set_num_threads(threads)
        for fast, slow, two in zip(*runs):
            torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)  # fp32 sums in another order
            # bit for bit for one row; a batched prefill's PyTorch attention is not (1e-7), the C step after it is
            if len(prompts) == 1:
                assert torch.equal(fast, two)
            else:
                torch.testing.assert_close(fast, two, rtol=1e-5, atol=1e-5)
        for row, ids in enumerate(prompts):
            torch.testing.assert_close(runs[0][-1][row], _reference(model, ids + fed), rtol=1e-4, atol=1e-4)
    assert native.keys[0].shape[2] > 64  # the buffers grew: the step follows them
    calls = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *_: calls.append(1))
    _left_padded_run(native, [prompt(20), prompt(9)], 1)
    assert calls == [1, 1]  # prefill and the step: a hooked projection leaves the C step
