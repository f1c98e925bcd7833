"""JP-8 data: the harness's file formats (JSON array, CSV, Parquet), `youri eval --download` against a fake
Hub on 127.0.0.1 (no network), and honestly named averages."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import shared_path
from fakehub import FakeHub
from huggingface_hub import constants as hub_constants

from youri import cli
from youri.config import load_recipe
from youri.eval.averages import JP8, JP8_NAME, averages
from youri.eval.download import DownloadError, download
from youri.eval.tasks import select
from youri.eval.tasks.base import RenderOptions, render
from youri.eval.tasks.formats import iter_rows
from youri.io import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "jp_eval"
PARQUET = "refs/convert/parquet"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _parquet(rows: list[dict]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def _render(name: str, spec: str, eval_path: str, pool_path: str | None, shots: int) -> list[dict]:
    sel = select(spec)
    pool = sel.task.load_fewshot(pool_path) if pool_path else None
    return render(
        sel.task, sel.variant, sel.prompt_name, sel.task.load_eval(eval_path), pool, shots, None, RenderOptions()
    )


# ----------------------------------------------------------------------------- the harness's file formats


def test_jaqket_raw_json_array_reads_like_its_json_lines_copy():
    """JAQKET v2's files are one JSON array each (kumapo/JAQKET: train/dev_jaqket_59.350.json)."""
    raw = _render(
        "jaqket_v2",
        "jaqket_v2-0.2-0.3",
        str(FIXTURES / "dev_jaqket_59.350.json"),
        str(FIXTURES / "train_jaqket_59.350.json"),
        1,
    )
    lines = _render(
        "jaqket_v2",
        "jaqket_v2-0.2-0.3",
        str(FIXTURES / "jaqket_v2_dev.jsonl"),
        str(FIXTURES / "jaqket_v2_train.jsonl"),
        1,
    )
    assert raw == lines and sorted(r["doc_id"] for r in raw) == ["QA20QBIK-0001", "QA20QBIK-0003", "QA20QBIK-0004"]


def test_jaqket_loader_keeps_five_passages_and_drops_unanswerable(tmp_path):
    """kumapo/JAQKET with num_contexts=5: ctxs[:5]; a question whose answer is only in passage 6+ is dropped;
    fewer than five passages are used as they are (the harness zips over what is there)."""
    ctx = lambda i, hit: {"id": str(i), "title": f"t{i}", "text": f"x{i}", "score": 1.0, "has_answer": hit}  # noqa: E731
    rows = [
        {"qid": "a", "question": "q1", "answers": ["x"], "ctxs": [ctx(i, i == 5) for i in range(7)]},
        {"qid": "b", "question": "q2", "answers": ["y"], "ctxs": [ctx(i, i == 4) for i in range(7)]},
        {"qid": "c", "question": "q3", "answers": ["z"], "ctxs": [ctx(0, True), ctx(1, False)]},
    ]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    docs = select("jaqket_v2").task.load_eval(str(path))
    assert [d["id"] for d in docs] == ["b", "c"]
    assert docs[0]["titles"] == ["t0", "t1", "t2", "t3", "t4"] and docs[1]["texts"] == ["x0", "x1"]


def test_xlsum_csv_reads_like_its_json_lines_copy(tmp_path):
    """mkshing/xlsum_ja ships CSV; quoted commas, quotes and line breaks inside a field stay one record."""
    for split in ("test", "train"):
        assert select("xlsum_ja").task.load_eval(str(FIXTURES / f"xlsum_ja_{split}.csv")) == select(
            "xlsum_ja"
        ).task.load_eval(str(FIXTURES / f"xlsum_ja_{split}.jsonl"))
    tricky = {"id": "x", "url": "u", "title": "t", "summary": '要約, "引用"', "text": "一行目。\n二行目, 続き。"}
    path = tmp_path / "test.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(tricky))
        writer.writeheader()
        writer.writerow(tricky)
    assert select("xlsum_ja").task.load_eval(str(path)) == [
        {"id": "x", "text": tricky["text"], "summary": tricky["summary"]}
    ]


