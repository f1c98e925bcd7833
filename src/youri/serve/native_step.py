"""The lean decoder's one-call decode step (``youri.runtime`` ``decode_step.c``) for GPTQ models on youri's kernels.

``youri.serve.decoder.StaticLlama`` decodes one token of each of its rows through it when every decoder layer is
Llama's math on youri's row kernels: seven ``QuantLinear`` projections (with or without biases) on ``int4-avx2`` or
``int4-avx512``, plain fp32 RMSNorms (Qwen3's QK-norms included) and SiLU. The step computes what the lean step's
PyTorch ops compute -- the same int4 kernel calls, fp32 elsewhere -- in one C call for all layers and rows: at a 1B
shape the ~25 small ops per layer between the matmuls cost a third of a token
(``benchmarks/decode_vs_llamacpp.py``). Anything else (a hook, another kernel, half precision) takes the PyTorch
step.
"""

from __future__ import annotations

import ctypes

import torch

from youri.runtime import kernels
from youri.runtime.quant_linear import QuantLinear

_pointer, _int, _float = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


class _Projection(ctypes.Structure):
    _fields_ = [("packed", _pointer), ("scale", _pointer), ("szero", _pointer), ("bias", _pointer),
                ("out", _int), ("inputs", _int), ("group", _int), ("vnni", _int)]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [*((name, _Projection) for name in PROJECTIONS),
                ("norm1", _pointer), ("norm2", _pointer), ("q_norm", _pointer), ("k_norm", _pointer),
                ("eps1", _float), ("eps2", _float), ("qk_eps", _float), ("scale", _float)]  # fmt: skip


class _Shape(ctypes.Structure):
    _fields_ = [("hidden", _int), ("heads", _int), ("kv_heads", _int), ("head_dim", _int), ("intermediate", _int),
                ("columns", _int), ("rows", _int), ("threads", _int),
                ("xq", _pointer), ("dx", _pointer), ("xsum", _pointer), ("work", _pointer)]  # fmt: skip


def _library() -> ctypes.CDLL | None:
    library = kernels.avx2_library()[0]
    if library is None:
        return None
    if library.youri_decode_step.argtypes is None:
        library.youri_decode_step.restype = None
        library.youri_decode_step.argtypes = [_pointer, _int, _pointer, _pointer, _pointer, _pointer, _int, _pointer,
                                              _pointer, _pointer]  # fmt: skip
        library.youri_decode_work_floats.restype = ctypes.c_long
        library.youri_decode_work_floats.argtypes = [_pointer]
    return library


