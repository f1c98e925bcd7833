"""Judged chat suites (youri eval --suite ja-mt-bench / ja-vicuna-qa) against a fake judge on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import shared_path

from youri.config import ConfigError
from youri.eval import chatbench, judge
from youri.eval import evaluate as ev
from youri.io import iter_jsonl
from youri.prompts import (
    INPUT_HEADER,
    INSTRUCTION_HEADER,
    INSTRUCTION_INTRO,
    RESPONSE_HEADER,
    SYSTEM,
    USER,
    Instruction,
    Turn,
    encode_prompt,
    install_chat_template,
)
from youri.testing import char_tokenizer, http_server, save_random_llama, send_json

# (question, turn) -> what the fake judge answers: text, an HTTP status, a body that is no completion,
# or "flaky" (HTTP 500 once, then the text).
REPLIES = {
    ("q1", 1): "良い回答です。評価：[[8]]",
    ("q1", 2): "Rating: [[6]]",
    ("q2", 1): "I cannot rate this.",  # unparsable
    ("q2", 2): 500,  # failed (every attempt)
    ("q3", 1): "backup pattern [7.5]",
    ("q3", 2): {"not": "a completion"},  # failed: malformed body
    ("q4", 1): ("flaky", "[[9]]"),
    ("q4", 2): "[[10]] and later [[1]]",
}
QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["T1:q1 書いて", "T2:q1 もっと"]},
    {"question_id": 2, "category": "math", "turns": ["T1:q2 計算", "T2:q2 次"]},
    {"question_id": 3, "category": "roleplay", "turns": ["T1:q3 演じて", "T2:q3 続けて"]},
    {"question_id": 4, "category": "stem", "turns": ["T1:q4 説明", "T2:q4 詳しく"]},
]
REFERENCE = {"question_id": 2, "choices": [{"index": 0, "turns": ["REF-ONE", "REF-TWO"]}]}


class FakeJudge(BaseHTTPRequestHandler):
    requests: list[dict] = []
    seen: set = set()
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 -- http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = body["messages"][1]["content"]
        found = re.search(r"T2:(q\d)", user) or re.search(r"T1:(q\d)", user)
        key = (found.group(1), 2 if "T2:" in user else 1)
        with self.lock:
            self.requests.append({"key": key, "body": body, "auth": self.headers.get("Authorization")})
            first = key not in self.seen
            self.seen.add(key)
        reply = REPLIES[key]
        if isinstance(reply, tuple):
            if first:
                return self._send(500, {"error": "busy"})
            reply = reply[1]
        if isinstance(reply, int):
            return self._send(reply, {"error": "boom"})
        if isinstance(reply, dict):
            return self._send(200, reply)
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})

    def _send(self, status: int, payload: dict):
        send_json(self, status, payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_judge(monkeypatch):
    FakeJudge.requests, FakeJudge.seen = [], set()
    monkeypatch.setattr(judge, "RETRY_SLEEP", 0.0)
    with http_server(FakeJudge) as base:
        yield f"{base}/v1"


def _bench(tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "question.jsonl").write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS))
    (folder / "reference_answer_gpt-4.jsonl").write_text(json.dumps(REFERENCE) + "\n")
    return folder


def test_mt_bench_generates_judges_scores_and_caches(tmp_path, fake_judge, monkeypatch):
    bench = _bench(tmp_path)
    text = "".join(t for q in QUESTIONS for t in q["turns"]) + "あいうえお。"
    model = save_random_llama(tmp_path / "model", char_tokenizer(text), chat_template="chat")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    cfg = ev.Config(
        model=str(model),
        out=str(tmp_path / "mt"),
        suite="ja-mt-bench",
        bench_dir=str(bench),
        judge_url=fake_judge,
        judge_model="fake-judge",
        judge_key_env="MY_JUDGE_KEY",
        judge_cache=str(tmp_path / "cache"),
        judge_retries=1,
        max_new_tokens=4,
        batch_size="4",
    )
    metrics = ev.run(cfg)
    # ratings: turn 1 -> 8, unparsable, 7.5, 9 (after one 500); turn 2 -> 6, failed, failed, 10 (first [[N]])
    assert metrics["first_turn"] == pytest.approx((8 + 7.5 + 9) / 3)
    assert metrics["second_turn"] == pytest.approx((6 + 10) / 2)
    assert metrics["overall"] == pytest.approx((8 + 6 + 7.5 + 9 + 10) / 5)
    cats = metrics["categories"]
    assert cats["writing"]["score"] == pytest.approx(7.0) and cats["writing"]["n"] == 2
    assert cats["math"]["score"] is None and cats["math"]["n"] == 0
    assert cats["roleplay"] == {"score": 7.5, "turn_1": 7.5, "turn_2": None, "n": 1}
    assert cats["stem"]["turn_2"] == 10
    assert (metrics["n_judged"], metrics["n_judgments"], metrics["unparsable"], metrics["failed"]) == (5, 8, 1, 2)
    assert metrics["unparsable_items"] == [[2, 1]] and sorted(metrics["failed_items"]) == [[2, 2], [3, 2]]
    # 8 judgments; q2/q3 turn 2 twice (one retry each), q4 turn 1 twice (500 then the rating)
    assert metrics["judge"]["calls"] == 11 == len(FakeJudge.requests)
    first = FakeJudge.requests[0]
    assert first["auth"] == "Bearer sk-test" and first["body"]["model"] == "fake-judge"
    assert first["body"]["temperature"] == 0 and first["body"]["max_tokens"] == 2048
    math_turn2 = next(r["body"] for r in FakeJudge.requests if r["key"] == ("q2", 2))
    assert "REF-ONE" in math_turn2["messages"][1]["content"] and "REF-TWO" in math_turn2["messages"][1]["content"]
    writing_turn1 = next(r["body"] for r in FakeJudge.requests if r["key"] == ("q1", 1))
    assert "[Question]\nT1:q1 書いて" in writing_turn1["messages"][1]["content"]
    # answers saved per question, in FastChat's model_answer shape, both turns generated
    answers = [row for _, row in iter_jsonl(tmp_path / "mt" / "answers.jsonl")]
    assert [a["question_id"] for a in answers] == [1, 2, 3, 4]
    assert all(len(a["choices"][0]["turns"]) == 2 and a["prompt_format"] == "youri-chat" for a in answers)
    assert len(list(iter_jsonl(tmp_path / "mt" / "judgments.jsonl"))) == 8

    # a rerun judges from the cache: only the two failed judgments are asked again
    FakeJudge.requests = []
    again = ev.run(cfg, overwrite=True)
    assert again["judge"]["calls"] == 4 == len(FakeJudge.requests)
    assert again["judge_calls_cached"] == 6 and again["overall"] == metrics["overall"]
    assert {r["key"] for r in FakeJudge.requests} == {("q2", 2), ("q3", 2)}


def test_vicuna_judges_given_answers_with_ku_nlp_prompts(tmp_path, fake_judge):
    bench = _bench(tmp_path)
    answers = tmp_path / "answers.jsonl"
    rows = [{"question_id": q["question_id"], "choices": [{"turns": [f"A{q['question_id']}"]}]} for q in QUESTIONS]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    REPLIES[("q1", 1)], saved = "[[rating: 4]]", REPLIES[("q1", 1)]
    try:
        metrics = ev.run(
            ev.Config(
                out=str(tmp_path / "vq"),
                suite="ja-vicuna-qa",
                bench_dir=str(bench),
                answers=str(answers),
                judge_url=fake_judge + "/chat/completions",
                judge_model="fake-judge",
                judge_cache=str(tmp_path / "cache"),
                judge_retries=0,
            )
        )
    finally:
        REPLIES[("q1", 1)] = saved
    # single turn: q1 [[rating: 4]] (ku-nlp's format), q2 unparsable, q3 "[7.5]" is not a ku-nlp form, q4 500 once
    assert metrics["first_turn"] == 4 and metrics["second_turn"] is None and metrics["overall"] == 4
    assert (metrics["unparsable"], metrics["failed"], metrics["n_judgments"]) == (2, 1, 4)
    prompts = {r["key"]: r["body"]["messages"][1]["content"] for r in FakeJudge.requests}
    assert prompts[("q2", 1)].startswith("[インストラクション]") and "REF-ONE" in prompts[("q2", 1)]
    assert "A1" in prompts[("q1", 1)]


def test_a_suite_without_judge_or_questions_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="judge_url"):
        ev.run(ev.Config(out=str(tmp_path / "x"), suite="ja-mt-bench", bench_dir=str(_bench(tmp_path)), answers="a"))
    with pytest.raises(ConfigError, match="bench_dir"):
        ev.run(ev.Config(out=str(tmp_path / "y"), suite="ja-mt-bench", answers="a", judge_url="u", judge_model="m"))


def test_rating_patterns_are_the_references():
    fastchat = judge.PROMPT_SETS["fastchat"].patterns
    assert judge.parse_rating("評価：[[5]]", fastchat) == 5
    assert judge.parse_rating("[[8.5]] then [[2]]", fastchat) == 8.5
    assert judge.parse_rating("only [3] here", fastchat) == 3
    assert judge.parse_rating("[[rating]] missing", fastchat) is None
    assert judge.parse_rating("[[rating:7]]", judge.PROMPT_SETS["ku-nlp"].patterns) == 7


def test_a_models_own_chat_template_renders_the_conversation():
    tokenizer = char_tokenizer("abcdefghijklmnopqrstuvwxyz<>|: \n")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert chatbench.prompt_format(tokenizer) == "chat_template"
    ids = chatbench.encode_conversation(tokenizer, "chat_template", ["hi", "more"], ["yo"])
    text = "<|user|>hi\n<|assistant|>yo\n<|user|>more\n<|assistant|>"
    assert ids == tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.shared
def test_shared_suites_load_with_their_references():
    mt = chatbench.load_questions(str(shared_path("japanese-mt-bench")), chatbench.SUITES["ja-mt-bench"])
    assert len(mt) == 80 and all(len(q.turns) == 2 for q in mt)
    assert sum(q.reference is not None for q in mt if q.category in chatbench.NEED_REF_CATS) == 30
    vq = chatbench.load_questions(str(shared_path("ja-vicuna-qa-benchmark")), chatbench.SUITES["ja-vicuna-qa"])
    assert len(vq) == 80 and all(len(q.turns) == 1 for q in vq)
    assert {q.category for q in vq if q.reference} == {"math", "coding"}


def test_youri_formats_render_through_the_one_renderer():
    text = "abcxyz#：: \n" + INSTRUCTION_INTRO + INSTRUCTION_HEADER + INPUT_HEADER + RESPONSE_HEADER
    tokenizer = char_tokenizer(text)
    assert chatbench.prompt_format(tokenizer) == "youri-chat"  # no template: youri's chat format
    turns = [Turn(USER, "a"), Turn(SYSTEM, "x"), Turn(USER, "b")]
    assert chatbench.encode_conversation(tokenizer, "youri-chat", ["a", "b"], ["x"]) == encode_prompt(turns, tokenizer)
    install_chat_template(tokenizer, "instruction")
    assert chatbench.prompt_format(tokenizer) == "youri-instruction"
    first = chatbench.encode_conversation(tokenizer, "youri-instruction", ["a"], [])
    assert first == encode_prompt(Instruction("a"), tokenizer)
    assert chatbench.encode_conversation(tokenizer, "youri-instruction", ["a", "b"], ["x"]) is None  # single-turn
