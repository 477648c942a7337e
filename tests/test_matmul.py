"""The CPU kernel choice of slm.model.matmul and the allocator setting of slm.train.memory: the same
numbers as PyTorch's own path, the oneDNN path taken exactly where it should be, memory reused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from slm.data.batch import IGNORE
from slm.model import matmul
from slm.model.loss import linear_cross_entropy

pytestmark = pytest.mark.skipif(
    not matmul.onednn_available(torch.device("cpu"), torch.float32), reason="this PyTorch build has no oneDNN"
)


@pytest.fixture
def calls(monkeypatch) -> list[tuple[int, int]]:
    """The (rows, inner) of every product sent to oneDNN."""
    seen: list[tuple[int, int]] = []
    real = matmul.onednn_product

    def spy(a, w):
        seen.append(tuple(a.shape))
        return real(a, w)

    monkeypatch.setattr(matmul, "onednn_product", spy)
    return seen


@pytest.mark.parametrize("d_in,d_out", [(48, 80), (96, 300), (300, 64), (256, 256)])
def test_linear_matches_pytorch_forward_and_backward(d_in, d_out, calls):
    torch.manual_seed(0)
    x0, w0 = torch.randn(3, 37, d_in), torch.randn(d_out, d_in) / d_in**0.5
    g = torch.randn(3, 37, d_out)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    y = matmul.linear(x, w)
    y.backward(g)
    x2, w2 = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    y2 = F.linear(x2, w2)
    y2.backward(g)
    assert y.shape == y2.shape
    assert torch.allclose(y, y2, rtol=1e-5, atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(w.grad, w2.grad, rtol=1e-5, atol=1e-4)
    # forward goes to oneDNN when d_in is short, the input's gradient when d_out is; the weight's never
    want = [(111, d_in)] * (d_in <= matmul.ONEDNN_MAX_INNER) + [(111, d_out)] * (d_out <= matmul.ONEDNN_MAX_INNER)
    assert calls == want


def test_onednn_takes_every_inner_dimension_only_on_amd_cpus_with_avx512():
    # There MKL runs its AVX2 code and oneDNN its AVX-512 code; elsewhere oneDNN only where it was measured faster.
    assert matmul.onednn_max_inner("AVX512", "AuthenticAMD") >= 1 << 20
    assert matmul.onednn_max_inner("AVX2", "AuthenticAMD") == 128
    assert matmul.onednn_max_inner("AVX512", "GenuineIntel") == 128
    assert matmul.onednn_max_inner("AVX2", "GenuineIntel") == 128
    # never measured (ARM CPUs, x86 without AVX2): PyTorch's own products only
    for capability in ("DEFAULT", "SVE256"):
        assert matmul.onednn_max_inner(capability, "AuthenticAMD") == 0 and not matmul.onednn_measured(capability)
    # what this process uses
    capability = torch.backends.cpu.get_cpu_capability()
    assert matmul.onednn_max_inner(capability, matmul.cpu_vendor()) == matmul.ONEDNN_MAX_INNER


def test_linear_leaves_other_dtypes_autocast_and_frozen_inputs_to_pytorch(calls):
    w = torch.randn(16, 8, requires_grad=True)
    x = torch.randn(5, 8)
    assert torch.equal(matmul.linear(x.double(), w.double()), F.linear(x.double(), w.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul.linear(x, w).dtype == torch.bfloat16
    assert calls == []
    # x needs no gradient: one oneDNN product, the forward; sum()'s gradient arrives as an expanded tensor
    matmul.linear(x, w).sum().backward()
    assert calls == [(5, 8)]
    assert torch.allclose(w.grad, x.sum(0).expand(16, 8), atol=1e-5)
    assert matmul.linear(torch.randn(0, 8), w).shape == (0, 16)  # no rows, and a single vector
    assert torch.allclose(matmul.linear(x[0], w), F.linear(x[0], w), atol=1e-6)


@pytest.mark.parametrize("d,vocab", [(32, 2048), (32, 3000), (32, 500), (160, 2048)])
def test_chunked_head_in_float32_matches_the_whole_logits(d, vocab, calls, monkeypatch):
    import slm.model.loss as loss_mod

    monkeypatch.setattr(loss_mod, "HEAD_CHUNK_ROWS", 16)
    torch.manual_seed(1)
    h0, w0 = torch.randn(40, d), torch.randn(vocab, d) / d**0.5
    t = torch.randint(0, vocab, (40,))
    t[::5] = IGNORE
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    linear_cross_entropy(h, w, t).backward()
    seen = list(calls)
    h2, w2 = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    expect = F.cross_entropy(h2 @ w2.t(), t, ignore_index=IGNORE)
    expect.backward()
    assert torch.allclose(linear_cross_entropy(h0, w0, t), expect.detach(), atol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-6) and torch.allclose(w.grad, w2.grad, atol=1e-6)
    # By the head's rules: at 2,048 entries each chunk's logits by oneDNN, and its share of the weight's
    # gradient, made as its transpose (d, V); at 3,000 the logits only; at 500, or past ONEDNN_MAX_INNER, MKL.
    want = {2048: [(16, d), (d, 16), (16, d), (d, 16), (8, d), (d, 8)], 3000: [(16, d), (16, d), (8, d)], 500: []}
    assert seen == (want[vocab] if d <= matmul.ONEDNN_MAX_INNER else [])
    assert w.grad.is_contiguous()


# A child process runs training steps of a small model and prints the page faults of 8 steps after 2: glibc
# serves the steps' large tensors from fresh memory (thousands of faults a step) unless reuse_freed_memory()
# ran first. Counted over 8 steps, as single steps vary either way: one step without the setting can fault
# nothing, one with it can fault 3,000 pages.
CHILD = """
import resource, sys, torch
from slm.config import ModelConfig
from slm.model.transformer import Transformer
from slm.train.memory import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "1" else None
torch.manual_seed(0)
model = Transformer(ModelConfig(n_layer=2, n_head=4, d_model=128, max_seq_len=256), 4096)
opt = torch.optim.AdamW(model.parameters())
x = torch.randint(0, 4096, (8, 257))
def step():
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_training_memory_is_reused_instead_of_faulted_in_again():
    def faults(apply: bool) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", CHILD, "1" if apply else "0"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        applied, n = out.stdout.split()
        return applied, int(n)

    applied, after = faults(True)
    if applied == "False":  # not glibc: nothing was changed, and the call said so
        return
    _, before = faults(False)
    assert applied == "True"
    assert before > 16_000  # pages faulted in afresh, 2,000 a step (42,000-59,000 in all measured)
    assert after < before / 5  # 500-3,100 in all measured


