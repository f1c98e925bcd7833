"""youri vocab: Japanese vocabulary extension of the Llama 2 (SentencePiece) and Llama 3 / Qwen3 (byte-level BPE)
tokenizers and the matching model resize."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import shared_path

from youri import cli
from youri.data.bpe_vocab import TokenizerKindError, token_bytes
from youri.data.vocab import SPACE, Config, VocabError, iter_corpus_texts, load_proto, processor, run, select_new_pieces
from youri.stage import read_manifest, read_metrics
from youri.testing import random_family_model, random_llama

WIKI = "wikipedia-annotated-corpus-ja"
SMALL_N = 300


def _texts(*names):
    return list(iter_corpus_texts([str(shared_path(*name.split("/"))) for name in names]))


@pytest.fixture(scope="module")
def extended_16k(tmp_path_factory):
    """The acceptance run: 16,000 pieces from Wikipedia train + Aozora on the real Llama 2 tokenizer."""
    out = tmp_path_factory.mktemp("vocab") / "llama2-ja"
    corpus = [str(shared_path(WIKI, "train.jsonl")), str(shared_path("aozora-bunko-ja", "aozora_clean.jsonl"))]
    run(
        Config(
            base=str(shared_path("llama2-tokenizer", "tokenizer.model")),
            corpus=corpus,
            new_pieces=16000,
            out=str(out),
            check_docs=0,
        )
    )
    return out


def test_japanese_chars_per_token_and_original_ids_kept(extended_16k):
    base = load_proto(shared_path("llama2-tokenizer", "tokenizer.model"))
    ext = load_proto(extended_16k / "tokenizer.model")
    assert len(ext.pieces) == len(base.pieces) + 16000
    for old, new in zip(base.pieces, ext.pieces):  # every original id keeps piece, score and type
        assert (old.piece, old.score, old.type) == (new.piece, new.score, new.type)
    assert ext.normalizer_spec == base.normalizer_spec and ext.normalizer_spec.name == "identity"
    held_out = _texts(f"{WIKI}/dev.jsonl", f"{WIKI}/test.jsonl")
    chars = sum(map(len, held_out))
    base_cpt = chars / sum(map(len, processor(base).encode(held_out)))
    ext_cpt = chars / sum(map(len, processor(ext).encode(held_out)))
    assert base_cpt == pytest.approx(0.82, abs=0.01)
    assert ext_cpt >= 1.8, ext_cpt


def test_english_ids_unchanged_slow_equals_fast_and_roundtrip(extended_16k):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(shared_path("llama2-tokenizer")), local_files_only=True)
    fast = AutoTokenizer.from_pretrained(str(extended_16k), local_files_only=True)
    slow = processor(load_proto(extended_16k / "tokenizer.model"))
    english = shared_path("tinyshakespeare-en", "input.txt").read_text(encoding="utf-8")
    assert fast(english)["input_ids"] == base(english)["input_ids"]
    lines = english.split("\n")
    assert fast(lines)["input_ids"] == base(lines)["input_ids"]
    docs = _texts(
        f"{WIKI}/train.jsonl", f"{WIKI}/dev.jsonl", f"{WIKI}/test.jsonl", "aozora-bunko-ja/aozora_clean.jsonl"
    ) + [english]
    ids = fast(docs, add_special_tokens=False)["input_ids"]
    assert ids == slow.encode(docs)
    assert [fast.decode(x) for x in ids] == docs
    assert max(max(x) for x in ids) >= 32000  # the new pieces are used
    # AutoTokenizer's own conversion of tokenizer.model (no tokenizer.json) gives the same ids.
    only_model = extended_16k.parent / "only-model"
    only_model.mkdir()
    shutil.copy(extended_16k / "tokenizer.model", only_model)
    converted = AutoTokenizer.from_pretrained(str(only_model), local_files_only=True)
    assert converted(docs[-50:], add_special_tokens=False)["input_ids"] == ids[-50:]


def test_select_new_pieces_reachable_and_never_ascii():
    base = ["▁", "a", "b", "東"]
    chosen = select_new_pieces(base, ["ab", "東京都", "▁東京", "x▁y"], 10)
    assert "ab" not in chosen and "x▁y" not in chosen  # ASCII-only / inner whitespace
    vocab = set(base) | set(chosen)
    for piece in chosen:  # each multi-character piece has a split into two vocabulary pieces
        assert len(piece) == 1 or any(piece[:i] in vocab and piece[i:] in vocab for i in range(1, len(piece)))
    assert chosen.index("京") < chosen.index("東京都") and "▁東京" in chosen
    assert len(select_new_pieces(base, ["東京都"], 2)) == 0  # needs 京, an intermediate and itself


def _tiny_llama(path, tied: bool):
    from tokenizers import processors
    from transformers import AutoTokenizer

    model = random_llama(32000, tie_word_embeddings=tied).eval()
    model.save_pretrained(str(path), safe_serialization=True)
    # A HF tokenizer folder as `youri init` writes it: tokenizer.json with a BOS template + tokenizer.model.
    tokenizer = AutoTokenizer.from_pretrained(str(shared_path("llama2-tokenizer")), local_files_only=True)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer.save_pretrained(str(path))
    shutil.copy(shared_path("llama2-tokenizer", "tokenizer.model"), path / "tokenizer.model")
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


@pytest.mark.parametrize("tied,noise", [(False, 0.0), (True, 0.0), (False, 0.01)])
def test_model_resize_mean_init_and_old_logits(tmp_path, tied, noise):
    from youri.model import load_model, load_tokenizer

    base_model, base_tokenizer = _tiny_llama(tmp_path / "base", tied)
    out = tmp_path / "vocab"
    run(
        Config(
            base=str(tmp_path / "base"),
            corpus=[str(shared_path(WIKI, "dev.jsonl"))],
            new_pieces=SMALL_N,
            init_noise_std=noise,
            out=str(out),
            check_docs=20,
        )
    )
    model = load_model(out).eval()
    tokenizer = load_tokenizer(out)
    assert model.config.vocab_size == len(tokenizer) == 32000 + SMALL_N
    english = "It was the best of times, it was the worst of times."  # BOS template kept, ids unchanged
    assert tokenizer(english)["input_ids"] == base_tokenizer(english)["input_ids"]
    assert tokenizer(english)["input_ids"][0] == 1
    heads = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    assert (heads[0].data_ptr() == heads[1].data_ptr()) == tied
    # New rows: the mean of the rows of the piece's original tokenisation (+ noise when asked).
    base_sp = processor(load_proto(tmp_path / "base" / "tokenizer.model"), add_dummy_prefix=False)
    old = [base_model.get_input_embeddings().weight, base_model.get_output_embeddings().weight]
    for new_id in (32000, 32000 + SMALL_N // 2, 32000 + SMALL_N - 1):
        parts = base_sp.encode(tokenizer.convert_ids_to_tokens(new_id).replace(SPACE, " "))
        for before, after in zip(old, heads):
            expected = before[parts].mean(dim=0)
            close = torch.allclose(after[new_id], expected, atol=1e-6)
            assert close == (noise == 0), (new_id, parts)
            if noise:
                assert (after[new_id] - expected).std().item() == pytest.approx(noise, rel=0.5)
    # Before any training, logits over the original vocabulary on old-token text are the base model's.
    text = "The emperor said: 吾輩は猫である。名前はまだ無い。"
    ids = torch.tensor([processor(load_proto(tmp_path / "base" / "tokenizer.model")).encode(text)])
    assert ids.max() < 32000
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :32000], base_model(ids).logits, rtol=0, atol=1e-5)
    manifest, metrics = read_manifest(out), read_metrics(out)
    assert manifest["stage"] == "vocab" and manifest["config"]["init"] == "mean"
    assert manifest["config"]["init_noise_std"] == noise
    assert metrics["init_method"].startswith("mean") and metrics["tied_lm_head"] == tied
    assert metrics["slow_fast_mismatches"] == 0 and metrics["roundtrip_failures"] == 0


def test_cli_tokenizer_only(tmp_path, capsys):
    out = tmp_path / "vocab"
    corpus = json.dumps([str(shared_path(WIKI, "dev.jsonl")), str(shared_path(WIKI, "test.jsonl"))])
    argv = [
        "vocab",
        "--base",
        str(shared_path("llama2-tokenizer")),
        "--corpus",
        corpus,
        "--new_pieces",
        "200",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    metrics = read_metrics(out)
    assert metrics["new_pieces"] == 200 and metrics["vocab"] == 32200
    assert metrics["corpus_chars_per_token_extended"] > metrics["corpus_chars_per_token_base"]
    assert not (out / "config.json").exists() and (out / "tokenizer.json").is_file()
    assert cli.main(argv) == 2 and "already holds" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,message",
    [
        ({"base": "/nonexistent/model"}, "vocab.base"),
        ({"new_pieces": 0}, "new_pieces"),
        ({"corpus": ["/nonexistent/ja.jsonl"]}, "corpus"),
        ({"corpus": []}, "corpus"),
    ],
)
def test_bad_inputs(tmp_path, change, message):
    cfg = {
        "base": str(shared_path("llama2-tokenizer")),
        "corpus": [str(shared_path(WIKI, "dev.jsonl"))],
        "new_pieces": 10,
        "out": str(tmp_path / "out"),
        **change,
    }
    with pytest.raises(VocabError, match=message):
        run(Config(**cfg))
    assert not (tmp_path / "out").exists()


def test_base_folder_without_tokenizer_model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(VocabError, match="base_tokenizer"):
        run(Config(base=str(tmp_path / "m"), corpus=[str(shared_path(WIKI, "dev.jsonl"))], out=str(tmp_path / "o")))


def test_unigram_method_pieces_are_reachable(tmp_path):
    out = tmp_path / "uni"
    run(
        Config(
            base=str(shared_path("llama2-tokenizer")),
            corpus=[str(shared_path(WIKI, "dev.jsonl"))],
            method="unigram",
            new_pieces=150,
            out=str(out),
            check_docs=100,
        )
    )
    proto = load_proto(out / "tokenizer.model")
    vocab = {p.piece for p in proto.pieces}
    new = [p.piece for p in proto.pieces[32000:]]
    assert len(new) == 150 and read_metrics(out)["slow_fast_mismatches"] == 0
    assert all(len(p) == 1 or any(p[:i] in vocab and p[i:] in vocab for i in range(1, len(p))) for p in new)


def test_non_bpe_base_is_refused(tmp_path):
    proto = load_proto(shared_path("llama2-tokenizer", "tokenizer.model"))
    proto.trainer_spec.model_type = proto.trainer_spec.UNIGRAM
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tokenizer.model").write_bytes(proto.SerializeToString())
    with pytest.raises(VocabError, match="UNIGRAM"):
        run(Config(base=str(tmp_path / "t"), corpus=[str(shared_path(WIKI, "dev.jsonl"))], out=str(tmp_path / "o")))


# ----------------------------------------------------------------------------- byte-level BPE bases (Llama 3, Qwen3)

BPE_BASES = {"llama": "llama3-tokenizer", "qwen3": "qwen3-tokenizer"}


@pytest.fixture(scope="module")
def llama3_extended(tmp_path_factory):
    """The Llama 3 tokenizer extended with SMALL_N tokens learned on the Wikipedia dev split (tokenizer only)."""
    out = tmp_path_factory.mktemp("vocab") / "llama3-ja"
    corpus = [str(shared_path(WIKI, "dev.jsonl"))]
    run(Config(base=str(shared_path("llama3-tokenizer")), corpus=corpus, new_pieces=SMALL_N, out=str(out)))
    return out


def test_byte_level_extension_appends_tokens_and_merges(llama3_extended):
    base = json.loads(shared_path("llama3-tokenizer", "tokenizer.json").read_text(encoding="utf-8"))
    ext = json.loads((llama3_extended / "tokenizer.json").read_text(encoding="utf-8"))
    base_vocab, ext_vocab = base["model"]["vocab"], ext["model"]["vocab"]
    assert all(ext_vocab[token] == i for token, i in base_vocab.items())  # every original id
    assert ext["added_tokens"] == base["added_tokens"]
    kept = len(base["model"]["merges"])
    assert ext["model"]["merges"][:kept] == base["model"]["merges"]  # every original merge, in its rank
    new_merges = ext["model"]["merges"][kept:]
    assert len(new_merges) >= SMALL_N and all(isinstance(m, str) and m.count(" ") == 1 for m in new_merges)
    specials = {token["content"] for token in base["added_tokens"]}
    new = sorted((i, token) for token, i in ext_vocab.items() if token not in base_vocab and token not in specials)
    assert [i for i, _ in new] == list(range(128256, 128256 + SMALL_N))  # after the 256 special tokens
    merged = {a + b for a, b in (m.split(" ") for m in new_merges)}
    for _, token in new:  # each new token is built by one new merge and is never ASCII-only
        assert token in merged and max(token_bytes(token)) >= 128
    for merge in new_merges:  # both halves exist, so llama.cpp and tokenizers can apply it
        assert all(part in ext_vocab for part in merge.split(" "))
    assert read_metrics(llama3_extended)["added_token_ids_moved"] == 0


def test_byte_level_english_identical_japanese_denser_roundtrip(llama3_extended):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(shared_path("llama3-tokenizer")), local_files_only=True)
    ext = AutoTokenizer.from_pretrained(str(llama3_extended), local_files_only=True)
    assert len(ext) == len(base) + SMALL_N == 128256 + SMALL_N
    assert {t: ext.convert_tokens_to_ids(t) for t in base.all_special_tokens} == {
        t: base.convert_tokens_to_ids(t) for t in base.all_special_tokens
    }
    english = shared_path("tinyshakespeare-en", "input.txt").read_text(encoding="utf-8")
    assert ext(english)["input_ids"] == base(english)["input_ids"]
    held_out = _texts(f"{WIKI}/test.jsonl")  # not trained on
    ids = ext(held_out, add_special_tokens=False)["input_ids"]
    base_ids = base(held_out, add_special_tokens=False)["input_ids"]
    assert sum(map(len, ids)) < 0.97 * sum(map(len, base_ids))
    assert max(max(x) for x in ids) >= 128256
    text = "吾輩は猫である。The cat said <|eot_id|> — ok.\n"
    assert [ext.decode(x) for x in ids] == held_out
    assert ext.decode(ext(text, add_special_tokens=False)["input_ids"]) == text
    assert ext.decode(ext(english[:20000])["input_ids"]) == english[:20000]


@pytest.mark.parametrize("family,tied,rows", [("llama", False, 0), ("qwen3", True, 151936)])
def test_byte_level_model_resize_loads_in_transformers(tmp_path, family, tied, rows):
    """Llama 3 shape (rows = tokenizer size, untied) and Qwen3's (tied, rows padded to 151936 as released)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from youri.model import load_tokenizer, save_model

    base_dir = shared_path(BPE_BASES[family])
    tokenizer = load_tokenizer(base_dir)
    shape = {"vocab_size": rows} if rows else {}
    base_model = random_family_model(family, tokenizer, tie_word_embeddings=tied, **shape).eval()
    save_model(base_model, tokenizer, tmp_path / "base")
    out = tmp_path / "vocab"
    run(Config(base=str(tmp_path / "base"), corpus=[str(shared_path(WIKI, "dev.jsonl"))], new_pieces=40, out=str(out)))
    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    ext = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    first = len(tokenizer)
    assert len(ext) == first + 40 and model.config.vocab_size == max(rows, first + 40)  # padded rows reused
    heads = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    assert model.config.tie_word_embeddings == tied and (heads[0].data_ptr() == heads[1].data_ptr()) == tied
    old = [base_model.get_input_embeddings().weight, base_model.get_output_embeddings().weight]
    bpe = tokenizer.backend_tokenizer
    for new_id in (first, first + 20, first + 39):  # mean of the rows of the token's base tokenisation
        parts = [t.id for t in bpe.model.tokenize(ext.convert_ids_to_tokens(new_id))]
        assert len(parts) >= 2 and max(parts) < first
        for before, after in zip(old, heads):
            torch.testing.assert_close(after[new_id], before[parts].mean(dim=0), rtol=0, atol=1e-6)
    text = "The emperor said: 吾輩は猫である。"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits, base_logits = model(ids).logits[..., :first], base_model(ids).logits[..., :first]
    torch.testing.assert_close(logits, base_logits, rtol=0, atol=1e-5)
    assert read_metrics(out)["tied_lm_head"] == tied and read_manifest(out)["parent"]