def test_marc_ja_parquet_export_reads_like_json_lines(tmp_path):
    """The JGLUE loader's MARC-ja fallback is the Hub's Parquet export: label is the ClassLabel index."""
    for split in ("valid", "train"):
        rows = _jsonl(FIXTURES / f"marc_ja_{split}.jsonl")
        hf_rows = [
            {
                "sentence": r["sentence"],
                "label": ["positive", "negative"].index(r["label"]),
                "review_id": r["review_id"],
            }
            for r in rows
        ]
        (tmp_path / f"{split}.parquet").write_bytes(_parquet(hf_rows))
    assert _render(
        "marc_ja", "marc_ja-1.1-0.5", str(tmp_path / "valid.parquet"), str(tmp_path / "train.parquet"), 3
    ) == _render(
        "marc_ja", "marc_ja-1.1-0.5", str(FIXTURES / "marc_ja_valid.jsonl"), str(FIXTURES / "marc_ja_train.jsonl"), 3
    )


def _jsquad_rows(articles: list[dict]) -> list[dict]:
    """SQuAD articles as the rows shunk031/JGLUE yields (one per question, answers as parallel lists)."""
    return [
        {
            "id": qa["id"],
            "title": a["title"],
            "context": p["context"],
            "question": qa["question"],
            "answers": {
                "text": [x["text"] for x in qa["answers"]],
                "answer_start": [x["answer_start"] for x in qa["answers"]],
            },
            "is_impossible": False,
        }
        for a in articles
        for p in a["paragraphs"]
        for qa in p["qas"]
    ]


def test_jsquad_flat_rows_equal_the_squad_json(tmp_path):
    """The Hub's JSQuAD rows (id, title, context, question, answers{text, answer_start}) in SQuAD order."""
    squad = shared_path("jglue-jsquad", "valid-v1.3.json")
    nested = select("jsquad").task.load_eval(str(squad))[:40]
    articles = json.loads(squad.read_text(encoding="utf-8"))["data"]
    flat = _jsquad_rows(articles)[:40]
    (tmp_path / "validation.parquet").write_bytes(_parquet(flat))
    assert select("jsquad").task.load_eval(str(tmp_path / "validation.parquet")) == nested


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'[{"qid": 1}, 3]', "record 2 is not a JSON object"),
        (b"\xff\xfe not utf-8", "not valid UTF-8"),
        (b"id,text\n1,a,b\n", "more cells than the header"),
    ],
)
def test_malformed_files_name_the_file_and_record(tmp_path, content, needle):
    path = tmp_path / ("bad.csv" if b"id,text" in content else "bad.json")
    path.write_bytes(content)
    with pytest.raises(DataError, match=needle):
        list(iter_rows(str(path)))


# ----------------------------------------------------------------------------- youri eval --download


