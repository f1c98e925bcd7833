"""Named JP-8 presets: the published jp-stable harness runs, each a task list with versions, shots and
generation rule, so that ``youri eval`` scores a model the way its peers were scored.

Every pinned preset copies one ``models/*/harness.sh`` of Stability-AI/lm-evaluation-harness, branch
``jp-stable`` (commit ``effdbea``), task for task: the task keys of its ``--tasks``, the shots of its
``--num_fewshot`` and its ``--model`` wrapper (``hf-causal`` or ``hf-causal-experimental``, see
``youri.eval.generation``). ``ja8`` is the harness's own suite file (``lm_eval/suites/configs/ja8.conf``),
whose prompt version is chosen per model kind (or by ``--prompt_version``).

``youri eval`` picks the preset from the model kind through ``KIND_PRESETS``, the one table that maps
model kinds to presets.
"""

from __future__ import annotations

from dataclasses import dataclass

from youri.config import ConfigError
from youri.eval.tasks import JP8

GENERATION_RULES = ("hf-causal", "hf-causal-experimental")
JA8_NAMES = tuple(t.name for t in JP8)  # jcommonsenseqa, jnli, marc_ja, jsquad, jaqket_v2, xlsum_ja, xwinograd_ja, mgsm
JA8_SHOTS = tuple(t.shots for t in JP8)  # (3, 3, 3, 2, 1, 1, 0, 5): each task definition's standard shots


@dataclass(frozen=True)
class Preset:
    """One published run: task keys (or bare names for ``ja8``), their shots and the generation rule."""

    name: str
    tasks: tuple[str, ...]
    shots: tuple[int, ...]
    generation: str
    mirrors: str  # the harness file(s) this preset copies, at jp-stable effdbea

    def shots_by_name(self) -> dict[str, int]:
        return {spec.split("-")[0]: n for spec, n in zip(self.tasks, self.shots)}

    def spec_for(self, name: str) -> str | None:
        """The preset's task key for a bare task name, if the preset has that task."""
        return next((spec for spec in self.tasks if spec.split("-")[0] == name), None)

    @property
    def pinned(self) -> bool:
        """Every task names its versions (``ja8`` leaves the prompt version to the model kind)."""
        return all("-" in spec or spec == "xwinograd_ja" for spec in self.tasks)

    def record(self) -> dict:
        return {
            "name": self.name,
            "generation": self.generation,
            "mirrors": self.mirrors,
            "tasks": dict(zip(self.tasks, self.shots)),
        }


