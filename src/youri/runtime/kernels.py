"""The int4 weight-only matmuls for GPTQ layers (``youri.runtime.quant_linear.QuantLinear``): youri's AVX2 kernel and
the ones PyTorch ships.

* ``int4-avx2`` (x86 CPUs with AVX2, preferred there): ``int4_avx2.c`` beside this module, compiled once per
  machine with the system C compiler into ``$YOURI_CACHE`` (default ``~/.cache/youri``)``/kernels`` and
  loaded with ``ctypes`` (no PyTorch headers, so the build takes about a second). Activations are rounded
  to int16 per group (step = the group's max / ``ACTIVATION_LEVELS``) and the codes multiplied by integer
  multiply-adds; the file's header says why and how. One core: ~4x PyTorch's CPU kernel on a 2048x5632 layer
  (``benchmarks/decode_speed.py``). No compiler, a failed build or another CPU: the next kernel.
* ``int4-avx512`` (x86 CPUs with AVX-512 BW + VNNI, preferred there; groups of a multiple of 32): the same file's
  VNNI variant -- the same int16 activations, each split into two signed bytes, and exact int32 group sums;
  vpdpbusd multiplies 4 inputs of 16 outputs (interleaved by 16) per instruction, so each float epilogue serves 16
  outputs. Chosen at load time from /proc/cpuinfo's flags (never tried on a CPU without them). One core,
  2048x5632: ~23 GB/s of codes for one row (the AVX2 kernel ~15), ~2.5x its row-weights/s for a prompt.

PyTorch's are the tinygemm kernels gpt-fast and torchao use. Their weight format: 4-bit codes ``q`` in
``[0, 16)`` per output row, and per group ``g`` of inputs a scale and a float zero, interleaved as
``[K/g, N, 2]``, so that ``W[n, k] = (q[n, k] - 8) * scale[k // g, n] + zero[k // g, n]``. A GPTQ v1
layer means ``W = scale * (q - z)`` with ``g_idx[k] = k // g`` when act-order is off, which is the same
weight with ``zero = scale * (8 - z)`` -- a conversion done once, when the layer is loaded.

* CPU: ``aten._convert_weight_to_int4pack_for_cpu`` / ``aten._weight_int4pack_mm_for_cpu``. Only bf16
  activations take the vectorised (AVX2/AVX512) loop; fp32 and fp16 fall to a scalar loop ~20x slower,
  so activations are cast to bf16 for the matmul and the result back to their dtype.
* CUDA (compute capability 8.0+): ``aten._convert_weight_to_int4pack`` (codes packed two per byte, the
  even input in the high nibble) / ``aten._weight_int4pack_mm``, bf16.

Elsewhere ``kernel_for`` is None and the caller keeps dequantising. ``YOURI_INT4_KERNEL`` pins one kernel
(``int4-avx512``, ``int4-avx2``, ``int4-cpu``, ``int4-cuda``) or none (``dequant``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

GROUP_SIZES = (32, 64, 128, 256)  # what PyTorch's kernels accept as qGroupSize
AVX2_SOURCES = tuple(Path(__file__).with_name(name) for name in ("int4_avx2.c", "decode_step.c"))
"""Built together into one library: the int4 matmuls and the decode step that calls them."""
AVX2_FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-shared", "-fPIC")
KERNEL_ENV = "YOURI_INT4_KERNEL"
ACTIVATION_LEVELS = 32512
"""youri's kernels round each group of activations to integers of at most this magnitude (int4_avx2.c's ``LEVELS``:
127 * 256, so that the AVX-512 kernel splits each into two signed bytes)."""
ROW_KERNELS = ("int4-avx512", "int4-avx2")
"""youri's own kernels (``int4_avx2.c``): one C call per matmul, weights stored row by row, so rows of several
layers stack into one weight (``stack_rows``)."""


@dataclass(eq=False)  # compared by identity: a layer's plan knows which conversion it was built from
class Int4Weight:
    """One layer's weight in a kernel's own format (``kernel`` names it: ``int4-avx512``, ``int4-avx2``, ...)."""

    kernel: str
    packed: torch.Tensor
    scales_and_zeros: torch.Tensor  # PyTorch's: [K/g, N, 2] bf16; youri's: [2, N, K/g] fp32 (scale, scale * zero)
    group: int
    out_features: int
    call: Callable[[int, int, int], None] | None = None
    """youri's kernels: the C function bound to this weight's tensors -- ``call(x pointer, rows, output pointer)``.
    Resolved once, at conversion: at tiny shapes the per-call Python work costs more than the matmul."""


def kernel_for(device: torch.device) -> str | None:
    """The kernel GPTQ layers on ``device`` try first (``YOURI_INT4_KERNEL`` pins one), or None."""
    found = candidates(device)
    return found[0] if found else None


def _pinned() -> str:
    return os.environ.get(KERNEL_ENV, "").strip()


def candidates(device: torch.device) -> list[str]:
    """The kernels to try on ``device``, fastest first: the available ones, or the one ``YOURI_INT4_KERNEL`` pins."""
    available, pinned = available_kernels(device), _pinned()
    if not pinned:
        return available
    return [pinned] if pinned in available else []


def why_no_kernel(device: torch.device) -> str:
    """One line saying why ``kernel_for(device)`` is None."""
    pinned = _pinned()
    if pinned:
        return f"{KERNEL_ENV}={pinned} (available on {device.type}: {', '.join(available_kernels(device)) or 'none'})"
    return f"no int4 kernel for {device.type} here" + (f" ({avx2_library()[1]})" if device.type == "cpu" else "")


def available_kernels(device: torch.device) -> list[str]:
    """The int4 kernels that can run on ``device``, fastest first."""
    ops = torch.ops.aten
    found = []
    if device.type == "cpu":
        if avx2_library()[0] is not None:
            found += ["int4-avx512", "int4-avx2"] if _has_avx512_vnni() else ["int4-avx2"]
        if hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu"):
            found.append("int4-cpu")
    elif device.type == "cuda":
        if hasattr(ops, "_weight_int4pack_mm") and torch.cuda.get_device_capability(device) >= (8, 0):
            found.append("int4-cuda")
    return found


@functools.cache
def _has_avx512_vnni() -> bool:
    """The CPU runs ``youri_int4_matmul_vnni`` (avx512bw and avx512_vnni in /proc/cpuinfo's flags): an instruction
    it lacks would kill the process, so the kernel is never tried without them."""
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), []
        )  # fmt: skip
    except OSError:
        return False
    return {"avx512f", "avx512bw", "avx512_vnni"} <= set(flags)


def _cache_dir() -> Path:
    return Path(os.environ.get("YOURI_CACHE") or Path.home() / ".cache" / "youri") / "kernels"


@functools.cache
def avx2_library() -> tuple[ctypes.CDLL | None, str]:
    """youri's AVX2 kernel, compiled on first use and cached by source hash; ``(None, why)`` where it cannot be."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, "the CPU has no AVX2"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler found (cc or gcc on PATH, or CC)"
    source = b"".join(path.read_bytes() for path in AVX2_SOURCES)
    for flags in (("-fopenmp", *AVX2_FLAGS), AVX2_FLAGS):  # OpenMP threads where the compiler has them
        digest = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
        target = _cache_dir() / f"int4_avx2-{digest}.so"
        failure = "" if target.exists() else _compile(compiler, flags, target)
        if not failure:
            try:
                return _bind(ctypes.CDLL(str(target))), ""
            except (OSError, AttributeError) as error:  # a foreign or truncated file under that name
                return None, f"cannot load {target}: {error}"
    return None, f"{compiler} could not build {AVX2_SOURCES[0].name} into {target.parent}: {failure}"


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> str:
    """Build into a temporary file, then rename: concurrent first uses never load a half-written library.
    Returns why not ('' on success): the cache folder cannot be written, the compiler is missing or refuses
    (the caller falls back)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(dir=target.parent)
    except OSError as error:  # read-only, not a folder, full disk
        return f"the kernel cache is not writable ({error.strerror or error})"
    try:
        with work as folder:
            built = Path(folder) / target.name
            command = [compiler, *flags, *map(str, AVX2_SOURCES), "-o", str(built), "-lm"]
            done = subprocess.run(command, capture_output=True, timeout=120)
            if done.returncode != 0:
                lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
                return f"the compiler failed ({next((x for x in lines if 'error' in x), lines[0] if lines else '')})"
            os.replace(built, target)
    except FileNotFoundError as error:
        return f"no C compiler at {error.filename or compiler}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return " ".join(str(error).split()) or type(error).__name__
    return ""


def avx2_unavailable(device: torch.device) -> str:
    """Why ``int4-avx2``, the first choice on a CPU, is not among its kernels ('' where it is, or where it
    does not apply: another device, or ``YOURI_INT4_KERNEL`` pins a kernel)."""
    if device.type != "cpu" or _pinned():
        return ""
    library, why = avx2_library()
    return "" if library is not None else why


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    library.youri_int4_matmul.restype = None
    library.youri_int4_matmul.argtypes = [
        pointer, integer, integer, pointer, pointer, pointer, integer, integer, pointer, pointer, pointer, pointer,
        integer,
    ]  # fmt: skip
    library.youri_int4_matmul_vnni.restype = None
    library.youri_int4_matmul_vnni.argtypes = library.youri_int4_matmul.argtypes
    library.youri_f16_matmul.restype = None
    library.youri_f16_matmul.argtypes = [pointer, integer, integer, pointer, integer, pointer, integer]
    return library


def unsupported(kernel: str, in_features: int, out_features: int, group: int) -> str | None:
    """Why a layer of this shape cannot use ``kernel`` (None when it can)."""
    if kernel in ROW_KERNELS:
        step = 32 if kernel == "int4-avx512" else 64
        fits = group % step == 0 and group <= 32768
        return None if fits else f"group size {group} (the kernel takes multiples of {step})"
    if group not in GROUP_SIZES:
        return f"group size {group} (the kernel takes {GROUP_SIZES})"
    if kernel == "int4-cpu" and out_features % 16:
        return f"{out_features} outputs (the CPU kernel needs a multiple of 16)"
    if kernel == "int4-cuda" and out_features % 8:
        return f"{out_features} outputs (the CUDA kernel needs a multiple of 8)"
    return None


def convert(kernel: str, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int) -> Int4Weight:
    """GPTQ codes ``[K, N]`` (in ``[0, 16)``), integer zeros and scales ``[K/g, N]`` -> the kernel's format."""
    if kernel in ROW_KERNELS:
        return _convert_rows(kernel, codes, zeros, scales, group)
    codes = codes.T.contiguous().to(torch.int32)  # [N, K]
    scales = scales.float()
    zero = scales * (8 - zeros.float())  # scale * (q - z) == (q - 8) * scale + scale * (8 - z)
    scales_and_zeros = torch.stack([scales, zero], dim=-1).to(torch.bfloat16).contiguous()
    if kernel == "int4-cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
    else:
        inner_k_tiles = next(t for t in (8, 4, 2) if codes.shape[1] % (t * 16) == 0)  # K = blocks * t * 16
        nibbles = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack(nibbles, inner_k_tiles)
    return Int4Weight(kernel, packed, scales_and_zeros, group, codes.shape[0])


def _convert_rows(kernel: str, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group: int):
    """GPTQ codes ``[K, N]``, integer zeros and scales ``[K/g, N]`` in ``kernel``'s layout (``int4_avx2.c``)."""
    scales = scales.float().T
    return _pack(kernel, codes.T.to(torch.uint8), scales, scales * zeros.float().T, group)


def _pack(kernel: str, codes: torch.Tensor, scale: torch.Tensor, szero: torch.Tensor, group: int) -> Int4Weight:
    """Per-output codes ``[N, K]`` (uint8 in ``[0, 16)``), scales and scale * zero ``[N, K/g]`` in ``kernel``'s layout.

    ``int4-avx2``: row by row, per block of 64 inputs byte j holding input L(j) (low nibble) and 32 + L(j) (high),
    L swapping the middle two 8-byte quarters (the order its in-lane unpacking yields); scales ``[2, N, K/g]``.
    ``int4-avx512``: outputs interleaved by 16 (zero-padded), per 8 inputs k.. 64 bytes, byte 4j + t holding output
    j's input k + t (low) and k + 4 + t (high); scales ``[2, blocks, K/g, 16]``."""
    n, k = codes.shape
    if kernel == "int4-avx2":
        blocks = codes.reshape(n, k // 64, 2, 4, 8)[:, :, :, [0, 2, 1, 3]].reshape(n, k // 64, 2, 32)
        packed = (blocks[:, :, 0] | blocks[:, :, 1] << 4).reshape(n, k // 2).contiguous()
        return _row_weight(kernel, packed, torch.stack([scale, szero]).contiguous(), group, n)
    pad = -n % 16
    codes, scale, szero = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (codes, scale, szero))
    blocks = codes.reshape(-1, 16, k // 8, 2, 4)  # [block, output j, 8 inputs, low/high half, t]
    packed = (blocks[:, :, :, 0] | blocks[:, :, :, 1] << 4).permute(0, 2, 1, 3).reshape(-1, k // 2).contiguous()
    scales_and_zeros = torch.stack([scale, szero]).reshape(2, -1, 16, k // group).transpose(2, 3).contiguous()
    return _row_weight(kernel, packed, scales_and_zeros, group, n)


def _unpack(weight: Int4Weight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_pack``'s inverse: per-output codes ``[N, K]``, scales and scale * zero ``[N, K/g]``."""
    rows, k, n = weight.packed.shape[0], weight.packed.shape[1] * 2, weight.out_features
    if weight.kernel == "int4-avx2":
        blocks = weight.packed.reshape(rows, k // 64, 32)
        codes = torch.stack([blocks & 15, blocks >> 4], dim=2).reshape(rows, k // 64, 2, 4, 8)[:, :, :, [0, 2, 1, 3]]
        scale, szero = weight.scales_and_zeros
        return codes.reshape(rows, k), scale, szero
    blocks = weight.packed.reshape(-1, k // 8, 16, 4)  # [block, 8 inputs, output j, t]
    codes = torch.stack([blocks & 15, blocks >> 4], dim=3).permute(0, 2, 1, 3, 4).reshape(rows, k)
    scale, szero = weight.scales_and_zeros.transpose(2, 3).reshape(2, rows, k // weight.group)
    return codes[:n], scale[:n], szero[:n]


def _row_weight(kernel: str, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group: int, n: int) -> Int4Weight:
    k = packed.shape[1] * 2
    library = avx2_library()[0]
    function = library.youri_int4_matmul_vnni if kernel == "int4-avx512" else library.youri_int4_matmul
    threads = torch.get_num_threads
    weight_args = (k, packed.data_ptr(), scales_and_zeros[0].data_ptr(), scales_and_zeros[1].data_ptr(), n, group)

    def call(x: int, rows: int, out: int) -> None:  # the tensors behind the pointers live as long as the weight
        function(x, rows, *weight_args, out, *_scratch_pointers(rows, k, k // group), threads())

    return Int4Weight(kernel, packed, scales_and_zeros, group, n, call)


def stack_rows(parts: list[tuple[Int4Weight, torch.Tensor | None, torch.Tensor | None]]) -> Int4Weight | None:
    """One weight of youri's row kernels (``ROW_KERNELS``) whose outputs are each part's rows ``order`` (None: all)
    times ``sign`` (None: +1), in turn -- several projections as one call, exactly (a row's codes are copied, a
    sign goes into its scale and scale * zero). None unless every part is such a weight of one kernel, with the
    same inputs and group."""
    weights = [weight for weight, _, _ in parts]
    if weights[0].kernel not in ROW_KERNELS or len({(w.kernel, w.group, w.packed.shape[1]) for w in weights}) > 1:
        return None
    codes, scales, szeros = [], [], []
    for weight, order, sign in parts:
        rows = slice(None) if order is None else order
        code, scale, szero = (t[rows] for t in _unpack(weight))
        codes.append(code)
        scales.append(scale if sign is None else scale * sign[:, None])
        szeros.append(szero if sign is None else szero * sign[:, None])
    return _pack(weights[0].kernel, torch.cat(codes), torch.cat(scales), torch.cat(szeros), weights[0].group)


_scratch = threading.local()  # per thread: calls on different threads never share the activation scratch


def _scratch_pointers(count: int, k: int, groups: int) -> tuple[int, int, int]:
    """Addresses of the kernel's int16 activations ``[count, k]`` and its two ``[count, groups]`` fp32 rows,
    in one buffer reused across calls (allocating three tensors per call costs more than a tiny matmul)."""
    rounded = count * k * 2  # bytes; k is a multiple of 64, so what follows stays 4-byte aligned
    need = rounded + 8 * count * groups
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.numel() < need:
        buffer = _scratch.buffer = torch.empty(max(need, 1 << 16), dtype=torch.uint8)
    base = buffer.data_ptr()
    return base, base + rounded, base + rounded + 4 * count * groups


def matmul(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``x @ W.T`` for ``x [..., K]`` through the kernel, in ``x``'s dtype (PyTorch's take bf16 inside)."""
    if weight.call is not None:
        return _through_c(x, weight.out_features, lambda rows, out: weight.call(rows.data_ptr(), rows.shape[0], out))
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    op = (
        torch.ops.aten._weight_int4pack_mm_for_cpu
        if weight.kernel == "int4-cpu"
        else torch.ops.aten._weight_int4pack_mm
    )
    out = op(rows, weight.packed, weight.group, weight.scales_and_zeros)
    return out.to(x.dtype).reshape(*x.shape[:-1], weight.out_features)


@dataclass(eq=False)
class HalfWeight:
    """An fp32 linear's weight held as its exact fp16 copy ``[N, K]`` for ``youri_f16_matmul``."""

    half: torch.Tensor
    out_features: int


def half_weight(weight: torch.Tensor) -> HalfWeight | None:
    """The fp16 copy of a 2-D fp32 CPU weight whose every value is exactly an fp16 (a GPTQ twin's LM head, an
    fp16 checkpoint computed in fp32), for a matmul that reads half the bytes with the same products; None when a
    value is not, or youri's kernel library cannot be built here."""
    if weight.dtype != torch.float32 or weight.dim() != 2 or weight.device.type != "cpu":
        return None
    if weight.shape[1] % 8 or avx2_library()[0] is None:
        return None
    half = weight.detach().to(torch.float16)
    if not torch.equal(half.float(), weight.detach()):
        return None
    return HalfWeight(half.contiguous(), weight.shape[0])


def half_matmul(x: torch.Tensor, weight: HalfWeight) -> torch.Tensor:
    """``x @ W.T`` for ``x [..., K]`` with W's fp16 copy, in fp32 (fp32 products and sums)."""
    function, half, n = avx2_library()[0].youri_f16_matmul, weight.half.data_ptr(), weight.out_features
    return _through_c(
        x, n, lambda rows, out: function(rows.data_ptr(), *rows.shape, half, n, out, torch.get_num_threads())
    )


def _through_c(x: torch.Tensor, out_features: int, call: Callable[[torch.Tensor, int], None]) -> torch.Tensor:
    """``x [..., K]`` as contiguous fp32 rows, ``call(rows, output pointer)`` into a new ``[rows, out_features]``
    fp32 tensor, returned in ``x``'s shape and dtype: the wrapping both of youri's C matmuls need."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.dtype != torch.float32 or not rows.is_contiguous():
        rows = rows.to(torch.float32).contiguous()
    out = torch.empty(rows.shape[0], out_features)
    call(rows, out.data_ptr())
    out = out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)
    return out if x.dtype == torch.float32 else out.to(x.dtype)
