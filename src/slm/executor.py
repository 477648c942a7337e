"""The one executor of independent jobs: the data pipeline's input files, a mixture sweep's proxies, and any
later set of jobs that share nothing while they run (sweeps, synthetic-data shards).

    run_jobs(fn, [args0, args1, ...], workers=2, done=lambda i, outcome: ..., finished=lambda i: marker(i).exists())

Jobs run in long-lived local worker processes (one import of torch per worker, not per job), in this
process when workers is 1, or as Ray tasks given a cluster address. A job that raises is an Outcome with
its reason and traceback, not the end of the run; a worker that dies (killed, out of memory, a crash)
breaks a local pool, so the jobs then in flight run again one at a time and the one that dies again is
the one recorded as failed. A job whose finished marker already exists is not run again, so a killed
run resumes where it stopped. Workers die with the process that started them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm.errors import SlmError

DIED = "the worker process died (killed, out of memory or crashed)"


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask where the OS keeps one (taskset, a container's or a
    cluster job's cpuset, Slurm) and its cgroup's CPU quota where it has one (a container's CPU limit:
    `docker run --cpus=2`, Kubernetes' limits.cpu), rounded up; else every CPU. os.cpu_count() counts the whole
    machine, so a job given 4 of a node's 64 cores would start 64 workers on those 4, and a container limited
    to 2 CPUs sees every CPU of its host. joblib's cpu_count reads both (and LOKY_MAX_CPU_COUNT, a user's own
    limit). These are logical CPUs: the count for worker processes and parallel jobs. Threads of one
    product: usable_cores()."""
    from joblib import cpu_count  # 0.2 s to import: only where a count is wanted, not in every worker

    try:
        return max(1, cpu_count())
    except ValueError:  # joblib's int() of the variable
        raise SlmError(
            f"LOKY_MAX_CPU_COUNT={os.environ.get('LOKY_MAX_CPU_COUNT')!r} is not a whole number of CPUs; "
            "set it to one (e.g. 4) or unset it"
        ) from None


CPU_SYSFS = Path("/sys/devices/system/cpu")


def usable_cores(sysfs: Path | None = None) -> int:
    """The physical cores among usable_cpus(), and no more than its CPU quota: the default count of torch
    threads for training. Two hardware threads of one core (SMT, Hyper-Threading) share its vector units and
    caches, so a matrix product gains no arithmetic from the second and the first waits on it; PyTorch's and
    MKL's own defaults count physical cores for that reason (pytorch/pytorch#125963). On Apple's chips, the
    performance cores, as PyTorch's default: a parallel loop split evenly waits for its slowest core. Under a
    quota, threads past it wait for its time: a quota of 1 CPU on 2 cores trained 1.23x faster on 1 thread
    than on 2 (benchmarks/cpu_quota.py). The cores are read by hand from sysfs because no library counts
    them within a mask (psutil and joblib count the whole machine's)."""
    return min(usable_cpus(), _cores(sysfs))


def default_torch_threads() -> None:
    """Size torch's thread pool to usable_cores() in this process and the ones it starts, unless the user set
    OMP_NUM_THREADS or MKL_NUM_THREADS. PyTorch's own default counts physical cores but not a container's CPU
    quota, where every thread past the quota waits for its time: decoding SmolLM2-135M under a quota of 1 CPU
    on 2 cores ran 1.7x faster on 1 thread than on PyTorch's 2 (benchmarks/cpu_quota.py --part decode).
    Through the environment because OpenMP reads it once, when torch loads: call before importing torch (the
    CLI does, for every command). Training sets its own count on top (train.threads)."""
    if "OMP_NUM_THREADS" not in os.environ and "MKL_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(usable_cores())


def _cores(sysfs: Path | None = None) -> int:
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return _cores_without_masks()
    sysfs = sysfs or CPU_SYSFS
    cores: set[str] = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        # the same text, the CPU list of one core, in both files; thread_siblings_list on kernels before 5.5
        siblings = _read(topology / "core_cpus_list") or _read(topology / "thread_siblings_list")
        if not siblings:  # no topology (a container without /sys, another kernel): every CPU counts
            return max(1, len(cpus))
        cores.add(siblings)
    return max(1, len(cores))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _cores_without_masks() -> int:
    if sys.platform == "darwin":  # perflevel0: the performance cores of Apple's chips; physicalcpu: Intel Macs
        for key in ("hw.perflevel0.physicalcpu", "hw.physicalcpu"):
            try:
                out = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                break
            if out.isdigit() and int(out) > 0:
                return int(out)
    return os.cpu_count() or 1


