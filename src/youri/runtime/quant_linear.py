"""``QuantLinear``: a GPTQ v1 layer kept packed in memory, and the loader that builds a model from a GPTQ folder.

Below ``youri.model`` (which loads a GPTQ twin like any other folder): every stage that reads weights uses it,
``youri quantize`` writes what it loads.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from youri.io import reading
from youri.runtime import kernels
from youri.runtime.gptq_format import check_shape, dequantize, unpack

KERNEL_MAX_ROWS = 256
"""Above this many input rows (long prefills, eval batches) one dequantised dense matmul beats the int4
kernel, which re-expands the weights for every block of rows (CPU crossover measured at 256-1024 rows)."""


class QuantLinear(nn.Module):
    """A GPTQ v1 linear layer kept packed in memory.

    ``prepare_kernel`` (``load_gptq_model`` calls it once the layer sits on its device) converts the
    weights for an int4 matmul (``youri.runtime.kernels``: youri's AVX2 kernel or PyTorch's). Without a
    kernel -- another device, bits != 4, act-order groups, an odd shape -- each forward unpacks into a
    temporary dense weight.
    ``kernel`` says which path runs, ``kernel_note`` why it is not the int4 one.
    """

    def __init__(
        self, in_features: int, out_features: int, *, bits: int, group_size: int, bias: bool = False, device=None
    ):
        super().__init__()
        group = check_shape(in_features, out_features, bits, group_size)
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group
        kw = {"device": device}
        self.register_buffer("qweight", torch.zeros(in_features * bits // 32, out_features, dtype=torch.int32, **kw))
        self.register_buffer(
            "qzeros", torch.zeros(in_features // group, out_features * bits // 32, dtype=torch.int32, **kw)
        )
        self.register_buffer("scales", torch.zeros(in_features // group, out_features, dtype=torch.float16, **kw))
        self.register_buffer("g_idx", torch.arange(in_features, dtype=torch.int32, **kw) // group)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float16, **kw) if bias else None)
        self.kernel, self.kernel_note = "dequant", "not prepared"
        self._int4: kernels.Int4Weight | None = None  # not a buffer: the state dict stays GPTQ v1

    def prepare_kernel(self, use_kernel: bool = True) -> str:
        """Convert the GPTQ tensors once for the int4 kernel of the layer's device; returns the path taken.

        ``use_kernel=False`` pins the dequantising path (the exact reference the kernel is tested against).
        """
        self._int4, self.kernel, kernel = None, "dequant", None
        candidates = kernels.candidates(self.qweight.device)
        groups = torch.arange(self.in_features, device=self.g_idx.device) // self.group_size
        if not use_kernel:
            self.kernel_note = "int4 kernel switched off"
        elif not candidates:
            self.kernel_note = kernels.why_no_kernel(self.qweight.device)
        elif self.bits != 4:
            self.kernel_note = f"{self.bits}-bit weights"
        elif not torch.equal(self.g_idx.long(), groups):
            self.kernel_note = "act-order groups (g_idx)"
        else:  # the first kernel (fastest first) that takes this shape
            why = {k: kernels.unsupported(k, self.in_features, self.out_features, self.group_size) for k in candidates}
            kernel = next((k for k, reason in why.items() if reason is None), None)
            self.kernel_note = "" if kernel else "; ".join(f"{k}: {reason}" for k, reason in why.items())
        if self.kernel_note:
            return self.kernel
        codes, zeros = unpack(self.qweight, self.qzeros, self.bits, self.in_features)
        weight = kernels.convert(kernel, codes, zeros, self.scales, self.group_size)
        if not self._kernel_agrees(weight, codes, zeros):
            self.kernel_note = f"{kernel} failed its self-check"
            return self.kernel
        self._int4, self.kernel, self.kernel_note = weight, kernel, ""
        return self.kernel

    def _kernel_agrees(self, weight: kernels.Int4Weight, codes: torch.Tensor, zeros: torch.Tensor) -> bool:
        """The kernel times a few unit vectors must give those columns of the dequantised weight (bf16 close):
        a guard against a kernel whose packing differs on hardware the tests never ran on."""
        picks = torch.linspace(0, self.in_features - 1, 8, device=codes.device).long()
        probe = torch.zeros(len(picks), self.in_features, device=codes.device)
        probe[torch.arange(len(picks)), picks] = 1
        groups = picks // self.group_size
        expected = self.scales[groups].float() * (codes[picks] - zeros[groups]).float()
        got = kernels.matmul(probe, weight).float()
        return bool(torch.allclose(got, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item() + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self._int4
        if weight is not None and weight.packed.device == x.device and x.numel() <= KERNEL_MAX_ROWS * self.in_features:
            y = kernels.matmul(x, weight)
        else:
            y = x @ dequantize(self.qweight, self.qzeros, self.scales, self.g_idx, self.bits, dtype=x.dtype).T
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    @property
    def kernel_weight(self) -> kernels.Int4Weight | None:
        """The weight in its int4 kernel's format (None on the dequantising path); replaced by each
        ``prepare_kernel``, so its identity says which conversion is current."""
        return self._int4

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
            f"kernel={self.kernel}"
        )


def prepare_kernels(model: nn.Module, use_kernel: bool = True) -> dict[str, int]:
    """Convert every ``QuantLinear`` for its device's int4 kernel; how many layers take each path."""
    paths: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            path = module.prepare_kernel(use_kernel)
            paths[path] = paths.get(path, 0) + 1
    return paths


