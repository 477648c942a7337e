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

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # allocations below this come from the heap, where freed memory is reused
TRIM_THRESHOLD = (1 << 31) - 1  # never give the heap's top back while training


def reuse_freed_memory() -> bool:
    """Set glibc's thresholds (above) for this process; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
