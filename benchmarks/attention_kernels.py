"""Causal attention's forward and backward on a CPU, three ways, at the training shape of the throughput
comparison with nanoGPT (batch 16, 4 heads, sequence 256, head dimension 32, float32):

    python benchmarks/attention_kernels.py [--rounds 7] [--threads 2] [--batch 16 --heads 4 --seq 256 --dim 32]

`flash`: `F.scaled_dot_product_attention(is_causal=True)`, which picks PyTorch's CPU flash kernel (what
`slm train` and nanoGPT both run); `math`: the same call restricted to SDPA's math backend; `manual`: the
scores, mask, softmax and product written out; `blocked2` and `blocked4`: written out as batched products
in 2 or 4 blocks of query rows, each block multiplying only the keys it can see (3/4 and 5/8 of the
products), with its own backward that keeps each block's probabilities; `flash_split4`: the flash kernel
called on 4 blocks of query rows, each with only the keys it can see and its slice of the mask;
`flash_full`: the flash kernel without the causal mask (a different function, not checked: what causal
attention costs if the kernel skips nothing). Each round times 5 forwards and
backwards of each way, alternated; prints the median milliseconds and the ratio to flash, then one JSON
line. The question it answers (issue 18): whether attention written another way would make a float32 step
faster at this small shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from generation import cpu_flags, cpu_name
from torch.nn.attention import SDPBackend, sdpa_kernel


class BlockedCausal(torch.autograd.Function):
    """Causal attention of (B, H, T, D) tensors in `blocks` blocks of query rows: block i multiplies the keys
    of blocks 0..i only, and masks the diagonal block's upper triangle."""

    @staticmethod
    def forward(ctx, q, k, v, blocks: int):
        B, H, T, D = q.shape
        Q, K, V = (t.reshape(B * H, T, D) for t in (q, k, v))
        size, scale = T // blocks, D**-0.5
        upper = torch.full((size, size), float("-inf")).triu_(1)
        out, probs = torch.empty_like(Q), []
        for i in range(blocks):
            rows, seen = slice(i * size, (i + 1) * size), (i + 1) * size
            scores = torch.bmm(Q[:, rows], K[:, :seen].transpose(1, 2))
            scores[:, :, i * size :].add_(upper)
            p = torch.softmax(scores.mul_(scale), -1)
            torch.bmm(p, V[:, :seen], out=out[:, rows])
            probs.append(p)
        ctx.save_for_backward(Q, K, V, *probs)
        ctx.shape, ctx.blocks, ctx.scale = (B, H, T, D), blocks, scale
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, grad):
        Q, K, V, *probs = ctx.saved_tensors
        (B, H, T, D), size = ctx.shape, ctx.shape[2] // ctx.blocks
        g = grad.reshape(B * H, T, D)
        dq, dk, dv = torch.empty_like(Q), torch.zeros_like(K), torch.zeros_like(V)
        for i, p in enumerate(probs):
            rows, seen = slice(i * size, (i + 1) * size), (i + 1) * size
            dv[:, :seen].baddbmm_(p.transpose(1, 2), g[:, rows])
            ds = torch._softmax_backward_data(torch.bmm(g[:, rows], V[:, :seen].transpose(1, 2)), p, -1, p.dtype)
            torch.baddbmm(dq[:, rows], ds, K[:, :seen], beta=0, alpha=ctx.scale, out=dq[:, rows])
            dk[:, :seen].baddbmm_(ds.transpose(1, 2), Q[:, rows], alpha=ctx.scale)
        return dq.view(B, H, T, D), dk.view(B, H, T, D), dv.view(B, H, T, D), None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dim", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.dim)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape)
    causal = torch.ones(args.seq, args.seq, dtype=torch.bool).tril()

    def flash() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def math() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def manual() -> torch.Tensor:
        scores = (q @ k.transpose(-1, -2)) * args.dim**-0.5
        return scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v

    def flash_split4() -> torch.Tensor:
        # four blocks of query rows, block i over the keys of blocks 0..i only (5/8 of the scores), each by
        # the flash kernel with its own slice of the causal mask
        size = args.seq // 4
        return torch.cat(
            [
                F.scaled_dot_product_attention(
                    q[:, :, i * size : (i + 1) * size],
                    k[:, :, : (i + 1) * size],
                    v[:, :, : (i + 1) * size],
                    attn_mask=causal[i * size : (i + 1) * size, : (i + 1) * size],
                )
                for i in range(4)
            ],
            dim=2,
        )

    ways = {
        "flash": flash,
        "math": math,
        "manual": manual,
        "blocked2": lambda: BlockedCausal.apply(q, k, v, 2),
        "blocked4": lambda: BlockedCausal.apply(q, k, v, 4),
        "flash_split4": flash_split4,
    }
    ref = flash()
    ref.backward(grad)
    ref_grads = [t.grad for t in (q, k, v)]
    checked = dict(ways)
    # Not causal at all (other numbers, not checked): the work flash would do if it skipped nothing.
    ways["flash_full"] = lambda: F.scaled_dot_product_attention(q, k, v)
    for name, f in checked.items():  # the same function and gradients, or the timing means nothing
        q.grad = k.grad = v.grad = None
        y = f()
        y.backward(grad)
        if not torch.allclose(y, ref, atol=1e-5) or not all(
            torch.allclose(t.grad, r, atol=1e-4) for t, r in zip((q, k, v), ref_grads, strict=True)
        ):
            raise SystemExit(f"{name} differs from flash")
    q.grad = k.grad = v.grad = None
    print(f"{cpu_name()} ({', '.join(cpu_flags())}), {args.threads} threads, shape {shape}, float32", flush=True)
    times: dict[str, list[float]] = {n: [] for n in ways}
    for _ in range(args.rounds):
        for name, f in ways.items():
            t = time.perf_counter()
            for _ in range(5):
                f().backward(grad)
                q.grad = k.grad = v.grad = None
            times[name].append((time.perf_counter() - t) / 5 * 1000)
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, ms in med.items():
        print(f"{n:8s} {ms:7.2f} ms forward and backward  ({ms / med['flash']:.2f}x flash)")
    out = {"bench": "attention_kernels", "cpu": cpu_name(), "cpu_flags": cpu_flags(), "shape": list(shape)}
    out.update({f"{n}_ms": round(ms, 2) for n, ms in med.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
