"""youri.serve.decoder: the static-cache batch gives Hugging Face's logits for every row, through growth,
merges of newcomers, dropped rows and compaction; the DynamicHF fallback gives the same."""

from __future__ import annotations

import pytest
import torch

from youri.serve.decoder import DynamicHF, StaticLlama, make_batch
from youri.testing import random_llama


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU (see tests/test_serve.py)
    return random_llama(300, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).eval()


def _reference(model, ids: list[int]) -> torch.Tensor:
    """The last-token logits of Hugging Face's own forward over the whole sequence, alone (no padding)."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1]


def _check(model, batch, sequences: list[list[int]], logits: torch.Tensor, rows) -> None:
    for logits_row, row in enumerate(rows):
        torch.testing.assert_close(logits[logits_row], _reference(model, sequences[row]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", [StaticLlama, DynamicHF])
def test_every_row_gets_hf_logits_through_merges_drops_and_growth(model, kind):
    gen = torch.Generator().manual_seed(0)
    prompt = lambda n: torch.randint(3, 300, (n,), generator=gen).tolist()  # noqa: E731
    # A 4-column, 1-row start: the batch must grow in both directions and compact its left padding.
    batch = StaticLlama(model, 256, rows=1, columns=4) if kind is StaticLlama else DynamicHF(model)
    sequences: list[list[int]] = []

    def admit(*lengths):
        new = [prompt(n) for n in lengths]
        with torch.inference_mode():
            logits = batch.prefill(new, 0)
        sequences.extend(new)
        _check(model, batch, sequences, logits, range(len(sequences) - len(new), len(sequences)))

    def decode(steps):
        for _ in range(steps):
            tokens = torch.randint(3, 300, (len(sequences),), generator=gen)
            for seq, token in zip(sequences, tokens.tolist()):
                seq.append(token)
            with torch.inference_mode():
                logits = batch.decode(tokens)
            _check(model, batch, sequences, logits, range(len(sequences)))

    admit(5, 9)  # two prompts of different lengths, one forward
    decode(3)
    admit(3)  # shorter than the running rows: placed in their columns
    decode(2)
    admit(30)  # longer: the running rows move right
    decode(2)
    batch.keep([1, 2])  # the first and the longest row leave: every column left of the others is padding
    sequences[:] = [sequences[1], sequences[2]]
    decode(40)  # past the capacity: that padding is compacted away (then the buffers grow)
    if kind is StaticLlama:
        assert batch.low == 0 and batch.valid.shape[0] == 4  # rows grew only as far as needed
    batch.keep([])
    assert batch.rows == 0
    sequences.clear()
    admit(4)
    decode(2)


def test_make_batch_takes_the_lean_path_for_llama_and_hf_otherwise(model):
    assert isinstance(make_batch(model, 64), StaticLlama)
    other = random_llama(300, hidden_size=64)
    other.config.model_type = "not-llama"
    assert isinstance(make_batch(other, 64), DynamicHF)
