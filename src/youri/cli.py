"""The ``youri`` command: one subcommand per stage, each wired to a library ``run(cfg)``.

The CLI only wires: it loads the recipe section, applies ``--field`` overrides, builds the stage's
config dataclass and calls the stage's ``run``. Stage modules are imported lazily so that
``youri --help`` stays fast.

To add a stage, append a ``Command`` to ``COMMANDS``; its module must define ``Config`` (a dataclass)
and ``run(cfg, *, overwrite: bool = False)``.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

import youri
from youri import __version__
from youri.config import ConfigError, add_config_flags, build_config, config_to_dict, flag_overrides, load_recipe
from youri.io import CORRUPT_FILE_ERRORS

INTERRUPTED = 130  # the shell's status for a process ended by SIGINT (128 + 2)


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    section: str = ""  # default recipe section; the command name when empty
    recipe_positional: bool = False  # the command's positional argument is the recipe file itself


COMMANDS: list[Command] = [
    Command(
        "data", "youri.data.corpus", "corpus pipeline: normalise, filter, dedup, mix and pack text into token shards"
    ),
    Command(
        "init",
        "youri.train.init_base",
        "tiny English base model (SentencePiece BPE tokenizer + Llama) from English text",
    ),
    Command(
        "pretrain", "youri.train.pretrain", "continued pretraining on youri data token shards (FSDP2, exact resume)"
    ),
    Command(
        "sft",
        "youri.train.sft",
        "instruction or multi-turn chat SFT (one prompt renderer, packing, optional LoRA)",
        section="sft_instruction",
    ),
    Command(
        "merge",
        "youri.train.merge",
        "chat vector / task arithmetic or linear merge of model folders, streamed tensor by tensor (= mergekit)",
    ),
    Command(
        "prefer",
        "youri.train.prefer",
        "preference tuning: DPO (cached reference log-probs), ORPO, SimPO on the shared loop (= TRL's losses)",
    ),
    Command("vocab", "youri.data.vocab", "extend a Llama tokenizer with Japanese pieces and resize the model"),
    Command(
        "quantize", "youri.quant.quantize", "GPTQ 4-bit twin (GPTQ v1 checkpoint) of a model folder, with its cost"
    ),
    Command("export", "youri.quant.export", "GGUF file of a model folder for llama.cpp / Ollama (f16 ... q4_0)"),
    Command(
        "eval",
        "youri.eval.evaluate",
        "JP-8 evaluation: the Stability jp-stable protocol, byte-exact and offline (lm-eval)",
    ),
    Command(
        "chat",
        "youri.serve.chat",
        "talk to a chat model in the terminal (persona, streaming, /save /load; stdin one-shot)",
    ),
    Command("serve", "youri.serve.server", "OpenAI-compatible server with dynamic batching and a web chat page"),
    Command(
        "pipeline",
        "youri.run.pipeline",
        "the whole family from one recipe: data → pretrain → sft → quantize → eval → report",
        recipe_positional=True,
    ),
    Command(
        "report", "youri.run.report", "the family's report card (JP-8, perplexity, size, speed; Markdown, HTML, plots)"
    ),
]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while importing or parsing; a running stage answers in _run_command
        print("youri: interrupted", file=sys.stderr)
        return INTERRUPTED


def _main(argv: list[str]) -> int:
    commands = {c.name: c for c in COMMANDS}
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in commands:
        top = _top_parser()
        if argv and argv[0] not in {"-h", "--help", "--version"} and not argv[0].startswith("-"):
            top.error(f"unknown command '{argv[0]}'; choose from: {', '.join(commands)}")
        top.parse_args(argv or ["--help"])
        return 0
    command = commands[argv[0]]
    module = importlib.import_module(command.module)
    parser = _command_parser(command, module)
    args, unknown = parser.parse_known_args(argv[1:])
    if unknown:
        parser.error(_unknown_flag_message(parser, unknown))
    return _run_command(command, module, args)


def _run_command(command: Command, module, args: argparse.Namespace) -> int:
    """Build the config and run the stage. Every user error -- a ValueError (ConfigError, DataError, ...), an
    OSError (a missing or unwritable path) or a truncated/corrupted file (``youri.io.CORRUPT_FILE_ERRORS``:
    safetensors, gzip/zlib, EOF; the readers name the file) -- is one line on stderr and exit status 2;
    Ctrl-C is one line and 130. ``YOURI_DEBUG=1`` shows the traceback instead; a stage folder's
    ``.partial/error.log`` keeps it."""
    cfg = None
    try:
        section = args.section or command.section or command.name
        overrides = flag_overrides(args)
        # ``youri pipeline RECIPE``: a positional recipe field also names the file to read the section from.
        recipe_path = args.recipe or (overrides.get("recipe") if command.recipe_positional else None)
        recipe = load_recipe(recipe_path).get(section) if recipe_path else None
        if args.recipe and recipe is None:
            raise ConfigError(f"{args.recipe}: no section '{section}' (pass --section NAME)")
        cfg = build_config(module.Config, recipe, overrides, where=section)
        if args.print_config:
            print(yaml.safe_dump({section: config_to_dict(cfg)}, allow_unicode=True, sort_keys=False))
            return 0
        module.run(cfg, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print(f"youri {command.name}: interrupted{_resume_hint(cfg)}", file=sys.stderr)
        return INTERRUPTED
    except (ValueError, OSError, *CORRUPT_FILE_ERRORS) as err:
        if os.environ.get("YOURI_DEBUG"):
            raise
        print(f"youri {command.name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _resume_hint(cfg) -> str:
    """Where an interrupted stage left its progress (stages resume from ``OUT.partial`` on the same command)."""
    out = getattr(cfg, "out", "")
    partial = Path(f"{out}.partial") if out else None
    return f"; progress is kept in {partial} (the same command resumes)" if partial and partial.is_dir() else ""


def _unknown_flag_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:

    flags = [opt for action in parser._actions for opt in action.option_strings]
    first = next((u.split("=")[0] for u in unknown if u.startswith("--")), unknown[0])
    close = difflib.get_close_matches(first, flags, n=1, cutoff=0.6)
    return f"unknown argument '{first}'" + (f"; did you mean '{close[0]}'?" if close else "")


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="youri",
        description=youri.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {c.name:<10} {c.help}" for c in COMMANDS)
        + "\n\nRun 'youri COMMAND --help' for a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"youri {__version__}")
    return parser


def _command_parser(command: Command, module) -> argparse.ArgumentParser:
    doc = (module.__doc__ or command.help).strip()
    parser = argparse.ArgumentParser(
        prog=f"youri {command.name}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", help="YAML recipe; the command reads its section (see --section)")
    parser.add_argument("--section", help=f"recipe section to read (default: {command.section or command.name})")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete output folder")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    add_config_flags(parser, module.Config)
    return parser