# A child process fills 64 MB of heap tensors with known values, asks for huge pages, and reports the bytes of
# the heap in them, whether the values survived, the kernel's THP mode and its version.
HUGE_CHILD = """
import os, torch
from slm.train.memory import THP_MODE, heap_huge_pages, reuse_freed_memory
reuse_freed_memory()
xs = [torch.full((2 << 20,), float(i)) for i in range(8)]  # 8 MB each: from the heap, below the mmap threshold
got = heap_huge_pages()
intact = all(bool((x == i).all()) for i, x in enumerate(xs))
mode = open(THP_MODE).read().split("[")[1].split("]")[0] if os.path.exists(THP_MODE) else "none"
print(got, intact, mode, ".".join(os.uname().release.split(".")[:2]))
"""


def test_heap_goes_to_huge_pages_with_its_contents_intact():
    out = subprocess.run([sys.executable, "-c", HUGE_CHILD], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got, intact, mode, release = out.stdout.split()
    assert intact == "True"
    if mode in ("never", "none") or sys.platform != "linux":
        assert got == "0"
    elif tuple(int(v) for v in release.split(".")) >= (6, 1):  # MADV_COLLAPSE: at once
        assert int(got) >= 32 << 20  # 62-64 MB measured
    # older kernels: khugepaged collapses the heap later, in the background; nothing to see yet


def test_compiled_model_keeps_its_products_in_onednn_and_matches_eager(calls):
    """Under torch.compile (train.compile) each product leaves the compiled graph and runs in oneDNN, as in
    eager training; the elementwise work between them is compiled; loss and gradients match eager's."""
    from slm.config import ModelConfig
    from slm.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layer=1, n_head=2, d_model=32, max_seq_len=16), 64)
    x = torch.randint(0, 64, (2, 17))

    def loss_and_grads(m) -> tuple[torch.Tensor, list[torch.Tensor]]:
        _, loss = m(x[:, :-1], x[:, 1:])
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    eager_loss, eager_grads = loss_and_grads(model)
    eager_calls = len(calls)
    calls.clear()
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model))
    assert eager_calls > 0 and len(calls) == eager_calls  # the same products, all in oneDNN
    assert torch.allclose(compiled_loss, eager_loss, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(compiled_grads, eager_grads, strict=True))


