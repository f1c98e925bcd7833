"""``youri export``: GGUF files checked by real clients -- the gguf reader, transformers (``gguf_file=``) and
llama.cpp itself (node-llama-cpp's prebuilt binaries; skipped with the reason when not installed)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch
from conftest import shared_path
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from youri.config import ConfigError
from youri.families import family_of
from youri.io import resolve_path
from youri.model import load_model, load_tokenizer
from youri.quant.export import GPTQ_PARTS, Config, run
from youri.quant.gguf_vocab import bpe_pre_tokenizer, hf_vocab, read_tokenizer_json, tokenizer_kind
from youri.quant.gguf_writer import GGUFExportError, Q, gptq_blocks, gptq_grid_mismatch, model_hparams, rope_permute
from youri.quant.gptq import rtn_quantize
from youri.quant.llamacpp import next_token_agreement, run_llama_cpp, runtime_missing
from youri.quant.quantize import Config as QuantizeConfig
from youri.quant.quantize import run as quantize
from youri.runtime.gptq_format import dequantize, pack
from youri.runtime.quant_linear import prepare_kernels
from youri.testing import FAMILY_SHAPES, TINY_SHAPE, random_family_model, save_random_llama
from youri.train.init_base import train_tokenizer

SAMPLE_JA = [json.loads(line)["text"] for line in resolve_path("builtin:corpus_ja.jsonl").open(encoding="utf-8")]
SHAPE = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny random Llama with a SentencePiece BPE tokenizer (byte fallback) trained on the Japanese sample,
    youri's chat template, and held-out Japanese text beside it."""
    folder = tmp_path_factory.mktemp("export") / "chat"
    english = resolve_path("builtin:corpus_en.txt").read_text(encoding="utf-8").split("\n\n")
    train_tokenizer(SAMPLE_JA[:-8] + english, 4096, folder)
    save_random_llama(folder, folder, chat_template="chat", seed=1, **SHAPE)
    with torch.no_grad():  # sharper next-token distributions than the 0.02-std init gives
        weights = load_model(folder, dtype=torch.float32)
        for p in weights.parameters():
            if p.dim() == 2:
                p.mul_(5)
        weights.save_pretrained(str(folder))
    heldout = folder.parent / "heldout.jsonl"
    heldout.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in SAMPLE_JA[-8:]), "utf-8")
    return folder


@pytest.fixture(scope="module")
def exports(model) -> dict[str, Path]:
    out = {}
    for kind in ("f16", "bf16", "q8_0", "q4_0"):
        folder = run(
            Config(
                model=str(model),
                out=str(model.parent / f"gguf-{kind}"),
                type=kind,
                eval_samples=2,
                seq_len=48,
                heldout_ja=str(model.parent / "heldout.jsonl"),
            )
        )
        out[kind] = folder / f"chat-{kind}.gguf"
    return out


