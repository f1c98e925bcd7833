"""Quantization: the GPTQ 4-bit twins and the GGUF files for llama.cpp.

- ``gptq``        — GPTQ math: the quantizer, the scale search, round-to-nearest, twin sizes (the tensor format,
  ``QuantLinear`` and the int4 kernels are ``youri.runtime``, below ``youri.model``).
- ``quantize``    — the ``youri quantize`` stage: calibrate on the model's own data, quantize layer by layer.
- ``gguf_writer`` — a model of any ``youri.families`` row as a GGUF file (llama.cpp architecture, metadata,
  tensors) via the ``gguf`` package.
- ``gguf_vocab``  — its tokenizer as llama.cpp runs it: SentencePiece, byte-level BPE (merges, pre-tokenizer) or
  Gemma's BPE.
- ``llamacpp``    — llama.cpp itself (node-llama-cpp's prebuilt binaries) tokenising and scoring GGUF files.
- ``export``      — the ``youri export`` stage: GGUF f16/bf16/q8_0/q4_0 with its llama.cpp KL and an Ollama Modelfile.
"""
