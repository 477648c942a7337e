"""int8 weight-only inference: per-channel int8 weights through PyTorch's int8 kernel."""

from __future__ import annotations

import pytest
import torch

from slm.config import ModelConfig, SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Engine
from slm.model.quant import int8_weights, quantize
from slm.model.transformer import Linear, Transformer


def test_int8_projection_is_the_product_with_the_rounded_weights():
    torch.manual_seed(0)
    lin = Linear(64, 48, bias=False)
    x = torch.randn(3, 5, 64)
    q, s = int8_weights(lin.weight)
    assert q.dtype == torch.int8 and s.shape == (48,)
    err = (q.float() * s[:, None] - lin.weight).abs().amax(dim=1)
    assert (err <= s / 2 * 1.001).all()  # each weight within half a step of its row's scale
    want = x @ (q.float() * s[:, None]).T
    lin.int8 = (q, s)
    got = lin(x)
    assert got.shape == (3, 5, 48)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_quantized_model_stays_close_and_decodes():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=64)
    m = Transformer(cfg, 300).eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        before, _ = m(x)
        assert quantize(m) == 2 * 7 + 1  # every projection and the output head
        after, _ = m(x)
    assert (before - after).abs().max() < 0.05 * before.abs().max()
    assert (before.argmax(-1) == after.argmax(-1)).float().mean() > 0.9
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)}, unk_token="w0"))
    with Engine(m, tok) as eng:  # the engine does not pack int8 projections into oneDNN's float layout
        done = eng.run([[1, 2, 3], [4, 5]], SamplingParams(max_tokens=5, temperature=0))
    assert all(len(d.tokens) == 5 for d in done)
    alone = Engine(m, tok).run([[4, 5]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert alone.tokens == done[1].tokens
    with pytest.raises(SlmError, match="not supported; supported: int8, w8a8"):
        quantize(m, "int4")


def test_smoothing_leaves_the_float_model_unchanged():
    """SmoothQuant's migration is exact in float: the norm divides what the projections multiply."""
    from slm.model.quant import smooth

    torch.manual_seed(0)
    m = Transformer(ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=64), 300).eval()
    with torch.no_grad():
        for b in m.layers:  # outlier channels, as trained transformers have
            b.attn_norm.weight[:3] = 20.0
            b.mlp_norm.weight[5] = 30.0
        x = torch.randint(0, 300, (2, 20))
        before, _ = m(x)
        q_before = m.layers[0].attn.q_proj.weight.clone()
        smooth(m, [torch.randint(0, 300, (40,)).tolist()])
        after, _ = m(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not torch.equal(m.layers[0].attn.q_proj.weight, q_before)
    assert m.layers[0].attn_norm.weight[:3].max() < 20.0  # the outliers moved into the weights


def test_w8a8_rounds_activations_per_token_and_beats_plain_rounding_on_outliers():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=64)
    m = Transformer(cfg, 300).eval()
    with torch.no_grad():
        for b in m.layers:
            b.attn_norm.weight[:2] = 40.0
            b.mlp_norm.weight[7] = 40.0
    x = torch.randint(0, 300, (2, 24))
    calib = [torch.randint(0, 300, (48,)).tolist() for _ in range(2)]
    with torch.no_grad():
        want, _ = m(x)
        errs = {}
        for smooth_it in (False, True):
            q = Transformer(cfg, 300).eval()
            q.load_state_dict(m.state_dict())
            if smooth_it:
                assert quantize(q, "w8a8", calib) == 2 * 7  # the output head stays float
            else:  # the same rounding without smoothing: every projection w8a8 as it stands
                for name, lin in q.named_modules():
                    if isinstance(lin, Linear) and name != "lm_head":
                        w, s = int8_weights(lin.weight)
                        lin.w8a8 = (w.t(), s)
            assert q.layers[0].attn.q_proj.w8a8 is not None and q.lm_head.w8a8 is None and q.lm_head.int8 is None
            got, _ = q(x)
            errs[smooth_it] = (got - want).abs().mean().item()
    assert errs[True] < errs[False]  # smoothing is what makes int8 activations affordable
    assert errs[True] < 0.1 * want.abs().mean().item()
    with pytest.raises(SlmError, match="calibration"):
        quantize(Transformer(cfg, 300).eval(), "w8a8")
