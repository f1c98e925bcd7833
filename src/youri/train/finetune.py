"""What the fine-tuning stages (``youri sft``, ``youri prefer``) share: the LoRA option and the generation
config of a chat/instruction model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from youri.config import ConfigError, PositiveFloat, PositiveInt, Range

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train LoRA adapters (peft) instead of all weights; merged into plain weights on save."""
    r: PositiveInt = 16
    """Adapter rank."""
    alpha: PositiveFloat = 32.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: Annotated[float, Range(min=0, max=1, max_open=True)] = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Linear layers that get adapters."""


def add_lora(model, lora: LoraConfig):
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError as err:
        raise ConfigError("lora.enabled needs peft: pip install 'youri[lora]'") from err
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def set_generation_config(model, tokenizer, stops: list[int] | None = None) -> None:
    """Generation stops at ``</s>`` (the end of every reply), or at ``stops`` (with the base's template: its
    end-of-turn token and EOS, e.g. Llama 3's ``<|eot_id|>`` and ``<|end_of_text|>``), and pads with EOS when
    there is no pad."""
    gen = model.generation_config
    stops = stops or [tokenizer.eos_token_id]
    gen.eos_token_id = stops[0] if len(stops) == 1 else stops
    gen.bos_token_id = tokenizer.bos_token_id
    gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
