"""Which kernel multiplies by a weight on a CPU in float32: PyTorch's default (MKL) or oneDNN.

PyTorch sends a float32 product to MKL. oneDNN, which PyTorch also ships (and uses for bf16 and for
torch.compile's CPU inference path), is faster when the inner dimension is short: on a 2-core AMD EPYC (Zen 2,
AVX2), 1.07-1.24x MKL's speed at the quickstart's products of inner dimension 128 (4,096 rows), and
1.42-1.45x for its head chunk (512 x 128 by 128 x 4,096: 175-180 GFLOP/s against 123-124); from an inner
dimension of 192 on, 0.94-1.07x, and 0.53-0.66x for a layer's weight gradient (g.T @ x over every row),
which stays with MKL (`python benchmarks/cpu_kernels.py --part products`). On an AMD CPU with AVX-512 every
forward and input gradient goes to oneDNN (onednn_max_inner). In a whole training step at the
quickstart's shape, these products with the allocator setting of slm.train.memory made the step 1.03x faster
(`python benchmarks/cpu_kernels.py --part step`), and the full `slm train` loop 1.02x. The chunked head's
products follow rules of their own, by vocabulary size (slm.model.loss).

oneDNN's product is `torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU path emits; it is a
private op, so every use goes through `onednn_available`, which checks that this PyTorch build has it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cpu_vendor() -> str:
    """The CPU's vendor id ("AuthenticAMD", "GenuineIntel"), or "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_measured(capability: str) -> bool:
    """oneDNN's products were measured against PyTorch's on CPUs of PyTorch's capability: x86 with AVX2 or
    AVX-512 (two AMD EPYCs, Zen 2 and Zen 4). Elsewhere (ARM's capabilities, where oneDNN runs code of another
    kind, or x86 without AVX2) slm keeps PyTorch's own products, in training and in generation alike."""
    return capability in ("AVX2", "AVX512")


def onednn_max_inner(capability: str, vendor: str) -> int:
    """The longest inner dimension oneDNN multiplies, given PyTorch's CPU capability and the CPU's vendor id.

    On an AMD CPU with AVX-512 (Zen 4), MKL runs its AVX2 code while oneDNN runs AVX-512: oneDNN was faster at
    every forward and input gradient measured there, 1.10-1.45x at the quickstart's products (inner 128 and
    352) and 1.05-1.09x from inner 192 to 1,536 (`python benchmarks/cpu_kernels.py --part products`), and
    whole training steps ran 1.07x as fast with 8 layers of d_model 512, about 1 % faster at the quickstart's
    shape (within the noise there), and as fast with 2 layers of SmolLM2-135M's width, whose step is mostly its
    49,152-entry head (`--part inner --big`, steps alternated in one process). The weight gradients stay with
    MKL there too (oneDNN 0.43-0.78x). Intel CPUs with AVX-512, where MKL runs AVX-512 as well, are unmeasured
    and keep the rule measured on AVX2, whose code both libraries run on any x86 CPU with it. Where nothing
    was measured (onednn_measured), 0: PyTorch's own products.
    """
    if not onednn_measured(capability):
        return 0
    if capability == "AVX512" and vendor == "AuthenticAMD":
        return 1 << 30
    return 128


# Products whose inner dimension is at most this run in oneDNN. Asked once at import: ATEN_CPU_CAPABILITY,
# which restricts PyTorch's kernels (and benchmarks/generation.py's ISA_ENV), is read once per process too.
_CAPABILITY = torch.backends.cpu.get_cpu_capability()
ONEDNN_MAX_INNER = onednn_max_inner(_CAPABILITY, cpu_vendor())
ONEDNN_MEASURED = onednn_measured(_CAPABILITY)  # for generation's packed weights


# Fixed for the process, so asked once at import (a constant also reads cleanly when torch.compile traces a
# model that calls onednn_available, where a cached function draws a warning).
_BUILT_WITH_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    """oneDNN can multiply float32 tensors on this device in this PyTorch build."""
    return device.type == "cpu" and dtype == torch.float32 and _BUILT_WITH_ONEDNN


def onednn_ok(x: torch.Tensor, inner: int) -> bool:
    """x (times a weight, over an inner dimension this long) is better multiplied by oneDNN, outside
    autocast (whose products are bf16 and already go to oneDNN)."""
    return (
        inner <= ONEDNN_MAX_INNER
        and onednn_available(x.device, x.dtype)
        and not torch.is_autocast_enabled(x.device.type)
    )


def _mm_nt(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w.T for 2-D a (N, K) and w (M, K), without autograd, in the faster kernel."""
    if onednn_ok(a, a.size(1)) and w.dtype == a.dtype:
        return onednn_product(a, w)
    return torch.mm(a, w.t())


def onednn_product(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w.T by oneDNN (a: (..., K), w: (M, K), a transposed view, or a weight Transformer.pack reordered)."""
    return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        flat = x.reshape(-1, x.size(-1))
        return _mm_nt(flat, w).view(*x.shape[:-1], w.size(0))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.size(-1))
        # d x = g @ w, whose inner dimension is w's rows: g @ (w.T).T
        dx = _mm_nt(g, w.t()).view(x.shape) if ctx.needs_input_grad[0] else None
        dw = weight_gradient(g, x.reshape(-1, x.size(-1))) if ctx.needs_input_grad[1] else None
        return dx, dw


def weight_gradient(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g.T @ x, a weight's gradient summed over every row (a long inner dimension): MKL's, as nn.Linear's
    backward would, made as the taller of the product and its transpose. MKL runs the tall one faster: for
    the down projection (128 x 352 from 4,096 rows), 2.6 ms as x.T @ g against 3.2 ms as g.T @ x on a
    2-core AVX2 EPYC (`python benchmarks/cpu_kernels.py --part products`, the weight-gradient cases)."""
    if g.size(1) >= x.size(1):
        return torch.mm(g.t(), x)
    return torch.mm(x.t(), g).t()


# Under torch.compile the products stay out of the compiled graph and run here, eagerly, in oneDNN: inductor
# fails to lower the oneDNN op in a training graph, and compiled with its own products (MKL's) the step lost
# what oneDNN gains. The compiled pieces between them still fuse the elementwise work (RMSNorm, rotary
# embeddings, SwiGLU): 1.052x eager against 1.027x with everything compiled, at the quickstart's
# shape on a 2-core AVX2 EPYC (`python benchmarks/cpu_kernels.py --part compile`).
_eager_linear = torch.compiler.disable(_Linear.apply)


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) without a bias, with its products (forward and backward) in the faster CPU kernel."""
    if w.dtype == x.dtype and (onednn_ok(x, x.size(-1)) or onednn_ok(x, w.size(0))):
        return _eager_linear(x, w) if torch.compiler.is_compiling() else _Linear.apply(x, w)
    return F.linear(x, w)
