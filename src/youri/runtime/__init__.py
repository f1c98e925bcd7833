"""The GPTQ runtime, below ``youri.model``: what loading a GPTQ twin needs, whichever stage loads it.

- ``gptq_format``  — the GPTQ v1 tensor format: shape checks, packer/unpacker, dequantisation, a folder's settings.
- ``kernels``      — int4 weight-only matmuls: youri's AVX2 and AVX-512 kernels (``int4_avx2.c``, built on first use,
  with ``decode_step.c``: a whole decode step in one call) and PyTorch's.
- ``quant_linear`` — ``QuantLinear`` (a packed GPTQ layer) and the loader of a GPTQ folder.
"""
