"""Issue 27, classes 2-4: every stage, given a truncated or corrupted version of an input it reads, fails
with ONE line ``youri STAGE: error: ...`` naming that file; a per-item loop over external input keeps going
and names every failed item; nothing is silent (a missing --compare folder, a run that is not its preset,
a kernel that could not be built, a BOM, an empty source file). The CLI runs in process: tiny inputs, no
subprocess. (Downloads with broken transfers are tested in test_eval_data.py, beside the fake Hub.)"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from youri import cli
from youri.data.sft_data import DatasetConfig, build_mixture
from youri.data.shards import FORMAT, INDEX, write_shard
from youri.eval.averages import JP8_NAME, averages
from youri.eval.presets import PRESETS, run_record
from youri.eval.tasks.formats import iter_rows
from youri.io import DataError, iter_jsonl, read_json, read_text, resolve_path
from youri.model import load_model, load_tokenizer
from youri.quant.gptq import rtn_quantize
from youri.quant.quantize import Config as QuantizeConfig
from youri.quant.quantize import write_gptq_folder
from youri.run.report import write_report
from youri.runtime import kernels
from youri.runtime.gptq_format import pack
from youri.runtime.quant_linear import QuantLinear, kernel_summary
from youri.stage import StageWriter
from youri.testing import save_random_llama
from youri.train.init_base import train_tokenizer

SAMPLE = [t for t in resolve_path("builtin:corpus_en.txt").read_text(encoding="utf-8").split("\n\n") if t.strip()]
FIXTURES = Path(__file__).parent / "fixtures" / "jp_eval"
JAQKET = json.dumps({"jaqket_v2": {"eval": str(FIXTURES / "jaqket_v2_dev.jsonl")}})
SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """One intact copy of every kind of input the stages read."""
    root = tmp_path_factory.mktemp("good")
    model = root / "model"
    train_tokenizer(SAMPLE, 400, model)  # SentencePiece: export reads tokenizer.model
    save_random_llama(model, model, **SHAPE)
    sft = [{"instruction": t[:20], "output": t[20:60]} for t in SAMPLE[:40]]
    (root / "sft.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in sft).encode()))
    data = root / "data"  # a youri data folder: one train shard
    rows = np.arange(8 * 16).reshape(8, 16) % 300
    entry = {"file": "train-00000.bin", **write_shard(data / "train-00000.bin", rows, np.dtype("<u2"))}
    index = {"format": FORMAT, "seq_len": 16, "dtype": "<u2", "eos_id": 2, "vocab_size": 400}
    (data / INDEX).write_text(json.dumps({**index, "splits": {"train": [entry]}, "totals": {}}))
    (root / "a.txt").write_text("\n\n".join(SAMPLE[:30]), encoding="utf-8")
    return {"root": root, "model": model, "sft": root / "sft.jsonl.gz", "data": data, "text": root / "a.txt"}


def _truncated(src: Path, dst: Path, file: str, keep: float = 0.5) -> Path:
    """A copy of the folder (or file) ``src`` whose ``file`` is cut to ``keep`` of its bytes."""
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    target = dst / file if file else dst
    data = target.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def _one_error_line(capsys, stage: str, argv: list[str], names: Path) -> str:
    capsys.readouterr()
    code = cli.main([stage, *argv])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("youri")]
    assert code == 2 and len(err) == 1 and "Traceback" not in stderr, err
    assert err[0].startswith(f"youri {stage}: error: ") and str(names) in err[0], err[0]
    return err[0]


def _weights_cases(good: dict, tmp: Path) -> list[tuple[str, list[str]]]:
    model = str(tmp / "model")
    sft = f"[{{path: {good['sft']}}}]"
    return [
        ("export", [model, "--out", str(tmp / "gguf"), "--eval_samples", "0"]),
        ("chat", [model]),
        (
            "eval",
            [model, "--tasks", "[jaqket_v2]", "--shots", "{jaqket_v2: 0}", "--data", JAQKET, "--out", str(tmp / "e")],
        ),
        ("serve", [model, "--port", "0"]),
        ("quantize", [model, "--out", str(tmp / "q"), "--calibration", str(good["text"]), "--device", "cpu"]),
        ("sft", ["--model", model, "--datasets", sft, "--out", str(tmp / "sft"), "--seq_len", "256", "--heldout", "2"]),
        (
            "pretrain",
            ["--model", model, "--data", str(good["data"]), "--out", str(tmp / "p"), "--train.max_steps", "1"],
        ),
        ("vocab", ["--base", model, "--out", str(tmp / "v"), "--new_pieces", "8"]),  # the built-in Japanese corpus
    ]


@pytest.mark.parametrize("stage", ["export", "chat", "eval", "serve", "quantize", "sft", "pretrain", "vocab"])
@pytest.mark.parametrize("keep", [0.5, 0.0005])  # the tensors cut, or the header itself
def test_truncated_weights_are_one_line_naming_the_file(good, tmp_path, capsys, stage, keep):
    weights = _truncated(good["model"], tmp_path / "model", "model.safetensors", keep)
    argv = dict(_weights_cases(good, tmp_path))[stage]
    line = _one_error_line(capsys, stage, argv, weights)
    assert "truncated or corrupted" in line


@pytest.mark.parametrize(
    "file, needle",
    [("tokenizer.json", "cannot read the tokenizer"), ("config.json", "invalid JSON")],
)
def test_truncated_model_folder_files_name_the_file(good, tmp_path, capsys, file, needle):
    broken = _truncated(good["model"], tmp_path / "model", file)
    line = _one_error_line(
        capsys, "chat", [str(tmp_path / "model")], broken.parent if file == "tokenizer.json" else broken
    )
    assert needle in line


@pytest.mark.parametrize("stage", ["export", "vocab"])  # the stages that read the SentencePiece file itself
def test_truncated_sentencepiece_model_is_named(good, tmp_path, capsys, stage):
    broken = _truncated(good["model"], tmp_path / "model", "tokenizer.model")
    line = _one_error_line(capsys, stage, dict(_weights_cases(good, tmp_path))[stage], broken)
    assert "truncated or corrupted" in line


@pytest.mark.parametrize("cut", ["end", "middle"])
def test_truncated_or_corrupted_jsonl_gz_is_one_line_naming_it(good, tmp_path, capsys, cut):
    data = good["sft"].read_bytes()
    broken = tmp_path / "sft.jsonl.gz"
    broken.write_bytes(data[: len(data) // 2] if cut == "end" else data[:20] + bytes(40) + data[60:])
    argv = ["--model", str(good["model"]), "--datasets", f"[{{path: {broken}}}]", "--out", str(tmp_path / "o")]
    _one_error_line(capsys, "sft", argv, broken)
    with pytest.raises(DataError, match=str(broken)):
        list(iter_jsonl(broken))


def test_truncated_shard_is_named_with_every_other_damaged_one(good, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(good["data"], data)
    index = json.loads((data / INDEX).read_text())
    second = dict(index["splits"]["train"][0], file="train-00001.bin")
    shutil.copy(data / "train-00000.bin", data / "train-00001.bin")
    index["splits"]["train"].append(second)
    (data / INDEX).write_text(json.dumps(index))
    for name in ("train-00000.bin", "train-00001.bin"):  # both cut short
        (data / name).write_bytes((data / name).read_bytes()[:10])
    argv = ["--model", str(good["model"]), "--data", str(data), "--out", str(tmp_path / "p")]
    line = _one_error_line(capsys, "pretrain", argv, data)
    assert "2 of 2 shard files are damaged" in line and "train-00000.bin" in line and "train-00001.bin" in line


def test_data_reads_every_source_and_names_each_that_failed(good, tmp_path, capsys):
    bad_parquet = tmp_path / "cut.parquet"
    bad_parquet.write_bytes(b"PAR1 not really")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "ok"}\n{"text": "cut', encoding="utf-8")
    sources = f"[{{path: {bad_parquet}}}, {{path: {good['text']}, kind: text}}, {{path: {bad_jsonl}}}]"
    argv = ["--sources", sources, "--tokenizer", str(good["model"]), "--out", str(tmp_path / "d"), "--tasks", "1"]
    line = _one_error_line(capsys, "data", argv, bad_parquet)
    assert "2 of 3 sources could not be read" in line and f"{bad_jsonl}:2" in line


def test_empty_source_file_is_named_when_the_corpus_comes_out_empty(good, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    argv = ["--sources", f"[{{path: {empty}}}]", "--tokenizer", str(good["model"]), "--out", str(tmp_path / "d")]
    line = _one_error_line(capsys, "data", argv + ["--tasks", "1"], empty)
    assert "0 tokens" in line and "empty source file" in line


# ----------------------------------------------------------------------------- youri's own JSON files


def test_hand_edited_metrics_missing_a_field_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    with StageWriter(run / "eval_base", stage="eval", config=QuantizeConfig()) as stage:
        stage.finish({"tasks": {"jnli-1.1-0.2": {"score": 50.0}}, "average": 50.0})
    metrics = run / "eval_base" / "metrics.json"
    edited = json.loads(metrics.read_text())
    del edited["tasks"]["jnli-1.1-0.2"]["score"]
    metrics.write_text(json.dumps(edited))
    line = _one_error_line(capsys, "report", [str(run), "--measure", "false"], metrics)
    assert "missing field 'score'" in line
    # read_json's objects name their file for any missing key, and are still KeyErrors to code that asks
    with pytest.raises(KeyError):
        read_json(metrics)["nope"]


def test_report_compare_with_a_missing_or_empty_folder_is_an_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _one_error_line(capsys, "report", [str(run), "--measure", "false", "--compare", str(tmp_path / "typo")], "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nothing to compare"):
        write_report(run, compare=str(tmp_path / "empty"), measure=False)


# ----------------------------------------------------------------------------- GPTQ in AutoGPTQ's layout


def test_autogptq_layout_is_read_like_youris_own(good, tmp_path, capsys):
    """AutoGPTQ writes the settings to quantize_config.json only; the same tensors load to the same logits."""
    twin = tmp_path / "twin"  # youri's own layout, round-to-nearest codes (the format is what matters here)
    twin.mkdir()
    model = load_model(good["model"], dtype=torch.float32)
    packed = {
        name: pack(*rtn_quantize(module.weight.detach(), bits=4, group_size=128), bits=4)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }
    config = json.loads((good["model"] / "config.json").read_text())
    write_gptq_folder(twin, model, packed, QuantizeConfig(), load_tokenizer(good["model"]), config)
    autogptq = tmp_path / "autogptq"
    shutil.copytree(twin, autogptq)
    config = json.loads((autogptq / "config.json").read_text())
    del config["quantization_config"]
    (autogptq / "config.json").write_text(json.dumps(config))
    settings = json.loads((autogptq / "quantize_config.json").read_text())
    for key in ("quant_method", "checkpoint_format"):  # older AutoGPTQ releases write neither
        settings.pop(key, None)
    (autogptq / "quantize_config.json").write_text(json.dumps(settings))
    ids = torch.tensor([[1, 5, 9, 20, 31]])
    with torch.no_grad():
        want = load_model(twin, dtype=torch.float32)(ids).logits
        got_model = load_model(autogptq, dtype=torch.float32)
        got = got_model(ids).logits
    assert kernel_summary(got_model) is not None  # packed QuantLinear layers, not a float model
    torch.testing.assert_close(got, want)
    line = _one_error_line(capsys, "quantize", [str(autogptq), "--out", str(tmp_path / "q")], autogptq)
    assert "quantize_config.json: the model is already quantized" in line
    settings["is_marlin_format"] = True  # another tensor layout: refused in one line, naming the file
    (autogptq / "quantize_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="quantize_config.json.*marlin"):
        load_model(autogptq)


# ----------------------------------------------------------------------------- nothing silent


def test_a_run_that_is_not_its_preset_is_recorded_as_custom():
    rinna = PRESETS["rinna"]
    expected = list(zip(rinna.tasks, rinna.shots))
    assert run_record(rinna, expected, expected) == rinna.record()
    fewer_shots = [(k, 0 if k.startswith("mgsm") else n) for k, n in expected]
    other_version = [("jnli-1.1-0.3" if k.startswith("jnli") else k, n) for k, n in expected]
    for ran, change in [
        (fewer_shots, "mgsm-1.0-0.0: 0 shots instead of 5"),
        (other_version, "added jnli-1.1-0.3"),
        (expected[:3], "dropped xwinograd_ja"),
    ]:
        record = run_record(rinna, ran, expected)
        assert record["name"] == "custom" and record["from"]["name"] == "rinna" and change in record["changes"]
    eight = {k: 50.0 for k, _ in other_version}
    assert averages(eight)["average_name"] == JP8_NAME
    named = averages(eight, custom_from="rinna")
    assert JP8_NAME not in named["average_name"] and "custom run (from preset rinna)" in named["average_name"]
    assert named["average"] == 50.0 and named["subsets"] == {}


def test_eval_records_a_custom_task_list_as_custom(tmp_path):
    from youri.eval.evaluate import Config, plan_tasks, preset_record, resolve_preset

    same = resolve_preset(Config(write_requests="x"))
    assert preset_record(same, plan_tasks(same))["name"] == "rinna"
    custom = resolve_preset(Config(write_requests="x", tasks=["jnli-1.1-0.3"], shots={"jnli": 1}))
    record = preset_record(custom, plan_tasks(custom))
    assert record["name"] == "custom" and record["from"]["name"] == "rinna"


def test_a_kernel_that_cannot_be_built_says_why_at_load(monkeypatch, tmp_path):
    cases = {
        "no C compiler found": lambda patch: patch.setattr(kernels.shutil, "which", lambda name: None),
        "no C compiler at": lambda patch: patch.setenv("CC", str(tmp_path / "no-such-cc")),
        "the kernel cache is not writable": lambda patch: patch.setenv("YOURI_CACHE", str(tmp_path / "a-file")),
    }
    (tmp_path / "a-file").write_text("not a folder")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        cases = {"the CPU has no AVX2": lambda patch: None}
    layer = _quant_layer()
    try:
        for needle, breakage in cases.items():
            with monkeypatch.context() as patch:
                patch.delenv("CC", raising=False)
                patch.delenv(kernels.KERNEL_ENV, raising=False)
                patch.setenv("YOURI_CACHE", str(tmp_path / f"cache-{len(needle)}"))
                breakage(patch)
                kernels.avx2_library.cache_clear()
                layer.prepare_kernel()
                summary = kernel_summary(layer)
                assert layer.kernel != "int4-avx2" and "(int4-avx2 unavailable: " in summary, summary
                assert needle in summary.split("(int4-avx2 unavailable: ")[1], summary
                patch.setenv(kernels.KERNEL_ENV, "int4-cpu")  # pinned: the user chose, nothing to explain
                assert "unavailable" not in kernel_summary(layer)
    finally:
        kernels.avx2_library.cache_clear()


def _quant_layer():

    torch.manual_seed(0)
    layer = QuantLinear(128, 64, bits=4, group_size=64)
    layer.load_state_dict(pack(*rtn_quantize(torch.randn(64, 128), bits=4, group_size=64), bits=4))
    return layer


def test_a_byte_order_mark_is_never_read_as_text(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "t.csv").write_bytes(bom + "text,summary\n本文,要約\n".encode())
    assert [r for _, r in iter_rows(str(tmp_path / "t.csv"))] == [{"text": "本文", "summary": "要約"}]
    (tmp_path / "t.json").write_bytes(bom + json.dumps([{"q": "問"}]).encode())
    assert [r for _, r in iter_rows(str(tmp_path / "t.json"))] == [{"q": "問"}]
    (tmp_path / "t.txt").write_bytes(bom + "一行目\n".encode())
    assert read_text(tmp_path / "t.txt") == "一行目\n"
    (tmp_path / "c.json").write_bytes(bom + b'{"a": 1}')
    assert read_json(tmp_path / "c.json") == {"a": 1}


def test_every_failing_sft_dataset_and_eval_task_is_named_at_once(good, tmp_path, capsys):
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "out', encoding="utf-8")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    specs = [DatasetConfig(path=str(p)) for p in (cut, good["sft"], empty)]
    with pytest.raises(DataError, match="2 of 3 datasets could not be read") as err:
        build_mixture(specs, "instruction", heldout=0, seed=0)
    assert f"{cut}:2" in str(err.value) and f"{empty}: no usable records" in str(err.value)

    csv_cut, json_cut = tmp_path / "cut.csv", tmp_path / "cut.json"
    csv_cut.write_bytes((FIXTURES / "xlsum_ja_test.csv").read_bytes()[:300])  # the last row loses its cells
    json_cut.write_bytes((FIXTURES / "dev_jaqket_59.350.json").read_bytes()[:500])
    data = {"xlsum_ja": {"eval": str(csv_cut), "fewshot": str(csv_cut)}, "jaqket_v2": {"eval": str(json_cut)}}
    argv = ["--write_requests", str(tmp_path / "r.jsonl"), "--tasks", "[xlsum_ja, jaqket_v2]"]
    line = _one_error_line(capsys, "eval", [*argv, "--data", json.dumps(data), "--shots", "{jaqket_v2: 0}"], csv_cut)
    assert "2 of 2 tasks' data could not be read" in line and f"{json_cut}:" in line
    assert not (tmp_path / "r.jsonl").exists()


def test_serve_on_port_0_prints_the_port_it_bound(good):
    """``youri serve --port 0`` (a real process, as a user starts it): the banner names the port the system
    chose, and that port answers."""
    command = [sys.executable, "-m", "youri", "serve", str(good["model"]), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline, port = time.monotonic() + 120, None
        while port is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            found = re.search(r"on http://127\.0\.0\.1:(\d+) \(chat page", line)
            port = int(found.group(1)) if found else None
        assert port, "no banner with the bound port"
        for _ in range(200):  # the banner comes before uvicorn takes the socket over
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"nothing answers on port {port}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
