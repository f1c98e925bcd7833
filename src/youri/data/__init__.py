"""Data: raw text to token shards (``youri data``), SFT record readers, vocabulary extension (``youri vocab``).

- ``corpus``   — the ``youri data`` stage: read, normalise, filter, dedup, mix and pack into shards.
- ``steps``    — its datatrove steps (readers, normaliser/filter, tokeniser + MinHash).
- ``filters``  — normalisation, quality filters and near-duplicate detection (pure functions).
- ``processes`` — keeps the datatrove executor's processes from outliving ``youri data`` (kill -9, Ctrl-C).
- ``shards``   — the packed token format between ``youri data`` and the training stages, and its progress log.
- ``rows``     — calibration and held-out token rows, found through a model's lineage (quantize, export).
- ``sft_data`` — SFT record readers (instruction, OpenAI messages, persona dialogues) into prompt turns.
- ``pref_data`` — preference pair readers ({prompt, chosen, rejected}, HH-RLHF, UltraFeedback) and encoding.
- ``vocab``    — the ``youri vocab`` stage: append Japanese SentencePiece pieces or BPE tokens, resize the model.
- ``bpe_vocab`` — byte-level BPE extension (Llama 3, Qwen2/3): merges learned over the base tokenisation, appended.
"""
