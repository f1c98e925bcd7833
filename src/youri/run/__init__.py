"""Running the whole family.

- ``layout``   — the run folder: one sub-folder per stage, the model variants.
- ``pipeline`` — the ``youri pipeline`` stage: every stage from one recipe, skipping unchanged ones.
- ``report``   — the ``youri report`` stage: the family's report card.
- ``figures``  — the report card's figures of the release's claims (per-task bars, the cost of 4 bits).
- ``card``     — hub-ready model cards for each stage folder.
"""
