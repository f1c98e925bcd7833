"""The family table: one row per base, every row true to the transformers class it names."""

from __future__ import annotations

import importlib

import pytest
import transformers

from youri.families import FAMILIES, SUPPORTED_MODEL_TYPES, UnsupportedModelError, family_of, linear_shapes


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.model_type)
def test_each_row_names_a_real_transformers_decoder_layer(family):
    config = transformers.AutoConfig.for_model(family.model_type)
    module = importlib.import_module(type(config).__module__.replace("configuration_", "modeling_"))
    layer = getattr(module, family.decoder_layer)
    assert layer.__name__ == family.decoder_layer
    assert family_of(config) is family and family_of(config.to_dict()) is family


def test_an_unsupported_model_type_is_one_line_naming_the_supported_ones():
    with pytest.raises(UnsupportedModelError) as err:
        family_of({"model_type": "gpt2"}, "m/config.json")
    message = str(err.value)
    assert message.startswith("m/config.json: model_type 'gpt2' is not supported") and "\n" not in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)


def test_linear_shapes_follow_head_dim_and_grouped_kv():
    config = {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    config |= {"num_key_value_heads": 2, "head_dim": 32}
    shapes = linear_shapes(config)
    assert shapes["self_attn.q_proj"] == (64, 128) and shapes["self_attn.k_proj"] == (64, 64)
    assert shapes["self_attn.o_proj"] == (128, 64) and shapes["mlp.down_proj"] == (96, 64)
