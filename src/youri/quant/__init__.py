"""Quantization: the GPTQ 4-bit twins.

- ``gptq``     — GPTQ math, the GPTQ v1 tensor format and the packed runtime that loads it.
- ``kernels``  — PyTorch's int4 weight-only matmuls (CPU, CUDA) that the packed runtime converts GPTQ layers for.
- ``quantize`` — the ``youri quantize`` stage: calibrate on the model's own data, quantize layer by layer.
"""
