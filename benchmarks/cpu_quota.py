"""Training under a CPU quota, as in a container (`docker run --cpus=N`, a Kubernetes CPU limit): what a thread
count that ignores the quota costs, and what slm.executor counts there.

    sudo python benchmarks/cpu_quota.py [--cpus 1] [--threads 2,1] [--rounds 3] [--steps 20]

A container's CPU limit is a CFS bandwidth quota, not an affinity mask: the process still sees every CPU of
the host, and a thread per CPU (or per core) then shares the quota's time, each thread stopped whenever
the group has spent its share of the period. This makes a cgroup with a quota of --cpus CPUs (cgroup v1's
cpu.cfs_quota_us or v2's cpu.max; needs root and a writable cgroup file system) and, in a mount namespace of
its own, mounts that cgroup where a container sees its own (at the cpu controller's mount point), so the
process reads its quota where it would in Docker. There it runs benchmarks/train_throughput.py (float32, the
quickstart's shape) with each of --threads in turn, alternated over --rounds (the order turned every other
round), and prints the median tokens/s of each, the ratios to the first, and what slm.executor's
usable_cpus() and usable_cores() return inside.
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
    ap.add_argument("--cpus", type=float, default=1.0, help="the quota, in CPUs")
    ap.add_argument("--threads", default="2,1", help="comma-separated torch thread counts to compare")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    mount, group = make_group(args.cpus)
    try:
        probe = "from slm.executor import usable_cores, usable_cpus; print(usable_cpus(), usable_cores())"
        cpus, cores = in_group(mount, group, [sys.executable, "-c", probe]).split()
        inside = {"usable_cpus_in_quota": int(cpus), "usable_cores_in_quota": int(cores)}
        print(json.dumps({"bench": "cpu_quota.machine", **machine(), "quota_cpus": args.cpus, **inside}), flush=True)
        got: dict[int, list[float]] = {t: [] for t in counts}
        for r in range(args.rounds):
            for t in counts[:: -1 if r % 2 else 1]:
                cmd = [sys.executable, str(HERE / "train_throughput.py"), "--steps", str(args.steps)]
                cmd += ["--threads", str(t)]
                line = json.loads(in_group(mount, group, cmd).strip().splitlines()[-1])
                got[t].append(line["tokens_per_sec"])
                print(json.dumps({"bench": "cpu_quota", "round": r, "threads": t,
                                  "tokens_per_sec": line["tokens_per_sec"]}), flush=True)  # fmt: skip
        med = {t: statistics.median(v) for t, v in got.items()}
        first = counts[0]
        print(json.dumps({"bench": "cpu_quota.result", "quota_cpus": args.cpus, "rounds": args.rounds,
                          **{f"threads_{t}_tokens_per_sec": med[t] for t in counts},
                          **{f"threads_{t}_over_{first}": round(med[t] / med[first], 3) for t in counts[1:]},
                          "per_round": {t: got[t] for t in counts}}))  # fmt: skip
    finally:
        group.rmdir()


if __name__ == "__main__":
    main()
