"""``youri chat MODEL``: talk to a youri chat (or instruction) model in the terminal.

Interactive, multi-turn, streaming; the persona/setting becomes the ``設定`` line of the chat format
(``youri.prompts`` renders every prompt, so a typed ``\\nシステム: ...`` can never forge a turn).
When the conversation outgrows the context window the oldest turns are dropped and ``設定`` stays.
With ``--once true`` or when stdin is not a terminal it answers stdin once (scripts, translation).

Tiny CPU::

    youri chat runs/demo/sft_chat --persona "あなたは猫のてんころです。" --temperature 0.7
    echo "Translate: おはようございます" | youri chat runs/demo/sft_chat --temperature 0

GPU (a 7B model, fp or GPTQ stage folder alike)::

    youri chat runs/youri-7b/sft_chat --device cuda --dtype bfloat16

Commands: ``/reset`` ``/prompt`` (show the rendered prompt) ``/save FILE`` ``/load FILE`` ``/exit``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from youri.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, Seed
from youri.io import DataError, atomic_write_text, read_text
from youri.prompts import SETTING, SYSTEM, USER, PromptError, Turn, messages_to_turns
from youri.serve.engine import Engine, GenerationError, SamplingParams, stream
from youri.serve.inference import ChatError, encode_turns, fit_turns, load_for_inference, prompt_kind, sampling_params


@dataclass
class Config:
    model: str = field(default="", metadata={"positional": True})
    """Model folder: a youri SFT stage folder (fp or GPTQ) or a local HF Llama checkpoint."""
    persona: str = ""
    """The setting/persona text (the 設定 line), e.g. "あなたは猫のてんころです。"."""
    persona_file: str = ""
    """A UTF-8 file whose text is the persona (instead of --persona)."""
    temperature: NonNegativeFloat = 0.7
    """Sampling temperature; 0 = greedy."""
    top_p: Annotated[float, Range(min=0, max=1, min_open=True)] = 0.9
    """Nucleus sampling: keep the most likely tokens whose mass reaches top_p (1 = off)."""
    top_k: NonNegativeInt = 0
    """Keep only the k most likely tokens (0 = off)."""
    repetition_penalty: PositiveFloat = 1.05
    """Divide the logits of tokens already in the context by this (1 = off)."""
    max_new_tokens: PositiveInt = 256
    """Most tokens per reply."""
    seed: Seed | None = None
    """Random seed for sampling (same seed + settings = same replies)."""
    once: bool = False
    """Answer stdin once and exit (also the behaviour when stdin is not a terminal)."""
    max_context: NonNegativeInt = 0
    """Context window in tokens (0 = the model's max_position_embeddings)."""
    device: str = ""
    """cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)."""
    dtype: str = "auto"
    """Weights dtype: auto (as saved), float32, bfloat16 or float16."""


# ----------------------------------------------------------------------------- conversation


class Conversation:
    """The persona, the turns so far, and how they become a prompt."""

    def __init__(self, tokenizer, persona: str, *, budget: int, kind: str = "chat"):
        self.tokenizer, self.persona, self.budget, self.kind = tokenizer, persona, budget, kind
        self.turns: list[Turn] = []

    def prompt_turns(self, user_text: str) -> list[Turn]:
        history = [] if self.kind == "instruction" else self.turns  # an instruction model has no history
        turns = ([Turn(SETTING, self.persona)] if self.persona else []) + history + [Turn(USER, user_text)]
        return fit_turns(turns, self.tokenizer, self.budget, self.kind)

    def prompt_ids(self, user_text: str) -> list[int]:
        return encode_turns(self.prompt_turns(user_text), self.tokenizer, self.kind)

    def add(self, user_text: str, reply: str) -> None:
        self.turns += [Turn(USER, user_text), Turn(SYSTEM, reply)]

    def messages(self) -> list[dict]:
        roles = {SETTING: "system", USER: "user", SYSTEM: "assistant"}
        return [{"role": roles[t.speaker], "content": t.text} for t in self.turns]

    def save(self, path: str) -> None:
        """Write the conversation; an existing file is replaced only when it is a saved conversation."""
        if Path(path).is_dir() or (Path(path).exists() and not _is_conversation(Path(path))):
            raise ChatError(f"{path} exists and is not a saved conversation; choose another file name")
        data = {"persona": self.persona, "messages": self.messages()}
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    def load(self, path: str) -> None:
        try:
            data = json.loads(read_text(path))
            turns = messages_to_turns(data["messages"], where=f"{path}: messages")
        except (OSError, DataError, json.JSONDecodeError, KeyError, TypeError, PromptError) as err:
            raise ChatError(f"{path}: not a saved conversation ({err})") from err
        self.persona = str(data.get("persona", self.persona))
        self.turns = [t for t in turns if t.speaker != SETTING]


def _is_conversation(path: Path) -> bool:
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError):  # DataError and JSONDecodeError are ValueErrors
        return False
    return isinstance(data, dict) and isinstance(data.get("messages"), list)


