"""youri eval: byte-exact jp-stable prompts, JP-8 metrics, lm-eval plumbing, tiny-model runs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_path

from youri import cli
from youri.config import ConfigError, build_config
from youri.eval import metrics as jp_metrics
from youri.eval.evaluate import Config, run
from youri.eval.presets import PRESETS
from youri.eval.tasks import select
from youri.eval.tasks.base import RenderOptions, render
from youri.io import DataError
from youri.testing import save_random_llama

FIXTURES = Path(__file__).parent / "fixtures" / "jp_eval"
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "specs" / "jp-eval-vectors"
SHARED_DATA = {
    "jcommonsenseqa": {
        "eval": "jglue-jcommonsenseqa/valid-v1.3.json",
        "fewshot": "jglue-jcommonsenseqa/train-v1.3.json",
    },
    "jnli": {"eval": "jglue-jnli/valid-v1.3.json", "fewshot": "jglue-jnli/test-v1.3.json"},
    "jnli-1.1": {"eval": "jglue-jnli/valid-v1.1.json", "fewshot": "jglue-jnli/test-v1.3.json"},
    "jsquad": {"eval": "jglue-jsquad/valid-v1.3.json", "fewshot": "jglue-jsquad/test-v1.3.json"},
    "xwinograd_ja": {"eval": "xwinograd-ja/xwinograd_jp.jsonl"},
    "mgsm": {"eval": "mgsm-ja/mgsm_ja.tsv", "fewshot": "mgsm-ja/mgsm_ja_exemplars.jsonl"},
}
FIXTURE_DATA = {
    "marc_ja": {"eval": str(FIXTURES / "marc_ja_valid.jsonl"), "fewshot": str(FIXTURES / "marc_ja_train.jsonl")},
    "jaqket_v2": {"eval": str(FIXTURES / "jaqket_v2_dev.jsonl"), "fewshot": str(FIXTURES / "jaqket_v2_train.jsonl")},
    "xlsum_ja": {"eval": str(FIXTURES / "xlsum_ja_test.jsonl"), "fewshot": str(FIXTURES / "xlsum_ja_train.jsonl")},
}
FIVE = ["jcommonsenseqa", "jnli", "jsquad", "xwinograd_ja", "mgsm"]


def _cfg(**kw) -> Config:
    return build_config(Config, kw)


@pytest.fixture(scope="module")
def llama2_tok(llama2_tokenizer_dir):
    from youri.model import load_tokenizer

    return load_tokenizer(llama2_tokenizer_dir)


# ----------------------------------------------------------------------------- byte-exact prompts


def test_write_requests_reproduces_every_vector(tmp_path, llama2_tokenizer_dir):
    data_dir = shared_path()
    files = sorted(VECTORS.glob("*.jsonl"))
    assert len(files) >= 12
    vectors = {f.name: [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()] for f in files}
    keys = [v[0]["task"] for v in vectors.values()]
    out = tmp_path / "requests.jsonl"
    code = cli.main(
        [
            "eval",
            str(llama2_tokenizer_dir),
            "--tasks",
            json.dumps(keys),
            "--data_dir",
            str(data_dir),
            "--data",
            json.dumps(SHARED_DATA),
            "--limit",
            "3",
            "--write_requests",
            str(out),
        ]
    )
    assert code == 0
    got = {}
    for line in out.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        got[(record["task"], record["doc_index"])] = record
    compared = 0
    for name, records in vectors.items():
        for want in records:
            have = got[(want["task"], want["doc_index"])]
            for field in (
                "version",
                "doc_id",
                "source_row",
                "prompt",
                "continuations",
                "contexts",
                "gold",
                "stop_sequences",
            ):
                if field in want:
                    assert have[field] == want[field], f"{name} doc {want['doc_index']}: {field} differs"
            if "max_new_tokens_llama2_tokenizer" in want:  # hf-causal's gold-length cap, Llama-2 tokens
                assert have["max_new_tokens"] == want["max_new_tokens_llama2_tokenizer"]
            compared += 1
    assert compared == 36


def test_jnli_11_and_13_differ_in_labels_and_sampling():
    data = shared_path()
    docs = select("jnli").task.load_eval(str(data / SHARED_DATA["jnli"]["eval"]))
    pool = select("jnli").task.load_fewshot(str(data / SHARED_DATA["jnli"]["fewshot"]))
    r13 = render(select("jnli").task, "1.3", "0.3", docs, pool, 3, 4, RenderOptions())
    r11 = render(select("jnli").task, "1.1", "0.3", docs, pool, 3, 4, RenderOptions())
    assert r13[0]["continuations"] == ["含意", "矛盾", "中立"] and r11[0]["continuations"][0] == "entailment"
    for record in r13:  # stratified 3-shot with JNLI's label ratios: exactly one example per label
        answers = [line for line in record["prompt"].split("### 応答:\n")[1:-1]]
        assert sorted(a.split("\n")[0] for a in answers) == ["中立", "含意", "矛盾"]


# ----------------------------------------------------------------------------- fixtures of the n/a tasks


def test_marc_jaqket_xlsum_render_in_their_real_schemas():
    marc = render(select("marc_ja-1.1-0.5").task, "1.1", "0.5", *_docs("marc_ja"), 3, None, RenderOptions())
    assert len(marc) == 6 and marc[0]["continuations"] == ["ポジティブ", "ネガティブ"]
    assert marc[0]["prompt"].startswith(
        "ユーザー: 与えられた製品レビューを、ポジティブまたはネガティブの感情クラスのいずれかに"
        "分類してください。\nシステム: 分かりました。\nユーザー: "
    )
    assert marc[0]["prompt"].count("ユーザー: ") == 5 and marc[0]["prompt"].endswith("\nシステム: ")
    marc02 = render(select("marc_ja").task, "1.1", "0.2", *_docs("marc_ja"), 3, 1, RenderOptions())
    assert marc02[0]["continuations"] == ["positive", "negative"]

    jaqket = render(select("jaqket_v2").task, "0.2", "0.3", *_docs("jaqket_v2"), 1, None, RenderOptions())
    assert len(jaqket) == 3  # QA20QBIK-0002 has its answer only in passage 6: the loader drops it
    assert "QA20QBIK-0002" not in {r["doc_id"] for r in jaqket}
    first = jaqket[0]["prompt"]
    assert first.count("### 指示:\n与えられた文脈から、質問に対する答えを抜き出してください。") == 2
    assert "4に関する文章です。\n質問：" in first and "5に関する文章" not in first  # passages 1-5, no 6th
    assert jaqket[0]["stop_sequences"] == ["\n"]

    xlsum = render(select("xlsum_ja").task, "1.0", "0.0", *_docs("xlsum_ja"), 1, None, RenderOptions())
    assert xlsum[0]["prompt"].startswith("与えられたニュース記事を要約してください。\n\nニュース記事:")
    assert xlsum[0]["prompt"].endswith("\n要約:") and xlsum[0]["prompt"].count("要約:") == 2


def test_xlsum_overlong_context_is_shortened_with_the_model_tokenizer(llama2_tok):
    opts = RenderOptions(
        token_len=lambda s: len(llama2_tok.encode(s, add_special_tokens=False)),
        max_length=80,
        decode_prefix=lambda s, n: llama2_tok.decode(llama2_tok.encode(s, add_special_tokens=False)[:n]),
    )
    full = render(select("xlsum_ja").task, "1.0", "0.0", *_docs("xlsum_ja"), 1, 1, RenderOptions())[0]["prompt"]
    short = render(select("xlsum_ja").task, "1.0", "0.0", *_docs("xlsum_ja"), 1, 1, opts)[0]
    assert len(short["prompt"]) < len(full) and short["prompt"].count("要約:") == 2
    assert opts.stats["xlsum_truncated"] == 1
    # budget 80 - (summary tokens + 10) = 48 over 2 pieces -> 24 tokens of article each; the first sentence is
    # longer, so each article becomes its first 24 tokens decoded, plus SEP (protocol 5.4).
    assert short["max_new_tokens"] == 32
    pieces = short["prompt"].split("ニュース記事:")[1:]
    articles = [p.split("\n要約:")[0] for p in pieces]
    assert articles == ["東京の政府は本日、新しい政策", "札幌の政府は本日、新しい"]
    assert all(opts.token_len(a) <= 24 for a in articles) and pieces[0].endswith("発表された。\n\n")


def _docs(name: str):
    task = select(name).task
    return task.load_eval(FIXTURE_DATA[name]["eval"]), task.load_fewshot(FIXTURE_DATA[name]["fewshot"])


# ----------------------------------------------------------------------------- metrics


def test_exact_match_and_mecab_f1_with_neologdn():
    assert jp_metrics.exact_match("１２月１８日", ["12月18日"]) == 1.0  # width folding
    assert jp_metrics.exact_match(" 教育 ", ["教育"]) == 1.0
    assert jp_metrics.exact_match("教育😀", ["教育"]) == 1.0  # emoji removed
    assert jp_metrics.exact_match("教育。", ["教育"]) == 0.0  # no punctuation removal in EM
    assert jp_metrics.exact_match("制度", ["教育", "制度"]) == 1.0  # any reference
    # 東京/の/教育 vs 教育/制度: 1 common token, P=1/3, R=1/2 -> F1 = 0.4
    assert jp_metrics.mecab_f1("東京の教育", ["教育制度"]) == pytest.approx(0.4)
    # max over references; "。" is dropped as punctuation -> 教育 vs 教育 = 1
    assert jp_metrics.mecab_f1("教育。", ["制度", "教育"]) == pytest.approx(1.0)
    assert jp_metrics.mecab_f1("猫", ["犬"]) == 0.0


class _Chars:
    def tokenize(self, text):
        return list(text)


def test_rouge2_uses_the_given_tokenizer(llama2_tok):
    # abcd vs abce: bigrams {ab, bc, cd} vs {ab, bc, ce}, 2 overlap -> P = R = F = 2/3
    assert jp_metrics.rouge2("abcd", "abce", _Chars()) == pytest.approx(2 / 3)
    ref, pred = "東京都は新しい政策を発表した。", "東京都が新しい政策を発表しました。"
    # The harness's number (protocol 6.3): Llama-2 pieces 83.33; the MeCab alternative 63.16.
    assert 100 * jp_metrics.rouge2(ref, pred, llama2_tok) == pytest.approx(83.33, abs=0.01)
    assert 100 * jp_metrics.rouge2(ref, pred, jp_metrics.MecabTokenizer()) == pytest.approx(63.16, abs=0.01)


def test_mgsm_number_extraction():
    assert jp_metrics.mgsm_extract("5+6=11。答えは11です。") == 11
    assert jp_metrics.mgsm_extract("合計は1,234.") == 1234
    assert jp_metrics.mgsm_extract("-7 から 12.0 になる") == 12
    assert jp_metrics.mgsm_extract("答えは3.5です") is None  # not integral
    assert jp_metrics.mgsm_extract("答えは１２です") is None  # only ASCII digits count
    assert jp_metrics.mgsm_extract("わかりません") is None


# ----------------------------------------------------------------------------- lm-eval plumbing


def _fixture_configs(tmp_path):
    from youri.eval import lm_eval_bridge as bridge
    from youri.eval.evaluate import render_selected
    from youri.io import write_jsonl

    configs, rendered = [], {}
    for spec, name in (
        ("marc_ja-1.1-0.3", "marc_ja"),
        ("jaqket_v2-0.2-0.3", "jaqket_v2"),
        ("xlsum_ja-1.0-0.3", "xlsum_ja"),
    ):
        sel = select(spec)
        records = render_selected(sel, FIXTURE_DATA[name], 0, RenderOptions())
        path = tmp_path / f"{sel.key}.jsonl"
        write_jsonl(path, records)
        rendered[sel.key] = records
        configs.append(bridge.task_config(sel, path, records[0].get("stop_sequences", []), max_gen_toks=8))
    return configs, rendered


class _ScriptedLM:
    """An lm-eval LM that answers from the document: the oracle knows the gold, the constant does not."""

    def __new__(cls, oracle: bool, seen: list):
        from lm_eval.api.model import LM

        class Scripted(LM):
            def loglikelihood(self, requests, disable_tqdm=False):
                out = []
                for req in requests:
                    ctx, cont = req.args
                    seen.append(ctx == req.doc["prompt"])
                    gold = req.doc["continuations"][req.doc["gold"]]
                    out.append((0.0 if (oracle and cont == gold) or not oracle else -5.0, False))
                return out

            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for req in requests:
                    seen.append(req.args[0] == req.doc["prompt"])
                    gold = req.doc["gold"]
                    out.append((gold[0] if isinstance(gold, list) else str(gold)) if oracle else "")
                return out

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Scripted()


@pytest.mark.parametrize("oracle", [True, False])
def test_oracle_scores_100_and_constant_scores_the_label_prior(tmp_path, oracle):
    from youri.eval import lm_eval_bridge as bridge

    jp_metrics.set_rouge_tokenizer(jp_metrics.MecabTokenizer())
    configs, rendered = _fixture_configs(tmp_path)
    seen: list[bool] = []
    results = bridge.evaluate(_ScriptedLM(oracle, seen), configs)
    assert seen and all(seen)  # lm-eval asked exactly the rendered prompt, nothing added
    marc = bridge.task_metrics(results, "marc_ja-1.1-0.3")
    jaqket = bridge.task_metrics(results, "jaqket_v2-0.2-0.3")
    xlsum = bridge.task_metrics(results, "xlsum_ja-1.0-0.3")
    if oracle:
        assert marc["acc"] == 1.0 and jaqket["exact_match"] == 1.0 and jaqket["f1"] == 1.0
        assert xlsum["rouge2"] == pytest.approx(1.0)
    else:  # all log-likelihoods tie: argmax picks choice 0, so accuracy = share of gold 0 (positive)
        golds = [r["gold"] for r in rendered["marc_ja-1.1-0.3"]]
        assert marc["acc"] == pytest.approx(golds.count(0) / len(golds)) == pytest.approx(0.5)
        assert jaqket["exact_match"] == 0.0 and xlsum["rouge2"] == 0.0
    assert "acc_stderr" in marc


def test_jp_stable_pair_encoding_is_separate(llama2_tok):
    from youri.eval.lm_eval_bridge import SeparatePairEncoding

    class Probe(SeparatePairEncoding):
        def tok_encode(self, text, add_special_tokens=None):
            return llama2_tok.encode(text, add_special_tokens=bool(add_special_tokens))

    ctx, cont = Probe()._encode_pair("関係: ", "含意")
    assert cont == [29871, 232, 147, 174, 31474]  # the continuation's own leading ▁ (protocol 2.5)
    assert ctx == llama2_tok.encode("関係: ", add_special_tokens=False) and ctx[0] != 1  # no BOS, space kept


# ----------------------------------------------------------------------------- tiny model, one command


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, llama2_tokenizer_dir):
    # 4096 positions: the harness's Llama 2 context, so long few-shot prompts are not truncated;
    # hidden 128: whole GPTQ groups, for the twin's eval.
    shape = {"hidden_size": 128, "intermediate_size": 256, "max_position_embeddings": 4096}
    return save_random_llama(tmp_path_factory.mktemp("tiny") / "model", llama2_tokenizer_dir, **shape)


def test_five_available_tasks_on_a_tiny_model(tmp_path, tiny_llama):
    data_dir = shared_path()
    out = tmp_path / "eval"
    code = cli.main(
        [
            "eval",
            str(tiny_llama),
            "--data_dir",
            str(data_dir),
            "--data",
            json.dumps(SHARED_DATA),
            "--limit",
            "2",
            "--max_gen_toks",
            "4",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [k.split("-")[0] for k in metrics["tasks"]] == FIVE
    # a base model gets the rinna preset (models/rinna/*/harness.sh): its keys, hf-causal generation
    assert list(metrics["tasks"]) == [k for k in PRESETS["rinna"].tasks if k.split("-")[0] in FIVE]
    assert set(metrics["not_run"]) == {"marc_ja-1.1-0.2", "jaqket_v2-0.1-0.2", "xlsum_ja-1.0-0.0"}
    assert metrics["preset"]["name"] == "rinna" and metrics["generation"] == "hf-causal"
    assert set(metrics["not_run"].values()) == {"n/a (no data)"}
    scores = [t["score"] for t in metrics["tasks"].values()]
    assert metrics["average"] == round(sum(scores) / 5, 2)
    assert metrics["average_name"] == f"average of 5 tasks ({', '.join(metrics['tasks'])})"  # never "JP-8"
    assert metrics["subsets"] == {} and "not run: marc_ja-1.1-0.2" in metrics["average_note"]
    jcqa = metrics["tasks"]["jcommonsenseqa-1.1-0.2"]
    assert jcqa["chance"] == 20.0 and jcqa["n"] == 2 and 0 <= jcqa["score"] <= 100 and jcqa["stderr"] >= 0
    first = json.loads((out / "requests" / "jcommonsenseqa-1.1-0.2.jsonl").read_text(encoding="utf-8").split("\n")[0])
    assert jcqa["first_prompt"] == first["prompt"] and jcqa["first_prompt"].startswith("質問と回答の選択肢を入力として")
    assert metrics["config"]["limit"] == 2 and json.loads((out / "youri.json").read_text())["stage"] == "eval"


# ----------------------------------------------------------------------------- bad input, before any model


@pytest.mark.parametrize(
    "kw, error, needle",
    [
        ({"tasks": ["jcqa"]}, ConfigError, "unknown task 'jcqa'"),
        ({"tasks": ["jnli-1.3-0.9"]}, ConfigError, "unknown prompt version '0.9'"),
        ({"tasks": ["jnli-2.0"]}, ConfigError, "unknown task version '2.0'"),
        ({"data": {"jcqa": {"eval": "x.json"}}}, ConfigError, "eval.data: unknown task 'jcqa'"),
        (
            {"tasks": ["marc_ja"], "data": {"marc_ja": {"eval": "/nonexistent/valid.jsonl", "fewshot": "x"}}},
            DataError,
            "/nonexistent/valid.jsonl",
        ),
    ],
)
def test_bad_input_is_named_before_loading_a_model(tmp_path, kw, error, needle):
    with pytest.raises(error, match=needle.replace("(", r"\(").replace(".", r"\.")):
        run(_cfg(model=str(tmp_path / "no-model-here"), **kw))


def test_malformed_record_names_file_line_and_field(tmp_path, llama2_tokenizer_dir):
    bad = tmp_path / "valid.jsonl"
    lines = (FIXTURES / "marc_ja_valid.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"label": "positive"', '"label": "great"')
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {"marc_ja": {"eval": str(bad), "fewshot": FIXTURE_DATA["marc_ja"]["fewshot"]}}
    # MODEL is a tokenizer folder with no weights: reaching the model load would fail differently.
    with pytest.raises(DataError, match=r"valid\.jsonl:3: field 'label'.*'great'"):
        run(_cfg(model=str(llama2_tokenizer_dir), tasks=["marc_ja"], data=data))
    bad.write_text('{"sentence": "ok", "label": 0}\n{"sentence": 5, "label": 0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"valid\.jsonl:2: field 'sentence' must be str"):
        run(_cfg(model=str(llama2_tokenizer_dir), tasks=["marc_ja"], data=data))


def test_model_kind_picks_the_default_prompt_version(tmp_path):
    from youri.eval.evaluate import model_kind, plan_tasks

    folder = tmp_path / "sft"
    folder.mkdir()
    (folder / "youri.json").write_text(json.dumps({"stage": "sft", "config": {"kind": "chat"}, "parent": None}))
    assert model_kind(_cfg(model=str(folder))) == "chat"
    keys = [sel.key for sel, _ in plan_tasks(_cfg(model=str(folder)))]
    assert keys[:2] == ["jcommonsenseqa-1.1-0.5", "jnli-1.1-0.5"] and "xwinograd_ja" in keys  # rinna-bilingual
    keys = [sel.key for sel, _ in plan_tasks(_cfg(model=str(folder), model_kind="instruction"))]
    assert keys[0] == "jcommonsenseqa-1.1-0.3"
    keys = [sel.key for sel, _ in plan_tasks(_cfg(model=str(tmp_path), tasks=["jcommonsenseqa", "mgsm"]))]
    assert keys == ["jcommonsenseqa-1.1-0.2", "mgsm-1.0-0.0"]  # base: the rinna preset's keys
    dpo = tmp_path / "prefer"  # youri prefer trains in its kind's prompt format (a merged parent has none)
    dpo.mkdir()
    (dpo / "youri.json").write_text(json.dumps({"stage": "prefer", "config": {"kind": "instruction"}, "parent": None}))
    assert model_kind(_cfg(model=str(dpo))) == "instruction"
    keys = [sel.key for sel, _ in plan_tasks(_cfg(model=str(tmp_path), preset="ja8", tasks=["jcommonsenseqa"]))]
    assert keys == ["jcommonsenseqa-1.1-0.1"]  # the ja8 suite file: what the bare harness names resolve to


def test_japanese_leaderboard_suite_reads_the_same_local_files(tmp_path):
    """lm-eval's own YAML tasks on youri's converted files (MARC-ja, JAQKET v2, XL-Sum fixtures)."""
    from youri.eval import lm_eval_bridge as bridge
    from youri.eval.leaderboard import task_config

    configs = [task_config(select(name), FIXTURE_DATA[name], tmp_path) for name in FIXTURE_DATA]
    assert all(c["dataset_path"] == "json" for c in configs)
    from lm_eval.api.model import LM

    class Constant(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(0.0, False) for _ in requests]

        def generate_until(self, requests, disable_tqdm=False):
            return ["" for _ in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    results = bridge.evaluate(Constant(), configs)
    assert bridge.task_metrics(results, "ja_leaderboard_marc_ja")["acc"] == pytest.approx(0.5)  # label prior
    assert bridge.task_metrics(results, "ja_leaderboard_jaqket_v2")["exact_match"] == 0.0
    assert "rouge2" in bridge.task_metrics(results, "ja_leaderboard_xlsum")


def test_loglikelihood_requests_follow_jp_stable_semantics(tiny_llama):
    """No BOS, context and continuation encoded apart, an empty context scored after EOS (protocol 2.5)."""
    import torch
    from lm_eval.api.instance import Instance

    from youri.eval.lm_eval_bridge import hf_lm
    from youri.model import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_llama), load_model(tiny_llama, device="cpu").eval()
    lm = hf_lm(model, tok, batch_size=2, max_length=4096)
    pairs = [("前提：犬が走る。\n関係: ", "含意"), ("", "猫が寝ている。")]
    got = [ll for ll, _ in lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])]
    for (ctx, cont), value in zip(pairs, got):
        ctx_ids = tok.encode(ctx, add_special_tokens=False) if ctx else [tok.eos_token_id]
        cont_ids = tok.encode(cont, add_special_tokens=False)
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        want = sum(logprobs[len(ctx_ids) - 1 + i, t].item() for i, t in enumerate(cont_ids))
        assert value == pytest.approx(want, abs=1e-4)


def test_same_command_on_the_gptq_twin(tmp_path, tiny_llama):
    calibration = tmp_path / "calib.txt"
    calibration.write_text("吾輩は猫である。名前はまだ無い。The quick brown fox jumps over the lazy dog. " * 100)
    twin = tmp_path / "gptq"
    assert (
        cli.main(
            [
                "quantize",
                str(tiny_llama),
                "--calibration",
                str(calibration),
                "--num_samples",
                "2",
                "--seq_len",
                "32",
                "--eval_samples",
                "0",
                "--out",
                str(twin),
            ]
        )
        == 0
    )
    data = {k: SHARED_DATA[k] for k in ("jcommonsenseqa", "xwinograd_ja")}
    out = tmp_path / "eval"
    assert (
        cli.main(
            [
                "eval",
                str(twin),
                "--tasks",
                "[jcommonsenseqa, xwinograd_ja]",
                "--data_dir",
                str(shared_path()),
                "--data",
                json.dumps(data),
                "--limit",
                "2",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    # a base model (no youri.json): the rinna preset, jcommonsenseqa-1.1-0.2
    assert list(metrics["tasks"]) == ["jcommonsenseqa-1.1-0.2", "xwinograd_ja"] and metrics["average"] is not None
    assert json.loads((twin / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