def _eight(prompt: str, *, jaqket: str = "0.1", mgsm: str = "") -> tuple[str, ...]:
    """The harness.sh task list of one prompt version (JNLI 1.1 and JAQKET v2 0.1: the 2023 code)."""
    return (
        f"jcommonsenseqa-1.1-{prompt}",
        f"jnli-1.1-{prompt}",
        f"marc_ja-1.1-{prompt}",
        f"jsquad-1.1-{prompt}",
        f"jaqket_v2-{jaqket}-{prompt}",
        f"xlsum_ja-1.0-{prompt}",
        "xwinograd_ja",
        mgsm or f"mgsm-1.0-{prompt}",
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # rinna's base-model runs: 0.2 (Fintan) prompts; the bare `xlsum_ja` and `mgsm` of the harness.sh
        # resolve to their base classes, 0.0.
        Preset(
            "rinna",
            (*_eight("0.2")[:5], "xlsum_ja-1.0-0.0", "xwinograd_ja", "mgsm-1.0-0.0"),
            JA8_SHOTS,
            "hf-causal",
            "models/rinna/rinna-japanese-gpt-neox-3.6b/harness.sh (same list and wrapper: "
            "rinna-bilingual-gpt-neox-4b, rinna-japanese-gpt-1b, stabilityai-japanese-stablelm-base-alpha-7b)",
        ),
        # The Alpaca-ja (0.3) run of the instruction-tuned peers.
        Preset(
            "ja-alpaca",
            _eight("0.3"),
            JA8_SHOTS,
            "hf-causal",
            "models/stabilityai/stabilityai-japanese-stablelm-instruct-alpha-7b/harness.sh "
            "(same list: community/rinna-instruct-1b_0.1.0, community/cyberagent-open-calm-instruct-3b_1.3.0)",
        ),
        # The Llama-2-7B row (42.96) of the leaderboard and of rinna's table: the same 0.3 run, but with
        # the hf-causal-experimental wrapper and MGSM's 0.3 prompt as it was before 5a857e3.
        Preset(
            "llama2-7b",
            _eight("0.3", mgsm="mgsm-1.0-0.3-d4bdbfa"),
            JA8_SHOTS,
            "hf-causal-experimental",
            "models/llama2/llama2-7b/harness.sh (same list: llama2-7b-chat, llama2-13b, llama2-13b-chat)",
        ),
        # rinna's instruction models with the <NL> prompt (0.4).
        Preset(
            "rinna-sft",
            _eight("0.4"),
            JA8_SHOTS,
            "hf-causal",
            "models/rinna/rinna-japanese-gpt-neox-3.6b-instruction-sft/harness.sh "
            "(same list: -instruction-sft-v2, -instruction-ppo)",
        ),
        # rinna's bilingual instruction models: the ユーザー:/システム: prompt with newlines (0.5).
        Preset(
            "rinna-bilingual",
            _eight("0.5"),
            JA8_SHOTS,
            "hf-causal",
            "models/rinna/rinna-bilingual-gpt-neox-4b-instruction-ppo/harness.sh (same list: -instruction-sft)",
        ),
        # The harness's suite file (JNLI 1.3, JAQKET v2 0.2); scripts/run_suite.py defaults to hf-causal-experimental.
        Preset(
            "ja8",
            JA8_NAMES,
            JA8_SHOTS,
            "hf-causal-experimental",
            "lm_eval/suites/configs/ja8.conf with scripts/run_suite.py",
        ),
    )
}

# The one table from model kind to preset: a base model is scored as rinna scored its base models, an
# instruction model (Alpaca-ja SFT format) with the 0.3 run, a chat model (ユーザー:/システム:) with 0.5.
KIND_PRESETS = {"base": "rinna", "instruction": "ja-alpaca", "chat": "rinna-bilingual"}


CUSTOM = "custom"
"""The preset name a run records when its task keys or shots are not those of the preset it started from."""


def run_record(preset: Preset, ran: list[tuple[str, int]], expected: list[tuple[str, int]]) -> dict:
    """What ``metrics.json`` says about the preset: the preset's record when the run's ``(task key, shots)``
    are exactly the preset's, else ``{"name": "custom", "from": <the preset's record>, "changes": [...]}`` --
    a run with other prompt versions, shots or tasks is never passed off as the published run."""
    if ran == expected:
        return preset.record()
    want, got = dict(expected), dict(ran)
    changes = [
        f"{key}: {shots} shots instead of {want[key]}" for key, shots in ran if key in want and want[key] != shots
    ]
    changes += [f"added {key}" for key in got if key not in want]
    changes += [f"dropped {key}" for key in want if key not in got]
    if not changes:
        changes = ["task order differs"]
    return {"name": CUSTOM, "from": preset.record(), "changes": changes}


def resolve(name: str, model_kind: str, prompt_version: str = "") -> Preset:
    """The preset ``name`` (``auto``: the model kind's, or ``ja8`` when a prompt version is forced)."""
    if name == "auto":
        if prompt_version:
            return PRESETS["ja8"]
        if model_kind not in KIND_PRESETS:
            raise ConfigError(f"unknown model kind '{model_kind}'; choose {', '.join(KIND_PRESETS)}")
        return PRESETS[KIND_PRESETS[model_kind]]
    if name not in PRESETS:
        raise ConfigError(f"eval.preset: unknown preset '{name}'; choose auto or {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if prompt_version and preset.pinned:
        raise ConfigError(
            f"eval.prompt_version applies to bare task names; preset '{name}' pins every task's "
            "prompt version (use --preset ja8 with --prompt_version, or name the task with its "
            "version, e.g. jnli-1.1-0.3)"
        )
    return preset
