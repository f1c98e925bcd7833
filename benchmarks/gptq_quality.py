"""GPTQ quality: youri's GPTQ vs round-to-nearest vs GPTQModel (reference), on a tiny model trained on Japanese.

    python benchmarks/gptq_quality.py            # hidden 256, 2 layers, vocab 2048, 200 steps, 5 seeds (~4 min)
    python benchmarks/gptq_quality.py --quick    # hidden 128, 2 layers, vocab 1024, 80 steps, 1 seed

1. Trains a tiny Llama with a plain torch loop on the shared Aozora Bunko + Wikipedia Japanese corpora
   (KL is meaningless on random weights). Text is tokenised with the Llama 2 tokenizer, then its most
   frequent ids are renumbered into a small vocabulary (rest -> <unk>) so that a 32k-row LM head does not
   dominate the CPU time; the decoder layers, which are what GPTQ quantizes, are unaffected.
2. Writes the calibration rows (128 training sequences, like Youri's 128 calibration samples and
   ``youri quantize``'s default) and held-out rows (Wikipedia test split, never trained on) as a youri
   data folder, so every method sees exactly the same tokens.
3. ``youri quantize`` (4 bit, group 128, sym, desc_act false, damp 0.01, true-sequential) -> KL and
   perplexity for youri GPTQ and RTN on the held-out Japanese rows; then the same GPTQ with
   ``scale_search`` off (plain min/max scales, as GPTQModel) -> ``kl_gptq_minmax``, what the search buys.
4. GPTQModel 7.6.0, same settings and calibration rows, in its own venv (it pins numpy 2.2.6):
   ``YOURI_GPTQ_REFERENCE_PYTHON`` or /tmp/gptqref/bin/python; its v1 checkpoint is then loaded with
   youri's loader and scored with the same code. Without it, ``kl_reference`` is null with the reason.

At this scale one matrix can dominate the KL (layer 0's q_proj, measured: its GPTQ result moves the KL by
2x under a change of damping or of a quarter of the calibration rows), so the full run repeats 1-4 with
5 seeds (model init, training order, calibration rows) and reports mean KLs; the ratios are ratios of
the means, and each seed's figures are in ``seeds``.

Last stdout line: one JSON object (kl_gptq, kl_rtn, kl_reference, increase_vs_rtn, increase_vs_reference,
size_ratio for the Llama-2-7B shape, perplexities, per-seed figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

REFERENCE_WORKER = r"""
import json, os, sys, time
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
import torch
from gptqmodel import GPTQModel, QuantizeConfig
parent, rows_file, out = sys.argv[1:4]
rows = torch.load(rows_file, weights_only=True)
calib = [{"input_ids": r.tolist(), "attention_mask": [1] * len(r)} for r in rows]
qcfg = QuantizeConfig(bits=4, group_size=128, desc_act=False, act_group_aware=False, sym=True, damp_percent=0.01,
                      true_sequential=True, offload_to_disk=False, device="cpu")
