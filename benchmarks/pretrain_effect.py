"""The effect of continued pretraining at tiny scale: Japanese held-out perplexity falls, English holds.

For each corpus set it runs the whole chain with youri's stages — ``youri init`` (tiny English base,
English-only BPE tokenizer: Japanese falls back to bytes as with Llama 2), ``youri data`` (ja:en = 9:1
token mixture, held-out val/ja and val/en documents) and ``youri pretrain`` — and compares the
held-out perplexities of the base model (before) and of the continued-pretrained model (after):

* ``sample``: the built-in samples, with exactly the init/data/pretrain sections of recipes/demo.yaml;
* ``shared``: ../shared/data — init on Tiny Shakespeare; Japanese = Aozora Bunko + Wikipedia leads,
  English replay = Tiny Shakespeare (documents held out by ``youri data`` are never trained on).

    python benchmarks/pretrain_effect.py                 # both corpus sets
    python benchmarks/pretrain_effect.py --quick         # sample only, fewer steps (<= 60 s on an idle machine)

Last stdout line: JSON {corpus: {ja_ppl_before, ja_ppl_after, ja_factor, en_ppl_before, en_ppl_after,
en_change, and {en,ja}_unseen_{before,after} when ../shared exists}}. Goal: ja_factor large, en_change
<= +10 %. Note: on the sample, val/en documents were also in init's training text (init reads all of
corpus_en.txt), so en_change there includes forgetting of memorised text; *_unseen is text neither saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def sections(corpus: str, work: Path, quick: bool) -> dict:
    from youri.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    init, data, pre = dict(recipe["init"]), dict(recipe["data"]), dict(recipe["pretrain"])
    if corpus == "shared":
        init["text"] = str(SHARED / "tinyshakespeare-en" / "input.txt")
        init["train"] = {**init.get("train", {}), "max_steps": 150}
        data["sources"] = [
            {"path": str(SHARED / "aozora-bunko-ja" / "aozora_clean.jsonl"), "lang": "ja", "weight": 4.5},
            {"path": str(SHARED / "wikipedia-annotated-corpus-ja" / "train.jsonl"), "lang": "ja", "weight": 4.5},
            {"path": str(SHARED / "tinyshakespeare-en" / "input.txt"), "lang": "en", "weight": 1},
        ]
        data["token_budget"] = 200_000
        data["val_docs"] = 32
    if quick:
        init["train"] = {**init.get("train", {}), "max_steps": 60}
        pre["train"] = {**pre.get("train", {}), "max_steps": 10, "eval_every": 5}
    init["out"], data["out"], pre["out"] = str(work / "init"), str(work / "data"), str(work / "pretrain")
    data["tokenizer"], pre["model"], pre["data"] = init["out"], init["out"], data["out"]
    return {"init": init, "data": data, "pretrain": pre}


def unseen_ppl(model_dir: Path) -> dict:
    """Perplexity on text neither model trained on (needs ../shared): the start of Tiny Shakespeare
    (English) and the Wikipedia dev leads (Japanese), 8 rows of 512 tokens each."""
    import torch

    from youri.model import load_model, load_tokenizer
    from youri.train.losses import token_loss_sum

    if not SHARED.is_dir():
        return {}
    texts = {
        "en_unseen": (SHARED / "tinyshakespeare-en" / "input.txt").read_text()[:60000],
        "ja_unseen": "".join(
            json.loads(line)["text"]
            for line in (SHARED / "wikipedia-annotated-corpus-ja" / "dev.jsonl").open(encoding="utf-8")
        ),
    }
    tok, model = load_tokenizer(model_dir), load_model(model_dir, dtype=torch.float32).eval()
    out = {}
    for name, text in texts.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        rows = torch.tensor(ids[: 8 * 512]).view(-1, 512)
        with torch.no_grad():
            loss_sum, n = token_loss_sum(model(input_ids=rows).logits, rows)
        out[name] = float(torch.exp(loss_sum / n))
    return out


def run_chain(corpus: str, work: Path, quick: bool) -> dict:
    from youri.config import build_config
    from youri.data import corpus as data
    from youri.train import init_base as init
    from youri.train import pretrain

    cfg = sections(corpus, work, quick)
    t0 = time.perf_counter()
    init.run(build_config(init.Config, cfg["init"]))
    data.run(build_config(data.Config, cfg["data"]))
    metrics = pretrain.run(build_config(pretrain.Config, cfg["pretrain"]))
    before, after = metrics["initial_ppl"], metrics["final_ppl"]
    unseen = {f"{k}_before": v for k, v in unseen_ppl(work / "init").items()}
    unseen.update({f"{k}_after": v for k, v in unseen_ppl(work / "pretrain").items()})
    return {
        **unseen,
        "ja_ppl_before": before["val/ja"],
        "ja_ppl_after": after["val/ja"],
        "ja_factor": before["val/ja"] / after["val/ja"],
        "en_ppl_before": before["val/en"],
        "en_ppl_after": after["val/en"],
        "en_change": after["val/en"] / before["val/en"] - 1,
        "pretrain_steps": metrics["steps"],
        "pretrain_tokens": metrics["tokens"],
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sample corpus only, fewer steps")
    parser.add_argument("--corpus", choices=["sample", "shared", "both"], default="both")
    parser.add_argument("--workdir", help="keep the stage folders here (default: a temporary folder)")
    args = parser.parse_args()
    corpora = (
        ["sample"]
        if args.quick or args.corpus == "sample"
        else ["shared"]
        if args.corpus == "shared"
        else ["sample", "shared"]
    )
    if "shared" in corpora and not SHARED.is_dir():
        print(f"skipping 'shared': {SHARED} not found", file=sys.stderr)
        corpora.remove("shared")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.workdir) if args.workdir else Path(tmp)
        for corpus in corpora:
            results[corpus] = run_chain(corpus, base / corpus, args.quick)
    print(
        f"\n{'corpus':<8}{'ja ppl before':>15}{'ja ppl after':>14}{'ja factor':>11}"
        f"{'en ppl before':>15}{'en ppl after':>14}{'en change':>11}{'steps':>7}{'s':>7}"
    )
    for corpus, r in results.items():
        print(
            f"{corpus:<8}{r['ja_ppl_before']:>15.1f}{r['ja_ppl_after']:>14.2f}{r['ja_factor']:>10.1f}x"
            f"{r['en_ppl_before']:>15.2f}{r['en_ppl_after']:>14.2f}{100 * r['en_change']:>10.1f}%"
            f"{r['pretrain_steps']:>7}{r['seconds']:>7.0f}"
        )
    for corpus, r in results.items():
        if "en_unseen_before" in r:
            print(
                f"{corpus:<8}unseen text (../shared; Tiny Shakespeare, Wikipedia dev): en ppl "
                f"{r['en_unseen_before']:.1f} -> {r['en_unseen_after']:.1f}, ja ppl {r['ja_unseen_before']:.1f} -> "
                f"{r['ja_unseen_after']:.1f}"
            )
    print(
        json.dumps(
            {c: {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for c, r in results.items()}
        )
    )


if __name__ == "__main__":
    main()