def test_throughput_benchmark_refuses_an_mmap_threshold_mallopt_cannot_take():
    """benchmarks/train_throughput.py --mmap-threshold-mb: mallopt takes an int of bytes and ignores what it
    refuses, so a value outside 1-2047 MB stops the benchmark in one line instead of measuring glibc's own."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    for bad in ("0", "-64", "4096"):
        out = subprocess.run([sys.executable, str(script), "--mmap-threshold-mb", bad], capture_output=True, text=True)
        assert out.returncode != 0 and out.stdout == ""
        assert out.stderr.strip() == f"--mmap-threshold-mb {bad}: give 1 to 2047 (MB)"


# A child process allocates and frees a 128 MB tensor 8 times inside shapes_vary(), then 16 times outside it, and
# counts the page faults of 8 more: under the threshold slm sets for fixed shapes the freed heap memory is reused
# outside; under 64 MB, and inside shapes_vary() whatever the run set, each comes fresh from the kernel (32,768
# pages of 4 KB) and the heap does not grow. glibc's holes settle first: PyTorch's aligned allocations ask for
# a little more than a freed tensor of their size left, so the heap grows by a few tensors before they fit (to
# 1.2-1.5 GB here; what it costs in training: benchmarks/cpu_kernels.py --part mmap). Inside shapes_vary(), a
# large tensor that fits a hole the run's steps left still takes it: only the heap's growth is stopped.
THRESHOLD_CHILD = """
import resource, sys, torch
from slm.train import memory
applied = memory.reuse_freed_memory(memory.MMAP_THRESHOLD_FIXED_SHAPES if sys.argv[1] == "fixed" else None)
def faults(n: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        torch.ones(32 << 20)  # 128 MB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
with memory.shapes_vary():
    inside, threshold_inside = faults(8), memory.mmap_threshold()
faults(16)
print(applied, inside, faults(8), threshold_inside, memory.mmap_threshold())
"""


def test_fixed_shapes_keep_the_largest_tensors_in_the_heap_except_where_shapes_vary():
    from slm.train.memory import MMAP_THRESHOLD, MMAP_THRESHOLD_FIXED_SHAPES

    def child(way: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", THRESHOLD_CHILD, way], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    applied, inside, outside, at_inside, at_end = child("fixed")
    if applied == "False":  # not glibc: nothing was changed, and the call said so
        return
    assert int(inside) > 8 * 30_000  # fresh pages inside shapes_vary()
    assert int(outside) < 8_000  # the freed 128 MB reused (0 measured)
    assert (int(at_inside), int(at_end)) == (MMAP_THRESHOLD, MMAP_THRESHOLD_FIXED_SHAPES)
    applied, inside, outside, at_inside, at_end = child("varying")
    assert min(int(inside), int(outside)) > 8 * 30_000
    assert int(at_inside) == int(at_end) == MMAP_THRESHOLD
