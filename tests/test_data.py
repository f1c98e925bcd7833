"""youri data: normalisation, filters, dedup, readers, and the whole pipeline on the shared corpora."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, shared_path

import youri.data.corpus as data
from youri.config import build_config
from youri.data.filters import Filters, boilerplate_phrases, drop_reason, features, find_duplicates, nfkc, normalize
from youri.data.shards import TokenShards, read_index
from youri.data.steps import Source, iter_records, source_files
from youri.io import DataError, SkipCounter, resolve_path
from youri.stage import is_complete

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fast_tokenizer(tmp_path_factory) -> Path:
    """A fast tokenizer folder for the pipeline tests: Llama 2's converted once to tokenizer.json (loading
    tokenizer.model converts it every time), or without ../shared a tiny byte-level BPE trained on the sample."""
    from youri.model import load_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    llama = SHARED_DATA / "llama2-tokenizer"
    if llama.is_dir():
        load_tokenizer(llama).save_pretrained(str(folder))
    else:
        _tiny_bpe(folder)
    return folder


def _tiny_bpe(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    english = resolve_path("builtin:corpus_en.txt").read_text(encoding="utf-8")
    tokenizer.train_from_iterator(english.split("\n\n"), trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    ).save_pretrained(str(folder))


def _config(out: Path, tokenizer, sources: list[dict], **over) -> data.Config:
    return build_config(data.Config, {"out": str(out), "tokenizer": str(tokenizer), "sources": sources, **over})


SAMPLES = [
    {"path": "builtin:corpus_ja.jsonl", "lang": "ja", "weight": 9},
    {"path": "builtin:corpus_en.txt", "lang": "en", "weight": 1},
]


def _payload(folder: Path) -> dict[str, bytes]:
    """Everything that must be byte-identical between two runs with one seed (not the timestamps)."""
    files = sorted(p for p in folder.rglob("*.bin")) + [folder / "index.json", folder / "stats.json"]
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


# ----------------------------------------------------------------------------- normalisation


def test_normalize_japanese_aware_nfkc_and_whitespace():
    text = "\ufeff　ＡＢＣ１２３！　ｽﾏｰﾄﾌｫﾝ「吾輩」、猫。……‥\u200b\r\n\r\n\r\n\r\n  次の\t\t段落  です  "
    assert normalize(text) == "ABC123! スマートフォン「吾輩」、猫。……‥\n\n次の 段落 です"
    assert normalize("か\u3099") == "が" and normalize("㈱①") == "(株)1"


def test_nfkc_equals_unicodedata_except_protected():
    tricky = "ｶﾞｷﾞ か\u3099 ＡＢＣ１２３ ㈱ ①… ‥ 각 \u1100\u1161\u11a8 e\u0301\u0323 ＫＫ…？ ﾊﾟﾝ　全角 ﬁ ㍻"
    sample = json.loads(resolve_path("builtin:corpus_ja.jsonl").read_text(encoding="utf-8").splitlines()[200])["text"]
    for text in (tricky, sample, tricky.replace("…", "").replace("‥", "")):
        pieces = text.split("…")
        expected = "…".join("‥".join(unicodedata.normalize("NFKC", q) for q in p.split("‥")) for p in pieces)
        assert nfkc(text) == expected
    assert nfkc("plain ascii") == "plain ascii"


# ----------------------------------------------------------------------------- filters and dedup


def _reason(text: str, lang: str = "ja", **cfg) -> str | None:
    found = features([text], 5, 112)
    filters = Filters(**cfg)
    return drop_reason(
        text,
        lang,
        float(found.ja_ratio[0]),
        float(found.dup_ngram_frac[0]),
        filters,
        boilerplate_phrases(filters.boilerplate),
    )


def test_each_filter_has_its_reason():
    good = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
    assert _reason(good) is None
    assert _reason("") == "empty"
    assert _reason("短い文。") == "too_short"
    assert _reason(good, max_chars=10) == "too_long"
    english = "This page is written in English with only one word of 日本語 at the end."
    assert _reason(english) == "low_ja_ratio" and _reason(english, lang="en") is None
    assert _reason("本日は晴天なり。" * 30) == "dup_ngrams"
    lines = "\n".join(["今日は雨が降っています。", "明日は晴れるでしょう。"] * 3 + ["お元気で。"])
    assert _reason(lines, max_dup_ngram_frac=1.0) == "dup_lines"
    footer = good + "\nCopyright © 2024 All Rights Reserved.\n無断転載を禁じます。"
    assert _reason(footer) == "boilerplate" and _reason(footer, boilerplate=[]) is None


def test_features_ratio_repetition_and_minhash_similarity():
    a = "富士山は静岡県と山梨県にまたがる日本最高峰の山で、標高は3776メートルです。夏には多くの人が山頂を目指します。"
    b = a.replace("多くの人", "大勢の人")
    c = "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate."
    found = features([a, b, c, "短い"], 5, 112)
    assert found.ja_ratio[0] > 0.8 and found.ja_ratio[2] == 0.0
    assert found.dup_ngram_frac[0] < 0.1 and features(["ab" * 200], 5, 112).dup_ngram_frac[0] > 0.9
    same = lambda i, j: float(np.mean(found.signatures[i] == found.signatures[j]))  # noqa: E731
    assert same(0, 1) > 0.7 and same(0, 2) < 0.1
    assert np.all(found.signatures[3] == np.iinfo(np.uint64).max)  # shorter than one n-gram: no sketch
    # A batch gives each text the signature it gets alone (the concatenation never leaks across texts).
    assert np.array_equal(features([b], 5, 112).signatures[0], found.signatures[1])


def test_find_duplicates_exact_near_first_wins():
    base = "京都市は794年に平安京が置かれて以来、千年以上にわたって都として栄えた町です。寺院や神社が数多く残ります。"
    texts = [
        base,
        "全く別の話題として、味噌汁は日本の家庭料理の基本であり、毎朝の食卓に並びます。",
        base,
        base.replace("数多く", "たくさん"),
        "短い",
        "短い",
    ]
    digests = np.stack([np.frombuffer(hashlib.blake2b(t.encode(), digest_size=16).digest(), np.uint64) for t in texts])
    sigs = features(texts, 5, 112).signatures
    assert find_duplicates(digests, sigs) == [None, None, "exact_dup", "near_dup", None, "exact_dup"]
    assert find_duplicates(digests, sigs, near=False) == [None, None, "exact_dup", None, None, "exact_dup"]
    assert find_duplicates(digests, sigs, exact=False)[2:4] == ["near_dup", "near_dup"]


# ----------------------------------------------------------------------------- readers


def test_readers_text_splits_parquet_and_datasets_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    text = tmp_path / "a.txt"
    text.write_text("one\ntwo\n\n\nthree\n", encoding="utf-8")
    records = lambda **kw: [r[2] for r in iter_records(Source(path=str(text), **kw), None)]  # noqa: E731
    assert records() == ["one\ntwo", "three\n"]
    assert records(doc_split="line") == ["one", "two", "three"]
    assert records(doc_split="file") == ["one\ntwo\n\n\nthree\n"]
    pq.write_table(pa.table({"body": ["x", None, "y"]}), tmp_path / "t.parquet")
    skip = SkipCounter()
    assert [r[2] for r in iter_records(Source(path=str(tmp_path / "t.parquet"), text_field="body"), skip)] == ["x", "y"]
    assert skip.count == 1 and "row 1" in skip.examples[0]
    with pytest.raises(DataError, match="missing column 'text'"):
        list(iter_records(Source(path=str(tmp_path / "t.parquet")), None))
    Dataset.from_dict({"text": ["d1", "d2"]}).save_to_disk(str(tmp_path / "ds"))
    assert source_files(Source(path=str(tmp_path / "ds")))[1] == "hf_disk"
    assert [r[2] for r in iter_records(Source(path=str(tmp_path / "ds")), None)] == ["d1", "d2"]
    # Ordinal sharding: two tasks split one file between them, together they read it once.
    halves = [
        [r[1] for r in iter_records(Source(path=str(text), doc_split="line"), None, lambda o, k=k: o % 2 == k)]
        for k in (0, 1)
    ]
    assert halves == [[0, 4], [1]]  # record index = line index; ordinals 0, 2 vs 1


def test_bad_jsonl_line_names_file_and_line_and_leaves_nothing_complete(tmp_path, fast_tokenizer):
    corpus = tmp_path / "c.jsonl"
    topics = [
        "富士山は日本で一番高い山です。",
        "味噌汁は毎朝の食卓に並びます。",
        "京都には古い寺が多く残っています。",
        "北海道の冬はとても寒く、雪が深く積もります。",
        "図書館で静かに本を読むのが好きです。",
        "電車は時間通りに駅へ着きました。",
    ]
    good = [json.dumps({"text": t * 2}, ensure_ascii=False) for t in topics]
    corpus.write_text("\n".join(good[:3] + ['{"text": "壊れた行'] + good[3:]) + "\n", encoding="utf-8")
    cfg = _config(tmp_path / "out", fast_tokenizer, [{"path": str(corpus)}], val_docs=0, seq_len=16)
    with pytest.raises(DataError, match=rf"{corpus}:4: malformed JSONL"):
        data.run(cfg)
    assert not (tmp_path / "out").exists() and not is_complete(tmp_path / "out.partial")
    cfg.skip_bad_records = True
    data.run(cfg)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["sources"][0]
    assert stats["docs_in"] == 7 and stats["dropped"] == {"bad_record": 1} and stats["kept"] == 6
    assert f"{corpus}:4" in stats["bad_record_examples"][0]


def test_missing_text_field_names_the_field(tmp_path, fast_tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "一行目の文書です。"}\n{"body": "二行目"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{corpus}:2: missing field 'text' \(fields present: body\)"):
        data.run(_config(tmp_path / "out", fast_tokenizer, [{"path": str(corpus)}]))
    assert not is_complete(tmp_path / "out.partial")


# ----------------------------------------------------------------------------- whole pipeline


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory, llama2_tokenizer_dir):
    """The acceptance setting: Wikipedia + Aozora (ja) : Tiny Shakespeare (en) = 9 : 1, Llama 2, seq_len 512."""
    sources = [
        {
            "path": str(shared_path("wikipedia-annotated-corpus-ja", "train.jsonl")),
            "lang": "ja",
            "weight": 2,
            "name": "wikipedia",
        },
        {
            "path": str(shared_path("aozora-bunko-ja", "aozora_clean.jsonl")),
            "lang": "ja",
            "weight": 7,
            "name": "aozora",
        },
        {"path": str(shared_path("tinyshakespeare-en", "input.txt")), "lang": "en", "weight": 1, "name": "shakespeare"},
    ]
    root = tmp_path_factory.mktemp("shared-runs")
    tokenizer = llama2_tokenizer_dir / "tokenizer.model"
    outs = [data.run(_config(root / name, tokenizer, sources, seq_len=512, seed=7)) for name in ("a", "b")]
    return outs, sources


def test_shared_corpora_token_counts_match_report_and_mixture(shared_runs):
    (out, _), _ = shared_runs
    index = read_index(out)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert index["format"] == "youri-tokens-v1" and index["seq_len"] == 512 and index["eos_id"] == 2
    assert index["dtype"] == "<u2" and index["vocab_size"] == 32000
    assert set(index["splits"]) == {"train", "val/ja", "val/en"}
    for split, total in stats["splits"].items():
        shards = TokenShards.open(out, split)
        on_disk = sum((out / e["file"]).stat().st_size for e in index["splits"][split]) // 2
        assert shards.num_tokens == on_disk == total["tokens"] == total["sequences"] * 512 > 0
    train = stats["splits"]["train"]
    assert metrics["train_tokens"] == train["tokens"]
    by_name = {s["source"]: s for s in stats["sources"]}
    sampled = {name: s["train_tokens"] for name, s in by_name.items()}
    assert sum(sampled.values()) == train["tokens"] + train["tail_tokens_dropped"]
    ja_share = (sampled["wikipedia"] + sampled["aozora"]) / sum(sampled.values())
    assert abs(ja_share - 0.9) < 0.005, sampled
    assert by_name["shakespeare"]["effective_epochs"] < 1 < by_name["aozora"]["effective_epochs"]
    assert 0.75 < by_name["aozora"]["chars_per_token"] < 0.9 and 2.8 < by_name["shakespeare"]["chars_per_token"] < 3.4
    assert by_name["wikipedia"]["dropped"]["too_short"] > 0 and by_name["aozora"]["kept"] == 32


def test_shared_corpora_decode_to_the_normalised_documents(shared_runs):
    (out, _), sources = shared_runs
    from youri.model import load_tokenizer

    tokenizer = load_tokenizer(out / "tokenizer")
    documents = {normalize(text) for s in sources for _, _, text in iter_records(Source(**s), None)}
    for split in ("train", "val/ja", "val/en"):
        shards = TokenShards.open(out, split)
        stream = np.concatenate([np.fromfile(f, dtype=shards.dtype) for f in shards.files]).astype(np.int64)
        cuts = np.flatnonzero(stream == 2)
        pieces = np.split(stream, cuts + 1)[:-1]  # the last piece is cut by the final row boundary
        assert len(pieces) > 0 and all(p[-1] == 2 and 2 not in p[:-1] for p in pieces)
        decoded = tokenizer.batch_decode([p[:-1].tolist() for p in pieces])
        missing = [d for d in decoded if d not in documents]
        assert not missing, (split, missing[:2])
        for piece, text in list(zip(pieces, decoded))[:20]:  # no BOS, same ids as the HF tokenizer call
            assert piece[:-1].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
        if split == "train":  # upsampled Japanese: every kept Aozora work appears
            assert sum(d.startswith("一\n\n吾輩は猫である。") for d in decoded) >= 1


def test_same_seed_gives_byte_identical_output(shared_runs):
    (a, b), _ = shared_runs
    assert _payload(a) == _payload(b) and len(_payload(a)) > 4


def test_task_count_and_workers_do_not_change_output(tmp_path, fast_tokenizer):
    base = data.run(_config(tmp_path / "one", fast_tokenizer, SAMPLES, seq_len=64))
    split = data.run(_config(tmp_path / "three", fast_tokenizer, SAMPLES, seq_len=64, tasks=3))
    forked = data.run(_config(tmp_path / "forked", fast_tokenizer, SAMPLES, seq_len=64, tasks=2, workers=2))
    assert _payload(base) == _payload(split) == _payload(forked)
    other_seed = data.run(_config(tmp_path / "seed", fast_tokenizer, SAMPLES, seq_len=64, seed=1))
    assert _payload(other_seed)["train/00000.bin"] != _payload(base)["train/00000.bin"]


def test_sample_rejects_are_dropped_by_reason(tmp_path, fast_tokenizer):
    out = data.run(_config(tmp_path / "out", fast_tokenizer, SAMPLES, seq_len=512, val_docs=2))
    ja, en = json.loads((out / "stats.json").read_text(encoding="utf-8"))["sources"]
    assert ja["dropped"] == {
        "boilerplate": 1,
        "dup_ngrams": 1,
        "exact_dup": 3,
        "low_ja_ratio": 2,
        "near_dup": 3,
        "too_short": 3,
    }
    assert (ja["docs_in"], ja["kept"], en["docs_in"], en["dropped"]) == (299, 286, 354, {})
    # Two documents do not fill a 512-token sequence: more are held out, so each val split has one
    index = read_index(out)
    assert all(sum(e["sequences"] for e in index["splits"][f"val/{lang}"]) == 1 for lang in ("ja", "en"))
    assert en["val_docs"] > 2


def _shard_name(path) -> str:
    return "/".join(Path(path).parts[-2:])


def test_interrupted_run_resumes_without_redoing_finished_shards(tmp_path, fast_tokenizer, monkeypatch):
    cfg = dict(seq_len=64, shard_size=50)
    reference = data.run(_config(tmp_path / "ref", fast_tokenizer, SAMPLES, **cfg))
    total = len(read_index(reference)["splits"]["train"])
    assert total >= 5
    real_write, written = data.write_shard, []

    def crash_after_three(path, rows, dtype):
        if len(written) == 3:
            raise KeyboardInterrupt("simulated kill")
        written.append(_shard_name(path))
        return real_write(path, rows, dtype)

    monkeypatch.setattr(data, "write_shard", crash_after_three)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        data.run(_config(out, fast_tokenizer, SAMPLES, **cfg))
    partial = tmp_path / "out.partial"
    assert not out.exists() and not is_complete(partial) and not (partial / "index.json").exists()
    first = {p.name: p.stat().st_mtime_ns for p in (partial / "train").glob("*.bin")}
    assert sorted(first) == ["00000.bin", "00001.bin", "00002.bin"]
    (partial / "train" / "00001.bin").write_bytes(b"corrupt")  # a damaged shard is rewritten, not trusted

    tokenised = []
    monkeypatch.setattr(data, "write_shard", lambda *a: written.append(_shard_name(a[0])) or real_write(*a))
    real_save = data.TokenizeSketch._save
    monkeypatch.setattr(data.TokenizeSketch, "_save", lambda self, *a: tokenised.append(1) or real_save(self, *a))
    written.clear()
    data.run(_config(out, fast_tokenizer, SAMPLES, **cfg))
    assert tokenised == []  # the finished datatrove task was not run again
    assert "train/00000.bin" not in written and "train/00002.bin" not in written and "train/00001.bin" in written
    assert (out / "train" / "00000.bin").stat().st_mtime_ns == first["00000.bin"]
    val_shards = sum(len(v) for k, v in read_index(reference)["splits"].items() if k.startswith("val/"))
    assert len(written) == total - 2 + val_shards  # the rest of train (00001 again) + the val shards
    assert _payload(out) == _payload(reference)


def test_cli_recipe_flags_and_misspelt_key(tmp_path, fast_tokenizer, capsys):
    from youri.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data:\n  sources:\n    - {path: 'builtin:corpus_ja.jsonl', lang: ja, weight: 9}\n"
        "    - {path: 'builtin:corpus_en.txt', lang: en, weight: 1}\n  seq_len: 512\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "--recipe",
                str(recipe),
                "--tokenizer",
                str(fast_tokenizer),
                "--out",
                str(out),
                "--seq_len",
                "128",
                "--filters.min_chars",
                "10",
                "--dedup.near",
                "false",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "youri.json").read_text(encoding="utf-8"))
    assert manifest["stage"] == "data" and manifest["config"]["seq_len"] == 128
    assert manifest["config"]["filters"]["min_chars"] == 10 and read_index(out)["seq_len"] == 128
    assert "corpus_ja.jsonl" in capsys.readouterr().out  # the printed table
    recipe.write_text(recipe.read_text(encoding="utf-8").replace("seq_len", "seq_lne"), encoding="utf-8")
    misspelt = ["data", "--recipe", str(recipe), "--tokenizer", str(fast_tokenizer), "--out", str(tmp_path / "x")]
    assert main(misspelt) == 2
    assert "unknown key 'seq_lne'; did you mean 'seq_len'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "--recipe", str(recipe), "--seq_lne", "3"])
    assert "did you mean '--seq_len'?" in capsys.readouterr().err


def test_cluster_executor_returning_early_resumes_on_the_next_call(tmp_path, fast_tokenizer, monkeypatch, capsys):
    """A Slurm/Ray executor may return before its tasks end: no output yet; the same command later finishes."""
    from datatrove import executor as executors

    calls = []

    class FakeSlurm(executors.LocalPipelineExecutor):  # "submits" by running only the tasks it has time for
        def __init__(self, pipeline, *, tasks, logging_dir, workers, partition, time):
            calls.append({"partition": partition, "time": time, "tasks": tasks})
            super().__init__(
                pipeline, tasks=tasks, workers=1, logging_dir=logging_dir, local_tasks=1 if len(calls) == 1 else -1
            )

    monkeypatch.setattr(executors, "SlurmPipelineExecutor", FakeSlurm)
    cfg = _config(
        tmp_path / "out",
        fast_tokenizer,
        SAMPLES,
        seq_len=64,
        tasks=2,
        executor="slurm",
        executor_options={"partition": "cpu", "time": "01:00:00"},
    )
    data.run(cfg)
    assert "1 of 2 datatrove tasks are still running on the slurm executor" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    data.run(cfg)
    assert is_complete(tmp_path / "out") and calls[-1] == {"partition": "cpu", "time": "01:00:00", "tasks": 2}
    assert _payload(tmp_path / "out") == _payload(
        data.run(_config(tmp_path / "local", fast_tokenizer, SAMPLES, seq_len=64))
    )
    cfg.executor_options = {"partition": "cpu"}
    with pytest.raises(ValueError, match="executor_options for SlurmPipelineExecutor.*time"):
        cfg.out = str(tmp_path / "x")
        data.run(cfg)


def test_tokenizer_copied_as_is_and_its_facts_equal_transformers(tmp_path, fast_tokenizer):
    """A HF tokenizer folder is copied byte for byte; EOS id and size read without transformers equal
    the transformers tokenizer's (for Llama 2's and for a tokenizer with an extra added token)."""
    from youri.model import load_tokenizer

    extended = tmp_path / "extended"
    tokenizer = load_tokenizer(fast_tokenizer)
    tokenizer.add_tokens(["<extra_ja>"])
    tokenizer.save_pretrained(str(extended))
    for folder in (fast_tokenizer, extended):
        out = tmp_path / f"out-{folder.name}"
        data.run(_config(out, folder, SAMPLES, seq_len=64, val_docs=0))
        for name in data.TOKENIZER_FILES:
            if (folder / name).is_file():
                assert (out / "tokenizer" / name).read_bytes() == (folder / name).read_bytes()
        hf = load_tokenizer(folder)
        index = json.loads((out / "index.json").read_text())
        assert (index["eos_id"], index["vocab_size"]) == (hf.eos_token_id, len(hf))
        assert data.tokenizer_facts(out / "tokenizer") == data.TokenizerFacts(hf.eos_token_id, len(hf), None)
    assert json.loads((tmp_path / "out-extended" / "index.json").read_text())["vocab_size"] == len(tokenizer)