def test_sentencepiece_style_tokenizer_json_is_refused(tmp_path):
    """Gemma 3: SentencePiece-style BPE (▁ spaces, byte fallback) in tokenizer.json, no tokenizer.model."""
    out = tmp_path / "o"
    corpus = [str(shared_path(WIKI, "dev.jsonl"))]
    with pytest.raises(TokenizerKindError, match="byte fallback.*cannot extend faithfully"):
        run(Config(base=str(shared_path("gemma3-tokenizer")), corpus=corpus, out=str(out)))
    with pytest.raises(VocabError, match="vocab.method: applies to SentencePiece bases only"):
        run(Config(base=str(shared_path("llama3-tokenizer")), corpus=corpus, method="unigram", out=str(out)))
    assert not out.exists()


LLAMA_CPP_TOKENIZE = """
import {readFileSync} from "node:fs";
import {join} from "node:path";
import {pathToFileURL} from "node:url";
const [, , moduleDir, model, textsFile] = process.argv;
const {getLlama} = await import(pathToFileURL(join(moduleDir, "node_modules", "node-llama-cpp", "dist", "index.js")));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const vocab = await llama.loadModel({modelPath: model, vocabOnly: true});
const texts = JSON.parse(readFileSync(textsFile, "utf8"));
console.log(JSON.stringify(texts.map((text) => Array.from(vocab.tokenize(text, false)))));
"""