def read_persona(cfg: Config) -> str:
    if cfg.persona and cfg.persona_file:
        raise ChatError("give --persona or --persona_file, not both")
    if cfg.persona_file:
        try:
            return read_text(cfg.persona_file).strip()
        except (OSError, DataError) as err:
            raise ChatError(f"persona_file: cannot read {cfg.persona_file}: {err}") from err
    return cfg.persona


def run(cfg: Config, *, overwrite: bool = False) -> None:
    del overwrite  # chat writes no stage folder
    persona = read_persona(cfg)
    params = sampling_params(cfg)
    model, tokenizer = load_for_inference(cfg.model, device=cfg.device, dtype=cfg.dtype)
    engine = Engine(model, tokenizer, max_batch_size=1, max_context=cfg.max_context or None)
    print(engine.decoder_line, file=sys.stderr, flush=True)  # which forward generates, once
    if params.max_new_tokens >= engine.max_context:
        raise ChatError(
            f"max_new_tokens {params.max_new_tokens} leaves no room in the {engine.max_context}-token context"
        )
    conversation = Conversation(
        tokenizer, persona, budget=engine.max_context - params.max_new_tokens, kind=prompt_kind(tokenizer)
    )
    if cfg.once or not sys.stdin.isatty():
        text = sys.stdin.read().rstrip("\n")
        _reply(engine, conversation, text, params, sys.stdout)
        return
    _interactive(engine, conversation, params)


def _reply(engine: Engine, conversation: Conversation, text: str, params: SamplingParams, out) -> str:
    parts = []
    for delta in stream(engine.model, engine.tokenizer, conversation.prompt_ids(text), params, engine=engine):
        parts.append(delta)
        out.write(delta)
        out.flush()
    out.write("\n")
    reply = "".join(parts)
    conversation.add(text, reply)
    return reply


HELP = "/reset  /prompt  /save FILE  /load FILE  /exit   (anything else is your message)"


def _interactive(engine: Engine, conversation: Conversation, params: SamplingParams) -> None:
    print(f"youri chat -- {HELP}" + (f"\n設定: {conversation.persona}" if conversation.persona else ""))
    while True:
        try:
            line = input("ユーザー> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        command, _, argument = line.strip().partition(" ")
        try:
            if command in {"/exit", "/quit"}:
                return
            if command == "/reset":
                conversation.turns = []
                print("(conversation cleared; the persona stays)")
            elif command == "/prompt":
                print(engine.tokenizer.decode(conversation.prompt_ids(argument or "…")))
            elif command in {"/save", "/load"}:
                if not argument:
                    raise ChatError(f"{command} needs a file name")
                getattr(conversation, command[1:])(argument.strip())
                print(f"({command[1:]}d {argument.strip()})")
            elif command.startswith("/") and command[1:].isalpha():
                print(HELP)
            elif line.strip():
                sys.stdout.write("システム> ")
                _reply(engine, conversation, line, params, sys.stdout)
        except (ChatError, GenerationError, PromptError) as err:
            print(f"error: {err}")
