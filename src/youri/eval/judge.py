"""LLM-as-a-judge single-answer grading (FastChat's ``llm_judge``) through any OpenAI-compatible endpoint.

The grading prompts are the published ones, copied unchanged into ``judge_prompts/`` (see its README:
FastChat's ``judge_prompts.jsonl``, the Japanese pair of Stability AI's japanese-mt-bench fork, and
ku-nlp's ja-vicuna-qa-benchmark prompts). A judgment is one ``POST {judge_url}/chat/completions``
(system prompt + the filled template, ``temperature 0``, ``max_tokens 2048``, as FastChat asks); the
rating is the first ``[[N]]`` of the reply, by the reference implementation's patterns.

Cache: one JSON file per judgment under ``cache_dir``, keyed by the judge model and prompt, the question,
the turn and the whole filled prompt (question, answers and references), so a rerun of the same answers
makes no call. Replies that carry no rating are cached too (a temperature-0 judge says the same again)
and counted as *unparsable*; a request that fails (network, HTTP error, a body that is not a chat
completion) is counted as *failed* and not cached, so the next run asks again.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from youri.config import ConfigError
from youri.io import atomic_write_json, iter_jsonl

PROMPT_DIR = Path(__file__).resolve().parent / "judge_prompts"
# FastChat common.py: one_score_pattern, then its backup; ku-nlp common.py: [[N]], [[rating:N]], [[rating: N]].
FASTCHAT_PATTERNS = (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]")
KU_NLP_PATTERNS = (r"\[\[(\d+\.?\d*)]]", r"\[\[rating:(\d+)]]", r"\[\[rating: (\d+)]]")
RETRY_SLEEP = 2.0  # seconds before the first retry; doubled each time, at most 30 s
JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS = 0, 2048  # FastChat's and ku-nlp's judge settings


@dataclass(frozen=True)
class PromptSet:
    """Which published prompt grades which (turn, with reference) case, and how its rating is read."""

    name: str
    files: dict[str, str]  # source label -> file in judge_prompts/
    prompts: dict[tuple[int, bool], tuple[str, str]]  # (turn, needs reference) -> (source label, prompt name)
    patterns: tuple[str, ...]

    def template(self, turn: int, reference: bool) -> dict[str, Any]:
        source, name = self.prompts[(turn, reference)]
        return _load(self.files[source])[name]


FASTCHAT = {
    (1, False): ("fastchat", "single-v1"),
    (1, True): ("fastchat", "single-math-v1"),
    (2, False): ("fastchat", "single-v1-multi-turn"),
    (2, True): ("fastchat", "single-math-v1-multi-turn"),
}
PROMPT_SETS = {
    "fastchat": PromptSet("fastchat", {"fastchat": "fastchat.jsonl"}, FASTCHAT, FASTCHAT_PATTERNS),
    # Stability's fork grades turn 1 in Japanese; it ships no turn-2 prompts, so turn 2 keeps FastChat's.
    "stability-ja": PromptSet(
        "stability-ja",
        {"fastchat": "fastchat.jsonl", "ja": "fastchat-ja.jsonl"},
        {**FASTCHAT, (1, False): ("ja", "single-v1"), (1, True): ("ja", "single-math-v1")},
        FASTCHAT_PATTERNS,
    ),
    "ku-nlp": PromptSet(
        "ku-nlp",
        {"ku-nlp": "ja-vicuna-qa.jsonl"},
        {(1, False): ("ku-nlp", "single"), (1, True): ("ku-nlp", "single-math")},
        KU_NLP_PATTERNS,
    ),
}


def _load(file: str) -> dict[str, dict[str, Any]]:
    return {record["name"]: record for _, record in iter_jsonl(PROMPT_DIR / file)}


def parse_rating(judgment: str, patterns: tuple[str, ...]) -> float | None:
    """The rating the judge wrote (the first pattern that matches, as the reference does), else None."""
    for pattern in patterns:
        match = re.search(pattern, judgment)
        if match:
            return float(ast.literal_eval(match.group(1)))
    return None


def fill(template: dict[str, Any], questions: list[str], answers: list[str], references: list[str] | None) -> str:
    """The judge's user message: turn 1 fills {question}/{answer}, turn 2 the numbered fields of both turns."""
    turn = len(answers)
    fields: dict[str, str] = {}
    if references:
        fields.update({f"ref_answer_{i + 1}": r for i, r in enumerate(references[:turn])})
    if turn == 1:
        fields.update(question=questions[0], answer=answers[0])
    else:
        fields.update({f"question_{i + 1}": q for i, q in enumerate(questions[:turn])})
        fields.update({f"answer_{i + 1}": a for i, a in enumerate(answers)})
    return template["prompt_template"].format(**fields)


