"""Shared test fixtures: the read-only ../shared data (skipped with a reason when absent)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# CI clones the repo next to a copy of shared/, exactly as in the development checkout.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the calling test with a clear reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def llama2_tokenizer_dir() -> Path:
    return shared_path("llama2-tokenizer")


@functools.lru_cache(maxsize=None)
def shared_tokenizer(name: str):
    """A real tokenizer of ../shared/data (``llama2``, ``llama3``, ``qwen3``, ``gemma3``), loaded once per session
    (Gemma 3's 262k-token tokenizer takes seconds); callers must not modify it."""
    from youri.model import load_tokenizer

    return load_tokenizer(shared_path(f"{name}-tokenizer"))