start = time.perf_counter()
model = GPTQModel.load(parent, qcfg)
model.quantize(calib, batch_size=1, calibration_sort=None)
model.save(out)
print(json.dumps({"reference_wall_s": round(time.perf_counter() - start, 2)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings, <= 60 s")
    parser.add_argument("--workdir", default="", help="keep the models here (default: a temporary folder)")
    parser.add_argument("--seeds", type=int, default=0, help="repeats with seeds 0..N-1 (default: 5, quick: 1)")
    args = parser.parse_args()
    size = (
        dict(hidden=128, inter=384, layers=2, vocab=1024, steps=80, seq=64, calib=16, heldout=16)
        if args.quick
        else dict(hidden=256, inter=768, layers=2, vocab=2048, steps=200, seq=128, calib=128, heldout=128)
    )
    seeds = args.seeds or (1 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        runs = [run(work / f"seed{seed}", size, seed) for seed in range(seeds)]
    result = combine(runs)
    table(result)
    print(json.dumps(result))


RATIOS = ("increase_vs_rtn", "increase_vs_reference")


def combine(runs: list[dict]) -> dict:
    """Mean KLs and perplexities over seeds; ratios of the means; each seed's own figures kept."""
    if len(runs) == 1:
        return runs[0]
    mean = lambda key: None if any(r[key] is None for r in runs) else round(sum(r[key] for r in runs) / len(runs), 6)
    out = {key: value for key, value in runs[0].items() if key != "seed"}
    out["model"] += f", mean of {len(runs)} seeds"
    for key in (
        "kl_gptq",
        "kl_gptq_minmax",
        "kl_rtn",
        "kl_reference",
        "ppl_fp32",
        "ppl_gptq",
        "ppl_rtn",
        "ppl_reference",
        "youri_quantize_s",
        "reference_quantize_s",
        "train_s",
    ):
        out[key] = mean(key)
    out["increase_vs_rtn"] = round(out["kl_gptq"] / out["kl_rtn"], 4)
    out["increase_vs_reference"] = round(out["kl_gptq"] / out["kl_reference"], 4) if out["kl_reference"] else None
    out["seeds"] = [
        {k: r[k] for k in ("seed", "kl_gptq", "kl_gptq_minmax", "kl_rtn", "kl_reference") + RATIOS} for r in runs
    ]
    return out


def run(work: Path, size: dict, seed: int = 0) -> dict:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    from youri.model import load_model, load_tokenizer
    from youri.quant.gptq import LLAMA_2_7B, twin_sizes
    from youri.quant.quantize import Config, compare_models, quantize_model
    from youri.quant.quantize import run as quantize

    tokenizer = load_tokenizer(SHARED / "llama2-tokenizer")
    train_rows, heldout_rows = corpus_rows(tokenizer, size)
    start = time.perf_counter()
    parent = train_tiny_llama(work / "parent", tokenizer, train_rows, size, seed)
    train_s = time.perf_counter() - start
    picks = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed))[: size["calib"]]
    calib = train_rows[picks.sort().values]
    heldout_rows = heldout_rows[: size["heldout"]]  # every method is scored on exactly these rows
    data = write_data_folder(work / "data", calib, heldout_rows, size["vocab"], tokenizer.eos_token_id)

    cfg = Config(
        model=str(parent),
        out=str(work / "youri-gptq"),
        calibration=str(data),
        heldout_ja=str(data),
        num_samples=size["calib"],
        seq_len=size["seq"],
        eval_samples=size["heldout"],
        device="cpu",
    )
    youri_out = quantize(cfg, overwrite=True)
    metrics = json.loads((youri_out / "metrics.json").read_text())
    ja = metrics["quality"]["ja"]

    fp = load_model(parent, dtype=torch.float32)
    minmax = load_model(parent, dtype=torch.float32)
    quantize_model(minmax, calib, dataclasses.replace(cfg, scale_search=False), torch.device("cpu"))
    kl_minmax = compare_models(fp, {"minmax": minmax}, heldout_rows)["kl_minmax"]

    reference, why = run_reference(parent, calib, work / "gptqmodel-gptq")
    kl_reference = ppl_reference = None
    if reference is not None:
        ref_scores = compare_models(
            fp, {"gptqmodel": load_model(reference["folder"], dtype=torch.float32)}, heldout_rows
        )
        kl_reference, ppl_reference = ref_scores["kl_gptqmodel"], ref_scores["ppl_gptqmodel"]
    return {
        "seed": seed,
        "model": f"hidden {size['hidden']}, intermediate {size['inter']}, layers {size['layers']}, "
        f"{size['steps']} steps on Aozora+Wikipedia ja",
        "train_s": round(train_s, 1),
        "heldout_tokens": ja["tokens"],
        "kl_gptq": ja["kl_gptq"],
        "kl_gptq_minmax": kl_minmax,
        "kl_rtn": ja["kl_rtn"],
        "kl_reference": kl_reference,
        "increase_vs_rtn": round(ja["kl_gptq"] / ja["kl_rtn"], 4),
        "increase_vs_reference": round(ja["kl_gptq"] / kl_reference, 4) if kl_reference else None,
        "ppl_fp32": ja["ppl_reference"],
        "ppl_gptq": ja["ppl_gptq"],
        "ppl_rtn": ja["ppl_rtn"],
        "ppl_reference": ppl_reference,
        "youri_quantize_s": metrics["wall_time_s"],
        "reference_quantize_s": reference["reference_wall_s"] if reference else None,
        "reference": "GPTQModel 7.6.0" if reference else f"not run: {why}",
        "size_ratio": round(twin_sizes(LLAMA_2_7B, bits=4, group_size=128)["ratio"], 4),
        "tiny_folder_size_ratio": metrics["size"]["ratio"],
    }


def corpus_rows(tokenizer, size: dict):
    """Training rows from Aozora + Wikipedia train, held-out rows from the Wikipedia test split."""
    import torch

    def rows(texts: list[str]) -> torch.Tensor:
        ids: list[int] = []
        for text in texts:
            ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seq = size["seq"]
        return torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)

    def texts(path: Path, limit: int) -> list[str]:
        out, total = [], 0
        for line in path.open(encoding="utf-8"):
            out.append(json.loads(line)["text"])
            total += len(out[-1])
            if total >= limit:
                break
        return out

    budget = size["steps"] * 8 * size["seq"]  # about one pass over the training tokens
    train = rows(
        texts(SHARED / "wikipedia-annotated-corpus-ja" / "train.jsonl", budget // 2)
        + texts(SHARED / "aozora-bunko-ja" / "aozora_clean.jsonl", budget // 2)
    )
    heldout = rows(texts(SHARED / "wikipedia-annotated-corpus-ja" / "test.jsonl", 10**9))
    # Renumber: <unk>, <s>, </s> keep ids 0-2, then the most frequent training ids; the rest -> <unk>.
    counts = torch.bincount(train.flatten(), minlength=len(tokenizer))
    counts[:3] = counts.max() + 1
    keep = torch.argsort(counts, descending=True, stable=True)[: size["vocab"]]
    lut = torch.zeros(len(tokenizer), dtype=torch.long)
    lut[keep] = torch.arange(len(keep))
    return lut[train], lut[heldout]


def train_tiny_llama(folder: Path, tokenizer, rows, size: dict, seed: int = 0) -> Path:
    import torch

    from youri.testing import random_llama

    model = random_llama(
        size["vocab"],
        seed=seed,
        hidden_size=size["hidden"],
        intermediate_size=size["inter"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["hidden"] // 64,
        num_key_value_heads=size["hidden"] // 64,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=size["steps"], pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    for step in range(size["steps"]):
        batch = rows[torch.randint(0, len(rows), (8,), generator=generator)]
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == size["steps"] - 1:
            print(f"train step {step:4d} loss {loss.item():.3f}", file=sys.stderr)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def write_data_folder(folder: Path, calib, heldout, vocab_size: int, eos_id: int) -> Path:
    """A youri data folder: train = the calibration rows, val/ja = the held-out rows."""
    from youri.data.shards import FORMAT, token_dtype, write_shard

    dtype = token_dtype(vocab_size)
    index = {
        "format": FORMAT,
        "seq_len": int(calib.shape[1]),
        "dtype": dtype.str,
        "eos_id": eos_id,
        "vocab_size": vocab_size,
        "splits": {},
    }
    for split, rows in (("train", calib), ("val/ja", heldout)):
        entry = write_shard(folder / split / "00000.bin", rows.numpy(), dtype)
        index["splits"][split] = [{"file": f"{split}/00000.bin", **entry}]
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def reference_python() -> tuple[str | None, str]:
    """The python of a venv with GPTQModel: $YOURI_GPTQ_REFERENCE_PYTHON, the venv scripts/test.sh builds
    ($YOURI_GPTQ_REF_VENV or ~/.cache/youri/gptqref), /tmp/gptqref, or this interpreter; paths that do not
    exist are passed over, and none found means the reference is skipped with the reason."""
    venv = Path(os.environ.get("YOURI_GPTQ_REF_VENV") or Path.home() / ".cache" / "youri" / "gptqref")
    candidates = [
        os.environ.get("YOURI_GPTQ_REFERENCE_PYTHON", ""),
        str(venv / "bin" / "python"),
        "/tmp/gptqref/bin/python",
        sys.executable,
    ]
    for python in filter(None, candidates):
        if not Path(python).is_file():
            continue
        probe = subprocess.run([python, "-c", "import gptqmodel, optimum"], capture_output=True)
        if probe.returncode == 0:
            return python, ""
    return None, (
        f"GPTQModel not installed (looked in $YOURI_GPTQ_REFERENCE_PYTHON, {venv}, /tmp/gptqref and this python; "
        "`bash scripts/test.sh` builds the venv: GPTQModel 7.6.0 pins numpy==2.2.6)"
    )


def run_reference(parent: Path, calib, out: Path):
    import torch

    python, why = reference_python()
    if python is None:
        return None, why
    rows_file = out.with_suffix(".rows.pt")
    torch.save(calib.clone(), rows_file)
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [python, "-c", REFERENCE_WORKER, str(parent), str(rows_file), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        return None, f"GPTQModel failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}"
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "folder": out}, ""


def table(r: dict) -> None:
    print(f"\nGPTQ quality on {r['model']} ({r['heldout_tokens']} held-out Japanese tokens)")
    print(f"{'method':<22}{'KL(fp32 || q)':>15}{'perplexity':>12}{'quantize s':>12}")
    print(f"{'fp32 parent':<22}{'':>15}{r['ppl_fp32']:>12.3f}{'':>12}")
    print(f"{'youri GPTQ':<22}{r['kl_gptq']:>15.5f}{r['ppl_gptq']:>12.3f}{r['youri_quantize_s']:>12.1f}")
    print(f"{'  min/max scales':<22}{r['kl_gptq_minmax']:>15.5f}   (youri GPTQ with scale_search off)")
    print(f"{'youri RTN':<22}{r['kl_rtn']:>15.5f}{r['ppl_rtn']:>12.3f}{'':>12}")
    if r["kl_reference"] is not None:
        print(
            f"{'GPTQModel 7.6.0':<22}{r['kl_reference']:>15.5f}{r['ppl_reference']:>12.3f}"
            f"{r['reference_quantize_s']:>12.1f}"
        )
    else:
        print(f"{'GPTQModel':<22}{r['reference']}")
    print(
        f"KL ratio youri GPTQ / RTN: {r['increase_vs_rtn']} (target <= 0.5); "
        f"/ GPTQModel: {r['increase_vs_reference']} (target <= 0.85)"
    )
    print(f"size ratio, Llama-2-7B shape, 4 bit g128 vs fp16: {r['size_ratio']} (target <= 0.30)\n")


if __name__ == "__main__":
    main()
