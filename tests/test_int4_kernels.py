"""The int4 kernels GPTQ layers run (``youri.runtime.kernels``): youri's AVX2 kernel and PyTorch's, each against
the exact dequantising path, which kernel a layer takes, and the fallbacks when one is missing."""

from __future__ import annotations

import pytest
import torch

from youri.quant.gptq import rtn_quantize
from youri.runtime import kernels
from youri.runtime.gptq_format import dequantize, pack, unpack
from youri.runtime.quant_linear import KERNEL_MAX_ROWS, QuantLinear, kernel_summary

CPU_KERNELS = {
    "int4-avx512": 2e-4,  # youri's VNNI variant: the same int16 activations and int32 group sums
    "int4-avx2": 2e-4,  # youri's: activations rounded to int16 per group (step = group max / 32512)
    "int4-cpu": 0.01,  # PyTorch's: activations and scales enter as bf16 (8 mantissa bits)
}
"""Each CPU kernel's tolerance against the exact dequantised path, as a fraction of the largest output."""


def _pin_kernel(monkeypatch, kernel: str) -> None:
    monkeypatch.setenv(kernels.KERNEL_ENV, kernel)
    if kernel not in kernels.available_kernels(torch.device("cpu")):
        why = kernels.avx2_library()[1] if kernel in kernels.ROW_KERNELS else "no aten._weight_int4pack_mm_for_cpu"
        why = why or "the CPU lacks avx512bw/avx512_vnni"
        pytest.skip(f"{kernel} is not available on this machine: {why}")


@pytest.mark.parametrize("kernel", sorted(CPU_KERNELS))
@pytest.mark.parametrize("sym,group", [(True, 128), (False, 128), (True, 64), (False, 256)])
def test_int4_kernel_equals_dequantized_path_within_its_rounding(monkeypatch, kernel, sym, group):
    """Each CPU int4 kernel's output equals the dequantising path's within its stated rounding (table above),
    for any number of rows (the AVX2 kernel tiles rows by 4); many rows still dequantise, exactly."""
    _pin_kernel(monkeypatch, kernel)
    torch.manual_seed(0)
    W = torch.randn(96, 256)
    layer = QuantLinear(256, 96, bits=4, group_size=group, bias=True)
    layer.load_state_dict(
        {**pack(*rtn_quantize(W, bits=4, group_size=group, sym=sym), bits=4), "bias": torch.randn(96).half()}
    )
    inputs = [torch.randn(rows, 256) * 3 for rows in (1, 2, 3, 4, 5, 9)] + [torch.randn(3, 5, 256)]
    references, state = [layer(x) for x in inputs], {k: v.clone() for k, v in layer.state_dict().items()}
    assert layer.kernel == "dequant" and layer.prepare_kernel() == kernel and layer.kernel_note == ""
    for x, reference in zip(inputs, references):
        fast = layer(x)
        assert fast.shape == reference.shape and fast.dtype == reference.dtype
        torch.testing.assert_close(fast, reference, rtol=0, atol=CPU_KERNELS[kernel] * reference.abs().max().item())
        assert not torch.equal(fast, reference)  # the kernel really ran (its rounding shows)
    many = torch.randn(KERNEL_MAX_ROWS + 1, 256)
    torch.testing.assert_close(
        layer(many),
        many @ dequantize(**{k: state[k] for k in ("qweight", "qzeros", "scales", "g_idx")}, bits=4).T
        + layer.bias.float(),
        rtol=1e-5,
        atol=1e-5,
    )
    assert layer.state_dict().keys() == state.keys() and all(
        torch.equal(v, state[k]) for k, v in layer.state_dict().items()
    )
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) < W.numel() * 2 / 3  # no dense copy
    assert f"{kernel} on 1/1 layers" in kernel_summary(layer)
    assert layer.prepare_kernel(use_kernel=False) == "dequant"
    torch.testing.assert_close(layer(inputs[-1]), references[-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", kernels.ROW_KERNELS)
def test_youris_kernels_are_the_exact_product_with_int16_rounded_activations(monkeypatch, kernel):
    """What youri's AVX2 and AVX-512 kernels compute, exactly: the dequantised weight times activations rounded
    to int16 per group; a NaN activation gives NaN (as the float path would), never a finite wrong number."""
    _pin_kernel(monkeypatch, kernel)
    torch.manual_seed(3)
    layer = QuantLinear(512, 72, bits=4, group_size=128)  # 72 outputs: a partial block on the prompt path
    layer.load_state_dict(pack(*rtn_quantize(torch.randn(72, 512), bits=4, group_size=128, sym=False), bits=4))
    dense = dequantize(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, 4).double()
    layer.prepare_kernel()
    x = torch.randn(9, 512) * torch.logspace(-3, 3, 512)  # groups of very different magnitudes; 9 rows: 4 + 4 + 1
    groups = x.view(9, 4, 128)
    step = groups.abs().amax(-1, keepdim=True) / kernels.ACTIVATION_LEVELS
    rounded = (torch.round(groups / step) * step).view(9, 512).double()
    expected = rounded @ dense.T
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = layer(x)
        torch.set_num_threads(2)
        assert torch.equal(layer(x), one_thread)  # OpenMP splits the outputs; each is computed the same way
        alone = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])
        assert torch.equal(alone, one_thread)  # a row's outputs never depend on the rows batched beside it
    finally:
        torch.set_num_threads(threads)
    half = layer(x[:, None].bfloat16())  # other dtypes and shapes: computed in fp32, returned as given
    assert half.dtype == torch.bfloat16 and half.shape == (9, 1, 72)
    torch.testing.assert_close(half[:, 0].double(), layer(x[:, None].bfloat16().float())[:, 0].bfloat16().double())
    x[2, 7] = float("nan")
    out = layer(x)
    assert out[2].isnan().all() and out[[0, 1, 3, 4, 5, 6, 7, 8]].isfinite().all()