def kernel_summary(model: nn.Module) -> str | None:
    """One line saying which matmul a GPTQ model's layers run (None for a model without GPTQ layers)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if not layers:
        return None
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.kernel] = counts.get(layer.kernel, 0) + 1
    paths = ", ".join(f"{name} on {n}/{len(layers)} layers" for name, n in sorted(counts.items()))
    notes = sorted({layer.kernel_note for layer in layers if layer.kernel_note})
    # The fast CPU kernel could not be built (no compiler, unwritable cache, no AVX2): a ~4x slower model
    # is never silent (printed once at load; in the metrics.json of every stage that measures speed).
    missing = next(
        (why for why in map(kernels.avx2_unavailable, {layer.qweight.device for layer in layers}) if why), ""
    )
    return (
        "GPTQ matmul: "
        + paths
        + (f" (dequantising: {'; '.join(notes)})" if notes else "")
        + (f" (int4-avx2 unavailable: {missing})" if missing else "")
    )


def swap_linears(module: nn.Module, names: set[str], *, bits: int, group_size: int) -> None:
    """Replace the ``nn.Linear`` submodules named in ``names`` (dotted) by empty ``QuantLinear`` layers."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, child)
        setattr(
            parent,
            child,
            QuantLinear(
                linear.in_features,
                linear.out_features,
                bits=bits,
                group_size=group_size,
                bias=linear.bias is not None,
                device=linear.weight.device,
            ),
        )


def load_gptq_model(path, quant: dict, *, dtype=None, device=None):
    """A GPTQ v1 folder as a transformers model with ``QuantLinear`` layers (weights stay packed).

    gpt-fast style: build with every parameter on the meta device, swap the quantized linears,
    ``load_state_dict(assign=True)`` from safetensors. Buffers are built on the CPU by the modules themselves
    (rotary tables -- Gemma 3's local and global ones --, Gemma's embedding scale), exactly as transformers
    builds them. On ``device``, each layer's weights are converted once for its int4 kernel where there is one
    (``prepare_kernels``).
    """

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if hasattr(config, "quantization_config"):  # absent in AutoGPTQ's layout (settings in quantize_config.json)
        del config.quantization_config  # youri swaps the layers itself; no transformers quantizer involved
    dtype = dtype or getattr(config, "dtype", None) or torch.float16
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with reading(file, "cannot read the weights"):
            state.update(load_file(str(file)))
    if not state:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    names = {key[: -len(".qweight")] for key in state if key.endswith(".qweight")}
    swap_linears(model, names, bits=int(quant["bits"]), group_size=int(quant["group_size"]))
    state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(".scales") else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: weights do not match the model: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if tied:
        model.tie_weights()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{path}: tensors the checkpoint does not hold: {left[:5]}")
    if device:
        model.to(device)
    prepare_kernels(model)  # on the final device: each kernel's weight format is its own
    return model.eval()


@contextmanager
def _parameters_on_meta():
    """Every parameter registered inside moves to the meta device at once (its values come from the
    checkpoint); buffers stay where the module computed them."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
