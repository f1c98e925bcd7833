"""rinna's SFT sources as youri reads them: one fixture per published format (tests/fixtures/sft/, written
for youri in each dataset's field layout), rendered through the one renderer with loss only on システム
replies, and one bad record per shape failing with file:line and field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from youri.data.sft_data import DatasetConfig, hh_turns, read_dataset
from youri.io import DataError, SkipCounter
from youri.prompts import IGNORE_INDEX, SETTING, SYSTEM, USER, Instruction, Turn, encode_prompt, encode_training

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sft"


@pytest.fixture(scope="module")
def tok(llama2_tokenizer_dir):
    from youri.model import load_tokenizer

    return load_tokenizer(llama2_tokenizer_dir)


def read(name: str, shape: str, kind: str = "chat", **kw):
    return read_dataset(DatasetConfig(str(FIXTURES / name), shape=shape, **kw), kind)


def write(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def supervised_runs(labels: list[int]) -> list[list[int]]:
    """The contiguous runs of supervised labels: one per reply, each ending with </s>."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def assert_renders(turns: list[Turn], tok) -> None:
    """Through the one renderer: each システム reply (and its </s>) is supervised and nothing else; the
    context of the last reply is the generation prompt for the turns before it, token for token."""
    enc = encode_training(turns, tok)
    replies = [t.text for t in turns if t.speaker == SYSTEM]
    runs = supervised_runs(enc.labels)
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert run[-1] == tok.eos_token_id and tok.decode(run[:-1]) == reply
    last_start = max(i for i, label in enumerate(enc.labels) if label == IGNORE_INDEX) + 1
    assert enc.input_ids[:last_start] == encode_prompt(turns[:-1], tok)


# ----------------------------------------------------------------------------- fixtures -> turns -> ids, labels


def test_dolly_records_render(tok):
    records = read("dolly.jsonl", "dolly")
    first = json.loads((FIXTURES / "dolly.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(records[0].example) == [
        Turn(SETTING, first["instruction"]),
        Turn(USER, first["context"]),
        Turn(SYSTEM, first["response"]),
    ]
    assert [t.speaker for t in records[1].example] == [USER, SYSTEM]  # empty context: no input turn
    assert records[2].where.endswith("dolly.jsonl:3")
    for record in records:
        assert_renders(list(record.example), tok)
    inst = read("dolly.jsonl", "dolly", "instruction")[0].example
    assert inst == Instruction(first["instruction"], first["context"], first["response"])


def test_dolly_ja_published_as_json_array_reads_as_instruction(tok):
    records = read("dolly_ja.json", "instruction")
    raw = json.loads((FIXTURES / "dolly_ja.json").read_text(encoding="utf-8"))
    assert len(records) == len(raw) and records[1].where.endswith("dolly_ja.json:9")  # where the element starts
    assert list(records[0].example) == [
        Turn(SETTING, raw[0]["instruction"]),
        Turn(USER, raw[0]["input"]),
        Turn(SYSTEM, raw[0]["output"]),
    ]
    assert_renders(list(records[0].example), tok)


def test_flan_records_render(tok):
    records = read("flan.jsonl", "flan")
    raw = [json.loads(x) for x in (FIXTURES / "flan.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == len(raw)
    for record, r in zip(records, raw):  # aya_collection's translated FLAN keeps inputs/targets
        assert list(record.example) == [Turn(USER, r["inputs"]), Turn(SYSTEM, r["targets"])]
        assert_renders(list(record.example), tok)
    assert read("flan.jsonl", "flan", "instruction")[2].example == Instruction(raw[2]["inputs"], "", raw[2]["targets"])


def test_llm_japanese_section_folder_renders(tok, tmp_path):
    section = tmp_path / "datasets" / "alt" / "data"  # the repository's layout: one folder per section
    section.mkdir(parents=True)
    (section / "000000.json").write_bytes((FIXTURES / "llm_japanese_000000.json").read_bytes())
    (section / "000001.json").write_text(
        '[{"index": "3", "instruction": "挨拶して", "input": "", "output": "こんにちは"}]', encoding="utf-8"
    )
    records = read_dataset(DatasetConfig(str(section), shape="llm_japanese"), "chat")
    raw = json.loads((FIXTURES / "llm_japanese_000000.json").read_text(encoding="utf-8"))
    assert len(records) == len(raw) + 1 and records[-1].where.endswith("000001.json:1")
    assert list(records[0].example) == [
        Turn(SETTING, raw[0]["instruction"]),
        Turn(USER, raw[0]["input"]),
        Turn(SYSTEM, raw[0]["output"]),
    ]
    assert [t.speaker for t in records[2].example] == [USER, SYSTEM]  # empty input
    for record in records:
        assert_renders(list(record.example), tok)


def test_hh_rlhf_chosen_dialogue_renders(tok, tmp_path):
    records = read("hh_rlhf.jsonl", "hh_rlhf")
    first = json.loads((FIXTURES / "hh_rlhf.jsonl").read_text(encoding="utf-8").splitlines()[0])
    turns = list(records[0].example)
    assert [t.speaker for t in turns] == [USER, SYSTEM, USER, SYSTEM]
    assert turns[0].text == "What is a good way to learn Japanese?" and turns[-1].text in first["chosen"]
    assert not any(t.text in first["rejected"] for t in turns if t.speaker == SYSTEM)  # only `chosen` is used
    for record in records:
        assert_renders(list(record.example), tok)
    # published gzipped (Anthropic/hh-rlhf helpful-base/train.jsonl.gz): read as is
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "hh_rlhf.jsonl").read_bytes()))
    assert [r.example for r in read_dataset(DatasetConfig(str(gz), shape="hh_rlhf"), "chat")] == [
        r.example for r in records
    ]
    # a single exchange also trains an instruction model (a multi-turn one cannot: a bad record there)
    skip = SkipCounter()
    single = read_dataset(DatasetConfig(str(FIXTURES / "hh_rlhf.jsonl"), shape="hh_rlhf"), "instruction", skip)
    assert [r.where.rsplit(":", 1)[1] for r in single] == ["2"] and skip.count == 1
    # the Japanese translation (kunishou/hh-rlhf-49k-ja) is one exchange per record: instruction-shaped
    ja = read("hh_rlhf_ja.json", "instruction")[0].example
    assert [t.speaker for t in ja] == [USER, SYSTEM]


