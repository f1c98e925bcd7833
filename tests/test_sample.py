"""The built-in sample data: files parse, shapes and sizes are right, and the README's facts hold."""

from __future__ import annotations

import difflib
import json
import re

import pytest

from youri.io import resolve_path

SAMPLE = resolve_path("builtin:README.md").parent
JA_LINE = re.compile(r"^\| (\d+) \| ([A-Za-z ]+) \| (.*) \|$")


def _jsonl(name: str) -> list[dict]:
    lines = (SAMPLE / name).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", f"{name} must end with a newline"
    return [json.loads(line) for line in lines[:-1]]


def _readme_rejects() -> dict[int, tuple[str, str]]:
    rows = [JA_LINE.match(line) for line in (SAMPLE / "README.md").read_text(encoding="utf-8").splitlines()]
    return {int(m[1]): (m[2], m[3]) for m in rows if m}


def _ja_ratio(text: str) -> float:
    ja = sum(1 for c in text if "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" or "\uff66" <= c <= "\uff9f")
    return ja / max(1, sum(1 for c in text if not c.isspace()))


def test_builtin_names_resolve_and_sizes_fit_budget():
    names = ["corpus_ja.jsonl", "corpus_en.txt", "instructions_ja.jsonl", "chats_ja.jsonl", "README.md"]
    sizes = {name: resolve_path(f"builtin:{name}").stat().st_size for name in names}
    assert sum(sizes.values()) < 400_000, sizes  # "well under 1 MB"
    assert 80_000 < sizes["corpus_ja.jsonl"] < 160_000 and 80_000 < sizes["corpus_en.txt"] < 160_000, sizes
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    for name in names[:-1]:  # the README's byte counts are current
        assert f"| {sizes[name]:,} |" in readme, (name, sizes[name])
    with pytest.raises(FileNotFoundError, match="available: .*corpus_ja.jsonl"):
        resolve_path("builtin:no_such_file.jsonl")


def test_corpus_ja_rejects_are_where_the_readme_says():
    texts = [row["text"] for row in _jsonl("corpus_ja.jsonl")]
    assert len(texts) == 299 and all(isinstance(t, str) and t for t in texts)
    rejects = _readme_rejects()
    kinds = [kind for kind, _ in rejects.values()]
    counts = {k: kinds.count(k) for k in set(kinds)}
    assert counts == {
        "too short": 3,
        "exact duplicate": 3,
        "near duplicate": 3,
        "repetitive": 1,
        "boilerplate": 1,
        "mostly English": 2,
    }, counts
    for line, (kind, detail) in rejects.items():
        text = texts[line - 1]
        source = re.search(r"of line (\d+)", detail)
        if kind == "too short":
            assert len(text) < 10, (line, text)
        elif kind == "exact duplicate":
            assert text == texts[int(source[1]) - 1] and int(source[1]) < line
        elif kind == "near duplicate":
            original = texts[int(source[1]) - 1]
            assert text != original and int(source[1]) < line
            assert difflib.SequenceMatcher(None, text, original).ratio() > 0.95
        elif kind == "mostly English":
            assert _ja_ratio(text) < 0.1, line
        else:  # repetitive / boilerplate: multi-line footers or repeats
            assert text.count("\n") >= 4, line
    clean = [t for i, t in enumerate(texts, 1) if i not in rejects]
    assert len(clean) == 286 and len(set(clean)) == len(clean)
    assert min(map(len, clean)) >= 40 and min(map(_ja_ratio, clean)) > 0.6
    assert sum(1 for t in clean if re.search("[\uff10-\uff19]", t)) >= 10  # NFKC has work to do


def test_corpus_en_documents():
    text = (SAMPLE / "corpus_en.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and "\n\n\n" not in text and "\r" not in text
    docs = text.rstrip("\n").split("\n\n")
    assert len(docs) == 354 and len(set(docs)) == len(docs)
    assert all(len(d) >= 40 and d == d.strip() for d in docs)
    assert all(c.isascii() or c == "é" for c in text)


def test_instructions_shape():
    rows = _jsonl("instructions_ja.jsonl")
    assert len(rows) == 48
    for row in rows:
        assert set(row) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in row.values()) and row["instruction"] and row["output"]
    assert sum(1 for row in rows if not row["input"]) == 24
    assert sum(1 for row in rows if "答え：" in row["output"]) >= 4


def test_chats_shape_roles_and_forgery():
    chats = [row["messages"] for row in _jsonl("chats_ja.jsonl")]
    assert len(chats) == 32
    no_system = []
    for n, messages in enumerate(chats, 1):
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in messages)
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        if turns is messages:
            no_system.append(n)
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2), n
        assert 2 <= len(turns) // 2 <= 4 and len(turns) % 2 == 0, n
    assert no_system == [18, 19, 20, 21]
    forged = [
        (n, i)
        for n, messages in enumerate(chats, 1)
        for i, m in enumerate(messages)
        if m["role"] == "user" and re.search(r"(^|\n)システム: ", m["content"])
    ]
    assert forged == [(29, 3)]
    assert "\nシステム: " in chats[28][3]["content"]  # mid-message: it would start a turn if not escaped