class NativeStep:
    """Every layer's weights as the C step's structs (built once per plan); ``step`` decodes one token."""

    def __init__(self, layers: list, heads: int, kv_heads: int, head_dim: int):
        self.library = _library()
        self.keep: list[torch.Tensor] = []  # every tensor the structs point into, alive while they are (a weight
        # replaced after the plan was built is used from the next prefill on, as by the PyTorch step)
        self.layers = (_Layer * len(layers))(*(self._layer(layer) for layer in layers))
        first = layers[0]
        self.shape = _Shape(hidden=first.input_layernorm.weight.shape[0], heads=heads, kv_heads=kv_heads,
                            head_dim=head_dim, intermediate=first.mlp.gate_proj.out_features)  # fmt: skip
        projections = [getattr(layer, name) for layer in self.layers for name in PROJECTIONS]
        self.widest, self.narrowest = max(p.inputs for p in projections), min(p.group for p in projections)
        self.work = torch.empty(0)
        self._buffers: tuple | None = None  # (keys list, key pointers, value pointers, rows)

    @staticmethod
    def unsupported(model, head_dim: int, rms_norms: tuple, silu: tuple) -> str | None:
        """Why the C step cannot run ``model``'s layers (None: it can)."""
        if _library() is None:
            return "youri's kernel library is not built here"
        if head_dim % 8 or head_dim > 1024 or model.config.hidden_size % 8:
            return f"head_dim {head_dim} or hidden size {model.config.hidden_size} (multiples of 8, head_dim <= 1024)"
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for module in _projections(layer):
                weight = module.kernel_weight if type(module) is QuantLinear else None
                if weight is None or weight.kernel not in kernels.ROW_KERNELS or hooked(module):
                    return f"{type(module).__name__} not on youri's int4 row kernels"
            norms = [layer.input_layernorm, layer.post_attention_layernorm]
            norms += [n for n in (getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)) if n]
            if any(type(n) not in rms_norms or hooked(n) or n.weight.dtype != torch.float32 for n in norms):
                return "a norm that is not a plain fp32 RMSNorm"
            if type(mlp.act_fn) not in silu or hooked(layer) or hooked(attention) or hooked(mlp):
                return "an activation other than SiLU, or a hooked layer"
        return None

    def _layer(self, layer) -> _Layer:
        attention = layer.self_attn
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        norms = [layer.input_layernorm, layer.post_attention_layernorm, *(n for n in (q_norm, k_norm) if n is not None)]
        self.keep += [norm.weight for norm in norms]
        return _Layer(
            *(self._projection(m) for m in _projections(layer)),
            norm1=layer.input_layernorm.weight.data_ptr(), norm2=layer.post_attention_layernorm.weight.data_ptr(),
            q_norm=q_norm.weight.data_ptr() if q_norm is not None else None,
            k_norm=k_norm.weight.data_ptr() if k_norm is not None else None,
            eps1=layer.input_layernorm.variance_epsilon, eps2=layer.post_attention_layernorm.variance_epsilon,
            qk_eps=q_norm.variance_epsilon if q_norm is not None else 0.0, scale=attention.scaling,
        )  # fmt: skip

    def _projection(self, module: QuantLinear) -> _Projection:
        weight = module.kernel_weight
        self.keep += [weight.packed, weight.scales_and_zeros]
        bias = None
        if module.bias is not None:
            self.keep.append(module.bias.detach().float().contiguous())
            bias = self.keep[-1].data_ptr()
        return _Projection(
            packed=weight.packed.data_ptr(), scale=weight.scales_and_zeros[0].data_ptr(),
            szero=weight.scales_and_zeros[1].data_ptr(), bias=bias, out=weight.out_features,
            inputs=weight.packed.shape[1] * 2, group=weight.group, vnni=weight.kernel == "int4-avx512",
        )  # fmt: skip

    def step(self, x: torch.Tensor, keys: list, values: list, column: int, starts: torch.Tensor, cos, sin) -> None:
        """``x [rows, hidden]`` fp32 (the embedded tokens, row i the decoder's row i) becomes the last layer's output;
        K/V written at ``column``; row i attends over ``[starts[i], column]`` (``starts``: int32) and sits at position
        ``column - starts[i]`` of the rotary tables ``cos``/``sin`` ``[positions, head_dim]``."""
        rows = x.shape[0]
        if self._buffers is None or self._buffers[0] is not keys or self._buffers[3] != rows:
            self._point_at(keys, values, rows)
        self.shape.threads = torch.get_num_threads()
        self.library.youri_decode_step(
            ctypes.addressof(self.layers), len(self.layers), ctypes.addressof(self.shape), x.data_ptr(),
            ctypes.addressof(self._buffers[1]), ctypes.addressof(self._buffers[2]), column, starts.data_ptr(),
            cos.data_ptr(), sin.data_ptr(),
        )  # fmt: skip

    def _point_at(self, keys: list, values: list, rows: int) -> None:
        """The K/V buffers (new lists whenever the decoder grows them), and work space for their column capacity
        and ``rows`` rows."""
        assert all(t.is_contiguous() and t.dtype == torch.float32 for t in keys + values)
        arrays = ((_pointer * len(keys))(*(t.data_ptr() for t in keys)),
                  (_pointer * len(values))(*(t.data_ptr() for t in values)))  # fmt: skip
        self._buffers = (keys, *arrays, rows)
        self.shape.columns, self.shape.rows = keys[0].shape[2], rows
        need = self.library.youri_decode_work_floats(ctypes.addressof(self.shape))
        if self.work.numel() < need:
            self.work = torch.empty(need)
        # the kernels' scratch: int16 (or byte pairs) per input, two floats per group, for every row
        self.xq = torch.empty(rows * self.widest, dtype=torch.int16)
        self.scales = torch.empty(2, rows * (self.widest // self.narrowest))
        self.shape.xq, self.shape.dx, self.shape.xsum = self.xq.data_ptr(), *(t.data_ptr() for t in self.scales)
        self.shape.work = self.work.data_ptr()


def _projections(layer) -> tuple:
    """A decoder layer's seven projections, in ``PROJECTIONS`` order (the C struct's)."""
    attention, mlp = layer.self_attn, layer.mlp
    return (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
            mlp.gate_proj, mlp.up_proj, mlp.down_proj)  # fmt: skip


def hooked(module) -> bool:
    """The module has forward hooks (its calls must go through ``nn.Module``)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)
