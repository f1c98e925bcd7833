"""Training: one linear loop shared by every stage that updates weights.

- ``trainer``     — the loop (AdamW, warmup + cosine, accumulation, logging, exact resume).
- ``losses``      — the one token loss (response masks, global normalisation).
- ``checkpoint``  — atomic distributed checkpoints and resume.
- ``distributed`` — ``init_distributed`` and FSDP2 wrapping, in one place.
- ``estimate``    — parameter, FLOP and memory arithmetic (MFU, ``--dry_run`` plans).
- ``batches``     — batches from token shards and held-out perplexity rows.
- Stages: ``init_base`` (``youri init``), ``pretrain`` (``youri pretrain``), ``sft`` (``youri sft``).
"""