def test_gguf_holds_llama_metadata_sentencepiece_vocab_and_chat_template(model, exports):
    reader = gguf.GGUFReader(str(exports["q4_0"]))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("llama.block_count") == 2
    assert field("llama.embedding_length") == 128 and field("llama.attention.head_count_kv") == 2
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_0
    sp = spm.SentencePieceProcessor(model_file=str(model / "tokenizer.model"))
    assert field("tokenizer.ggml.model") == "llama"
    assert field("tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    np.testing.assert_allclose(field("tokenizer.ggml.scores"), [sp.get_score(i) for i in range(sp.vocab_size())])
    types = field("tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[sp.piece_to_id("<0xE3>")] == gguf.TokenType.BYTE  # byte fallback pieces for rare kanji
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (1, 2)
    assert field("tokenizer.ggml.add_bos_token") is True
    assert field("tokenizer.chat_template") == load_tokenizer(model).chat_template
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q4_0" and kinds["blk.1.ffn_down.weight"] == "Q4_0"
    assert kinds["output.weight"] == "F16" and kinds["token_embd.weight"] == "Q8_0"  # as GPTQ keeps them: 16 bit
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    blocks = [t for t in reader.tensors if t.name.startswith("blk.") and t.tensor_type.name == "Q4_0"]
    assert len(blocks) == 14 and all(t.n_bytes * 32 == t.n_elements * 18 for t in blocks)  # 4.5 bits a weight
    metrics = json.loads((exports["q4_0"].parent / "metrics.json").read_text())
    assert metrics["size_ratio"] < 0.7 and metrics["bytes"] == exports["q4_0"].stat().st_size
    assert metrics["source"] == "full precision" and "gptq_layers" not in metrics
    modelfile = (exports["q4_0"].parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./chat-q4_0.gguf") and "設定" in modelfile and 'stop "</s>"' in modelfile


@pytest.mark.parametrize("kind,tolerance", [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 5e-2), ("q4_0", None)])
def test_transformers_loads_the_gguf_with_the_fp_models_logits(model, exports, kind, tolerance):
    """transformers' own GGUF reader (dequantise + undo the RoPE permutation) gives back the model."""
    path = exports[kind]
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ours = load_model(model, dtype=torch.float32)
    tok, gguf_tok = load_tokenizer(model), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ids = tok(SAMPLE_JA[0])["input_ids"]
    assert gguf_tok(SAMPLE_JA[0])["input_ids"] == ids
    with torch.no_grad():
        a, b = ours(torch.tensor([ids])).logits, theirs(torch.tensor([ids])).logits
    scale = a.abs().max().item()
    agreement = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    print(f"transformers {kind}: max |logit diff| {(a - b).abs().max().item():.4f} of {scale:.2f}, argmax {agreement}")
    if tolerance is not None:
        torch.testing.assert_close(b, a, rtol=0, atol=tolerance * scale)
    else:  # 4 bits of a random model: only the distributions stay close (a wrong RoPE order gives KL > 1)
        kl = torch.nn.functional.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="sum")
        assert kl.item() / a.shape[1] < 0.5


@pytest.fixture(scope="module")
def twin(model) -> Path:
    """youri's GPTQ twin of the model: 4 bit, group 128, symmetric, in order (the layout Q4_0 holds as is)."""
    return quantize(
        QuantizeConfig(
            model=str(model),
            out=str(model.parent / "twin"),
            calibration=str(model.parent / "heldout.jsonl"),
            num_samples=4,
            seq_len=32,
            eval_samples=0,
            device="cpu",
        )
    )


def test_gptq_twin_is_dequantised_before_a_float_export(twin, tmp_path, capsys):
    folder = run(Config(model=str(twin), out=str(tmp_path / "gguf"), type="f16", eval_samples=0))
    assert "dequantised" in capsys.readouterr().out
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["source"].startswith("GPTQ 4-bit") and metrics["quality"] == {"skipped": "eval_samples is 0"}
    assert metrics["gptq_layers"] == {"lossless from GPTQ codes": 0, "RTN": 0, "dequantised": 14}
    theirs = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="twin-f16.gguf", dtype=torch.float32)
    ids = torch.arange(3, 60)[None]
    ours = load_model(twin, dtype=torch.float32)
    prepare_kernels(ours, use_kernel=False)  # youri's exact dequantised path, not the bf16 int4 kernel
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=2e-3 * a.abs().max().item())