def test_byte_level_extension_tokenises_the_same_in_llama_cpp(llama3_extended, tmp_path):
    """A vocab-only GGUF written from the extended tokenizer.json as llama.cpp's converter does (gpt2 model,
    llama-bpe pre-tokeniser, tokens by id, merges as they stand) tokenises in llama.cpp like transformers."""
    import subprocess

    from gguf import GGUFWriter
    from transformers import AutoTokenizer

    from youri.quant.llamacpp import runtime_dir, runtime_missing

    if runtime_missing():
        pytest.skip(runtime_missing())
    state = json.loads((llama3_extended / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = sorted(state["model"]["vocab"].items(), key=lambda item: item[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))  # contiguous ids, specials included
    special = {token["id"] for token in state["added_tokens"]}
    writer = GGUFWriter(tmp_path / "vocab.gguf", "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list([token for token, _ in by_id])
    writer.add_token_types([3 if i in special else 1 for _, i in by_id])  # CONTROL / NORMAL
    writer.add_token_merges(state["model"]["merges"])
    writer.add_bos_token_id(128000)
    writer.add_eos_token_id(128001)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    texts = _texts(f"{WIKI}/test.jsonl")[:60] + ["吾輩は猫である。The cat's name: <|eot_id|> 東京都（とうきょうと）\n"]
    texts.append(shared_path("tinyshakespeare-en", "input.txt").read_text(encoding="utf-8")[:3000])
    (tmp_path / "texts.json").write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "tokenize.mjs").write_text(LLAMA_CPP_TOKENIZE, encoding="utf-8")
    command = ["node", str(tmp_path / "tokenize.mjs"), str(runtime_dir()), str(tmp_path / "vocab.gguf")]
    done = subprocess.run([*command, str(tmp_path / "texts.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    llama_cpp = json.loads(done.stdout.strip().splitlines()[-1])
    ext = AutoTokenizer.from_pretrained(str(llama3_extended), local_files_only=True)
    assert llama_cpp == ext(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert any(i >= 128256 for ids in llama_cpp for i in ids)  # the new tokens are used by llama.cpp
