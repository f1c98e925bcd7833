"""Running the whole family.

- ``layout``   — the run folder: one sub-folder per stage, the model variants.
- ``pipeline`` — the ``youri pipeline`` stage: every stage from one recipe, skipping unchanged ones.
- ``report``   — the ``youri report`` stage: the family's report card.
- ``card``     — hub-ready model cards for each stage folder.
"""