def test_gptq_twin_becomes_q4_0_blocks_bit_for_bit(twin, exports, tmp_path, capsys):
    """Each GPTQ group of 128 is four Q4_0 blocks with the group's fp16 scale and the same codes: llama.cpp's
    Q4_0 decoding (gguf.quants) of the file gives youri's dequantised GPTQ weights exactly, RoPE rows moved."""
    folder = run(Config(model=str(twin), out=str(tmp_path / "gguf"), type="q4_0", eval_samples=0))
    assert "lossless from GPTQ codes" in capsys.readouterr().out
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "lossless from GPTQ codes" in metrics["source"]
    assert metrics["gptq_layers"] == {"lossless from GPTQ codes": 14, "RTN": 0, "dequantised": 0}
    reader = gguf.GGUFReader(str(folder / "twin-q4_0.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    assert (
        tensors["token_embd.weight"].tensor_type.name == "Q8_0" and tensors["output.weight"].tensor_type.name == "F16"
    )
    state = load_file(str(twin / "model.safetensors"))
    heads = {"q_proj": SHAPE["num_attention_heads"], "k_proj": SHAPE["num_key_value_heads"]}
    checked = 0
    for layer in range(2):
        for hf, ours in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("mlp.down_proj", "ffn_down")):
            prefix = f"model.layers.{layer}.{hf}"
            expected = dequantize(**{k: state[f"{prefix}.{k}"] for k in GPTQ_PARTS}, bits=4).numpy()
            if hf.endswith(("q_proj", "k_proj")):
                expected = rope_permute(expected, heads[hf[-6:]])
            tensor = tensors[f"blk.{layer}.{ours}.weight"]
            assert tensor.tensor_type.name == "Q4_0"
            decoded = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            assert decoded.dtype == np.float32 and np.array_equal(decoded, expected)
            checked += 1
    assert checked == 6
    if not runtime_missing():  # llama.cpp runs it as the twin: far closer to it than the fp model's q4_0 (RTN)
        tok = load_tokenizer(twin)
        rows = [tok(text, add_special_tokens=False)["input_ids"][:48] for text in SAMPLE_JA[-3:]]
        ours = load_model(twin, dtype=torch.float32)
        prepare_kernels(ours, use_kernel=False)  # the exact dequantised weights
        with torch.no_grad():
            reference = [torch.log_softmax(ours(torch.tensor([row])).logits[0], -1).numpy() for row in rows]
        lossless, rtn = (
            next_token_agreement(reference, run_llama_cpp(path, rows=rows).logprobs, rows)
            for path in (folder / "twin-q4_0.gguf", exports["q4_0"])
        )
        print(f"llama.cpp vs youri's twin: q4_0 of the twin {lossless}, q4_0 of the fp model {rtn}")
        assert lossless["kl"] < rtn["kl"] / 20 and lossless["argmax_agreement"] >= 0.9


def test_gptq_layer_codes_as_ggml_blocks():
    """Symmetric in-order GPTQ codes are Q4_0 (up to 4 bits) or Q8_0 (up to 8) blocks exactly; other layouts
    say why not."""
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    for bits, qtype in ((4, Q.Q4_0), (3, Q.Q4_0), (2, Q.Q4_0), (8, Q.Q8_0), (4, Q.Q8_0)):
        parts = pack(*rtn_quantize(weight, bits=bits, group_size=128), bits=bits)
        assert gptq_grid_mismatch(parts, bits, qtype) == ""
        blocks = gptq_blocks(parts, bits, qtype)
        assert blocks.dtype == np.uint8 and blocks.shape == gguf.quant_shape_to_byte_shape((64, 256), qtype)
        assert np.array_equal(gguf.quants.dequantize(blocks, qtype), dequantize(**parts, bits=bits).numpy())
    parts = pack(*rtn_quantize(weight, bits=4, group_size=128), bits=4)
    assert "8-bit codes do not fit Q4_0" in gptq_grid_mismatch(pack(*rtn_quantize(weight, bits=8), bits=8), 8, Q.Q4_0)
    assert "asymmetric" in gptq_grid_mismatch(pack(*rtn_quantize(weight, sym=False), bits=4), 4, Q.Q4_0)
    assert "group size 16" in gptq_grid_mismatch(pack(*rtn_quantize(weight, group_size=16), bits=4), 4, Q.Q4_0)
    shuffled = {**parts, "g_idx": parts["g_idx"].flip(0)}  # act-order: groups no longer follow the columns
    assert "act-order" in gptq_grid_mismatch(shuffled, 4, Q.Q4_0)