def test_without_a_compiler_the_avx2_kernel_steps_aside(monkeypatch, tmp_path):
    """No C compiler (or an unwritable cache): no int4-avx2, one line saying why, and PyTorch's kernel runs."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("YOURI_CACHE", str(tmp_path / "cache"))
    kernels.avx2_library.cache_clear()
    try:
        library, why = kernels.avx2_library()
        if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            assert library is None and "AVX2" in why
            return
        assert library is None and "no-such-cc could not build int4_avx2.c" in why
        assert "int4-avx2" not in kernels.available_kernels(torch.device("cpu"))
        assert not list((tmp_path / "cache").rglob("*.so"))
    finally:
        kernels.avx2_library.cache_clear()  # the next caller builds or finds the real one again


@pytest.mark.parametrize(
    "bits,out,group,act_order,kernel,note",
    [
        (3, 128, 128, False, "", "3-bit weights"),
        (4, 128, 128, True, "", "act-order groups"),
        (4, 24, 128, False, "int4-cpu", "24 outputs"),
        (4, 128, 32, False, "int4-avx2", "group size 32"),
    ],
)
def test_layers_the_int4_kernel_cannot_take_keep_dequantizing(monkeypatch, bits, out, group, act_order, kernel, note):
    if kernel:
        _pin_kernel(monkeypatch, kernel)
    torch.manual_seed(0)
    W, x = torch.randn(out, 256), torch.randn(4, 256)
    g_idx = torch.randperm(256) // group if act_order else torch.arange(256) // group
    layer = QuantLinear(256, out, bits=bits, group_size=group)
    layer.load_state_dict(pack(*rtn_quantize(W, bits=bits, group_size=group)[:3], g_idx.int(), bits=bits))
    assert layer.prepare_kernel() == "dequant" and note in layer.kernel_note
    assert note in kernel_summary(layer) and "dequant on 1/1 layers" in kernel_summary(layer)
    torch.testing.assert_close(layer(x), x @ dequantize(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, bits).T)


def test_a_layer_takes_the_first_kernel_that_fits_its_shape(monkeypatch):
    """group 32: youri's AVX2 kernel cannot take it, PyTorch's can -- the layer falls to the next kernel, not
    to dequantising; a pinned kernel that does not exist dequantises and says so. (The AVX-512 kernel, which takes
    groups of 32, is set aside.)"""
    monkeypatch.setattr(kernels, "_has_avx512_vnni", lambda: False)
    available = kernels.available_kernels(torch.device("cpu"))
    if "int4-avx2" not in available or "int4-cpu" not in available:
        pytest.skip(f"needs youri's and PyTorch's CPU kernels, this machine has {available}")
    layer = QuantLinear(256, 64, bits=4, group_size=32)
    layer.load_state_dict(pack(*rtn_quantize(torch.randn(64, 256), bits=4, group_size=32), bits=4))
    assert layer.prepare_kernel() == "int4-cpu" and layer.kernel_note == ""
    monkeypatch.setenv(kernels.KERNEL_ENV, "int4-nonsense")
    assert layer.prepare_kernel() == "dequant" and "YOURI_INT4_KERNEL=int4-nonsense" in layer.kernel_note


@pytest.mark.parametrize("kernel", kernels.ROW_KERNELS)
def test_stacked_row_kernel_weights_give_each_parts_rows_bit_for_bit(monkeypatch, kernel):
    """``stack_rows``: several layers (rows reordered, some negated) as one kernel call, with exactly the outputs
    the separate calls give; a PyTorch-kernel weight cannot be stacked."""
    _pin_kernel(monkeypatch, kernel)
    torch.manual_seed(5)
    layers = []
    for out in (64, 32):
        layer = QuantLinear(256, out, bits=4, group_size=128)
        layer.load_state_dict(pack(*rtn_quantize(torch.randn(out, 256), bits=4, group_size=128, sym=False), bits=4))
        layer.prepare_kernel()
        layers.append(layer)
    order, sign = torch.randperm(32), torch.where(torch.rand(32) < 0.5, -1.0, 1.0)
    a, b = (layer.kernel_weight for layer in layers)
    stacked = kernels.stack_rows([(a, None, None), (b, order, sign)])
    x = torch.randn(3, 256)
    expected = torch.cat([kernels.matmul(x, a), kernels.matmul(x, b)[:, order] * sign], dim=1)
    assert torch.equal(kernels.matmul(x, stacked), expected)
    monkeypatch.setenv(kernels.KERNEL_ENV, "int4-cpu")
    if "int4-cpu" in kernels.available_kernels(torch.device("cpu")):
        layers[1].prepare_kernel()
        assert kernels.stack_rows([(a, None, None), (layers[1].kernel_weight, None, None)]) is None


def test_the_avx512_and_avx2_kernels_agree_up_to_fp32_summation_order():
    """Same codes, same int16 activations, exact int32 group sums: only the order of the fp32 group terms differs."""
    available = kernels.available_kernels(torch.device("cpu"))
    if "int4-avx512" not in available:
        pytest.skip(f"int4-avx512 needs avx512bw + avx512_vnni; this machine has {available}")
    torch.manual_seed(7)
    tensors = pack(*rtn_quantize(torch.randn(80, 384), bits=4, group_size=128, sym=False), bits=4)
    codes, zeros = unpack(tensors["qweight"], tensors["qzeros"], 4, 384)
    x = torch.randn(6, 384)
    wide, narrow = (kernels.convert(k, codes, zeros, tensors["scales"], 128) for k in ("int4-avx512", "int4-avx2"))
    assert not torch.equal(wide.packed, narrow.packed)  # each kernel has its own nibble order
    torch.testing.assert_close(kernels.matmul(x, wide), kernels.matmul(x, narrow), rtol=1e-5, atol=1e-5)


def test_the_fp16_matmul_reads_exact_fp16_weights_only():
    """``half_weight``: an fp32 weight whose values are all fp16 gets an fp16 copy whose matmul has the fp32
    products of the same values (fp32 sums); one value that is not fp16 keeps the weight on the float path."""
    if kernels.avx2_library()[0] is None:
        pytest.skip(f"youri's kernel library is unavailable: {kernels.avx2_library()[1]}")
    torch.manual_seed(8)
    weight = torch.randn(300, 136).half().float()  # 136: a tail that is not a multiple of 32
    half = kernels.half_weight(weight)
    assert half is not None and half.half.dtype == torch.float16 and half.half.data_ptr() != weight.data_ptr()
    x = torch.randn(3, 136)
    out = kernels.half_matmul(x, half)
    assert torch.equal(torch.cat([kernels.half_matmul(x[i : i + 1], half) for i in range(3)]), out)  # batch-invariant
    expected = x.double() @ weight.double().T
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert kernels.half_matmul(x[0], half).shape == (300,) and kernels.half_matmul(x[None], half).shape == (1, 3, 300)
    weight[5, 7] += 1e-4  # no longer an fp16 value
    assert kernels.half_weight(weight) is None and kernels.half_weight(weight.double()) is None
