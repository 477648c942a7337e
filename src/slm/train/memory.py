"""Keep the memory a training step frees for the next step (glibc's allocator).

glibc serves a large allocation straight from the kernel (mmap, above a threshold that grows to at most
32 MB) and hands it back when freed; it also gives back the top of its heap past a trim threshold. A
training step allocates and frees the same large tensors every step, so each step faults in fresh pages:
5,000-7,600 of them a step at the quickstart's shape on a 2-core AMD EPYC (Zen 2), and 13,000-20,000 once
oneDNN's products (slm.model.matmul), which always return new tensors, are in the step. Raising both
thresholds keeps freed memory in the process, where the next step's tensors reuse it: about 100 faults a
step. Together with oneDNN's products this made the step 1.03x faster (ratio of medians of 5 alternated
rounds; each alone 1.00x; `python benchmarks/cpu_kernels.py --part step`). The cost
is that the process keeps its peak memory until it exits, which for a training process is what it holds
anyway. The same settings are glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ variables; set
here because those are read only when a process starts.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # allocations below this come from the heap, where freed memory is reused
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's top back while training

# Where every step's tensors have one shape (pretraining, distillation: Objective.fixed_shapes), the largest
# ones stay in the heap too, up to the most mallopt takes. At 64 MB a bf16 step's whole float32 logits (4,096 x
# 4,096 at the quickstart's shape, exactly 64 MB) and, at SmolLM2-135M's width, its logits or head gradient
# come fresh from the kernel every step: 16,000 page faults a step at the quickstart's shape and 240,000 at
# SmolLM2's width on a 2-core Zen 4 EPYC, where the 2 GB threshold made bf16 steps 1.05-1.19x and 1.15-1.19x
# faster in two sessions (benchmarks/cpu_kernels.py --part mmap; 1.057x in the full loop against nanoGPT), for
# 0-18 % more peak memory. Where shapes vary (padded SFT batches, RL's rollouts), a freed tensor's hole is often
# a little too small for the next one and the heap grows: 60 rounds of 200-500 MB tensors of varying size took
# the peak to 3.4-3.6 GB at 2 GB, against 0.97 GB at 64 MB (the same part).
MMAP_THRESHOLD_FIXED_SHAPES = (1 << 31) - 1

_threshold: int | None = None  # the mmap threshold this process last set here


def _glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc on Linux, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def reuse_freed_memory(mmap_threshold: int | None = None) -> bool:
    """Set glibc's thresholds (above) for this process, the mmap threshold MMAP_THRESHOLD unless given; False
    where the C library is not glibc."""
    global _threshold
    libc = _glibc()
    if libc is None:
        return False
    threshold = MMAP_THRESHOLD if mmap_threshold is None else mmap_threshold
    if not (libc.mallopt(M_MMAP_THRESHOLD, threshold) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False
    _threshold = threshold
    return True


def mmap_threshold() -> int | None:
    """The mmap threshold this process last set through this module, or None."""
    return _threshold


@contextmanager
def shapes_vary() -> Iterator[None]:
    """Within, tensors from MMAP_THRESHOLD up come fresh from the kernel again, for work whose shapes vary
    inside a fixed-shape run (an evaluation's batches and tasks); afterwards the run's threshold is back."""
    before = _threshold
    if before is None or before <= MMAP_THRESHOLD:
        yield
        return
    reuse_freed_memory(MMAP_THRESHOLD)
    try:
        yield
    finally:
        reuse_freed_memory(before)


# Transparent huge pages: the step's tensors, kept in the heap by reuse_freed_memory, span hundreds of MB, and
# with 4 KB pages the products and elementwise passes over them miss the TLB. The kernel backs a range with
# 2 MB pages only where asked (THP "madvise", the usual default) or everywhere ("always"). glibc asks for
# the heap only when started with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which a running process cannot set;
# so the heap, once a first step has grown it, is marked (MADV_HUGEPAGE) and collapsed into huge pages at
# once (MADV_COLLAPSE, Linux 6.1 and later; older kernels leave it to khugepaged, in the background). At the
# quickstart's shape on a 2-core AVX2 EPYC, a 322 MB heap took 0.4-0.5 s to collapse, and the steps after ran
# 1.014-1.016x faster (benchmarks/cpu_kernels.py --part pages); at a wider shape (d_model 512, --big) 1.8 GB
# took 2.4 s and the steps ran 1.012x faster.
MADV_HUGEPAGE = 14  # madvise's advice numbers, from Linux's mman-common.h
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def heap_huge_pages() -> int:
    """Back the C heap with transparent huge pages, as far as the kernel allows; the bytes of the heap in
    huge pages afterwards (0 where not Linux with glibc, where THP is off, or where the kernel refused)."""
    libc = _glibc()
    if libc is None:
        return 0
    try:
        with open(THP_MODE) as f:
            if "[never]" in f.read():
                return 0
    except OSError:
        return 0
    span = _heap_span()
    if span is None:
        return 0
    start = -(-span[0] // HUGE_PAGE) * HUGE_PAGE  # only whole, aligned 2 MB pages can be huge
    stop = span[1] // HUGE_PAGE * HUGE_PAGE
    if stop <= start:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise(start, stop - start, MADV_HUGEPAGE)
    libc.madvise(start, stop - start, MADV_COLLAPSE)  # fails on kernels before 6.1: khugepaged does it later
    return _heap_huge_bytes()


def _heap_span() -> tuple[int, int] | None:
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("[heap]"):  # one line, or several once parts of it were advised
                a, b = line.split()[0].split("-")
                spans.append((int(a, 16), int(b, 16)))
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None


def _heap_huge_bytes() -> int:
    total, in_heap = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("AnonHugePages:"):
                total += int(line.split()[1]) * 1024
    return total
