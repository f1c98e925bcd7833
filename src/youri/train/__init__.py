"""Training: the stages that make a model's weights -- one linear loop shared by every stage that trains,
and weight arithmetic between trained models (merge), which sits in the same chain (pretrain -> merge -> prefer).

- ``trainer``     — the loop (AdamW, warmup + cosine, accumulation, logging, exact resume).
- ``losses``      — the one home of the training losses: token loss (response masks, global normalisation)
                    and the preference losses (DPO sigmoid, ORPO, SimPO), as the loop's objectives.
- ``checkpoint``  — atomic distributed checkpoints and resume.
- ``distributed`` — ``init_distributed`` and FSDP2 wrapping, in one place.
- ``estimate``    — parameter, FLOP and memory arithmetic (MFU, ``--dry_run`` plans).
- ``batches``     — batches from token shards, SFT rows and preference pairs; held-out perplexity rows.
- ``finetune``    — what sft and prefer share: the LoRA option, the chat model's generation config.
- Stages: ``init_base`` (``youri init``), ``pretrain`` (``youri pretrain``), ``sft`` (``youri sft``),
  ``merge`` (``youri merge``: chat vector / task arithmetic, linear; no gradient), ``prefer`` (``youri prefer``).
"""
