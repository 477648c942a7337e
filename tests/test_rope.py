"""Rotary embeddings (slm.model.rope): the training function against the composed rotate-half form, and
which path runs where."""

from __future__ import annotations

import pytest
import torch

from slm.model.rope import RotaryFunction, apply_rope, rope_tables


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotate-half form as HF's Llama writes it, in float64: the reference."""
    half = x.size(-1) // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def test_tables_have_equal_halves():
    """RotaryFunction takes only sin's first half: the tables must repeat themselves."""
    cos, sin = rope_tables(32, 64, 10000.0)
    assert torch.equal(cos[:, :16], cos[:, 16:]) and torch.equal(sin[:, :16], sin[:, 16:])


@pytest.mark.parametrize("per_row", [False, True])
def test_training_function_matches_rotate_half_forward_and_backward(per_row):
    torch.manual_seed(0)
    B, H, T, D = 3, 2, 16, 8
    cos, sin = rope_tables(D, T, 10000.0)
    if per_row:  # packed sequences: each row's own positions, tables (B, 1, T, D)
        pos = torch.tensor([[*range(6), *range(10)], [*range(16)], [*range(3), *range(13)]])
        cos, sin = cos[pos][:, None], sin[pos][:, None]
    base = torch.randn(B, T, H, D)  # a transposed view, as the model passes it
    grad = torch.randn(B, H, T, D)
    x = base.clone().requires_grad_()
    y = apply_rope(x.transpose(1, 2), cos, sin)
    assert type(y.grad_fn).__name__ == "RotaryFunctionBackward"
    y.backward(grad)
    ref_x = base.double().requires_grad_()
    ref = rotate_half(ref_x.transpose(1, 2), cos.double(), sin.double())
    ref.backward(grad.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-6, atol=1e-6)


def test_backward_is_the_inverse_rotation():
    """A rotation's gradient is its transpose: rotating back the forward's output gives the input."""
    torch.manual_seed(1)
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(2, 2, 8, 16, dtype=torch.float64)
    y = rotate_half(x, cos.double(), sin.double())
    back = RotaryFunction.backward(_Ctx(cos.double(), sin[..., :8].double()), y)[0]
    torch.testing.assert_close(back, x)


class _Ctx:
    def __init__(self, *saved: torch.Tensor):
        self.saved_tensors = saved


def test_inference_and_other_dtypes_keep_the_composed_form_bit_for_bit():
    torch.manual_seed(2)
    cos, sin = rope_tables(8, 16, 10000.0)
    x = torch.randn(2, 2, 16, 8)
    half = 4
    composed = x * cos + x.roll(half, -1) * torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    with torch.no_grad():
        assert torch.equal(apply_rope(x.requires_grad_(), cos, sin), composed)
    assert torch.equal(apply_rope(x.detach(), cos, sin), composed)  # nothing needs a gradient
    xd = x.detach().double().requires_grad_()
    y = apply_rope(xd, cos.double(), sin.double())
    assert type(y.grad_fn).__name__ != "RotaryFunctionBackward"
