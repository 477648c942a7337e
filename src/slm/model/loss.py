"""Cross-entropy (with optional z-loss and ignored positions) as one autograd function.

PyTorch's cross_entropy runs log_softmax, then nll_loss, and in backward fills a zero (N, V) matrix,
scatters into it and runs log_softmax's backward: three passes over a matrix that is 64 MB at 4096
tokens x 4096 vocabulary. Here backward is one fused expression, softmax * (1 + 2 z lse) - onehot,
which profiling showed cuts the loss's share of a small model's step from about a fifth to a few percent.

Positions whose target is `ignore_index` take no loss and get no gradient; the mean runs over the rest.
The mask enters as a per-row factor (1 or 0) folded into the one scaling pass, and as mean(...) * N / n,
which is exactly the unmasked mean when nothing is ignored, so masking costs no extra pass over the logits
and leaves unmasked training bit for bit as it was.
"""

from __future__ import annotations

import torch

from slm.data.batch import IGNORE
from slm.model import matmul

CHUNK_ELEMENTS = 1 << 21  # 8 MB of fp32: temporaries stay in cache and in malloc's reusable pool


def _row_chunks(x: torch.Tensor) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, x.size(1)))
    return [slice(i, i + step) for i in range(0, x.size(0), step)]


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, z_loss: float, ignore_index: int) -> torch.Tensor:
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        lse = torch.empty(logits.size(0), dtype=logits.dtype, device=logits.device)
        for rows in _row_chunks(logits):
            lse[rows] = torch.logsumexp(logits[rows], dim=-1)
        picked = logits.gather(1, safe[:, None]).squeeze(1)
        n = logits.size(0)
        # N / (positions that count): 1.0 exactly when none is ignored.
        ratio = n / valid.sum().clamp_min(1).to(logits.dtype)
        loss = torch.where(valid, lse - picked, 0.0).mean() * ratio
        if z_loss:
            loss = loss + z_loss * torch.where(valid, lse.pow(2), 0.0).mean() * ratio
        ctx.save_for_backward(logits, lse, safe, valid, ratio)
        ctx.z_loss = z_loss
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, lse, safe, valid, ratio = ctx.saved_tensors
        n = logits.size(0)
        # The logits are dead after this backward, so their buffer becomes the gradient: a fresh 64 MB
        # allocation costs more in page faults than the arithmetic does.
        grad = logits
        for rows in _row_chunks(grad):
            grad[rows].sub_(lse[rows, None]).exp_()
        if ctx.z_loss:
            grad.mul_((1.0 + 2.0 * ctx.z_loss * lse)[:, None])
        grad.scatter_add_(1, safe[:, None], torch.full((n, 1), -1.0, dtype=grad.dtype, device=grad.device))
        scale = grad_out * ratio / n
        grad.mul_(torch.where(valid, scale, 0.0)[:, None])
        return grad, None, None, None


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Mean token cross-entropy of (N, V) fp32 logits against (N,) targets, plus z_loss * mean(lse^2), both
    over the positions whose target is not `ignore_index`.

    The logits buffer is overwritten by the backward pass; do not read it after calling backward().
    """
    return _CrossEntropy.apply(logits, targets, z_loss, ignore_index)


# Rows of logits computed at once by linear_cross_entropy. Each chunk also reads and writes the whole (V, d)
# weight gradient, so chunks must stay long whatever the vocabulary: on a 2-core AMD EPYC, 512 rows was the
# fastest of 256-2048 both at vocabulary 4096 (d 128; 10-15 % faster than whole logits) and at SmolLM2's
# 49,152 (d 576; as fast as whole logits), while 10-row chunks (a fixed 2M-element budget) were 10x slower.
HEAD_CHUNK_ROWS = 512


# oneDNN is faster than MKL at the head's products for some vocabulary sizes only, and by vocabulary size
# rather than by a threshold: `python benchmarks/cpu_kernels.py --part head` (d 128, 512-row chunks, 2-core
# AVX2 EPYC, 3 alternated rounds), speed of oneDNN over MKL:
#   a chunk's logits: 1.26-1.72x from 2,048 to 12,288 entries (0.97x at 6,144), 0.76-1.01x below, and
#     0.94-0.99x from 16,384 to 65,536, where MKL writing into the head's reused buffer wins;
#   the weight's gradient made as its transpose: 1.02-1.43x where V is a power of two from 1,024 to 65,536,
#     0.33-0.77x at every other size measured (3,000, 6,144, 12,288, 32,000, 49,152 among them).
def onednn_logits_pays(vocab: int) -> bool:
    return 2048 <= vocab <= 12288


def onednn_gradient_pays(vocab: int) -> bool:
    return vocab >= 1024 and vocab & (vocab - 1) == 0


class _LinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of h @ weight.T without ever holding the (N, V) logits.

    Each chunk of rows is projected, its loss taken, and -- since the gradient of cross-entropy with respect
    to the logits is known the moment they are (softmax * (1 + 2 z lse) - onehot) -- turned straight into
    its share of the gradients of h and of the weight while it is still in cache. Backward only scales
    those by the incoming gradient. At a 4096 vocabulary and 4096 tokens this skips writing and reading a
    64 MB matrix several times (and its page faults); at SmolLM2's 49,152 it avoids a 3 GB one at 16 x 1024
    tokens. No library does this on a CPU (Liger's and Apple's cut cross-entropy are Triton kernels).
    """

    @staticmethod
    def forward(ctx, h, weight, targets, z_loss: float, ignore_index: int, dtype: torch.dtype):
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        count = valid.sum().clamp_min(1)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        hc, wc = h.to(dtype), weight.to(dtype)
        exact = torch.promote_types(dtype, torch.float32)  # the loss and its sums: fp32, or fp64 in tests
        total = torch.zeros((), dtype=exact, device=h.device)
        grad_h = torch.empty_like(h) if need_grad else None
        # Which of the chunk's products oneDNN makes (float32 on a CPU, d <= matmul.ONEDNN_MAX_INNER); MKL
        # makes the rest. The weight's gradient, summed over chunks, is then held as its transpose (d, V).
        short = matmul.onednn_ok(hc, hc.size(1))
        onednn_logits = short and onednn_logits_pays(weight.size(0))
        transposed = need_grad and dtype == exact and short and onednn_gradient_pays(weight.size(0))
        grad_w = None  # the first chunk makes it and the rest add to it, so no pass zeroes (V, d) first
        # One logits buffer for every chunk: a fresh (512, V) block each time came back from the C allocator as
        # new pages, and faulting them in nearly doubled the projection's time in a training step (10.4 against
        # 6.3 ms reused at V = 4096 on a 2-core AVX2 EPYC; benchmarks/train_throughput.py --profile). Only MKL
        # writes into it; oneDNN's logits are new tensors, which the training loop's allocator setting
        # (slm.train.memory) serves from reused memory too.
        if not onednn_logits:
            buf = torch.empty(min(HEAD_CHUNK_ROWS, h.size(0)), weight.size(0), dtype=dtype, device=h.device)
        for a in range(0, h.size(0), HEAD_CHUNK_ROWS):
            rows = slice(a, a + HEAD_CHUNK_ROWS)
            chunk = hc[rows]
            if onednn_logits:
                logits = matmul.onednn_product(chunk, wc).to(exact)
            else:
                logits = torch.mm(chunk, wc.t(), out=buf[: chunk.size(0)]).to(exact)
            picked = logits.gather(1, safe[rows, None]).squeeze(1)
            top = logits.amax(dim=-1, keepdim=True)
            e = logits.sub_(top).exp_()  # one exponential pass serves the loss and the gradient
            total_e = e.sum(dim=-1)
            lse = top.squeeze(1) + total_e.log()
            per_row = lse - picked
            if z_loss:
                per_row = per_row + z_loss * lse.pow(2)
            weight_row = torch.where(valid[rows], count.to(exact).reciprocal(), 0.0)
            total += (per_row * weight_row).sum()
            if not need_grad:
                continue
            # d loss / d logits = (softmax * (1 + 2 z lse) - onehot) * weight_row, built in e's buffer
            scale = weight_row / total_e
            if z_loss:
                scale = scale * (1.0 + 2.0 * z_loss * lse)
            g = e.mul_(scale[:, None])
            g.scatter_add_(1, safe[rows, None], -weight_row[:, None])
            gc = g.to(dtype)
            if h.dtype == dtype:
                torch.mm(gc, wc, out=grad_h[rows])
            else:
                grad_h[rows] = (gc @ wc).to(h.dtype)
            if grad_w is None:
                grad_w = matmul.onednn_product(chunk.t(), gc.t()) if transposed else (gc.t() @ chunk).to(exact)
            elif transposed:
                grad_w += matmul.onednn_product(chunk.t(), gc.t())
            elif grad_w.dtype == gc.dtype:
                grad_w.addmm_(gc.t(), chunk)  # in place: no (V, d) temporary per chunk
            else:
                grad_w += gc.t() @ chunk
        if need_grad and grad_w is None:  # no rows
            grad_w = torch.zeros(weight.shape[::-1] if transposed else weight.shape, dtype=exact, device=h.device)
        if grad_w is not None:
            ctx.save_for_backward(grad_h, grad_w.t().contiguous() if transposed else grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # A loss backpropagated as it is (no gradient accumulation) comes back as exactly 1: the gradients are
        # then made already, and scaling the (V, d) one would be a pass over 151 MB at GPT-2 small's size (33 ms
        # of a 5.6 s step on a 2-core CPU). Asked on a CPU only, where reading the scalar waits for nothing.
        if grad_out.device.type == "cpu" and grad_out.item() == 1.0:
            return grad_h, grad_w.to(ctx.weight_dtype), None, None, None, None
        return grad_h * grad_out.to(grad_h.dtype), (grad_w * grad_out).to(ctx.weight_dtype), None, None, None, None


# Left to eager under torch.compile: its work is matmuls, which compiling does not speed up, and compiling the
# in-place chunk loop gained nothing (a compiled 4-layer step was 1.09x eager with it inside, 1.14x without).
@torch.compiler.disable
def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0, ignore_index: int = IGNORE
) -> torch.Tensor:
    """cross_entropy(h @ weight.T, targets, z_loss), computed in row chunks: h (..., d), weight (V, d),
    targets (...). Under autocast the projection runs in the autocast dtype (as nn.Linear would) and the loss
    in fp32."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    with torch.autocast(h.device.type, enabled=False):
        return _LinearCrossEntropy.apply(h, weight, targets, z_loss, ignore_index, dtype)