def _hub_repos(drop: tuple[str, ...] = ()) -> dict[tuple[str, str], dict[str, bytes]]:
    """Every JP-8 source in the form the Hub serves it, built from fixtures and slices of ../shared."""
    data = shared_path()
    jcqa = _jsonl(data / "jglue-jcommonsenseqa" / "valid-v1.3.json")
    jnli = [
        dict(r, label=["entailment", "contradiction", "neutral"].index(r["label"]))
        for r in _jsonl(data / "jglue-jnli" / "valid-v1.3.json")
    ]
    squad = json.loads((data / "jglue-jsquad" / "valid-v1.3.json").read_text(encoding="utf-8"))["data"][:1]
    jsquad = _jsquad_rows(squad)
    marc = {
        s: [
            {
                "sentence": r["sentence"],
                "label": ["positive", "negative"].index(r["label"]),
                "review_id": r["review_id"],
            }
            for r in _jsonl(FIXTURES / f"marc_ja_{s}.jsonl")
        ]
        for s in ("train", "valid")
    }
    exemplars = [
        {
            "question": r["question"],
            "answer": r["answer_cot"],
            "answer_number": r["answer_number"],
            "equation_solution": r["equation_solution"],
        }
        for r in _jsonl(data / "mgsm-ja" / "mgsm_ja_exemplars.jsonl")
    ]
    tests = [
        {"question": q, "answer": None, "answer_number": int(a), "equation_solution": None}
        for q, a in (
            line.split("\t") for line in (data / "mgsm-ja" / "mgsm_ja.tsv").read_text(encoding="utf-8").splitlines()[:6]
        )
    ]
    xwino = _jsonl(data / "xwinograd-ja" / "xwinograd_jp.jsonl")[:6]
    jglue = {
        "JCommonsenseQA/train/0000.parquet": _parquet(jcqa[20:40]),
        "JCommonsenseQA/validation/0000.parquet": _parquet(jcqa[:20]),
        "JNLI/train/0000.parquet": _parquet(jnli[20:60]),
        "JNLI/validation/0000.parquet": _parquet(jnli[:20]),
        "JSQuAD/train/0000.parquet": _parquet(jsquad[10:]),
        "JSQuAD/validation/0000.parquet": _parquet(jsquad[:10]),
        # the old export naming, in two shards: they are concatenated in name order
        "MARC-ja/jglue-train-00000-of-00002.parquet": _parquet(marc["train"][:2]),
        "MARC-ja/jglue-train-00001-of-00002.parquet": _parquet(marc["train"][2:]),
        "MARC-ja/jglue-validation.parquet": _parquet(marc["valid"]),
        "JNLI/README.md": b"not data",
    }
    jglue = {p: b for p, b in jglue.items() if not any(p.startswith(d) for d in drop)}
    return {
        ("shunk031/JGLUE", "main"): {"JGLUE.py": b"# a loading script: youri never runs it"},
        ("shunk031/JGLUE", PARQUET): jglue,
        ("kumapo/JAQKET", "main"): {
            "JAQKET.py": b"#",
            **{f: (FIXTURES / f).read_bytes() for f in ("train_jaqket_59.350.json", "dev_jaqket_59.350.json")},
        },
        ("mkshing/xlsum_ja", "main"): {
            "train.csv": (FIXTURES / "xlsum_ja_train.csv").read_bytes(),
            "test.csv": (FIXTURES / "xlsum_ja_test.csv").read_bytes(),
            "validation.csv": (FIXTURES / "xlsum_ja_test.csv").read_bytes(),
        },
        # no raw data file on main: the Parquet export is the fallback
        ("polm-stability/xwinograd-ja", "main"): {"README.md": b"#"},
        ("polm-stability/xwinograd-ja", PARQUET): {"default/test/0000.parquet": _parquet(xwino)},
        ("juletxara/mgsm", PARQUET): {
            "ja/train/0000.parquet": _parquet(exemplars),
            "ja/test/0000.parquet": _parquet(tests),
            "en/test/0000.parquet": b"other language",
        },
    }


@pytest.fixture
def fake_hub(monkeypatch):
    hubs = []

    def start(repos, **faults):
        hub = FakeHub(repos, **faults)
        hubs.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # conftest sets it for every test
        return hub

    yield start
    for hub in hubs:
        hub.close()