def test_asymmetric_twin_falls_back_to_rtn_and_says_so(model, tmp_path, capsys):
    asym = quantize(
        QuantizeConfig(
            model=str(model),
            out=str(tmp_path / "asym"),
            calibration=str(model.parent / "heldout.jsonl"),
            num_samples=4,
            seq_len=32,
            eval_samples=0,
            device="cpu",
            sym=False,
        )
    )
    folder = run(Config(model=str(asym), out=str(tmp_path / "gguf"), type="q4_0", eval_samples=0))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("youri export:"))
    assert "RTN q4_0" in line and "asymmetric" in line
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["gptq_layers"]["RTN"] == 14 and metrics["gptq_layers"]["lossless from GPTQ codes"] == 0


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0", "q4_0"])
def test_llama_cpp_tokenises_like_hf_and_scores_like_youri(model, exports, kind):
    """llama.cpp itself loads each type, tokenises Japanese exactly as the HF tokenizer, and its next-token
    distributions agree with youri's fp model (argmax agreement and max |log-prob| gap reported)."""
    if runtime_missing():
        pytest.skip(runtime_missing())
    texts = SAMPLE_JA[:20] + [
        "吾輩は猫である。名前はまだ無い。",
        "ｶﾀｶﾅ　全角スペース と  二つの空白\n改行",
        "絵文字🙂と記号①",
    ]
    tok = load_tokenizer(model)
    rows = [tok(text, add_special_tokens=False)["input_ids"][:48] for text in SAMPLE_JA[-3:]]
    scored = run_llama_cpp(exports[kind], texts=texts, rows=rows)
    assert scored.tokens == [tok(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert (scored.bos, scored.eos, scored.vocab) == (1, 2, len(tok))
    fp = load_model(model, dtype=torch.float32)
    with torch.no_grad():
        reference = [torch.log_softmax(fp(torch.tensor([row])).logits[0], -1).numpy() for row in rows]
    stats = next_token_agreement(reference, scored.logprobs, rows)
    print(f"llama.cpp {kind}: {stats}")
    limits = {"f16": (0.05, 0.98, 1e-3), "bf16": (0.2, 0.95, 1e-2), "q8_0": (0.5, 0.9, 1e-2), "q4_0": (6.0, 0.2, 0.5)}[
        kind
    ]
    assert stats["max_abs_logprob_diff"] < limits[0] and stats["argmax_agreement"] >= limits[1]
    assert 0 <= stats["kl"] < limits[2]
    quality = json.loads((exports[kind].parent / "metrics.json").read_text())["quality"]["ja"]
    assert quality["runtime"].startswith("llama.cpp") and quality["tokens"] == 2 * 47 and quality["kl"] < limits[2]


@pytest.mark.parametrize(
    "case,match",
    [
        ("no-folder", "not a model folder"),
        ("q4_k_m", "llama-quantize"),
        ("format", "format 'onnx' is not supported"),
        ("gpt2", "model_type 'gpt2' is not supported"),
        ("no-sentencepiece", "no SentencePiece tokenizer.model"),
    ],
)
def test_bad_input_fails_before_any_work(model, tmp_path, case, match):
    import shutil

    from youri.cli import main

    source, kw = model, {}
    if case == "no-folder":
        source = tmp_path / "missing"
    elif case == "q4_k_m":
        kw = {"type": "q4_k_m"}
    elif case == "format":
        kw = {"format": "onnx"}
    else:
        source = tmp_path / "copy"
        shutil.copytree(model, source)
        if case == "gpt2":
            config = json.loads((source / "config.json").read_text())
            (source / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
        else:
            (source / "tokenizer.model").unlink()
    with pytest.raises((ConfigError, FileNotFoundError), match=match):
        run(Config(model=str(source), out=str(tmp_path / "out"), **kw))
    flags = [item for key, value in kw.items() for item in (f"--{key}", value)]
    assert main(["export", str(source), "--out", str(tmp_path / "out"), *flags]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_model_card_lists_the_gguf_files_and_an_ollama_modelfile(model, exports):
    from youri.run.card import write_model_card

    card = write_model_card(model).read_text(encoding="utf-8")
    assert "## GGUF (llama.cpp, Ollama, LM Studio)" in card
    assert all(f"gguf-{kind}/chat-{kind}.gguf" in card for kind in exports)
    assert "FROM ./chat-" in card and 'TEMPLATE """' in card and "ollama create chat -f Modelfile" in card
    assert "q4_0 (" in card and "RTN from full precision" in card  # how each file's weights were made


def test_pipeline_export_step_is_optional_and_exports_the_twin_as_q4_0():
    from youri.run.pipeline import Config as PipelineConfig
    from youri.run.pipeline import plan

    assert not [n for n in plan(PipelineConfig(recipe="r.yaml")) if n.group == "export"]
    nodes = {n.name: n for n in plan(PipelineConfig(recipe="r.yaml", export=True))}
    assert nodes["export_chat"].module == "youri.quant.export"
    assert nodes["export_chat"].wiring == {"model": "quantize_chat"}  # q4_0 (default): the twin's own codes
    assert {"export_base", "export_instruction"} <= set(nodes)
    names = [n.name for n in plan(PipelineConfig(recipe="r.yaml", export=True))]
    assert names.index("quantize_chat") < names.index("export_chat")
    fp_source = (
        (PipelineConfig(recipe="r.yaml", export=True, quantize=False), {}),  # no twin
        (PipelineConfig(recipe="r.yaml", export=True), {"export": {"type": "q8_0"}}),  # 8 bits: from fp
        (PipelineConfig(recipe="r.yaml", export=True), {"quantize": {"sym": False}}),  # twin off Q4_0's grid
        (PipelineConfig(recipe="r.yaml", export=True), {"quantize": {"bits": 3}}),
    )
    for cfg, recipe in fp_source:
        nodes = {n.name: n for n in plan(cfg, recipe)}
        assert nodes["export_chat"].wiring == {"model": "sft_chat"}, recipe


# ----------------------------------------------------------------------------- every family, every tokenizer kind

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # short, so that the tiny test's positions reach the scaled bands
}
CONVERT_PRE_HASHES = {  # convert_hf_to_gguf.py get_vocab_base_pre: sha256 of the probe's tokens -> pre-tokenizer
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5-7B
}
CONVERT_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure "
    "I'll make it, 'D you like some tea? We'Ve a'lL"
)


def llama_cpp_vectors(inp: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors (``tests/test-tokenizer-0``): inputs separated by
    ``\\n__ggml_vocab_test__\\n`` in ``.inp``, one line of space-separated ids per input in ``.out``."""
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = inp.with_suffix(".out").read_text(encoding="utf-8").split("\n")[:-1]  # the file ends with a newline
    texts = texts[: len(lines)]  # an .inp ending with the separator leaves one empty piece after the last input
    assert len(texts) == len(lines) > 40
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


def family_folder(out: Path, model_type: str, tokenizer, **shape) -> Path:
    """A tiny random model of a family (youri.testing) with sharp logits and non-unit norms (so that a missing
    ``1 + w`` or a wrong RoPE shows), saved with its tokenizer."""
    model = random_family_model(model_type, tokenizer, seed=3, **shape)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(5)
            elif name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def llama_cpp_against_transformers(folder: Path, gguf_file: Path, rows: list[list[int]], texts=()):
    """llama.cpp's tokens of ``texts`` and its next-token agreement with transformers' forward of ``folder``."""
    scored = run_llama_cpp(gguf_file, texts=list(texts), rows=rows)
    if not rows:
        return scored, None
    return scored, next_token_agreement(transformers_logprobs(folder, rows), scored.logprobs, rows)


def transformers_logprobs(folder: Path, rows: list[list[int]]) -> list[np.ndarray]:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    with torch.no_grad():
        return [torch.log_softmax(model(torch.tensor([row])).logits[0], -1).numpy() for row in rows]


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "llama3-rope"])
def test_every_family_runs_in_llama_cpp_as_in_transformers(model, tmp_path, model_type):
    """Each family's GGUF (architecture, metadata, tensor names, Gemma's 1 + w norms, RoPE order) gives
    llama.cpp the next-token distributions transformers computes (Llama 3.1 RoPE scaling: llama3-rope)."""
    tok = load_tokenizer(model)  # the small SentencePiece vocabulary: the architecture is what is tested here
    shape = {"rope_parameters": LLAMA3_ROPE} if model_type == "llama3-rope" else {}
    model_type = model_type.replace("llama3-rope", "llama")
    folder = family_folder(tmp_path / model_type, model_type, tok, **shape)
    shutil.copy(model / "tokenizer.model", folder)
    out = run(Config(model=str(folder), out=str(tmp_path / "gguf"), type="f16", eval_samples=0))
    reader = gguf.GGUFReader(str(out / f"{model_type}-f16.gguf"))
    family = family_of(json.loads((folder / "config.json").read_text()))
    assert reader.fields["general.architecture"].contents() == family.gguf_arch
    tensors = {t.name: t for t in reader.tensors}
    state = load_file(str(folder / "model.safetensors"))
    stored = tensors["blk.0.attn_norm.weight"].data
    np.testing.assert_array_equal(stored, state["model.layers.0.input_layernorm.weight"].numpy() + family.norm_offset)
    q = state["model.layers.0.self_attn.q_proj.weight"].numpy().astype(np.float16)
    expected_q = rope_permute(q, 4) if family.gguf_rope_permute else q
    assert np.array_equal(tensors["blk.0.attn_q.weight"].data, expected_q)
    assert ("output.weight" in tensors) != bool(family.embed_scale)  # Gemma's head is the embedding
    assert ("rope_freqs.weight" in tensors) == bool(shape)
    if runtime_missing():
        pytest.skip(runtime_missing())
    rows = [[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"][:31]] for text in SAMPLE_JA[-2:]]
    _, stats = llama_cpp_against_transformers(folder, out / f"{model_type}-f16.gguf", rows)
    print(f"llama.cpp {model_type} f16 vs transformers: {stats}")
    assert stats["max_abs_logprob_diff"] < 0.05 and stats["argmax_agreement"] >= 0.95 and abs(stats["kl"]) < 1e-3


@pytest.mark.parametrize(
    "name,model_type,kind,pre",
    [
        ("llama2", "llama", "llama", "default"),
        ("llama3", "llama", "gpt2", "llama-bpe"),
        ("qwen3", "qwen3", "gpt2", "qwen2"),
        ("gemma3", "gemma3_text", "gemma4", None),
    ],
)
def test_real_tokenizers_in_llama_cpp_match_its_own_test_vectors(tmp_path, name, model_type, kind, pre):
    """A tiny model with a base's real tokenizer exports the tokenizer llama.cpp runs for that base (model, pre,
    tokens, types, merges, special ids), and llama.cpp tokenises llama.cpp's own test vectors for that vocabulary
    (``ggml-vocab-*.gguf.inp/.out``) to the expected ids, and Japanese as transformers does."""
    source = shared_path(f"{name}-tokenizer")
    tok = AutoTokenizer.from_pretrained(str(source))
    folder = family_folder(tmp_path / name, model_type, tok, hidden_size=32, intermediate_size=32)
    if (source / "tokenizer.model").is_file():
        shutil.copy(source / "tokenizer.model", folder)
    out = run(Config(model=str(folder), out=str(tmp_path / "gguf"), type="f16", eval_samples=0))
    gguf_file = out / f"{name}-f16.gguf"
    own = json.loads((out / "metrics.json").read_text())["prompt_format"] == "own"
    assert own == bool(tok.chat_template) and own != ("TEMPLATE" in (out / "Modelfile").read_text())  # Ollama's
    spec = read_tokenizer_json(source)  # what was written (gguf's reader takes minutes on 262k tokens + merges)
    assert tokenizer_kind(spec) == kind
    if kind != "llama":
        vocab = hf_vocab(spec, len(tok), kind)
        assert (vocab.model, vocab.pre, vocab.merges, len(vocab.tokens)) == (kind, pre, True, len(tok))
        assert vocab.types[tok.eos_token_id] == gguf.TokenType.CONTROL and gguf.TokenType.UNUSED not in vocab.types
        assert vocab.tokens[1000] == tok.convert_ids_to_tokens(1000)  # tokenizer.json's own strings (Ġ / ▁ form)
    if runtime_missing():
        pytest.skip(runtime_missing())
    vectors = llama_cpp_vectors(next(source.glob("*.gguf.inp")))
    texts = [text for text, _ in vectors] + SAMPLE_JA[:3]
    scored, _ = llama_cpp_against_transformers(folder, gguf_file, [], texts)
    wrong = [(text, ids, got) for (text, ids), got in zip(vectors, scored.tokens) if ids != got]
    assert not wrong, f"{len(wrong)}/{len(vectors)} test vectors differ, e.g. {wrong[0]}"
    assert scored.tokens[len(vectors) :] == [tok(t, add_special_tokens=False)["input_ids"] for t in SAMPLE_JA[:3]]
    assert (scored.bos, scored.eos) == (tok.bos_token_id, tok.eos_token_id)


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_byte_level_pre_tokenizer_is_the_one_convert_picks(name):
    """youri names the pre-tokenizer by its split regex (robust to appended tokens and merges); convert names it
    by hashing the tokens of its probe text: the two agree on the real tokenizers. (Meta's Llama 3 tokenizer, which
    convert hashed, adds BOS; the copy in ../shared does not, so both the ids and BOS + ids are hashed. Qwen3's
    BPE is Qwen1.5's.)"""
    source = shared_path(f"{name}-tokenizer")
    tok = AutoTokenizer.from_pretrained(str(source))
    ids = tok.encode(CONVERT_PROBE, add_special_tokens=False)
    hashes = [hashlib.sha256(str(row).encode()).hexdigest() for row in (ids, [tok.bos_token_id, *ids])]
    assert {CONVERT_PRE_HASHES.get(h) for h in hashes} - {None} == {bpe_pre_tokenizer(read_tokenizer_json(source))}


def rtn_twin(fp: Path, out: Path, group: int = 32) -> Path:
    """A GPTQ v1 twin of any family made with youri's RTN quantizer and packer (4 bit, symmetric, in order):
    each projection of ``youri.families`` becomes qweight/qzeros/scales/g_idx; biases and norms stay as they are."""
    config = json.loads((fp / "config.json").read_text())
    state = load_file(str(fp / "model.safetensors"))
    for layer in range(config["num_hidden_layers"]):
        for projection in family_of(config).projections:
            key = f"model.layers.{layer}.{projection}"
            parts = pack(*rtn_quantize(state.pop(f"{key}.weight"), bits=4, group_size=group), bits=4)
            state.update({f"{key}.{part}": value.contiguous() for part, value in parts.items()})
    shutil.copytree(fp, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    quant = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": group, "sym": True}
    (out / "config.json").write_text(json.dumps({**config, "quantization_config": {**quant, "desc_act": False}}))
    return out


def test_gptq_twin_of_another_family_becomes_q4_0_blocks_bit_for_bit(model, tmp_path):
    """Qwen2 (q/k/v biases, NeoX RoPE: no row permutation): the twin's codes are its Q4_0 blocks exactly, the
    biases stay F32, and llama.cpp runs the file as the twin (its dequantised weights), not as the fp model."""
    tok = load_tokenizer(model)
    fp = family_folder(tmp_path / "fp", "qwen2", tok)
    shutil.copy(model / "tokenizer.model", fp)
    twin = rtn_twin(fp, tmp_path / "qwen2")
    out = run(Config(model=str(twin), out=str(tmp_path / "gguf"), type="q4_0", eval_samples=0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gptq_layers"] == {"lossless from GPTQ codes": 14, "RTN": 0, "dequantised": 0}
    tensors = {t.name: t for t in gguf.GGUFReader(str(out / "qwen2-q4_0.gguf")).tensors}
    state = load_file(str(twin / "model.safetensors"))
    checked = ((0, "self_attn.q_proj", "attn_q"), (1, "self_attn.k_proj", "attn_k"), (1, "mlp.up_proj", "ffn_up"))
    for layer, hf, name in checked:
        prefix = f"model.layers.{layer}.{hf}"
        expected = dequantize(**{k: state[f"{prefix}.{k}"] for k in GPTQ_PARTS}, bits=4).numpy()
        tensor = tensors[f"blk.{layer}.{name}.weight"]
        assert tensor.tensor_type.name == "Q4_0"
        assert np.array_equal(gguf.quants.dequantize(tensor.data, tensor.tensor_type), expected)
    assert tensors["blk.0.attn_q.bias"].tensor_type.name == "F32"
    np.testing.assert_array_equal(tensors["blk.0.attn_q.bias"].data, state["model.layers.0.self_attn.q_proj.bias"])
    if runtime_missing():
        pytest.skip(runtime_missing())
    dequantised = tmp_path / "dequantised"  # the twin's weights as a plain fp checkpoint: the exact reference
    shutil.copytree(fp, dequantised)
    weights = load_file(str(fp / "model.safetensors"))
    for key in [k for k in state if k.endswith(".qweight")]:
        module = key.removesuffix(".qweight")
        parts = {k: state[f"{module}.{k}"] for k in GPTQ_PARTS}
        weights[f"{module}.weight"] = dequantize(**parts, bits=4).contiguous()
    save_file(weights, str(dequantised / "model.safetensors"), metadata={"format": "pt"})
    rows = [[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"][:31]] for text in SAMPLE_JA[-2:]]
    scored, as_twin = llama_cpp_against_transformers(dequantised, out / "qwen2-q4_0.gguf", rows)
    as_fp = next_token_agreement(transformers_logprobs(fp, rows), scored.logprobs, rows)
    print(f"llama.cpp qwen2 q4_0 of the twin: vs the twin {as_twin}, vs the fp model {as_fp}")
    assert as_twin["kl"] < as_fp["kl"] / 10 and as_twin["argmax_agreement"] >= 0.9


@pytest.mark.parametrize(
    "model_type,change,match",
    [
        ("gemma2", {"query_pre_attn_scalar": 32}, "query_pre_attn_scalar 32: llama.cpp's gemma2 scales queries"),
        ("gemma3_text", {"layer_types": ["full_attention", "sliding_attention"]}, "differ from llama.cpp's gemma3"),
        ("gemma3_text", {"final_logit_softcapping": 30.0}, "llama.cpp's gemma3 always applies neither"),
        ("qwen2", {"use_sliding_window": True}, "llama.cpp's qwen2 attends to the whole context"),
        ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn' is not supported"),
    ],
)
def test_configs_llama_cpp_would_run_differently_are_refused(model_type, change, match):
    config = AutoConfig.for_model(model_type, **TINY_SHAPE, **FAMILY_SHAPES[model_type], vocab_size=64).to_dict()
    model_hparams(config)  # the family's own defaults are what llama.cpp runs
    with pytest.raises(GGUFExportError, match=match):
        model_hparams({**config, **change})
