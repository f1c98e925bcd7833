"""Issue 14, classes 2, 4, 5 and 7: nothing the user owns is replaced, every bad value is one line naming
its field before any work, bad bytes and empty records are data errors, shard bookkeeping is O(1).
(Classes 1 and 3 -- requests and special tokens -- are tested with the server and the prompts; class 6,
interrupts, in test_interrupts.py.)"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from youri import cli
from youri.config import ConfigError, build_config, load_recipe
from youri.data.corpus import PROGRESS, Documents, ShardWriter
from youri.data.sft_data import DatasetConfig, read_dataset
from youri.data.shards import ProgressLog
from youri.data.steps import Source, iter_records
from youri.eval.tasks.base import read_records
from youri.eval.tasks.mgsm import load_eval
from youri.io import DataError, SkipCounter, iter_jsonl, read_json, read_text
from youri.run.report import write_report
from youri.serve.chat import Conversation
from youri.serve.inference import ChatError
from youri.stage import StageExistsError, StageWriter, read_manifest
from youri.train.init_base import train_tokenizer

BAD = b"\xff\xfe"  # never valid UTF-8


@dataclasses.dataclass
class Toy:
    steps: int = 1


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes: what must survive untouched."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _finished_stage(out: Path, stage: str = "toy") -> Path:
    with StageWriter(out, stage=stage, config=Toy()) as writer:
        (writer.path / "payload.bin").write_bytes(stage.encode())
        writer.finish({})
    return out


# ----------------------------------------------------------------------------- class 2: user paths


def _user_file(out: Path) -> None:
    out.write_text("my notes\n")


def _user_folder(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("precious\n")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n")


def _user_link(out: Path) -> None:
    target = out.with_name("elsewhere")
    _user_folder(target)
    out.symlink_to(target)


def _other_stage(out: Path) -> None:
    _finished_stage(out, stage="pretrain")


@pytest.mark.parametrize(
    "make, needle",
    [
        (_user_file, "is a file, not a stage folder"),
        (_user_folder, "is a folder youri did not make"),
        (_user_link, "is a link"),
        (_other_stage, "holds a 'pretrain' stage, not a 'toy' one"),
    ],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_stage_never_replaces_what_it_did_not_make(tmp_path, make, needle, overwrite):
    out = tmp_path / "out"
    make(out)
    before, listing = _snapshot(out.resolve()), sorted(os.listdir(tmp_path))
    with pytest.raises(StageExistsError, match=needle) as err:
        StageWriter(out, stage="toy", config=Toy(), overwrite=overwrite)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(out.resolve()) == before and sorted(os.listdir(tmp_path)) == listing


def test_same_stage_is_replaced_only_with_overwrite_and_nothing_else_is_touched(tmp_path):
    out = _finished_stage(tmp_path / "out")
    neighbour = tmp_path / "out.old"  # the name the old code used as trash, now the user's
    _user_folder(neighbour)
    with pytest.raises(StageExistsError, match="already holds a complete 'toy' stage"):
        StageWriter(out, stage="toy", config=Toy())
    with StageWriter(out, stage="toy", config=Toy(steps=2), overwrite=True) as writer:
        writer.finish({"new": True})
    assert read_manifest(out)["config"]["steps"] == 2 and not (out / "payload.bin").exists()
    assert _snapshot(neighbour)["notes.txt"] == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old"]  # no trash left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    _finished_stage(empty)  # an empty folder holds nothing to lose


def test_partial_folder_not_made_by_youri_is_refused(tmp_path):
    partial = tmp_path / "out.partial"
    _user_folder(partial)
    with pytest.raises(StageExistsError, match="out.partial is a folder youri did not make"):
        StageWriter(tmp_path / "out", stage="toy", config=Toy())
    assert _snapshot(partial)["notes.txt"] == b"precious\n"


def test_cli_refuses_user_paths_in_one_line_before_any_work(tmp_path, capsys):
    folder, file = tmp_path / "mine", tmp_path / "file.txt"
    _user_folder(folder)
    _user_file(file)
    for out in (folder, file):
        before = _snapshot(out)
        code = cli.main(
            [
                "data",
                "--tokenizer",
                "nowhere",
                "--sources",
                "[{path: builtin:corpus_en.txt}]",
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(out) in err and "never replaces it" in err, err
        assert _snapshot(out) == before
    requests = tmp_path / "requests.jsonl"
    requests.write_text("keep me\n")
    code = cli.main(["eval", "nowhere", "--write_requests", str(requests), "--tasks", "[jnli]"])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--write_requests" in err and requests.read_text() == "keep me\n"


def test_report_and_chat_save_never_overwrite_user_files(tmp_path):

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _user_folder(run_dir / "report")
    with pytest.raises(StageExistsError, match="report is not a youri report folder"):
        write_report(run_dir, measure=False)
    assert _snapshot(run_dir / "report")["notes.txt"] == b"precious\n"

    conversation = Conversation(None, "", budget=64)  # saving needs no tokenizer
    notes = tmp_path / "notes.txt"
    _user_file(notes)
    with pytest.raises(ChatError, match="exists and is not a saved conversation"):
        conversation.save(str(notes))
    assert notes.read_text() == "my notes\n"
    saved = tmp_path / "chat.json"
    conversation.save(str(saved))
    conversation.save(str(saved))  # its own earlier save may be replaced
    assert json.loads(saved.read_text())["messages"] == []


# ----------------------------------------------------------------------------- class 4: config values

STAGES = {
    "data": "youri.data.corpus",
    "pretrain": "youri.train.pretrain",
    "sft": "youri.train.sft",
    "init": "youri.train.init_base",
    "vocab": "youri.data.vocab",
    "quantize": "youri.quant.quantize",
    "eval": "youri.eval.evaluate",
    "chat": "youri.serve.chat",
    "serve": "youri.serve.server",
    "report": "youri.run.report",
}


@pytest.mark.parametrize(
    "stage, overrides, field, needle",
    [
        ("data", {"token_budget": "-5"}, "data.token_budget", ">= 0, got -5"),
        ("data", {"seq_len": "0"}, "data.seq_len", ">= 1"),
        ("data", {"filters.min_ja_ratio": "1.5"}, "data.filters.min_ja_ratio", "<= 1"),
        ("data", {"sources": "[{path: a.jsonl, weight: -1}]"}, "data.sources[0].weight", ">= 0"),
        ("data", {"seed": "-1"}, "data.seed", ">= 0"),
        ("pretrain", {"train.max_steps": "0"}, "pretrain.train.max_steps", ">= 1, got 0"),
        ("pretrain", {"train.lr": "-1e-4"}, "pretrain.train.lr", "> 0"),
        ("pretrain", {"train.lr": "nan"}, "pretrain.train.lr", "finite"),
        ("pretrain", {"train.micro_batch_size": "0"}, "pretrain.train.micro_batch_size", ">= 1"),
        ("pretrain", {"train.betas": "[0.9, 1.0]"}, "pretrain.train.betas[1]", "< 1"),
        ("pretrain", {"train.save_every": "-2"}, "pretrain.train.save_every", "(or -1)"),
        ("sft", {"seq_len": "-3"}, "sft.seq_len", ">= 1"),
        ("sft", {"datasets": "[{path: x.jsonl, max_examples: -1}]"}, "sft.datasets[0].max_examples", ">= 0"),
        ("init", {"train.max_steps": "0"}, "init.train.max_steps", ">= 1"),
        ("init", {"val_fraction": "1"}, "init.val_fraction", "< 1"),
        ("vocab", {"new_pieces": "0"}, "vocab.new_pieces", ">= 1"),
        ("quantize", {"num_samples": "0"}, "quantize.num_samples", ">= 1"),
        ("quantize", {"group_size": "-2"}, "quantize.group_size", "(or -1)"),
        ("eval", {"limit": "-1"}, "eval.limit", ">= 0, got -1"),
        ("eval", {"shots": "{mgsm: -1}"}, "eval.shots.mgsm", ">= 0"),
        ("chat", {"top_p": "0"}, "chat.top_p", "> 0"),
        ("chat", {"seed": str(2**70)}, "chat.seed", "<= 4294967295"),
        ("serve", {"port": "70000"}, "serve.port", "<= 65535"),
        ("serve", {"max_batch_size": "0"}, "serve.max_batch_size", ">= 1"),
        ("report", {"eval_rows": "0"}, "report.eval_rows", ">= 1"),
    ],
)
def test_bad_config_values_name_the_field(stage, overrides, field, needle):

    module = importlib.import_module(STAGES[stage])
    with pytest.raises(ConfigError) as err:
        build_config(module.Config, None, overrides, where=stage)
    assert str(err.value).startswith(f"{field}: ") and needle in str(err.value), err.value


def test_bad_value_on_the_command_line_is_one_line_and_no_work_is_done(tmp_path, capsys):
    out = tmp_path / "pretrain"
    code = cli.main(["pretrain", "--out", str(out), "--train.max_steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err == "youri pretrain: error: pretrain.train.max_steps: must be >= 1, got 0\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--help"])
    assert "--train.max_steps INT" in (text := capsys.readouterr().out) and "[>= 1]" in text


def test_a_value_only_the_library_can_judge_is_still_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"init.vocab_size: SentencePiece cannot make 100 pieces.*smaller than"):
        train_tokenizer(["a small English text, with a few characters."] * 10, 100, tmp_path / "tok")


# ----------------------------------------------------------------------------- class 5: bytes and records


def test_jsonl_bad_bytes_name_file_and_line_or_are_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "bom ok"}\n{"text": "a' + BAD + b'"}\n\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8 \(byte 0xff at column 12\)"):
        list(iter_jsonl(path))
    skipped = SkipCounter()
    assert [n for n, _ in iter_jsonl(path, skip_bad=skipped)] == [1, 4] and skipped.count == 1


def test_text_json_and_recipe_readers_name_file_and_line(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(b"first line\r\nsecond " + BAD + b"\n")
    with pytest.raises(DataError, match=r"t.txt:2: not valid UTF-8 \(byte 0xff at column 8"):
        read_text(text)
    config = tmp_path / "c.json"
    config.write_bytes(b'{"a":\n "' + BAD + b'"}')
    with pytest.raises(DataError, match=r"c.json:2: not valid UTF-8"):
        read_json(config)
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"data:\n  seq_len: 8 # " + BAD + b"\n")
    with pytest.raises(ConfigError, match=r"r.yaml:2: not valid UTF-8"):
        load_recipe(recipe)


def test_corpus_text_source_bad_bytes_fail_or_are_skipped_per_document(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"one document.\n\ntwo " + BAD + b" bad.\n\nthree \xe3\x81 cut.\n\nfour fine.\n")
    source = Source(path=str(corpus), lang="en")
    with pytest.raises(DataError, match=r"c.txt:3: not valid UTF-8 \(byte 0xff at column 5\)"):
        list(iter_records(source, None))
    skipped = SkipCounter()
    texts = [text for _, _, text in iter_records(source, skipped)]
    assert texts == ["one document.", "four fine.\n"] and skipped.count == 2
    assert "c.txt:5: not valid UTF-8 (byte 0xe3 at column 7)" in skipped.examples[1]


def test_sft_and_eval_readers_reject_bad_bytes_with_file_and_line(tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "' + BAD + b'", "output": "b"}\n')
    with pytest.raises(DataError, match=r"sft.jsonl:2: not valid UTF-8"):
        read_dataset(DatasetConfig(str(sft)), "instruction")
    skipped = SkipCounter()
    assert len(read_dataset(DatasetConfig(str(sft)), "instruction", skipped)) == 1 and skipped.count == 1
    evaldata = tmp_path / "valid.jsonl"
    evaldata.write_bytes(b'{"sentence": "ok"}\n{"sentence": "' + BAD + b'"}\n')
    with pytest.raises(DataError, match=r"valid.jsonl:2: not valid UTF-8"):
        read_records(str(evaldata), {"sentence": str})

    tsv = tmp_path / "mgsm.tsv"
    tsv.write_bytes(b"question one\t1\nquestion " + BAD + b"\t2\n")
    with pytest.raises(DataError, match=r"mgsm.tsv:2: not valid UTF-8"):
        load_eval(str(tsv))


@pytest.mark.parametrize(
    "shape, record, needle",
    [
        ("messages", {"messages": []}, "field 'messages' is empty"),
        (
            "messages",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
            "field 'messages[1].content' is empty",
        ),
        ("instruction", {"instruction": "", "output": "x"}, "field 'instruction' is empty"),
        ("instruction", {"instruction": "x", "output": ""}, "field 'output' is empty"),
        ("instruction", {"instruction": "x", "instances": [{"input": "", "output": "  "}]}, "field 'output' is empty"),
        ("persona", {"interlocutors": ["A", "B"], "utterances": []}, "field 'utterances' is empty"),
        (
            "persona",
            {"interlocutors": ["A", "B"], "utterances": [{"interlocutor_id": "A", "text": ""}]},
            "field 'text' is empty",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["instruction", "chat"])
def test_empty_sft_records_fail_with_file_line_and_field(tmp_path, shape, record, needle, kind):
    good = {
        "instruction": {"instruction": "ok", "output": "fine"},
        "messages": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        "persona": {"interlocutors": ["A", "B"], "utterances": [{"interlocutor_id": "A", "text": "hi"}]},
    }[shape]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    (tmp_path / "personas.jsonl").write_text(json.dumps({"interlocutor_id": "B", "persona": ["猫。"]}) + "\n")
    with pytest.raises(DataError, match=rf"d.jsonl:2: {re.escape(needle)}"):
        read_dataset(DatasetConfig(str(path), shape=shape), kind)


# ----------------------------------------------------------------------------- class 7: bookkeeping


def test_progress_log_appends_one_line_per_shard_and_survives_a_cut_line(tmp_path):
    path = tmp_path / "progress.jsonl"
    log = ProgressLog(path)
    for i in range(3):
        log.record({"file": f"train/{i:05d}.bin", "sequences": 4, "sha256": str(i)})
    log.close()
    assert path.read_text().count("\n") == 3  # appended, never rewritten
    with path.open("ab") as handle:
        handle.write(b'{"file": "train/00003.bin", "seq')  # killed in the middle of a line
    again = ProgressLog(path)
    assert sorted(again.entries) == [f"train/{i:05d}.bin" for i in range(3)]
    again.record({"file": "train/00003.bin", "sequences": 4, "sha256": "3"})
    again.close()
    assert ProgressLog(path).get("train/00003.bin")["sha256"] == "3"


def test_shard_writer_records_each_shard_once_and_resumes_from_the_log(tmp_path):

    n, length = 40, 9
    tokens = np.arange(3, 3 + n * length, dtype=np.uint32)
    zeros = np.zeros(n, dtype=np.int64)
    docs = Documents(
        keys=np.stack([zeros, zeros, np.arange(n)], 1),
        lengths=np.full(n, length),
        chars=zeros,
        digest=np.zeros((n, 2), np.uint64),
        sig=np.zeros((n, 1), np.uint64),
        task=np.zeros(n, np.int32),
        start=np.arange(n) * length,
        tokens=[tokens],
    )
    writer = ShardWriter(tmp_path, 8, 4, np.dtype("<u2"), eos_id=2)
    entries, totals = writer.write("train", docs, np.arange(n))
    writer.progress.close()
    lines = (tmp_path / PROGRESS).read_text().splitlines()
    assert len(entries) == totals["shards"] == len(lines) == writer.written > 3
    again = ShardWriter(tmp_path, 8, 4, np.dtype("<u2"), eos_id=2)
    assert again.write("train", docs, np.arange(n))[0] == entries and again.written == 0