def test_hh_turns_parses_markers_exactly():
    assert hh_turns("\n\nHuman: a\nb\n\nAssistant: c\n\nHuman:d\n\nAssistant: e") == [
        Turn(USER, "a\nb"),
        Turn(SYSTEM, "c"),
        Turn(USER, "d"),
        Turn(SYSTEM, "e"),
    ]


# ----------------------------------------------------------------------------- bad records: file:line and field


@pytest.mark.parametrize(
    "shape, good, bad, message",
    [
        (
            "dolly",
            {"instruction": "a", "context": "", "response": "b"},
            {"instruction": "a", "context": ""},
            r"bad.jsonl:2: missing field 'response'",
        ),
        (
            "dolly",
            {"instruction": "a", "context": "", "response": "b"},
            {"instruction": "a", "context": 3, "response": "b"},
            r"bad.jsonl:2: field 'context' must be str",
        ),
        (
            "flan",
            {"inputs": "a", "targets": "b"},
            {"inputs": "a", "targets": ["b"]},
            r"bad.jsonl:2: field 'targets' must be str",
        ),
        (
            "flan",
            {"inputs": "a", "targets": "b"},
            {"input": "a", "targets": "b"},
            r"bad.jsonl:2: missing field 'inputs'",
        ),
        (
            "llm_japanese",
            {"instruction": "a", "input": "", "output": "b"},
            {"instruction": "a", "input": ""},
            r"bad.jsonl:2: missing field 'output'",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"rejected": "\n\nHuman: a\n\nAssistant: b"},
            r"bad.jsonl:2: missing field 'chosen'",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c"},
            r"bad.jsonl:2: field 'chosen': turn 2 is Human, expected Assistant",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"chosen": "\n\nAssistant: a\n\nHuman: b"},
            r"bad.jsonl:2: field 'chosen': turn 1 is Assistant, expected Human",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c"},
            r"bad.jsonl:2: field 'chosen': the last turn \(turn 3\) is Human",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"chosen": "\n\nHuman: a\n\nAssistant: "},
            r"bad.jsonl:2: field 'chosen': turn 2 \(Assistant\) is empty",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: a\n\nAssistant: b"},
            {"chosen": "Human: a Assistant: b"},
            r"bad.jsonl:2: field 'chosen': expected a transcript starting with",
        ),
    ],
)
def test_bad_record_names_file_line_and_field(tmp_path, shape, good, bad, message):
    path = write(tmp_path / "bad.jsonl", [good, bad, good])
    with pytest.raises(DataError, match=message):
        read_dataset(DatasetConfig(str(path), shape=shape), "chat")
    skip = SkipCounter()
    assert len(read_dataset(DatasetConfig(str(path), shape=shape), "chat", skip)) == 2 and skip.count == 1


def test_bad_element_of_a_json_array_names_its_line(tmp_path):
    path = tmp_path / "000000.json"
    path.write_text(
        '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "a",\n'
        '   "input": "", "output": null},\n  7\n]\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"000000.json:3: field 'output' must be str"):
        read_dataset(DatasetConfig(str(path), shape="llm_japanese"), "chat")
    skip = SkipCounter()
    assert len(read_dataset(DatasetConfig(str(path), shape="llm_japanese"), "chat", skip)) == 1
    assert skip.count == 2 and ":5: expected a JSON object, got int" in skip.examples[1]
    path.write_text(
        '[\n  {"instruction": "a", "input": "", "output": "b"}\n  {"instruction": "c"}\n]', encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"000000.json:3: malformed JSON: expected ','"):
        read_dataset(DatasetConfig(str(path), shape="llm_japanese"), "chat", SkipCounter())
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"000000.json:1: expected a JSON array of records"):
        read_dataset(DatasetConfig(str(path), shape="llm_japanese"), "chat")
    path.write_bytes(b'[\n{"instruction": "\xff"}]')
    with pytest.raises(DataError, match=r"000000.json:2: not UTF-8"):
        read_dataset(DatasetConfig(str(path), shape="llm_japanese"), "chat")


def test_empty_dataset_folder_and_unknown_shape_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no .jsonl"):
        read_dataset(DatasetConfig(str(tmp_path), shape="flan"), "chat")
    with pytest.raises(DataError, match="unknown shape 'alpaca'"):
        read_dataset(DatasetConfig(str(FIXTURES / "flan.jsonl"), shape="alpaca"), "chat")