@dataclass
class Outcome:
    ok: bool
    value: Any = None
    reason: str = ""
    trace: str = ""
    skipped: bool = False  # finished before this run: its marker existed


def _call(fn: Callable[..., Any], args: tuple) -> Outcome:
    try:
        return Outcome(True, fn(*args))
    except Exception as e:  # a failed job is data for the caller, not the end of the run
        return Outcome(False, reason=f"{type(e).__name__}: {e}", trace=traceback.format_exc())


def _worker_init(threads: int) -> None:
    # Set before torch is first imported in this worker (jobs that train import it), so its thread pools
    # are sized once; jobs that never touch torch do not pay for importing it.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:  # Linux: this worker gets SIGKILL when its parent dies, so a killed run leaves no orphans
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


def run_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    workers: int,
    done: Callable[[int, Outcome], None],
    finished: Callable[[int], bool] | None = None,
    threads: int = 1,
    ray_address: str | None = None,
    gpus: float = 0.0,
    max_tasks_per_worker: int | None = None,
) -> None:
    """Call fn(*jobs[i]) for every i not yet finished; done(i, outcome) as each ends, in completion order.
    fn must be importable by name (a module-level function) to run in other processes."""
    pending = []
    for i in range(len(jobs)):
        if finished is not None and finished(i):
            done(i, Outcome(True, skipped=True))
        else:
            pending.append(i)
    if not pending:
        return
    if ray_address:
        _ray(fn, jobs, pending, done, threads, ray_address, gpus)
    elif workers <= 1:
        for i in pending:
            done(i, _call(fn, jobs[i]))
    else:
        _pool(fn, jobs, pending, workers, done, threads, max_tasks_per_worker)


def _pool(fn, jobs, pending: list[int], workers: int, done, threads: int, max_tasks: int | None) -> None:
    queue = list(pending)
    ctx = mp.get_context("spawn")  # not fork: the parent may hold thread pools that do not survive a fork
    while queue:
        suspects: list[int] = []
        width = min(workers, len(queue))
        with ProcessPoolExecutor(
            width, mp_context=ctx, initializer=_worker_init, initargs=(threads,), max_tasks_per_child=max_tasks
        ) as pool:
            running: dict[Future, int] = {}
            while running or (queue and not suspects):
                while queue and len(running) < width and not suspects:
                    i = queue.pop(0)
                    running[pool.submit(_call, fn, jobs[i])] = i
                ended, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ended:
                    i = running.pop(fut)
                    try:
                        done(i, fut.result())
                    except BrokenProcessPool:
                        suspects.append(i)
        if suspects and width <= 1:  # a pool of one: the death is this job's
            done(suspects[0], Outcome(False, reason=DIED))
        else:
            for i in sorted(suspects):
                _pool(fn, jobs, [i], 1, done, threads, max_tasks)


def _ray(fn, jobs, pending: list[int], done, threads: int, address: str, gpus: float) -> None:
    try:
        import ray
    except ImportError:
        raise SlmError("a Ray address is set but Ray is not installed: pip install 'slm[cluster]'") from None
    ray.init(
        address=None if address == "local" else address,
        ignore_reinit_error=True,
        log_to_driver=False,
        include_dashboard=False,
    )
    # Paths in the jobs must be on storage every node sees (NFS, a mounted bucket).
    remote = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_call)
    futures = {remote.remote(fn, jobs[i]): i for i in pending}
    while futures:
        ready, _ = ray.wait(list(futures), num_returns=1)
        for r in ready:
            i = futures.pop(r)
            try:
                out = ray.get(r)
            except ray.exceptions.RayError as e:  # the task's process died: recorded like any failure
                out = Outcome(False, reason=f"{DIED}: {type(e).__name__}")
            done(i, out)