@dataclass
class Judgment:
    judgment: str | None  # the judge's text (None: the request failed)
    rating: float | None  # None: failed or unparsable
    cached: bool = False
    error: str = ""


class Judge:
    """One judge model behind an OpenAI-compatible ``/v1`` URL, with the on-disk judgment cache."""

    def __init__(
        self, url: str, model: str, *, key: str = "", cache_dir: str | Path, retries: int = 3, timeout: float = 300
    ):
        if not url or not model:
            raise ConfigError(
                "eval: a chat suite needs a judge: --judge_url (an OpenAI-compatible /v1) and --judge_model"
            )
        self.url = url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model, self.key, self.retries, self.timeout = model, key, retries, timeout
        self.cache_dir = Path(cache_dir)
        self.calls = 0  # HTTP requests made (retries included): what the judge bills
        self._lock = threading.Lock()

    def cache_key(self, prompt_name: str, question_id: Any, turn: int, system: str, user: str) -> str:
        blob = json.dumps([self.model, prompt_name, str(question_id), turn, system, user], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, template: dict[str, Any], question_id: Any, turn: int, user: str, patterns) -> Judgment:
        system = template.get("system_prompt", "")
        key = self.cache_key(template["name"], question_id, turn, system, user)
        path = self.cache_dir / key[:2] / f"{key}.json"
        if path.is_file():
            text = json.loads(path.read_text(encoding="utf-8"))["judgment"]
            return Judgment(text, parse_rating(text, patterns), cached=True)
        try:
            text = self._ask(system, user)
        except JudgeRequestError as err:
            return Judgment(None, None, error=str(err))
        atomic_write_json(
            path,
            {
                "judge_model": self.model,
                "prompt": template["name"],
                "question_id": question_id,
                "turn": turn,
                "judgment": text,
            },
        )
        return Judgment(text, parse_rating(text, patterns))

    def _ask(self, system: str, user: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": JUDGE_TEMPERATURE,
            "max_tokens": JUDGE_MAX_TOKENS,
            "n": 1,
        }
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(RETRY_SLEEP * 2 ** (attempt - 1), 30.0))
            with self._lock:
                self.calls += 1
            request = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _content(json.loads(response.read().decode("utf-8")))
            except urllib.error.HTTPError as err:
                error = f"HTTP {err.code} from {self.url}"
                if err.code in (401, 403):
                    raise JudgeRequestError(error + " (is the key's environment variable set?)") from err
                if err.code not in (408, 409, 429) and err.code < 500:
                    raise JudgeRequestError(error) from err
            except (urllib.error.URLError, OSError, json.JSONDecodeError, MalformedReply) as err:
                error = f"{type(err).__name__}: {err} ({self.url})"
        raise JudgeRequestError(error)


class JudgeRequestError(RuntimeError):
    """A judge request that got no usable reply (after the retries)."""


class MalformedReply(ValueError):
    """A judge reply that is not an OpenAI chat completion."""


def _content(reply: Any) -> str:
    try:
        choice = reply["choices"][0]
        if choice.get("finish_reason") == "content_filter":  # Stability's fork: an empty judgment, not an error
            return ""
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise MalformedReply(f"not a chat completion: {str(reply)[:200]}") from err
    if not isinstance(content, str):
        raise MalformedReply(f"message content is {type(content).__name__}, not text")
    return content
