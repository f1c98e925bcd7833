"""Loading a stage folder for inference and encoding conversations in its prompt format.

Shared by ``youri chat`` and ``youri serve``: the model and tokenizer come from ``youri.model`` (fp and
GPTQ folders alike), prompts from ``youri.prompts`` (the one renderer), sampling from ``youri.serve.engine``.
"""

from __future__ import annotations

import torch

from youri.config import ConfigError
from youri.model import load_model, load_tokenizer
from youri.prompts import SETTING, SYSTEM, Turn, chat_template, encode_prompt, turns_to_instruction
from youri.serve.engine import GenerationError, SamplingParams


class ChatError(ConfigError):
    """A chat setting, file or conversation that cannot be used."""


def load_for_inference(path: str, *, device: str = "", dtype: str = "auto"):
    """``(model, tokenizer)`` ready to generate; fp and GPTQ folders alike (``youri.model``)."""
    if not path:
        raise ChatError("give the model folder: youri chat MODEL")
    if dtype not in {"auto", "float32", "bfloat16", "float16"}:
        raise ChatError(f"dtype: {dtype!r} is not one of auto, float32, bfloat16, float16")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(path, dtype=None if dtype == "auto" else getattr(torch, dtype), device=device)
    return model.eval(), load_tokenizer(path)


def sampling_params(cfg) -> SamplingParams:
    params = SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        repetition_penalty=cfg.repetition_penalty,
        seed=cfg.seed,
    )
    try:
        return params.validate()
    except GenerationError as err:
        raise ChatError(str(err)) from err


def prompt_kind(tokenizer) -> str:
    """``instruction`` when the folder carries youri's instruction template, ``template`` when it carries
    another one (the base's own, e.g. after ``youri sft --kind template``), else ``chat``."""
    if tokenizer.chat_template == chat_template("instruction"):
        return "instruction"
    return "chat" if tokenizer.chat_template in (None, "", chat_template("chat")) else "template"


def encode_turns(turns: list[Turn], tokenizer, kind: str = "chat") -> list[int]:
    """Prompt ids for a conversation, through THE renderer (an instruction model takes one request)."""
    if kind == "instruction":
        return encode_prompt(turns_to_instruction(turns), tokenizer)
    return encode_prompt(turns, tokenizer, base_template=kind == "template")


def fit_turns(turns: list[Turn], tokenizer, budget: int, kind: str = "chat") -> list[Turn]:
    """Drop the oldest turns after the 設定 lines until the prompt fits in ``budget`` tokens.

    A dropped ユーザー turn takes its システム reply with it, so the history never starts mid-exchange.
    """
    head = [t for t in turns[: _setting_count(turns)]]
    body = list(turns[len(head) :])
    while len(encode_turns(head + body, tokenizer, kind)) > budget:
        if len(body) <= 1:
            raise ChatError(
                f"the message alone needs more than {budget} tokens of context "
                "(shorten it, the persona, or --max_new_tokens)"
            )
        body.pop(0)
        while len(body) > 1 and body[0].speaker == SYSTEM:
            body.pop(0)
    return head + body


def _setting_count(turns: list[Turn]) -> int:
    count = 0
    while count < len(turns) and turns[count].speaker == SETTING:
        count += 1
    return count