def test_download_writes_every_task_and_the_recipe_reads_it(tmp_path, fake_hub, llama2_tokenizer_dir):
    hub = fake_hub(_hub_repos())
    out = tmp_path / "jp-eval"
    assert cli.main(["eval", "--download", str(out)]) == 0
    assert {method for method, _ in hub.requests} == {"GET", "HEAD"}
    assert not any(path.endswith(".py") for _, path in hub.requests)  # files, never loading scripts
    sources = json.loads((out / "sources.json").read_text(encoding="utf-8"))
    assert list(sources["tasks"]) == list(JP8) and sources["failed"] == {}
    assert sources["tasks"]["xwinograd_ja"]["revision"] == PARQUET  # main had no data file
    assert sources["tasks"]["jcommonsenseqa"]["commit"] == FakeHub.commit("shunk031/JGLUE", PARQUET)
    marc = sources["tasks"]["marc_ja"]["splits"]["train"]
    assert marc["rows"] == 5 and [s["path"] for s in marc["sources"]] == [
        "MARC-ja/jglue-train-00000-of-00002.parquet",
        "MARC-ja/jglue-train-00001-of-00002.parquet",
    ]
    section = yaml.safe_load((out / "eval-data.yaml").read_text(encoding="utf-8"))
    assert section["data"]["xlsum_ja"] == {"eval": "xlsum_ja/test.jsonl", "fewshot": "xlsum_ja/train.jsonl"}
    assert section["data"]["xwinograd_ja"] == {"eval": "xwinograd_ja/test.jsonl"}
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "youri-7b.yaml")["eval"]
    assert section["data"] == recipe["data"]  # the 7B recipe names all eight tasks in the downloaded layout
    assert not (out / "jnli" / "README.jsonl").exists() and not list(out.glob(".hub-cache-*"))

    requests = tmp_path / "requests.jsonl"
    assert (
        cli.main(
            [
                "eval",
                str(llama2_tokenizer_dir),
                "--data_dir",
                section["data_dir"],
                "--data",
                json.dumps(section["data"]),
                "--write_requests",
                str(requests),
                "--limit",
                "3",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in requests.read_text(encoding="utf-8").splitlines()]
    assert sorted({r["task"].split("-")[0] for r in records}) == sorted(JP8)
    # Same documents in the same order as the files they came from: the downloaded MARC-ja renders exactly
    # like the fixture it was built from.
    got = [r for r in records if r["task"] == "marc_ja-1.1-0.2"]
    want = _render(
        "marc_ja", "marc_ja-1.1-0.2", str(FIXTURES / "marc_ja_valid.jsonl"), str(FIXTURES / "marc_ja_train.jsonl"), 3
    )
    assert [(r["prompt"], r["gold"], r["doc_id"]) for r in got] == [
        (r["prompt"], r["gold"], r["doc_id"]) for r in want[:3]
    ]


def test_withdrawn_marc_ja_is_named_and_the_rest_is_written(tmp_path, fake_hub, capsys):
    fake_hub(_hub_repos(drop=("MARC-ja/",)))
    out = tmp_path / "jp-eval"
    assert cli.main(["eval", "--download", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the Hub client's progress bars
    assert err.startswith("youri eval: error: not downloaded: marc_ja; the 7 others are in")
    assert "withdrawn" in err and "shunk031/JGLUE@refs/convert/parquet: no file for train (MARC-ja/*train*)" in err
    section = yaml.safe_load((out / "eval-data.yaml").read_text(encoding="utf-8"))
    assert "marc_ja" not in section["data"] and len(section["data"]) == 7
    assert (out / "mgsm" / "test.jsonl").is_file()


def test_a_broken_transfer_or_a_refused_file_name_fails_that_task_only(tmp_path, fake_hub, capsys, monkeypatch):
    """Any failure of one task (a body cut short, a file name the Hub client refuses, a file that does not
    parse) is named at the end; every other task is written first, and the exit status is non-zero."""
    import huggingface_hub.file_download as hub_download

    monkeypatch.setattr(hub_download, "time", type("NoWait", (), {"sleep": staticmethod(lambda s: None)}))
    repos = _hub_repos()
    repos[("shunk031/JGLUE", PARQUET)]["JNLI/train/../../escape.parquet"] = _parquet([{"x": 1}])
    repos[("juletxara/mgsm", PARQUET)]["ja/train/0000.parquet"] = b"PAR1 not parquet"
    fake_hub(repos, truncate=("JSQuAD/validation/0000.parquet",))
    out = tmp_path / "jp-eval"
    assert cli.main(["eval", "--download", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()[-1]
    assert err.startswith("youri eval: error: not downloaded: jnli, jsquad, mgsm; the 5 others are in"), err
    sources = json.loads((out / "sources.json").read_text(encoding="utf-8"))
    assert set(sources["failed"]) == {"jnli", "jsquad", "mgsm"} and len(sources["tasks"]) == 5
    assert "'..'" in sources["failed"]["jnli"] and "not a readable Parquet file" in sources["failed"]["mgsm"]
    assert "jsquad" in sources["failed"]["jsquad"] and "NOT DOWNLOADED jsquad" in captured.out
    assert not (out.parent / "escape.parquet").exists() and (out / "xwinograd_ja" / "test.jsonl").is_file()
    section = yaml.safe_load((out / "eval-data.yaml").read_text(encoding="utf-8"))
    assert sorted(section["data"]) == sorted(set(JP8) - {"jnli", "jsquad", "mgsm"})


def test_download_refuses_offline_mode_and_never_replaces_other_files(tmp_path, fake_hub, monkeypatch):
    fake_hub(_hub_repos())
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        download(tmp_path / "a")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    mine = tmp_path / "b" / "jnli" / "validation.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own file\n", encoding="utf-8")
    with pytest.raises(DownloadError, match="jnli"):
        download(tmp_path / "b")
    assert mine.read_text(encoding="utf-8") == "my own file\n"


# ----------------------------------------------------------------------------- averages named honestly


def test_average_is_jp8_only_when_all_eight_ran():
    eight = {
        "jcommonsenseqa-1.1-0.3": 80.0,
        "jnli-1.3-0.3": 50.0,
        "marc_ja-1.1-0.3": 90.0,
        "jsquad-1.1-0.3": 70.0,
        "jaqket_v2-0.2-0.3": 60.0,
        "xlsum_ja-1.0-0.3": 20.0,
        "xwinograd_ja": 65.0,
        "mgsm-1.0-0.3": 10.0,
    }
    full = averages(eight)
    assert full["average_name"] == JP8_NAME and full["average"] == 55.62
    subsets = list(full["subsets"].values())
    assert [s["value"] for s in subsets] == [72.5, 69.17]  # (80+50+90+70)/4; + jaqket 60, xwinograd 65
    five = {k: v for k, v in eight.items() if not k.startswith(("marc_ja", "jaqket", "xlsum"))}
    part = averages(five)
    assert part["average_name"] == (
        "average of 5 tasks (jcommonsenseqa-1.1-0.3, jnli-1.3-0.3, jsquad-1.1-0.3, xwinograd_ja, mgsm-1.0-0.3)"
    )
    assert part["average"] == 55.0 and part["subsets"] == {}
    seven_plus = dict(eight, **{"jnli-1.1-0.3": 40.0})  # two JNLI versions: nine results, not JP-8
    assert averages(seven_plus)["average_name"].startswith("average of 9 tasks")
    assert list(averages(seven_plus)["subsets"]) == []


def _eval_metrics(scores: dict[str, float]) -> dict:
    tasks = {key: {"score": value, "stderr": 1.0, "chance": 0.0} for key, value in scores.items()}
    named = averages(scores)
    return {"tasks": tasks, **named, "average_note": named["average_name"]}


def test_report_and_model_card_name_the_average(tmp_path):
    from youri.run.card import write_model_card
    from youri.run.report import render_markdown

    five = {
        "jcommonsenseqa-1.1-0.3": 80.0,
        "jnli-1.3-0.3": 50.0,
        "jsquad-1.1-0.3": 70.0,
        "xwinograd_ja": 65.0,
        "mgsm-1.0-0.3": 10.0,
    }
    eight = dict(five, **{"marc_ja-1.1-0.3": 90.0, "jaqket_v2-0.2-0.3": 60.0, "xlsum_ja-1.0-0.3": 20.0})
    folder = tmp_path / "model"
    folder.mkdir()
    card = write_model_card(folder, eval_metrics=_eval_metrics(five)).read_text(encoding="utf-8")
    assert "JP-8 average" not in card and "| **average of 5 tasks (jcommonsenseqa-1.1-0.3, " in card
    card = write_model_card(folder, eval_metrics=_eval_metrics(eight)).read_text(encoding="utf-8")
    assert "| **JP-8 average** | 55.62 |" in card and "| rinna 4-task average (JGLUE: " in card

    def row(variant, metrics):
        return {"variant": variant, "precision": "fp", "scores": {}, **metrics}

    both = {
        "run_dir": "runs/x",
        "tasks": [],
        "rows": [row("base", _eval_metrics(eight)), row("chat", _eval_metrics(five))],
    }
    text = render_markdown(both)
    assert "avg of tasks run" in text and "JP-8 avg" not in text.split("\n")[2]  # header: not every row is JP-8
    assert "average of 5 tasks (" in text and "base (fp): rinna 6-task average" in text
    text = render_markdown(dict(both, rows=both["rows"][:1]))
    assert "| JP-8 avg |" in text.split("\n")[2]
