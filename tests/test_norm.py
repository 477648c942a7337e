"""slm.model.norm: RMSNorm's own CPU function gives PyTorch's numbers, forward and backward, and steps aside
where PyTorch's path is the one to take."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slm.model import norm


@pytest.mark.parametrize("shape", [(3, 7, 32), (5, 128), (2, 4, 9, 16)])
@pytest.mark.parametrize("frozen", [None, "x", "weight"])
def test_rms_norm_matches_pytorch_forward_and_backward(shape, frozen, monkeypatch):
    torch.manual_seed(0)
    x0, w0, g = torch.randn(shape) * 3, 1 + 0.2 * torch.randn(shape[-1]), torch.randn(shape)
    used = []
    real = norm.RMSNormFunction.apply
    monkeypatch.setattr(norm.RMSNormFunction, "apply", lambda *a: used.append(1) or real(*a))

    def run(f):
        x, w = x0.clone().requires_grad_(frozen != "x"), w0.clone().requires_grad_(frozen != "weight")
        y = f(x, w)
        y.backward(g)
        return y, x.grad, w.grad

    got = run(lambda x, w: norm.rms_norm(x, w, 1e-6))
    want = run(lambda x, w: F.rms_norm(x, (shape[-1],), w, 1e-6))
    assert used == [1]  # the CPU float32 function ran
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rms_norm_runs_its_function_under_bf16_autocast_on_the_float32_residual_stream(monkeypatch):
    """Under autocast the norm's input is float32 (the residual stream) and so is its arithmetic, PyTorch's or
    the function's: the function runs there too, with PyTorch's float32 numbers, forward and backward."""
    used = []
    real = norm.RMSNormFunction.apply
    monkeypatch.setattr(norm.RMSNormFunction, "apply", lambda *a: used.append(1) or real(*a))
    torch.manual_seed(0)
    x0, w0, g = torch.randn(4, 9, 64) * 3, 1 + 0.2 * torch.randn(64), torch.randn(4, 9, 64)

    def run(f):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = f(x, w)
        y.backward(g)
        return y, x.grad, w.grad

    got = run(lambda x, w: norm.rms_norm(x, w, 1e-6))
    want = run(lambda x, w: F.rms_norm(x, (64,), w, 1e-6))
    assert used == [1] and got[0].dtype == torch.float32
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, want, strict=True))


def test_rms_norm_leaves_other_dtypes_and_inference_to_pytorch(monkeypatch):
    monkeypatch.setattr(norm.RMSNormFunction, "apply", lambda *a: pytest.fail("the CPU float32 function ran"))
    x, w = torch.randn(4, 16), torch.ones(16)
    y = norm.rms_norm(x.double(), w.double(), 1e-6)
    assert y.dtype == torch.float64 and torch.allclose(y, F.rms_norm(x.double(), (16,), w.double(), 1e-6))
    assert norm.rms_norm(x.bfloat16(), w, 1e-6).dtype == torch.bfloat16  # normalised in fp32, back to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 input (not slm's residual stream): PyTorch's
        xb = x.bfloat16().requires_grad_()
        assert norm.rms_norm(xb, w.requires_grad_(), 1e-6).dtype == torch.bfloat16
    # inference (no gradient wanted) keeps PyTorch's numbers exactly
    with torch.no_grad():
        assert torch.equal(norm.rms_norm(x, w.requires_grad_(), 1e-6), F.rms_norm(x, (16,), w, 1e-6))
    assert torch.equal(norm.rms_norm(x, w.detach(), 1e-6), F.rms_norm(x, (16,), w.detach(), 1e-6))
